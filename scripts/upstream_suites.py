#!/usr/bin/env python3
"""Run a client library's own test suite directly against a private server and through the proxy.

    .venv/bin/python scripts/upstream_suites.py django
    .venv/bin/python scripts/upstream_suites.py pymysql sqlalchemy --tests test/dialect/mysql
    .venv/bin/python scripts/upstream_suites.py mysql-connector-python -k cursor
    .venv/bin/python scripts/upstream_suites.py --list

For each suite: ``pip download --no-binary :all: --no-deps NAME==VERSION`` fetches the library's sdist
from PyPI, it is unpacked into a cache directory with a virtualenv of its own holding the suite's test
dependencies (both kept for the next run), a private server starts (tests/mariadb_server.py, the
suite's server, chosen by ``MYSQL_TEST_SERVER``) with a proxy in front of it (pool of 4 by default,
bench/_server.py), and the suite runs twice: once against the server, once against the proxy. The
script prints the counts of both runs and the tests that fail only through the proxy, by test id,
and exits 1 when there is any.

Cache: ``~/.cache/mysql-pool-proxy/upstream`` (``MPP_UPSTREAM_CACHE`` moves it; delete a suite's
directory there to unpack and install it afresh). Each run's full output is kept there too
(``<suite>/<target>.log``); the script prints the paths.

Some suites are long: ``--tests`` names test modules / paths (what the suite's own runner takes),
``-k`` filters by name as pytest's ``-k`` does (Django's runner has the same option). Each suite has
a default selection, printed by ``--list``, sized for a 2-CPU machine; ``--all`` runs everything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "bench"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from _server import Proxy, describe_source, proxy_source  # noqa: E402
from mariadb_server import MariaDB, ServerError, find_binary  # noqa: E402

CACHE = Path(os.environ.get("MPP_UPSTREAM_CACHE") or Path.home() / ".cache" / "mysql-pool-proxy" / "upstream")
HOST = "127.0.0.1"
USER, PASSWORD = "root", ""


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class Outcome:
    """One run of a suite: test ids by result, and how the run ended."""

    passed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)  # failures and errors
    skipped: set[str] = field(default_factory=set)
    returncode: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    note: str = ""

    def counts(self) -> str:
        text = f"{len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped"
        if self.timed_out:
            text += ", TIMED OUT"
        return text + f" ({self.seconds:.0f} s)"


def read_junit(path: Path) -> Outcome:
    """pytest's --junitxml: one testcase element per test, a failure/error/skipped child when not passed."""
    out = Outcome()
    if not path.exists():
        out.note = "no junit file: the run ended before pytest wrote it"
        return out
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            out.failed.add(tid)
        elif "skipped" in kinds:
            out.skipped.add(tid)
        else:
            out.passed.add(tid)
    out.passed -= out.failed  # a test that passed and then erred in teardown counts as failed
    return out


# unittest's verbose lines: "test_x (module.Class.test_x) ... ok" (Python 3.11+ puts the full id in the
# parentheses), with the docstring's first line before the "..." when the test has one; the final
# report's "ERROR: test_x (module.Class.test_x)" headers name the failures.
_UT_LINE = re.compile(r"^(\w+) \(([\w.]+)\)(?:\n[^\n]*?)? \.\.\. (ok|FAIL|ERROR|skipped|expected failure|unexpected success)",
                      re.M)
_UT_HEADER = re.compile(r"^(?:FAIL|ERROR|UNEXPECTED SUCCESS): (\w+) \(([\w.]+)\)", re.M)
# Connector/Python's runner prints the bare id: "cursor.MySQLCursorTests.test_x ... ok", "FAIL: cursor.M...".
_UT_BARE_LINE = re.compile(r"^([\w]+(?:\.[\w]+)+) \.\.\. (ok|FAIL|ERROR|skipped|expected failure|unexpected success)",
                           re.M)
