"""mysql-pool-proxy: a MySQL/MariaDB connection pooler."""

__version__ = "0.1.0"
