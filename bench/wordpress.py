"""WordPress page views per second through the proxy (account capped at 2) against direct, in one run.

    .venv/bin/python bench/wordpress.py [--clients 16] [--workers 8] [--rounds 3] [--time 15] [--posts 10]
                                        [--comment-every 10] [--proxy-nice -5] [--proxy-rev REV]
                                        [--versus REV_OR_DIR] [--no-capped-direct] [--profile] [--statements]

A real WordPress (Debian's ``wordpress`` package, theme twentytwentyone, PHP 8.2 mysqli) on
PHP's built-in server with ``--workers`` workers and opcache (tests/wordpress_site.py, the site the
tests use), a private MariaDB with two accounts on the site's database: ``wp_free`` without a
limit and ``wp_capped`` created ``MAX_USER_CONNECTIONS 2``, and the proxy with
``pool.max_connections: 2`` in front of ``wp_capped``. WordPress is installed and its posts added
directly, and every page is loaded once each way (opcache warm). Then ``--rounds`` rounds, each
``--time`` s directly on ``wp_free`` (the baseline: what the site does without a limit) and then
``--time`` s through the proxy: ``--clients`` HTTP clients loading home, posts, category, search
and feed, and posting a comment every ``--comment-every``-th request (all on one post the visitors
do not load, so the pages do not grow during the run). It prints, per phase, the
good page views/s (HTTP 200, rendered to the end), error pages, the CPU each process used per
request (the proxy's from /proc/PID/stat, utime + stime) and the statements the server ran per
request (SHOW GLOBAL STATUS ``Questions``), then the median of the per-round ratios (proxy page
views/s / the same round's direct). Last, one phase directly on ``wp_capped`` shows the problem
the proxy is for (1226 "Error establishing a database connection" pages).

mariadbd, the proxy and PHP each run in a session of their own, as services do (bench/README.md,
step 1 of run.py); the proxy's gets ``--proxy-nice`` (-5: the weight ``CPUWeight=300`` gives the
systemd unit). ``--versus`` adds a third phase to every round, through a second proxy (another
revision of proxy/, e.g. a change against HEAD in the same run). ``--profile`` adds one more proxy phase with py-spy attached to the proxy.
``--statements`` adds a short load each way with the server's general log on, and prints what the
server ran per request by kind: the application's statements, and what the proxy added (link
setup, COM_CHANGE_USER, session-state replays, read-backs).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _server import (  # noqa: E402
    BenchError,
    MariaDB,
    Proxy,
    cpu_times,
    describe_source,
    private_mariadb,
    proxy_source,
    set_cpu_share,
)

import wordpress_site as ws  # noqa: E402  (in tests/, which _server puts on the path)

DB = "wordpress"
FREE, FREE_PASSWORD = "wp_free", "wp-free-secret"
CAPPED, CAPPED_PASSWORD = "wp_capped", "wp-capped-secret"
CAPPED_B = "wp_capped_b"  # --versus: the second proxy's account, capped at 2 as well


@dataclass
class Phase:
    label: str
    load: ws.LoadResult
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds during the phase
    statements: int = 0  # the server's Questions during the phase
    bytes_sent: int = 0  # the server's Bytes_sent during the phase (what a proxy relays back)

    @property
    def requests(self) -> int:
        return len(self.load.pages) + len(self.load.comments)

    @property
    def rate(self) -> float:
        return self.load.good_pages / self.load.seconds if self.load.seconds else 0.0

    def per_request_ms(self, name: str) -> float:
        return 1000 * self.cpu.get(name, 0.0) / max(self.requests, 1)

    def line(self) -> str:
        comments = f", {len(self.load.comments)} comments ({len(self.load.bad_comments())} not redirected)"
        cpu = "  ".join(f"{n} {self.per_request_ms(n):.1f}" for n in ("php", "mariadbd", "proxy") if n in self.cpu)
        return (f"{self.label:<22} {self.rate:7.1f} good page views/s  {len(self.load.bad_pages):4d} error pages"
                f"{comments}; CPU ms/request: {cpu}; statements/request {self.statements / max(self.requests, 1):.1f}, "
                f"KB/request {self.bytes_sent / 1024 / max(self.requests, 1):.0f}")


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(sum(cpu_times(p)) for p in ps) for name, ps in pids.items()}


def _status(db: MariaDB) -> tuple[int, int]:
    """The server's (Questions, Bytes_sent) so far."""
    rows = dict(db.sql("SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Bytes_sent')"))
    return int(rows["Questions"]), int(rows["Bytes_sent"])


