from __future__ import annotations

from decimal import Decimal

from django.db import models


class Entry(models.Model):
    title = models.CharField(max_length=100, unique=True)
    body = models.TextField(blank=True, default="")
    qty = models.IntegerField(default=0)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    created = models.DateTimeField()
    meta = models.JSONField(default=dict)

    class Meta:
        app_label = "driver_app"
        db_table = "drv_django_entry"
