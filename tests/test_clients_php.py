"""PHP through the proxy: mysqli and PDO_mysql (both on mysqlnd) answer as they do straight.

The scripts are tests/clients/php/mysqli.php and pdo.php (see tests/clients_harness.py for how
they run): affected rows and the info text after UPDATE and multi-row INSERT (mysqlnd reads the
OK packet strictly), emulated and native prepares, transactions, stored procedures with several
result sets, LOAD DATA LOCAL, compression (mysqlnd compresses whenever it asked to), character
sets, mysqli_change_user, persistent connections, KILL QUERY.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clients_harness import CLIENTS_DIR, Differential, assert_covers, cached_run, php_binary
from conftest import MariaDB, ProxyProcess

# The scripts read seq_1_to_N: MariaDB's sequence tables, views the suite makes on MySQL.

PHP_DIR = CLIENTS_DIR / "php"
# LOAD DATA LOCAL needs it on; a hang must become an error in the script, not a stuck run.
PHP_INI = ["-d", "mysqli.allow_local_infile=1", "-d", "mysqlnd.net_read_timeout=30", "-d", "display_errors=stderr"]

MYSQLI = [
    "connect_and_types",
    "update_and_insert_info",
    "errors",
    "prepared",
    "transactions",
    "stored_procedures",
    "multi_query",
    "load_data_local",
    "compression",
    "compression_load_data_local",
    "charsets",
    "change_user",
    "persistent",
    "kill_query",
]
PDO = [
    "emulated_prepares",
    "native_prepares",
    "found_rows",
    "transactions",
    "stored_procedures",
    "multi_statements",
    "load_data_local",
    "compression",
    "charsets",
    "persistent",
    "errors",
]


def _runs(script: str, mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> Differential:
    def make() -> Differential:
        cmd = [php_binary(), *PHP_INI, str(PHP_DIR / script)]
        return Differential.run(mariadb, proxy_factory, cmd, ["cl_php"])

    return cached_run(f"php/{script}", make)


@pytest.fixture
def mysqli_runs(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> Differential:
    return _runs("mysqli.php", mariadb, proxy_factory)


@pytest.fixture
def pdo_runs(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> Differential:
    return _runs("pdo.php", mariadb, proxy_factory)


@pytest.mark.parametrize("scenario", MYSQLI)
def test_mysqli(scenario: str, mysqli_runs: Differential) -> None:
    mysqli_runs.check(scenario)


def test_mysqli_ran_every_scenario(mysqli_runs: Differential) -> None:
    assert_covers(mysqli_runs.direct, MYSQLI)


@pytest.mark.parametrize("scenario", PDO)
def test_pdo(scenario: str, pdo_runs: Differential) -> None:
    pdo_runs.check(scenario)


def test_pdo_ran_every_scenario(pdo_runs: Differential) -> None:
    assert_covers(pdo_runs.direct, PDO)