_UT_BARE_HEADER = re.compile(r"^(?:FAIL|ERROR|UNEXPECTED SUCCESS): ([\w]+(?:\.[\w]+)+)(?: \(.*\))?$", re.M)  # (subtest)


def _ut_id(name: str, paren: str) -> str:
    return paren if paren.endswith("." + name) else f"{paren}.{name}"


def read_unittest(text: str) -> Outcome:
    """Results from a unittest runner's output at verbosity 2."""
    out = Outcome()
    for m in _UT_LINE.finditer(text):
        tid, result = _ut_id(m.group(1), m.group(2)), m.group(3)
        if result in ("ok", "expected failure"):
            out.passed.add(tid)
        elif result == "skipped":
            out.skipped.add(tid)
        else:
            out.failed.add(tid)
    for m in _UT_BARE_LINE.finditer(text):
        tid, result = m.group(1), m.group(2)
        (out.passed if result in ("ok", "expected failure") else out.skipped if result == "skipped"
         else out.failed).add(tid)
    headers = [_ut_id(m.group(1), m.group(2)) for m in _UT_HEADER.finditer(text)]
    for tid in headers + _UT_BARE_HEADER.findall(text):  # setUpClass errors, results printed apart from their line
        out.failed.add(tid)
        out.passed.discard(tid)
    return out


# --------------------------------------------------------------------------- suites


@dataclass(slots=True)
class Target:
    """Where a run's clients connect: the server itself or the proxy."""

    name: str  # "direct" or "proxy"
    host: str
    port: int


@dataclass(slots=True)
class Suite:
    """How to fetch, install, prepare the server for, and run one library's test suite."""

    name: str
    pypi: str
    version: str
    why_version: str
    deps: list[str]  # pip requirements of the suite's virtualenv ("{sdist}": the unpacked sdist itself)
    default_tests: list[str]
    setup_sql: list[str]
    command: Callable[[Suite, Path, Target, list[str], list[str], Path], tuple[list[str], dict[str, str], Path]]
    results: str  # "junit" or "unittest"
    server_tls: bool = False
    timezones: bool = False
    exclude: list[str] = field(default_factory=list)  # test ids left out by default, with the reason in notes
    notes: str = ""

    def src(self) -> Path:
        return CACHE / self.name / f"src-{self.version}"

    def venv(self) -> Path:
        return CACHE / self.name / f"venv-{self.version}"

    def python(self) -> str:
        return str(self.venv() / "bin" / "python")