def run_phase(label: str, db: MariaDB, site: ws.WordPressSite, target: str, pages: list[ws.Page],
              content: ws.Content, args: argparse.Namespace, pids: dict[str, list[int]], seconds: float) -> Phase:
    before, (q0, b0) = _cpu(pids), _status(db)
    load = ws.run_load(site, target, pages, content.post_ids, clients=args.clients, seconds=seconds,
                       comment_every=args.comment_every, tag=f"{label}-{time.monotonic_ns()}")
    after, (q1, b1) = _cpu(pids), _status(db)
    # Minus the one SHOW STATUS of ours that the second count includes.
    phase = Phase(label, load, {n: after[n] - before[n] for n in pids}, q1 - q0 - 1, b1 - b0)
    print(phase.line(), flush=True)
    return phase


def profile_phase(db: MariaDB, site: ws.WordPressSite, pages: list[ws.Page], content: ws.Content,
                  args: argparse.Namespace, pids: dict[str, list[int]], proxy_pid: int) -> None:
    import run as sysbench_bench  # bench/run.py: the same py-spy handling as its --profile

    raw = Path("/tmp/mpp-bench-wordpress-profile.txt")
    prof = sysbench_bench.start_profiler(proxy_pid, int(args.time), raw, native=False)
    if prof is None:
        return
    run_phase("proxy (profiled)", db, site, "proxy", pages, content, args, pids, args.time)
    prof.wait(60)
    for line in sysbench_bench.summarize_profile(raw):
        print(line)


_LOG_LINE = re.compile(r"(?:\S+\s+[\d:]+)?\s+(\d+) (Query|Connect|Quit|Change user|Init DB|Ping|Reset connection|Prepare"
                       r"|Execute|Close stmt)\t(.*)")


def _statement_kind(command: str, text: str) -> str:
    """A general-log entry's kind: the application's own statements by verb, the proxy's by purpose."""
    if command != "Query":
        return command
    sql = " ".join(text.split())
    if sql.startswith("SET @@session."):
        return "SET @@session." + ", ".join(sorted(set(re.findall(r"@@session\.(\w+)", sql)))) + " (proxy: replay)"
    if sql.startswith("SELECT @@character_set_client"):
        return ("SELECT @@character_set_*, LAST_INSERT_ID() (proxy: read back after SET NAMES)" if "LAST_INSERT_ID" in sql
                else "SELECT @@character_set_*, @@wait_timeout ... (proxy: link setup)")
    if sql.startswith("SET session_track"):
        return "SET session_track_* (proxy: link setup)"
    return "app " + sql.split(" ", 1)[0].upper()


