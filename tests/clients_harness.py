"""Run a non-Python client's scenario script straight to the server and through a proxy.

The scripts under tests/clients/ (PHP, node, Go) print one JSON object: for each scenario, the
list of what it saw, ``[[label, value], ...]``. ``Differential.run`` runs one script twice: first
straight to the suite's MariaDB, then through a proxy with a small pool, while other clients
(``test_drivers.Noise``) keep leasing the same links with a very different session state, so
every replay of session state is exercised. Each database the scripts use is made anew before
each run, so both runs start from the same tables. The tests then compare the two outputs
scenario by scenario (one test each).

A client or library that is not installed fails the test with what to install (scripts/test.sh
installs all of them); it is never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import APP_PASSWORD, APP_USER, MariaDB, ProxyProcess
from test_drivers import Noise, grant_noise_db

CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
INSTALL = "run `bash scripts/test.sh`, which installs it"

Results = dict[str, list[list[Any]]]


def need(condition: bool, what: str) -> None:
    """Fail (never skip) when a client the test needs is missing."""
    if not condition:
        pytest.fail(f"{what} is not installed: {INSTALL}", pytrace=False)


def fresh_database(mariadb: MariaDB, name: str) -> None:
    """Drop and create ``name`` (the app account gets every right on it)."""
    mariadb.sql(f"DROP DATABASE IF EXISTS `{name}`")
    mariadb.sql(f"CREATE DATABASE `{name}`")
    mariadb.sql(f"GRANT ALL ON `{name}`.* TO %s@'%%'", (APP_USER,))


def run_script(cmd: Sequence[str], port: int, database: str, *, host: str = "127.0.0.1",
               env: dict[str, str] | None = None, timeout: float = 180.0, cwd: Path | None = None) -> Results:
    """Run a client script against host:port; its JSON, or a failure with its output."""
    full_env = {
        **os.environ,
        "DB_HOST": host,
        "DB_PORT": str(port),
        "DB_USER": APP_USER,
        "DB_PASSWORD": APP_PASSWORD,
        "DB_NAME": database,
        "TZ": "UTC",
        **(env or {}),
    }
    try:
        r = subprocess.run(list(cmd), env=full_env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd[0]} did not finish in {timeout:.0f} s (port {port}); stderr:\n{e.stderr}", pytrace=False)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {r.returncode} (port {port}):\n{r.stderr[-4000:]}\n{r.stdout[-2000:]}",
                    pytrace=False)
    try:
        out = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        pytest.fail(f"{cmd[0]} printed no JSON ({e}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}", pytrace=False)
    assert isinstance(out, dict)
    return out


@dataclass
class Differential:
    """One client script's results, straight and through a proxy, kept for its scenario tests."""

    direct: Results
    via_proxy: Results
    proxy_log: str
    noise_errors: list[str] = field(default_factory=list)

    @classmethod
    def run(cls, mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess], cmd: Sequence[str],
            databases: Sequence[str], *, max_connections: int = 4, **kw: Any) -> Differential:
        for db in databases:
            fresh_database(mariadb, db)
        direct = run_script(cmd, mariadb.port, databases[0], **kw)
        for db in databases:
            fresh_database(mariadb, db)
        grant_noise_db(mariadb)
        p = proxy_factory({"pool": {"max_connections": max_connections}})
        noise = Noise(p)
        with noise:
            via = run_script(cmd, p.port, databases[0], **kw)
        noise.stop.set()
        return cls(direct, via, p.log(), noise.errors)

    def check(self, scenario: str) -> None:
        """The scenario saw the same through the proxy as straight, observation by observation."""
        assert not self.noise_errors, "the other clients saw wrong state:\n" + "\n".join(self.noise_errors[:10])
        assert scenario in self.direct, f"the script has no scenario {scenario!r} (it ran {sorted(self.direct)})"
        assert scenario in self.via_proxy, f"the run through the proxy has no scenario {scenario!r}"
        direct, via = self.direct[scenario], self.via_proxy[scenario]
        assert direct, f"{scenario}: the direct run observed nothing"
        assert direct[-1][0] != "exception" or via[-1][0] == "exception", (
            f"{scenario}: failed straight to the server, so it proves nothing: {direct[-1]}")
        for i, (d, v) in enumerate(zip(direct, via)):
            assert d[0] == v[0], (f"{scenario}: step {i} through the proxy: {json.dumps(v)[:3000]}\n"
                                  f"  straight: {json.dumps(d)[:3000]}{self._log()}")
            assert v[1] == d[1], (f"{scenario}, step {d[0]!r}:\n  proxy:  {json.dumps(v[1])[:3000]}\n"
                                  f"  direct: {json.dumps(d[1])[:3000]}{self._log()}")
        assert len(via) == len(direct), (
            f"{scenario}: {len(via)} observations through the proxy, {len(direct)} straight; "
            f"the last through the proxy: {via[-1:]}; straight: {direct[len(via):len(via) + 2]}{self._log()}")

    def _log(self) -> str:
        notable = [ln for ln in self.proxy_log.splitlines() if " WARNING " in ln or " ERROR " in ln]
        return "\n--- proxy warnings ---\n" + "\n".join(notable[-20:]) if notable else ""


def php_binary() -> str:
    php = shutil.which("php")
    need(php is not None, "php (Debian packages php8.2-cli php8.2-mysql)")
    assert php is not None
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, timeout=60).stdout.split()
    need("mysqli" in modules and "pdo_mysql" in modules, "PHP's mysqli / pdo_mysql (Debian package php8.2-mysql)")
    return php


_RUNS: dict[str, Differential | BaseException] = {}


def cached_run(key: str, make: Callable[[], Differential]) -> Differential:
    """One run per client script per pytest session, shared by its scenario tests.

    A run that failed fails every scenario test with the same message, without running again.
    """
    got = _RUNS.get(key)
    if got is None:
        try:
            got = make()
        except BaseException as e:  # noqa: BLE001 - pytest.fail's Failed is a BaseException
            got = e
        _RUNS[key] = got
    if isinstance(got, BaseException):
        raise got
    return got


def assert_covers(results: Results, scenarios: Sequence[str]) -> None:
    """The script ran exactly the scenarios the tests name: none added or lost unnoticed."""
    assert sorted(results) == sorted(scenarios)
