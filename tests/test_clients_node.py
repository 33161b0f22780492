"""node mysql2 through the proxy answers as it does straight.

The script is tests/clients/node/client.js (mysql2 from npm, installed by scripts/test.sh into
tests/clients/node/node_modules): query and execute with JSON, DATE and other types, OK packets
with their session-tracker entries (mysql2 asks for CLIENT_SESSION_TRACK and shows them as
``stateChanges``), multiple statements, stored procedures, a large result streamed, a pool of
4 connections, changeUser, compress. See tests/clients_harness.py for how it runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from clients_harness import CLIENTS_DIR, Differential, assert_covers, cached_run, need
from conftest import SERVER, MariaDB, ProxyProcess

# The scripts use MariaDB's sequence tables (seq_1_to_N) and compare MariaDB's own answers.
pytestmark = pytest.mark.skipif(SERVER.mysql, reason="MariaDB only: the client scripts use MariaDB's sequence tables")

NODE_DIR = CLIENTS_DIR / "node"
SCENARIOS = [
    "query_and_execute",
    "default_charset",
    "ok_packets",
    "multiple_statements",
    "stored_procedures",
    "transactions",
    "stream_large_result",
    "pool",
    "change_user",
    "compress",
    "errors",
]


@pytest.fixture
def node_runs(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> Differential:
    def make() -> Differential:
        node = shutil.which("node")
        need(node is not None, "node (Debian packages nodejs npm)")
        need((NODE_DIR / "node_modules" / "mysql2" / "package.json").is_file(),
             f"mysql2 (npm install --prefix {NODE_DIR})")
        assert node is not None
        # The mysql2 pool's 4 connections each keep a user variable (their sessions stay pinned),
        # beside the 2 noise clients: 6 links.
        return Differential.run(mariadb, proxy_factory, [node, str(NODE_DIR / "client.js")], ["cl_node"],
                                max_connections=6)

    return cached_run("node", make)


XFAIL: dict[str, str] = {}


@pytest.mark.parametrize("scenario", [
    pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=XFAIL[s])) if s in XFAIL else s for s in SCENARIOS
])
def test_mysql2(scenario: str, node_runs: Differential) -> None:
    node_runs.check(scenario)


def test_mysql2_ran_every_scenario(node_runs: Differential) -> None:
    assert_covers(node_runs.direct, SCENARIOS)
