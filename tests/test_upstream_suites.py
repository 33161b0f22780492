"""A CI-sized slice of client libraries' own test suites, run directly and through the proxy.

scripts/upstream_suites.py does the work (sdist from PyPI, its own virtualenv, a private server, a
proxy with a pool of 4); scripts/test.sh installs what it needs beforehand (--install-only). The
slice is what a pooler most easily gets wrong: transactions and savepoints (Django's atomic()),
on_commit hooks, SELECT ... FOR UPDATE, time zones, connection ids and KILL (PyMySQL). Every test
that passes directly must pass through the proxy, but for the intended differences below, which the
README lists with their reasons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "upstream_suites.py"

INTENDED = {
    # The proxy's greeting offers caching_sha2_password (listen.auth_plugin), the account uses mysql_native_password.
    "pymysql.tests.test_connection.TestAuthentication::test_plugin",
    # wait_timeout=1 then 2 s idle: the server drops the link, the proxy replaces it unseen.
    "pymysql.tests.test_connection.TestConnection::test_connection_gone_away",
}

SLICES = {
    "pymysql": [],  # the whole suite: 170 tests, seconds
    "django": ["--tests", "transactions", "transaction_hooks", "select_for_update", "timezones", "get_or_create",
               "backends", "basic", "queries.test_bulk_update"],
}


def cache_dir() -> str:
    return os.environ.get("MPP_UPSTREAM_CACHE") or os.path.expanduser("~/.cache/mysql-pool-proxy/upstream")


@pytest.mark.parametrize("suite", list(SLICES))
def test_suite_slice_passes_through_the_proxy_as_directly(suite: str) -> None:
    cmd = [sys.executable, str(SCRIPT), suite, *SLICES[suite], "--timeout", "900"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=2000, cwd=REPO_ROOT)
    output = r.stdout[-6000:] + r.stderr[-6000:]
    assert r.returncode in (0, 1), f"{' '.join(cmd)} failed ({r.returncode}):\n{output}"
    with open(os.path.join(cache_dir(), suite, "result.json")) as f:
        result = json.load(f)
    runs = result["runs"]
    assert runs["direct"]["passed"] > 0 and not runs["direct"]["timed_out"], output
    assert not runs["proxy"]["timed_out"], output
    assert result["missing"] == 0, f"tests that ran directly but not through the proxy:\n{output}"
    assert set(result["only_proxy"]) <= INTENDED, f"new failures through the proxy:\n{output}"
    assert result["proxy_tracebacks"] == 0, f"the proxy logged a Traceback:\n{output}"
