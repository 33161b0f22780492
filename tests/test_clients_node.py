"""node mysql2 through the proxy answers as it does straight.

The script is tests/clients/node/client.js (mysql2 from npm, installed by scripts/test.sh into
tests/clients/node/node_modules): query and execute with JSON, DATE and other types, OK packets
with their session-tracker entries (mysql2 asks for CLIENT_SESSION_TRACK and shows them as
``stateChanges``), multiple statements, stored procedures, a large result streamed, a pool of
4 connections, changeUser, compress. See tests/clients_harness.py for how it runs.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable

import pytest

from clients_harness import CLIENTS_DIR, Differential, assert_covers, cached_run, need
from conftest import SERVER, MariaDB, ProxyProcess

# The scripts read seq_1_to_N: MariaDB's sequence tables, views the suite makes on MySQL.

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
    if scenario == "errors" and SERVER.mysql:
        node_runs = _refused_by_the_proxy_at_once(node_runs)
    node_runs.check(scenario)


def _refused_by_the_proxy_at_once(runs: Differential) -> Differential:
    """The one step MySQL 9 and the proxy answer differently, checked on its own.

    MySQL answers a wrong caching_sha2_password scramble with "full authentication needed", which
    without TLS needs the server's RSA key: mysql2 refuses to fetch it (PUBLIC_KEY_RETRIEVAL_NOT_ALLOWED)
    before any password is checked. The proxy knows the password and refuses it with 1045 at once.
    The rest of the scenario is compared as usual.
    """
    step = "wrong password"
    direct = dict(runs.direct, errors=[s for s in runs.direct["errors"] if s[0] != step])
    via = dict(runs.via_proxy, errors=[s for s in runs.via_proxy["errors"] if s[0] != step])
    assert [s[1] for s in runs.direct["errors"] if s[0] == step] == [["PUBLIC_KEY_RETRIEVAL_NOT_ALLOWED", "(undefined)",
                                                                       "(undefined)"]]
    assert [s[1] for s in runs.via_proxy["errors"] if s[0] == step] == [["ER_ACCESS_DENIED_ERROR", 1045, "28000"]]
    return dataclasses.replace(runs, direct=direct, via_proxy=via)


def test_mysql2_ran_every_scenario(node_runs: Differential) -> None:
    assert_covers(node_runs.direct, SCENARIOS)
