"""PHP-style requests, directly and through the proxy, in one run: requests/s and server statements per request.

    .venv/bin/python bench/php_requests.py [--workers 8] [--rounds 3] [--time 8] [--pool 8]
                                           [--proxy-rev REV] [--versus REV]

Each request is what a PHP page does with the database when it needs little of it: connect (no
persistent connection), ``SET NAMES utf8mb4``, ``SET AUTOCOMMIT=0``, ``SELECT 1``, close; ``--workers``
threads send them back to back (PyMySQL). Per phase it prints the requests/s and the statements the
server ran per request (``SHOW GLOBAL STATUS`` ``Questions``), direct and through the proxy (and,
with ``--versus``, through a second proxy: another revision of proxy/), alternating in rounds; then
the medians and the ratios to direct. The clients here are Python threads, so on a small machine the
requests/s say as much about PyMySQL's connect as about the server; the statement counts are exact.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pymysql  # noqa: E402
from _server import BenchError, MariaDB, Proxy, describe_source, private_mariadb, proxy_source  # noqa: E402

USER, PASSWORD, DB = "php", "php-secret", "phpdb"


def run_load(host: str, port: int, seconds: float, workers: int) -> int:
    """Requests completed by ``workers`` threads in ``seconds``."""
    done = [0] * workers
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        try:
            while time.monotonic() < stop:
                conn = pymysql.connect(host=host, port=port, user=USER, password=PASSWORD, database=DB,
                                       autocommit=None, connect_timeout=10,
                                       ssl_disabled=True)  # else PyMySQL loads the CA store on every connect (20 ms)
                with conn, conn.cursor() as cur:
                    cur.execute("SET NAMES utf8mb4")
                    cur.execute("SET AUTOCOMMIT=0")
                    cur.execute("SELECT 1")
                    cur.fetchall()
                done[i] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"{len(errors)} workers failed, the first with: {errors[0]!r}")
    return sum(done)


def questions(db: MariaDB) -> int:
    return int(dict(db.sql("SHOW GLOBAL STATUS LIKE 'Questions'"))["Questions"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--time", type=float, default=8, help="seconds per phase (default 8)")
    ap.add_argument("--pool", type=int, default=8, help="the proxy's max_connections (default 8)")
    ap.add_argument("--proxy-rev", metavar="REV", help="run proxy/ as of this git revision instead of the working tree")
    ap.add_argument("--versus", metavar="REV", help="also run proxy/ as of this revision in every round")
    args = ap.parse_args(argv)
    try:
        with contextlib.ExitStack() as stack:
            db = stack.enter_context(private_mariadb())
            db.sql(f"CREATE DATABASE {DB}")
            db.create_user(USER, PASSWORD, DB)
            sides: dict[str, tuple[str, int]] = {"direct": (db.host, db.port)}
            for label, rev in (("proxy", args.proxy_rev), ("proxy B", args.versus)):
                if label == "proxy B" and rev is None:
                    continue
                src = stack.enter_context(proxy_source(rev))
                proxy = stack.enter_context(Proxy(db, USER, PASSWORD, pool=args.pool, log_level="warning", src_root=src))
                sides[label] = (proxy.host, proxy.port)
                print(f"{label}: {describe_source(rev)}")
            print(f"MariaDB {db.version}; {args.workers} workers, {args.rounds} rounds x {args.time:g} s; pool {args.pool}")
            for host, port in sides.values():
                run_load(host, port, 1, args.workers)  # warm: logins cached, links open, SET NAMES learned
            results: dict[str, list[tuple[float, float]]] = {label: [] for label in sides}
            for r in range(1, args.rounds + 1):
                for label, (host, port) in sides.items():
                    q0, t0 = questions(db), time.monotonic()
                    n = run_load(host, port, args.time, args.workers)
                    elapsed, q1 = time.monotonic() - t0, questions(db)
                    # Minus the one SHOW STATUS of ours that the second count includes.
                    results[label].append((n / elapsed, (q1 - q0 - 1) / max(n, 1)))
                    print(f"round {r} {label:<8} {n / elapsed:8.1f} requests/s  "
                          f"{(q1 - q0 - 1) / max(n, 1):5.2f} statements/request", flush=True)
            direct = [rate for rate, _ in results["direct"]]
            print()
            for label, rows in results.items():
                ratio = statistics.median(rate / d for (rate, _), d in zip(rows, direct))
                print(f"{label:<8} {statistics.median(rate for rate, _ in rows):8.1f} requests/s (median), "
                      f"{ratio:.2f}x direct, {statistics.median(s for _, s in rows):.2f} statements/request")
    except BenchError as e:
        print(f"php_requests: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
