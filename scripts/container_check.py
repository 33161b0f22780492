"""Build the container image and check that it does what the Dockerfile promises.

    .venv/bin/python scripts/container_check.py [--network host] [--keep-image]

Needs a running Docker daemon, and the MariaDB server binaries as the tests do. Not part of the
test suite: CI machines need not run Docker. Against a private MariaDB (tests/mariadb_server.py,
a temp dir and a free port), it checks, in this order:

1. the image builds;
2. the container turns healthy (the HEALTHCHECK, ``mysql-pool-proxy health``);
3. the proxy runs as uid 10001, not root;
4. queries go through, and 6 concurrent clients over ``max_connections: 2`` never give the server
   more than 2 connections of the account;
5. a config replaced in the mounted directory (write and rename, as editors do) is read on
   ``docker kill -s HUP``;
6. ``docker stop`` drains and the container exits with status 0.

The container uses the host's network (``--network host``, the default), so the proxy listens on
127.0.0.1 only and reaches the private server there. Exit status 0 when every step passed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
from mariadb_server import MariaDB, free_port  # noqa: E402

IMAGE = "mysql-pool-proxy:check"
UID = 10001  # the Dockerfile's user


class CheckFailed(Exception):
    pass


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise CheckFailed(f"docker {' '.join(args[:2])} failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")
    return r.stdout


def container_log(name: str) -> str:
    """What the proxy in the container wrote (it logs to stderr)."""
    r = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


def wait_for(what: str, test: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not within {timeout:g} s")
        time.sleep(0.5)


def write_config(directory: Path, data: dict[str, Any]) -> None:
    """Replace config.yaml the way editors do: a new file renamed over the old one."""
    tmp = directory / ".config.yaml.new"
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    if os.geteuid() == 0:
        os.chown(tmp, UID, -1)
        tmp.chmod(0o600)
    else:
        tmp.chmod(0o644)  # a throwaway password; the container's user must read it
    tmp.rename(directory / "config.yaml")


def run_checks(db: MariaDB, conf_dir: Path, name: str, network: str) -> None:
    password = secrets.token_urlsafe(12)
    db.make_account("app", password, "appdb")
    port = free_port()
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "backend": {"host": db.host, "port": db.port, "user": "app", "password": password},
        "pool": {"max_connections": 2, "queue_timeout": 20, "connect_timeout": 5},
        "shutdown_timeout": 10,
    }
    write_config(conf_dir, config)

    docker("build", "--network", network, "-t", IMAGE, str(REPO_ROOT), timeout=900)
    print("ok: 1. the image builds")

    docker("run", "-d", "--name", name, "--network", network, "--stop-timeout", "40",
           "-v", f"{conf_dir}:/etc/mysql-pool-proxy:ro", "--health-interval", "1s", IMAGE)
    wait_for("healthy", lambda: docker("inspect", "--format", "{{.State.Health.Status}}", name).strip() == "healthy", 60)
    print("ok: 2. the container turns healthy")

    uid = docker("exec", name, "id", "-u").strip()
    if uid != str(UID):
        raise CheckFailed(f"the proxy runs as uid {uid}, not {UID}")
    print(f"ok: 3. it runs as uid {uid}")

    def connect() -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=port, user="app", password=password, database="appdb",
                               autocommit=True, connect_timeout=10)

    with connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), 6 * 7")
        if cur.fetchone() != ("app@%", 42):
            raise CheckFailed("a query through the container gave a wrong answer")
    errors: list[BaseException] = []
    peak = 0
    stop = threading.Event()

    def client() -> None:
        try:
            with connect() as conn, conn.cursor() as cur:
                for _ in range(50):
                    cur.execute("SELECT SLEEP(0.002)")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            n = db.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'")[0][0]
            peak = max(peak, int(n))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=client) for _ in range(6)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    stop.set()
    sampler.join()
    if errors:
        raise CheckFailed(f"{len(errors)} of 6 clients failed: {errors[0]!r}")
    if not 1 <= peak <= 2:
        raise CheckFailed(f"the server saw {peak} connections of the account; the cap is 2")
    print(f"ok: 4. queries go through; 6 clients, at most {peak} server connections (cap 2)")

    config["pool"]["max_connections"] = 3
    write_config(conf_dir, config)
    docker("kill", "-s", "HUP", name)
    wait_for("reload", lambda: "config reloaded: max_connections 3" in container_log(name), 15)
    print("ok: 5. a replaced config is read on SIGHUP")

    docker("stop", name, timeout=60)
    state = json.loads(docker("inspect", "--format", "{{json .State}}", name))
    log = container_log(name)
    if state["ExitCode"] != 0 or "stopped" not in log:
        raise CheckFailed(f"docker stop: exit code {state['ExitCode']}; log tail:\n{log[-2000:]}")
    print("ok: 6. docker stop drains and exits with status 0")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--network", default="host", help="network for the build and the container (default host)")
    ap.add_argument("--keep-image", action="store_true", help=f"keep the {IMAGE} image afterwards")
    args = ap.parse_args()
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        print("container_check: no running Docker daemon (docker info failed)", file=sys.stderr)
        return 2
    name = f"mpp-check-{os.getpid()}"
    conf_dir = Path(tempfile.mkdtemp(prefix="mpp-container-"))
    conf_dir.chmod(0o755)
    db = MariaDB.launch(prefix="mpp-container-db-")
    try:
        run_checks(db, conf_dir, name, args.network)
    except (CheckFailed, subprocess.TimeoutExpired, pymysql.MySQLError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        print(f"--- container log ---\n{container_log(name)[-3000:]}", file=sys.stderr)
        return 1
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        if not args.keep_image:
            subprocess.run(["docker", "rmi", IMAGE], capture_output=True)
        db.remove()
        shutil.rmtree(conf_dir, ignore_errors=True)
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
