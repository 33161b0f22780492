"""Go database/sql with go-sql-driver/mysql through the proxy answers as it does straight.

The program is tests/clients/go/main.go, built offline against Debian's
golang-github-go-sql-driver-mysql-dev (scripts/test.sh installs it and golang-go): prepared
statements (300 prepared and closed), interpolateParams on and off, transactions with isolation
and read-only options, multiStatements, stored procedures, a context deadline, KILL QUERY / KILL
on an overrunning query, charset and collation DSN options. See tests/clients_harness.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from clients_harness import CLIENTS_DIR, Differential, assert_covers, cached_run, need
from conftest import MariaDB, ProxyProcess

# The scripts read seq_1_to_N: MariaDB's sequence tables, views the suite makes on MySQL.

GO_DIR = CLIENTS_DIR / "go"
GOPATH = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put their source
SCENARIOS = [
    "prepared_statements",
    "interpolate_params",
    "multi_statements",
    "stored_procedures",
    "context_cancel",
    "kill_on_timeout",
    "charset_and_collation",
    "errors",
    "large_result",
]


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client program, built once per session (GOPATH mode: no module download)."""
    go = shutil.which("go")
    need(go is not None, "go (Debian package golang-go)")
    need((GOPATH / "src/github.com/go-sql-driver/mysql/driver.go").is_file(),
         "go-sql-driver/mysql (Debian package golang-github-go-sql-driver-mysql-dev)")
    assert go is not None
    out = tmp_path_factory.mktemp("go") / "client"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": ""}
    if "HOME" not in env and "GOCACHE" not in env:
        env["GOCACHE"] = str(out.parent / "cache")
    r = subprocess.run([go, "build", "-o", str(out), "."], cwd=GO_DIR, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"go build failed:\n{r.stderr}"
    return out


@pytest.fixture
def go_runs(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess], go_client: Path) -> Differential:
    return cached_run("go", lambda: Differential.run(mariadb, proxy_factory, [str(go_client)], ["cl_go"]))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_go(scenario: str, go_runs: Differential) -> None:
    go_runs.check(scenario)


def test_go_ran_every_scenario(go_runs: Differential) -> None:
    assert_covers(go_runs.direct, SCENARIOS)