def _pytest(suite: Suite, tests: list[str], k: list[str], exclude: list[str], junit: Path) -> list[str]:
    cmd = [suite.python(), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", f"--junitxml={junit}", *tests]
    if k:
        cmd += ["-k", " or ".join(f"({e})" for e in k)]
    for e in exclude:
        cmd += ["--deselect", e]
    return cmd


def _pymysql(s: Suite, src: Path, t: Target, tests: list[str], k: list[str], junit: Path) -> tuple[list[str], dict[str, str], Path]:
    # PyMySQL's tests read their connection settings from pymysql/tests/databases.json.
    common = {"host": t.host, "port": t.port, "user": USER, "passwd": PASSWORD}
    (src / "pymysql" / "tests" / "databases.json").write_text(json.dumps([
        {**common, "db": "test1", "use_unicode": True, "local_infile": True},
        {**common, "db": "test2"},
    ]))
    return _pytest(s, tests, k, s.exclude, junit), {}, src


def _mysqlclient(s: Suite, src: Path, t: Target, tests: list[str], k: list[str], junit: Path) -> tuple[list[str], dict[str, str], Path]:
    cnf = src / "tests" / f"{t.name}.cnf"  # configdb.py reads the option file TESTDB names
    cnf.write_text(f"[MySQLdb-tests]\nhost = {t.host}\nport = {t.port}\nuser = {USER}\n"
                   f"password = {PASSWORD}\ndatabase = mysqldb_test\ndefault-character-set = utf8mb4\n")
    return _pytest(s, tests, k, s.exclude, junit), {"TESTDB": cnf.name}, src


def _aiomysql(s: Suite, src: Path, t: Target, tests: list[str], k: list[str], junit: Path) -> tuple[list[str], dict[str, str], Path]:
    cmd = _pytest(s, tests, k, s.exclude, junit) + [f"--mysql-address=tcp={t.host}:{t.port}"]
    return cmd, {"MYSQL_ROOT_PASSWORD": PASSWORD}, src


def _sqlalchemy(s: Suite, src: Path, t: Target, tests: list[str], k: list[str], junit: Path) -> tuple[list[str], dict[str, str], Path]:
    uri = f"mysql+mysqldb://{USER}:{PASSWORD}@{t.host}:{t.port}/test?charset=utf8mb4"
    cmd = _pytest(s, tests, k, s.exclude, junit) + [f"--dburi={uri}", "--maxfail=100000"]
    return cmd, {}, src


# Connector/Python's unittests.py has no option to leave one test out: this wrapper drops the
# excluded ids from what its loader returns, then runs the script as usual.
_CONNECTOR_WRAPPER = """
import sys, unittest
excluded = set(sys.argv[1].split(",")) - {""}
def drop(suite):
    kept = unittest.TestSuite()
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            kept.addTest(drop(t))
        elif t.id() not in excluded:
            kept.addTest(t)
    return kept
original = unittest.TestLoader.loadTestsFromNames
unittest.TestLoader.loadTestsFromNames = lambda self, names, module=None: drop(original(self, names, module))
sys.argv = ["unittests.py"] + sys.argv[2:]
import unittests
unittests.main()
"""


def _connector(s: Suite, src: Path, t: Target, tests: list[str], k: list[str], junit: Path) -> tuple[list[str], dict[str, str], Path]:
    cmd = [s.python(), "-c", _CONNECTOR_WRAPPER, ",".join(s.exclude), "--use-external-server", "--skip-install",
           f"--host={t.host}", f"--port={t.port}", f"--user={USER}", f"--password={PASSWORD}", "--verbosity=2"]
    names = tests
    if k or names:  # module names as --help-tests lists them (cursor, bugs ...), -k adds patterns
        cmd.append("--test-regex=^(" + "|".join([*(re.escape(n) + "$" for n in names), *k]) + ")")
    return cmd, {}, src


DJANGO_SETTINGS = """\
# Written by scripts/upstream_suites.py: Django's own test settings (tests/test_sqlite.py) on MySQL.
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.mysql", "HOST": "{host}", "PORT": "{port}",
        "USER": "{user}", "PASSWORD": "{password}", "NAME": "django_default",
        "OPTIONS": {{"charset": "utf8mb4"}}, "TEST": {{"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_general_ci"}},
    }},
    "other": {{
        "ENGINE": "django.db.backends.mysql", "HOST": "{host}", "PORT": "{port}",
        "USER": "{user}", "PASSWORD": "{password}", "NAME": "django_other",
        "OPTIONS": {{"charset": "utf8mb4"}}, "TEST": {{"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_general_ci"}},
    }},
}}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
"""


def _django(s: Suite, src: Path, t: Target, tests: list[str], k: list[str], junit: Path) -> tuple[list[str], dict[str, str], Path]:
    settings = src / "tests" / f"upstream_{t.name}_settings.py"
    settings.write_text(DJANGO_SETTINGS.format(host=t.host, port=t.port, user=USER, password=PASSWORD))
    parallel = os.environ.get("DJANGO_TEST_PARALLEL", "1")
    cmd = [s.python(), "runtests.py", f"--settings={settings.stem}", "--noinput", "-v", "2", f"--parallel={parallel}",
           *(tests)]
    for e in k:
        cmd += ["-k", e]
    return cmd, {}, src / "tests"


SUITES = {
    s.name: s
    for s in (
        Suite(
            "django", "Django", "5.2.20", "the version the project's tests use",
            ["{sdist}", "mysqlclient", "tblib"],
            ["transactions", "transaction_hooks", "select_for_update", "backends", "timezones", "basic",
             "queries", "expressions", "db_functions", "datetimes", "dates", "model_fields", "update", "delete",
             "get_or_create", "bulk_create", "introspection", "schema", "migrations", "aggregation", "lookup",
             "raw_query", "custom_lookups", "test_utils", "fixtures", "serializers", "admin_views", "auth_tests",
             "sessions_tests", "cache", "many_to_one", "many_to_many", "one_to_one", "inspectdb"],
            [], _django, "unittest", timezones=True,
            notes="tests/runtests.py with settings pointing at the server (mysql backend, mysqlclient); "
                  "DJANGO_TEST_PARALLEL sets --parallel (default 1)",
        ),
        Suite(
            "pymysql", "PyMySQL", "0.10.1",
            "the newest PyMySQL whose sdist holds its test suite (1.0 and later ship tests/test_auth.py only)",
            ["pytest", "cryptography"], ["pymysql/tests"], ["CREATE DATABASE test1", "CREATE DATABASE test2"],
            _pymysql, "junit", notes="pytest over pymysql/tests, run from the sdist (the PyMySQL under test)",
        ),
        Suite(
            "mysqlclient", "mysqlclient", "2.3.2", "the version the project's tests use",
            ["{sdist}", "pytest"], ["tests"], ["CREATE DATABASE mysqldb_test CHARACTER SET utf8mb4"],
            _mysqlclient, "junit", notes="pytest over tests/ against the built sdist",
        ),
        Suite(
            "aiomysql", "aiomysql", "0.3.2", "the newest release",
            # Its requirements-dev.txt pins: with pytest 9 and PyMySQL 1.2 some of its tests fail directly.
            ["{sdist}", "pytest==8.4.2", "PyMySQL==1.1.2", "uvloop==0.22.1", "SQLAlchemy==1.3.24"], ["tests"], [],
            _aiomysql, "junit", server_tls=True,
            notes="pytest over tests/ with --mysql-address; its conftest insists on TLS over TCP, so the server "
                  "and the proxy offer TLS with the suite's own certificates (tests/ssl_resources)",
        ),
        Suite(
            "sqlalchemy", "SQLAlchemy", "2.1.9", "the version the project's tests use",
            ["pytest", "pytest-xdist", "mysqlclient", "typing_extensions", "greenlet"],
            ["test/dialect/mysql", "test/engine/test_transaction.py", "test/engine/test_reconnect.py",
             "test/orm/test_transaction.py", "test/sql/test_types.py", "test/base/test_tutorials.py"],
            ["CREATE DATABASE test CHARACTER SET utf8mb4", "CREATE DATABASE test_schema CHARACTER SET utf8mb4",
             "CREATE DATABASE test_schema_2 CHARACTER SET utf8mb4"],
            _sqlalchemy, "junit", notes="pytest with --dburi mysql+mysqldb:// from the sdist's lib/",
        ),
        Suite(
            "mysql-connector-python", "mysql-connector-python", "26.10.0", "the version the project's tests use",
            ["{sdist}"], [], [], _connector, "unittest",
            notes="unittests.py --use-external-server (pure Python; the C extension needs MySQL's libmysqlclient)",
        ),
    )
}


# --------------------------------------------------------------------------- preparing a suite


def log(msg: str) -> None:
    print(f"[upstream] {msg}", file=sys.stderr, flush=True)


def run_checked(cmd: Sequence[str], **kw: Any) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {shlex.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def _is_sdist_of(archive: Path, suite: Suite) -> bool:
    """``archive`` is NAME-VERSION.tar.gz of the suite (PyPI spells names with - _ . and any case)."""
    dist, _, version = archive.name.removesuffix(".tar.gz").rpartition("-")
    return re.sub(r"[-_.]+", "_", dist).lower() == re.sub(r"[-_.]+", "_", suite.pypi).lower() and version == suite.version


def unpack(suite: Suite) -> Path:
    """The suite's sdist, downloaded from PyPI and unpacked (once; kept in the cache)."""
    src = suite.src()
    if (src / ".unpacked").exists():
        return src
    downloads = CACHE / "sdists"
    downloads.mkdir(parents=True, exist_ok=True)
    log(f"downloading the {suite.pypi} {suite.version} sdist from PyPI")
    run_checked([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                 "-d", str(downloads), f"{suite.pypi}=={suite.version}"])
    archives = [p for p in downloads.glob("*.tar.gz") if _is_sdist_of(p, suite)]
    if not archives:
        raise SystemExit(f"pip downloaded no {suite.pypi}-{suite.version}.tar.gz into {downloads}")
    shutil.rmtree(src, ignore_errors=True)
    tmp = src.with_name(src.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archives[0]) as tar:
        tar.extractall(tmp)  # noqa: S202 - a PyPI sdist; Python 3.11.2 has no extraction filter
    (top,) = tmp.iterdir()
    top.rename(src)
    tmp.rmdir()
    (src / ".unpacked").write_text(archives[0].name + "\n")
    return src


def install(suite: Suite, src: Path) -> None:
    """The suite's own virtualenv with its test dependencies (once; kept in the cache)."""
    venv = suite.venv()
    marker = venv / ".installed"
    deps = [str(src) if d == "{sdist}" else d for d in suite.deps]
    if marker.exists() and marker.read_text() == "\n".join(deps):
        return
    log(f"creating {venv} with {', '.join(suite.deps)}")
    shutil.rmtree(venv, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    run_checked([base, "-m", "venv", str(venv)])
    run_checked([suite.python(), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run_checked([suite.python(), "-m", "pip", "install", "-q", *deps])
    marker.write_text("\n".join(deps))


# --------------------------------------------------------------------------- running


def prepare_server(db: MariaDB, suite: Suite) -> None:
    for stmt in suite.setup_sql:
        db.sql(stmt)
    if suite.timezones:  # Django's time-zone tests need the named zones (CONVERT_TZ ... 'Europe/Paris')
        tzinfo, client = timezone_tools(db)
        sql = subprocess.run([tzinfo, "/usr/share/zoneinfo"], capture_output=True, check=True).stdout
        r = subprocess.run([client, "--no-defaults", "-S", db.socket, "-uroot", "mysql"], input=sql, capture_output=True)
        if r.returncode != 0:
            raise SystemExit(f"loading the time zones failed: {r.stderr.decode(errors='replace')[-2000:]}")


def timezone_tools(db: MariaDB) -> tuple[str, str]:
    """The server's own tzinfo-to-sql and client (a fetched server's from its prefix: MySQL's differ)."""
    if db.bins is not None and db.bins.prefix is not None and db.bins.client:
        for name in ("mariadb-tzinfo-to-sql", "mysql_tzinfo_to_sql"):
            if (db.bins.prefix / "bin" / name).exists():
                return str(db.bins.prefix / "bin" / name), db.bins.client
    tzinfo = find_binary("mariadb-tzinfo-to-sql", "mysql_tzinfo_to_sql")
    client = find_binary("mariadb", "mysql")
    if not tzinfo or not client:
        raise SystemExit("mariadb-tzinfo-to-sql / mariadb not found: apt-get install mariadb-server mariadb-client")
    return tzinfo, client


def server_tls_files(suite: Suite, src: Path) -> tuple[str, str, str] | None:
    if not suite.server_tls:
        return None
    ssl_dir = src / "tests" / "ssl_resources" / "ssl"
    return str(ssl_dir / "ca.pem"), str(ssl_dir / "server-cert.pem"), str(ssl_dir / "server-key.pem")


def run_once(suite: Suite, src: Path, target: Target, tests: list[str], k: list[str], timeout: float) -> Outcome:
    out_dir = CACHE / suite.name
    junit = out_dir / f"{target.name}.xml"
    junit.unlink(missing_ok=True)
    logfile = out_dir / f"{target.name}.log"
    cmd, env_extra, cwd = suite.command(suite, src, target, tests, k, junit)
    env = {k2: v for k2, v in os.environ.items() if k2 not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(env_extra, PYTHONUNBUFFERED="1")
    log(f"{suite.name} {target.name} ({target.host}:{target.port}): {shlex.join(cmd)[:300]}  > {logfile}")
    started = time.monotonic()
    timed_out = False
    with open(logfile, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # a timeout, or ^C: the suite's processes go with the run
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    text = logfile.read_text(errors="replace")
    outcome = read_junit(junit) if suite.results == "junit" else read_unittest(text)
    outcome.returncode, outcome.seconds, outcome.timed_out = proc.returncode, time.monotonic() - started, timed_out
    if not (outcome.passed or outcome.failed or outcome.skipped):
        outcome.note = outcome.note or "no test results; tail of the log:\n" + "\n".join(text.splitlines()[-30:])
    return outcome


def reread(suite: Suite) -> dict[str, Any]:
    """The report of the last run, read again from its logs (after a change to how they are read)."""
    outcomes = {}
    for name in ("direct", "proxy"):
        logfile = CACHE / suite.name / f"{name}.log"
        if logfile.exists():
            o = (read_junit(CACHE / suite.name / f"{name}.xml") if suite.results == "junit"
                 else read_unittest(logfile.read_text(errors="replace")))
            outcomes[name] = o
    proxy_log = CACHE / suite.name / "mysql-pool-proxy.log"
    return report(suite, outcomes, proxy_log.read_text(errors="replace").count("Traceback") if proxy_log.exists() else 0)


def run_suite(suite: Suite, args: argparse.Namespace) -> dict[str, Any]:
    src = unpack(suite)
    install(suite, src)
    if args.exclude:
        suite.exclude = [*suite.exclude, *args.exclude]
    tests = [] if args.all else (args.tests or suite.default_tests)
    if args.all and suite.name == "pymysql":
        tests = suite.default_tests
    outcomes: dict[str, Outcome] = {}
    db = MariaDB.launch(prefix="mpp-upstream-", parent="/tmp", tls_files=server_tls_files(suite, src))
    try:
        prepare_server(db, suite)
        extra: dict[str, Any] = {}
        if suite.server_tls:
            ca, cert, key = server_tls_files(suite, src)  # type: ignore[misc]
            extra = {"listen": {"tls_cert": cert, "tls_key": key}, "backend": {"tls": "required"}}
        with proxy_source(args.proxy_rev) as rev_root, \
                Proxy(db, USER, PASSWORD, pool=args.pool, log_level="info", extra=extra,
                      src_root=args.proxy_src or rev_root) as proxy:
            source = f"proxy/ from {args.proxy_src}" if args.proxy_src else describe_source(args.proxy_rev)
            log(f"{source}, pool of {args.pool}, server {db.version}")
            targets = [Target("direct", db.host, db.port), Target("proxy", proxy.host, proxy.port)]
            for target in targets:
                if args.only and target.name != args.only:
                    continue
                outcomes[target.name] = run_once(suite, src, target, tests, args.k, args.timeout)
                if not proxy.alive:
                    raise SystemExit(f"the proxy exited during the run:\n{proxy.log()[-4000:]}")
            tracebacks = proxy.log().count("Traceback")
            (CACHE / suite.name / "mysql-pool-proxy.log").write_text(proxy.log())
    finally:
        db.remove()
    return report(suite, outcomes, tracebacks)


def report(suite: Suite, outcomes: dict[str, Outcome], tracebacks: int) -> dict[str, Any]:
    print(f"\n== {suite.name} {suite.version} ({suite.notes})")
    for name, o in outcomes.items():
        print(f"   {name:7s} {o.counts()}  log: {CACHE / suite.name / (name + '.log')}")
        if o.note:
            print("   " + o.note.replace("\n", "\n   "))
    result: dict[str, Any] = {"suite": suite.name, "version": suite.version,
                              "runs": {n: {"passed": len(o.passed), "failed": len(o.failed), "skipped": len(o.skipped),
                                           "seconds": round(o.seconds), "timed_out": o.timed_out}
                                       for n, o in outcomes.items()}}
    if "direct" in outcomes and "proxy" in outcomes:
        direct, proxied = outcomes["direct"], outcomes["proxy"]
        only_proxy = sorted(proxied.failed - direct.failed)
        only_direct = sorted(direct.failed - proxied.failed)
        missing = sorted((direct.passed | direct.failed) - (proxied.passed | proxied.failed | proxied.skipped))
        print(f"   fail only through the proxy: {len(only_proxy)}")
        for tid in only_proxy:
            print(f"     {tid}")
        if only_direct:
            print(f"   fail only direct: {len(only_direct)}")
            for tid in only_direct:
                print(f"     {tid}")
        if missing:
            print(f"   ran direct but not through the proxy: {len(missing)} (first: {missing[0]})")
        result.update(only_proxy=only_proxy, only_direct=only_direct, missing=len(missing))
    if tracebacks:
        print(f"   the proxy logged {tracebacks} Traceback(s): {CACHE / suite.name / 'mysql-pool-proxy.log'}")
    result["proxy_tracebacks"] = tracebacks
    (CACHE / suite.name / "result.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suites", nargs="*", help=f"one or more of: {', '.join(SUITES)}")
    ap.add_argument("--list", action="store_true", help="list the suites, versions and default selections")
    ap.add_argument("--tests", nargs="+", default=[], help="test modules / paths to run instead of the default selection")
    ap.add_argument("--all", action="store_true", help="the whole suite instead of the default selection")
    ap.add_argument("-k", action="append", default=[], help="only tests whose names match (repeatable)")
    ap.add_argument("--exclude", action="append", default=[], help="leave this test id out (repeatable)")
    ap.add_argument("--only", choices=("direct", "proxy"), help="one run only")
    ap.add_argument("--install-only", action="store_true", help="download and install the suites, run nothing")
    ap.add_argument("--report-only", action="store_true", help="report the last run again from its logs")
    ap.add_argument("--proxy-rev", metavar="REV", help="run proxy/ as of this git revision (default: the working tree)")
    ap.add_argument("--proxy-src", metavar="DIR", type=Path, help="run proxy/ from this directory (DIR/proxy)")
    ap.add_argument("--pool", type=int, default=4, help="the proxy's pool.max_connections (default 4)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one run may take (default 3600)")
    ap.add_argument("--version", dest="versions", action="append", default=[], metavar="SUITE=VERSION",
                    help="another release of a suite's library")
    args = ap.parse_args(argv)
    # SIGTERM (and SIGINT, which a shell's background job ignores) end a run through its cleanup:
    # the suite's processes, the proxy and the server go with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for spec in args.versions:
        name, _, version = spec.partition("=")
        SUITES[name].version = version
    if args.list or not args.suites:
        for s in SUITES.values():
            print(f"{s.name:24s} {s.pypi}=={s.version} ({s.why_version})\n{'':24s} {s.notes}\n"
                  f"{'':24s} default selection: {' '.join(s.default_tests) or 'everything'}"
                  + (f"\n{'':24s} excluded: {' '.join(s.exclude)}" if s.exclude else ""))
        return 0 if args.list else 2
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        ap.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    bad = 0
    try:
        for name in args.suites:
            (CACHE / name).mkdir(exist_ok=True)
            if args.install_only:
                install(SUITES[name], unpack(SUITES[name]))
                continue
            if args.report_only:
                bad += len(reread(SUITES[name]).get("only_proxy", []))
                continue
            result = run_suite(SUITES[name], args)
            timed_out = any(run["timed_out"] for run in result["runs"].values())
            bad += len(result.get("only_proxy", [])) + result.get("missing", 0) + timed_out
    except ServerError as e:
        raise SystemExit(str(e)) from None
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
