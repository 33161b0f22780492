"""SQLAlchemy 2.x declarative models for the ORM test in tests/test_drivers.py."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import DateTime, ForeignKey, Numeric, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "drv_sa_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    opened: Mapped[dt.datetime] = mapped_column(DateTime)
    note: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(nullable=False)
    entries: Mapped[list[Entry]] = relationship(back_populates="account", order_by="Entry.id")
    # Every ORM UPDATE is "... WHERE id = ? AND version = ?" and checks that its rowcount is 1.
    __mapper_args__ = {"version_id_col": version}


class Entry(Base):
    __tablename__ = "drv_sa_entry"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("drv_sa_account.id"))
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    account: Mapped[Account] = relationship(back_populates="entries")
