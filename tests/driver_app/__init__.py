"""Models for tests/test_drivers.py: a minimal Django app (models.py) and SQLAlchemy models (sa_models.py)."""