def statements_per_request(db: MariaDB, site: ws.WordPressSite, pages: list[ws.Page], content: ws.Content,
                           args: argparse.Namespace, sides: list[Side]) -> None:
    """The server's general log during a short load each way, counted by kind per request."""
    per: dict[str, dict[str, float]] = {}
    requests: dict[str, int] = {}
    for side in sides:
        log = site.base / f"general-{side.target}.log"
        db.sql("SET GLOBAL general_log_file = %s", (str(log),))
        db.sql("SET GLOBAL general_log = 1")
        load = ws.run_load(site, side.target, pages, content.post_ids, clients=args.clients, requests=10,
                           comment_every=args.comment_every, tag=f"log-{side.target}")
        db.sql("SET GLOBAL general_log = 0")
        requests[side.label] = n = max(len(load.pages) + len(load.comments), 1)
        counts = collections.Counter(
            _statement_kind(m.group(2), m.group(3))
            for m in map(_LOG_LINE.match, log.read_text(errors="replace").splitlines()) if m
        )
        per[side.label] = {k: c / n for k, c in counts.items()}
    labels = [side.label for side in sides]
    print(f"\nwhat the server ran per request ({', '.join(f'{requests[x]} requests {x}' for x in labels)}):")
    print(f"  {'':<78}" + "".join(f" {x:>8}" for x in labels))
    kinds = sorted(set().union(*per.values()), key=lambda k: (-per[labels[-1]].get(k, 0), k))
    for kind in kinds:
        print(f"  {kind[:78]:<78}" + "".join(f" {per[x].get(kind, 0):8.2f}" for x in labels))
    print(f"  {'total':<78}" + "".join(f" {sum(per[x].values()):8.2f}" for x in labels))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16, help="HTTP clients at once (default 16)")
    ap.add_argument("--workers", type=int, default=8, help="PHP_CLI_SERVER_WORKERS (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="direct/proxy rounds (default 3)")
    ap.add_argument("--time", type=float, default=15, help="seconds per phase (default 15)")
    ap.add_argument("--posts", type=int, default=10, help="posts on the site (default 10)")
    ap.add_argument("--comment-every", type=int, default=10, help="every N-th request posts a comment (0: none)")
    ap.add_argument("--proxy-nice", type=int, default=-5, help="autogroup nice of the proxy's session (default -5)")
    ap.add_argument("--proxy-rev", metavar="REV", help="run proxy/ as of this git revision instead of the working tree")
    ap.add_argument("--versus", metavar="REV_OR_DIR",
                    help="also run a second proxy in every round: proxy/ as of this git revision, or from this "
                         "directory (one holding proxy/), on an account of its own capped at 2")
    ap.add_argument("--no-capped-direct", action="store_true", help="skip the phase directly on the capped account")
    ap.add_argument("--profile", action="store_true", help="one more proxy phase with py-spy attached")
    ap.add_argument("--statements", action="store_true", help="count what the server runs per request, each way")
    args = ap.parse_args(argv)
    if args.posts < 2:
        ap.error("--posts must be at least 2 (one takes the comments)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ws.require_php()
        with contextlib.ExitStack() as stack:
            src = stack.enter_context(proxy_source(args.proxy_rev))
            versus = None
            if args.versus:
                given = Path(args.versus)
                versus = given.resolve() if (given / "proxy").is_dir() else stack.enter_context(proxy_source(args.versus))
            db = stack.enter_context(private_mariadb())
            return bench(db, src, versus, args)
    except (BenchError, ws.SiteError) as e:
        print(f"wordpress: {e}", file=sys.stderr)
        return 1


@dataclass
class Side:
    """One way the site reaches the server: its label, the site's target, the proxy in between (if any)."""

    label: str
    target: str
    proxy: Proxy | None = None
    phases: list[Phase] = field(default_factory=list)


def bench(db: MariaDB, src: Path, versus: Path | None, args: argparse.Namespace) -> int:
    db.sql(f"CREATE DATABASE {DB}")
    db.create_user(FREE, FREE_PASSWORD, DB)
    db.create_user(CAPPED, CAPPED_PASSWORD, DB, max_user_connections=2)
    server = f"{db.host}:{db.port}"
    sides = [Side("direct", "direct")]
    with contextlib.ExitStack() as stack:
        for label, target, account, root in (("proxy", "proxy", CAPPED, src), ("proxy B", "proxy-b", CAPPED_B, versus)):
            if root is None:
                continue
            # Each proxy on an account of its own: two pools of 2 on one account would meet its cap.
            db.create_user(account, CAPPED_PASSWORD, DB, max_user_connections=2)
            proxy = stack.enter_context(Proxy(db, account, CAPPED_PASSWORD, pool=2, log_level="warning", src_root=root))
            share = set_cpu_share(proxy.pid, args.proxy_nice, own_session=True)
            sides.append(Side(label, target, proxy))
        base = Path(tempfile.mkdtemp(prefix="mpp-bench-wordpress-", dir="/tmp"))
        targets = {"direct": ws.Target(server, FREE, FREE_PASSWORD), "capped": ws.Target(server, CAPPED, CAPPED_PASSWORD)}
        for side in sides[1:]:
            assert side.proxy is not None
            targets[side.target] = ws.Target(f"{side.proxy.host}:{side.proxy.port}", side.proxy.config["backend"]["user"],
                                             CAPPED_PASSWORD)
        site = ws.WordPressSite.create(base / "site", DB, targets, default="direct")
        stack.callback(os.rmdir, base)
        stack.callback(site.remove)
        site.start(workers=args.workers)
        site.install("direct")
        made = site.add_posts("direct", args.posts)
        # The comments all go to the first post, which the visitors do not load: a post page renders
        # its comments, and pages that grew during a run would make its later phases cost more.
        content = ws.Content(made.category, made.posts[:1])
        pages = ws.site_pages(ws.Content(made.category, made.posts[1:]))
        for side in sides:  # opcache and the server's caches warm, every way
            for page in pages:
                site.request(side.target, page.path)
        versus_note = ""
        if args.versus:
            given = Path(args.versus)
            versus_note = f"; proxy B: {given if (given / 'proxy').is_dir() else describe_source(args.versus)}"
        print(f"MariaDB {db.version}; WordPress {_wp_version()} on php -S with {args.workers} workers "
              f"(opcache); {args.clients} clients, a comment every {args.comment_every} requests, "
              f"{args.rounds} rounds x {args.time:g} s; proxy pool 2 on an account with MAX_USER_CONNECTIONS 2, "
              f"{share}; {describe_source(args.proxy_rev)}{versus_note}; {os.cpu_count()} CPUs", flush=True)

        def pids(side: Side) -> dict[str, list[int]]:
            proxy = side.proxy or sides[1].proxy
            assert proxy is not None
            return {"php": site.pids, "mariadbd": [db.pid], "proxy": [proxy.pid]}

        for r in range(1, args.rounds + 1):
            for side in sides:
                side.phases.append(run_phase(f"round {r} {side.label}", db, site, side.target, pages, content, args,
                                             pids(side), args.time))
        main_proxy = sides[1].proxy
        assert main_proxy is not None
        if args.profile:
            profile_phase(db, site, pages, content, args, pids(sides[1]), main_proxy.pid)
        if args.statements:
            statements_per_request(db, site, pages, content, args, sides)
        if not args.no_capped_direct:
            main_proxy.stop()  # its links would hold the account's two connections
            run_phase("direct, capped at 2", db, site, "capped", pages, content, args, pids(sides[0]), args.time)
        report(sides, site)
        failed = False
        for side in sides[1:]:
            assert side.proxy is not None
            problems = [ln for ln in side.proxy.log().splitlines() if " ERROR " in ln or "Traceback" in ln]
            if problems:
                print(f"{side.label} problems:\n  " + "\n  ".join(problems[:20]))
                failed = True
            failed |= any(p.load.bad_pages or p.load.bad_comments() for p in side.phases)
        return 1 if failed else 0


def _wp_version() -> str:
    text = (ws.WORDPRESS_DIR / "wp-includes/version.php").read_text()
    m = ws.re.search(r"\$wp_version = '([^']+)'", text)
    return m.group(1) if m else "?"


def report(sides: list[Side], site: ws.WordPressSite) -> None:
    med = lambda xs: statistics.median(xs) if xs else 0.0  # noqa: E731
    print()
    print(f"{'':<10} {'page views/s':>13} {'error pages':>12} {'CPU ms/request: php':>20} {'mariadbd':>9} "
          f"{'proxy':>6} {'all':>6} {'statements/request':>19} {'KB/request':>11}")
    total_cpu: dict[str, float] = {}
    for side in sides:
        phases = side.phases
        reqs = max(sum(p.requests for p in phases), 1)
        cpu = {n: 1000 * sum(p.cpu.get(n, 0.0) for p in phases) / reqs for n in ("php", "mariadbd", "proxy")}
        # Direct phases run no proxy: the (idle) proxy's few ticks are not the site's cost.
        total_cpu[side.label] = cpu["php"] + cpu["mariadbd"] + (cpu["proxy"] if side.proxy else 0.0)
        stmts = sum(p.statements for p in phases) / reqs
        kb = sum(p.bytes_sent for p in phases) / 1024 / reqs
        print(f"{side.label:<10} {med([p.rate for p in phases]):13.1f} {sum(len(p.load.bad_pages) for p in phases):12d} "
              f"{cpu['php']:20.1f} {cpu['mariadbd']:9.1f} {cpu['proxy']:6.2f} {total_cpu[side.label]:6.1f} "
              f"{stmts:19.1f} {kb:11.0f}")
    direct = sides[0]
    for side in sides[1:]:
        ratios = [p.rate / d.rate for d, p in zip(direct.phases, side.phases) if d.rate]
        if ratios:
            print(f"ratio {side.label}/direct: median {med(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
        # On a machine that PHP, mariadbd and the proxy keep busy, page views/s go as 1 / CPU per request:
        # a ratio that drifts less with other load on the machine than the rates themselves.
        print(f"  CPU per request, PHP + mariadbd + proxy: {total_cpu[side.label]:.1f} ms against {total_cpu['direct']:.1f} "
              f"direct: a machine these saturate serves {total_cpu['direct'] / total_cpu[side.label]:.2f}x the page views")
        db_errors = site.db_log_lines(side.target)
        print(f"  database errors in WordPress's log through {side.label}: {len(db_errors)}")
        for line in db_errors[:5]:
            print("    " + line[:300])


if __name__ == "__main__":
    sys.exit(main())
