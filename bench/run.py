"""Throughput benchmark: the same sysbench workload against the server directly and through the proxy.

    .venv/bin/python bench/run.py [--threads 64] [--rounds 3] [--time 10] [--pool 8] [--no-ps]
                                  [--idle-clients 2000] [--profile [--profile-native]] [--proxy-rev REV]
                                  [--haproxy] [--proxy-nice N]

One run starts a private MariaDB (temp datadir, free port on 127.0.0.1), loads the sysbench
oltp_point_select tables, starts the proxy (pool of --pool links, queue_timeout 30), and for each
workload (text protocol, then server-side prepared statements) runs --rounds rounds of sysbench
against the server and then through the proxy, --time seconds each: direct, proxy, direct,
proxy, ... Short alternating rounds spread the machine's drift over both sides. It prints the
median queries/s of each side, the median and range of the per-round ratios (proxy qps / the
same round's direct qps), and p50 and p99 latency (medians over the rounds). p99 is what
sysbench reports (--percentile=99); p50 is computed from sysbench's latency histogram.
Then it measures the proxy's memory per idle client (bench/idle_clients.py). With --haproxy
each round also runs through haproxy in TCP mode (one thread, a C byte relay that parses and
pools nothing): what the extra hop alone costs on the same machine. Everything it starts is
stopped at the end. See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import idle_clients  # noqa: E402
from _server import (  # noqa: E402
    HOST,
    BenchError,
    ByteRelay,
    Proxy,
    autogroup_enabled,
    cpu_times,
    describe_source,
    find_binary,
    private_mariadb,
    proxy_source,
    set_cpu_share,
)
from tls_certs import make_tls_files  # noqa: E402  (in tests/, which _server puts on the path)

SB_USER, SB_PASSWORD, SB_DB = "sbtest", "sbtest-secret", "sbtest"


# --------------------------------------------------------------------------- sysbench


def ensure_sysbench() -> str:
    """The sysbench binary; installed with apt-get when missing and we are root."""
    found = find_binary("sysbench")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("sysbench not found; installing it with apt-get", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "sysbench"]
        if subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdin=subprocess.DEVNULL, check=False)
            subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, check=False)
        found = find_binary("sysbench")
        if found:
            return found
    raise BenchError("sysbench not found; install it with: apt-get install -y sysbench")


@dataclass
class SysbenchResult:
    label: str
    ok: bool
    qps: float = 0.0
    queries: int = 0
    errors: int = 0
    reconnects: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    avg_ms: float | None = None
    max_ms: float | None = None
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds used during the run
    cpu_sys: dict[str, float] = field(default_factory=dict)  # the part of it spent in the kernel
    other_cpu: float | None = None  # CPU seconds used by anything else (other processes, interrupts)
    output: str = ""
    problem: str = ""


_NUM = r"([0-9]+(?:\.[0-9]+)?)"


def _grab(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else None


def _histogram_percentile(text: str, pct: float) -> float | None:
    """The ``pct`` percentile from sysbench's --histogram output (bucket upper values in ms)."""
    buckets = [(float(v), int(c)) for v, c in re.findall(r"^\s*([0-9.]+)\s+\|[* ]*\s(\d+)\s*$", text, re.M)]
    total = sum(c for _, c in buckets)
    if not total:
        return None
    need = total * pct / 100.0
    seen = 0
    for value, count in buckets:
        seen += count
        if seen >= need:
            return value
    return buckets[-1][0]


def parse_sysbench(label: str, text: str) -> SysbenchResult:
    r = SysbenchResult(label=label, ok=True, output=text)
    qps = _grab(r"^\s*queries:\s+\d+\s+\(" + _NUM + r" per sec", text)
    if qps is None:
        return SysbenchResult(label=label, ok=False, output=text, problem="no 'queries:' line in the sysbench output")
    r.qps = qps
    r.queries = int(_grab(r"^\s*queries:\s+(\d+)", text) or 0)
    r.errors = int(_grab(r"^\s*ignored errors:\s+(\d+)", text) or 0)
    r.reconnects = int(_grab(r"^\s*reconnects:\s+(\d+)", text) or 0)
    r.avg_ms = _grab(r"^\s*avg:\s+" + _NUM, text)
    r.max_ms = _grab(r"^\s*max:\s+" + _NUM, text)
    r.p99_ms = _grab(r"^\s*99th percentile:\s+" + _NUM, text)
    r.p50_ms = _histogram_percentile(text, 50)
    if r.p99_ms is None:
        r.p99_ms = _histogram_percentile(text, 99)
    return r


def sysbench_base(sysbench: str, where: int | str, args: argparse.Namespace) -> list[str]:
    """``where``: a TCP port on HOST, or a unix socket path (libmysqlclient takes the socket
    only when the host is "localhost")."""
    at = [f"--mysql-host={HOST}", f"--mysql-port={where}"] if isinstance(where, int) else \
        ["--mysql-host=localhost", f"--mysql-socket={where}"]
    return [
        sysbench,
        "oltp_point_select",
        "--db-driver=mysql",
        *at,
        f"--mysql-user={SB_USER}",
        f"--mysql-password={SB_PASSWORD}",
        f"--mysql-db={SB_DB}",
        f"--tables={args.tables}",
        f"--table-size={args.table_size}",
    ]


def sysbench_run_cmd(sysbench: str, where: int | str, args: argparse.Namespace, ps_mode: str) -> list[str]:
    # --mysql-ssl reads client-key.pem, client-cert.pem and cacert.pem from the working directory.
    return sysbench_base(sysbench, where, args) + (["--mysql-ssl=on"] if args.tls else []) + [
        f"--threads={args.threads}",
        f"--time={args.time}",
        "--percentile=99",
        "--histogram=on",  # for p50; sysbench keeps the histogram anyway, this only prints it
        "--report-interval=0",
        f"--db-ps-mode={ps_mode}",
        "run",
    ]


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def run_sysbench(label: str, cmd: list[str], limit: float, watch: dict[str, int], cwd: Path | None = None) -> SysbenchResult:
    """Run one sysbench phase; ``watch`` maps process names to pids whose CPU time is recorded.

    ``cwd``: where sysbench runs (with --tls, the directory that holds its certificate files)."""
    cpu0 = {name: cpu_times(pid) for name, pid in watch.items()}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, _ = _machine_jiffies()
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=limit, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return SysbenchResult(label=label, ok=False, output=out + err, seconds=time.monotonic() - t0,
                              problem=f"sysbench did not finish within {limit:.0f} s (killed): a hang")
    seconds = time.monotonic() - t0
    text = p.stdout + ("\n" + p.stderr if p.stderr.strip() else "")
    r = parse_sysbench(label, text)
    r.seconds = seconds
    for name, pid in watch.items():
        user, system = cpu_times(pid)
        r.cpu[name] = user + system - sum(cpu0[name])
        r.cpu_sys[name] = system - cpu0[name][1]
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r.cpu["sysbench"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    r.cpu_sys["sysbench"] = ru1.ru_stime - ru0.ru_stime
    busy1, _ = _machine_jiffies()
    r.other_cpu = max(0.0, (busy1 - busy0) / os.sysconf("SC_CLK_TCK") - sum(r.cpu.values()))
    if p.returncode != 0:
        r.ok = False
        r.problem = f"sysbench exited with code {p.returncode}"
    return r


# --------------------------------------------------------------------------- profile


def start_profiler(pid: int, seconds: int, out: Path, native: bool) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(py_spy, os.X_OK):
        print("--profile: py-spy not found (install it with: .venv/bin/pip install py-spy)", flush=True)
        return None
    # --native needs to stop the process for each sample; without it py-spy reads memory while it runs.
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
           "--format", "raw", "-o", str(out)] + (["--native"] if native else ["--nonblocking"])
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _frame_key(frame: str) -> str:
    """'func (path/file.py:123)' -> 'func (file.py)': own time is summed per function, not per line."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    name, path = m.groups()
    parts = Path(path).parts
    short = "/".join(parts[parts.index("proxy"):]) if "proxy" in parts else Path(path).name
    return f"{name} ({short})"


def summarize_profile(raw: Path, top: int = 15) -> list[str]:
    """Top functions by own time (leaf frames) and by total time from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [_frame_key(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for f in set(frames):
            total[f] += count
    if not samples:
        return ["(no samples)"]
    # The frames every sample has (runpy, cli.main, asyncio.run) say nothing; leave them out of the totals.
    for f in [f for f, c in total.items() if c >= 0.95 * max(total.values()) and f not in own]:
        del total[f]
    lines = [f"{samples} samples while the proxy was not idle in epoll. Without --native a C function's time counts as",
             "own time of the Python function that called it (transport.write -> the caller; the event loop's own C",
             "code -> Runner.run).", "", "top by own time:"]
    lines += [f"  {100 * c / samples:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["", "top by total time (including callees):"]
    lines += [f"  {100 * c / samples:5.1f}%  {f}" for f, c in total.most_common(top)]
    return lines


# --------------------------------------------------------------------------- report


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


@dataclass
class Workload:
    """One workload's rounds: (direct, proxy) per round; proxy is None when the proxy was not running."""

    name: str
    rounds: list[tuple[SysbenchResult, SysbenchResult | None]] = field(default_factory=list)
    relayed: list[SysbenchResult] = field(default_factory=list)  # --haproxy: one per round

    def relay_ratios(self) -> list[float]:
        return [h.qps / d.qps for (d, _), h in zip(self.rounds, self.relayed) if d.ok and h.ok and d.qps]

    def direct(self) -> list[SysbenchResult]:
        return [d for d, _ in self.rounds if d.ok]

    def proxy(self) -> list[SysbenchResult]:
        return [p for _, p in self.rounds if p is not None and p.ok]

    def ratios(self) -> list[float]:
        """proxy qps / direct qps of each round in which both phases worked."""
        return [p.qps / d.qps for d, p in self.rounds if d.ok and p is not None and p.ok and d.qps]

    def failures(self) -> list[str]:
        out = []
        for i, (d, p) in enumerate(self.rounds, 1):
            if not d.ok:
                out.append(f"round {i} direct FAILED")
            if p is None:
                out.append(f"round {i} proxy skipped")
            elif not p.ok:
                out.append(f"round {i} proxy FAILED")
        return out


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _latency(rs: list[SysbenchResult]) -> str:
    if not rs:
        return "-"
    return f"{_ms(_median([r.p50_ms for r in rs]))} / {_ms(_median([r.p99_ms for r in rs]))}"


def _cpu(rs: list[SysbenchResult], name: str, split: bool = False) -> str:
    """CPU time of ``name`` over all the phases / their total length (the time-weighted average)."""
    rs = [r for r in rs if name in r.cpu and r.seconds]
    if not rs:
        return "-"
    seconds = sum(r.seconds for r in rs)
    text = f"{100 * sum(r.cpu[name] for r in rs) / seconds:.0f}%"
    if split:
        text += f" ({100 * sum(r.cpu_sys.get(name, 0.0) for r in rs) / seconds:.0f}% sys)"
    return text


def _other(rs: list[SysbenchResult]) -> str:
    rs = [r for r in rs if r.other_cpu is not None and r.seconds]
    if not rs:
        return "-"
    return f"{100 * sum(r.other_cpu or 0.0 for r in rs) / sum(r.seconds for r in rs):.0f}%"


def _qps(rs: list[SysbenchResult], n: int) -> str:
    if not rs:
        return "FAILED" if n else "-"
    return f"{statistics.median(r.qps for r in rs):,.0f}"


def print_table(workloads: list[Workload]) -> None:
    head = ("workload", "direct qps", "proxy qps", "ratio", "ratio min..max", "direct p50/p99 ms",
            "proxy p50/p99 ms", "cpu mariadbd d/p", "cpu sysbench d/p", "cpu proxy", "cpu other d/p")
    table = [head]
    for w in workloads:
        d, p, ratios = w.direct(), w.proxy(), w.ratios()
        tried_proxy = sum(1 for _, pr in w.rounds if pr is not None)
        table.append((
            w.name,
            _qps(d, len(w.rounds)),
            _qps(p, tried_proxy),
            f"{statistics.median(ratios):.2f}x" if ratios else "-",
            f"{min(ratios):.2f}..{max(ratios):.2f}x" if ratios else "-",
            _latency(d),
            _latency(p),
            f"{_cpu(d, 'mariadbd')} / {_cpu(p, 'mariadbd')}",
            f"{_cpu(d, 'sysbench')} / {_cpu(p, 'sysbench')}",
            _cpu(p, "proxy", split=True),
            f"{_other(d)} / {_other(p)}",
        ))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for w in workloads:
        if w.failures():
            print(f"!! {w.name}: {', '.join(w.failures())}; the row covers the other phases")


def print_relay_table(workloads: list[Workload]) -> None:
    """--haproxy: the byte relay's rounds, next to the same rounds' direct and proxy numbers."""
    if not any(w.relayed for w in workloads):
        return
    print()
    print("reference, same rounds: haproxy in TCP mode, one thread, no pooling (one server connection per client)")
    for w in workloads:
        ratios, proxy = w.relay_ratios(), w.ratios()
        ok = [h for h in w.relayed if h.ok]
        if not ratios:
            print(f"  {w.name}: haproxy FAILED")
            continue
        line = (f"  {w.name}: haproxy {_qps(ok, len(w.relayed))} qps, {statistics.median(ratios):.2f}x of direct "
                f"({min(ratios):.2f}..{max(ratios):.2f}x), cpu haproxy {_cpu(ok, 'haproxy')}")
        if proxy:
            line += f"; the proxy's ratio is {statistics.median(proxy) / statistics.median(ratios):.2f} of haproxy's"
        print(line)


def _us_per_query(rs: list[SysbenchResult], name: str) -> str:
    """CPU time ``name`` used per query over all these phases, in microseconds."""
    rs = [r for r in rs if r.ok and name in r.cpu and r.queries]
    if not rs:
        return "-"
    return f"{1e6 * sum(r.cpu[name] for r in rs) / sum(r.queries for r in rs):.1f}"


def print_cpu_per_query(workloads: list[Workload]) -> None:
    """Who spends what per query on each path: where a relay's cost goes, beside the other's."""
    print()
    print("CPU per query, µs: mariadbd / sysbench / the relay itself")
    for w in workloads:
        paths = [("direct", w.direct(), None), ("proxy", w.proxy(), "proxy")]
        if w.relayed:
            paths.append(("haproxy", [h for h in w.relayed if h.ok], "haproxy"))
        parts = []
        for label, rs, relay in paths:
            cols = [_us_per_query(rs, "mariadbd"), _us_per_query(rs, "sysbench")]
            if relay:
                cols.append(_us_per_query(rs, relay))
            parts.append(f"{label} {' / '.join(cols)}")
        print(f"  {w.name}: " + "; ".join(parts))


def proxy_problems(log: str, limit: int = 30) -> list[str]:
    lines = [ln for ln in log.splitlines() if re.search(r" (ERROR|WARNING|CRITICAL) |Traceback", ln)]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def report_failure(r: SysbenchResult, proxy: Proxy | None) -> None:
    print(f"\n!! {r.label}: {r.problem or 'failed'}")
    out = r.output.strip().splitlines()
    interesting = [ln for ln in out if re.search(r"FATAL|error|Error|ALERT|WARNING", ln)]
    print("   sysbench output (error lines, then the tail):")
    for ln in interesting[:15]:
        print("     " + ln)
    for ln in out[-15:]:
        print("     | " + ln)
    if proxy is not None:
        state = "running" if proxy.alive else f"exited with code {proxy.proc.returncode}"  # type: ignore[union-attr]
        print(f"   proxy {state}; warnings/errors in its log:")
        for ln in proxy_problems(proxy.log()) or ["(none)"]:
            print("     " + ln)
        print("   tail of the proxy log:")
        for ln in proxy.log().splitlines()[-12:]:
            print("     | " + ln)


def session_layout(one_session: bool) -> str:
    """How the processes share the CPU (kernel.sched_autogroup_enabled groups them by session)."""
    autogroup = autogroup_enabled()
    where = ("mariadbd, the proxy and sysbench in one session" if one_session
             else "mariadbd, the proxy and sysbench each in a session of its own, as separate services")
    return f"{where}; kernel.sched_autogroup_enabled={'1' if autogroup else '0 (sessions do not matter)'}"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="sysbench oltp_point_select directly vs through the proxy, in one run")
    ap.add_argument("--threads", type=int, default=64, help="sysbench client threads (default 64)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per workload, each one direct phase then one proxy phase (default 3)")
    ap.add_argument("--time", type=int, default=10, help="seconds per measured phase (default 10)")
    ap.add_argument("--pool", type=int, default=8, help="proxy pool max_connections (default 8)")
    ap.add_argument("--tables", type=int, default=4, help="sysbench tables (default 4)")
    ap.add_argument("--table-size", type=int, default=10000, help="rows per table (default 10000)")
    ap.add_argument("--ps", action=argparse.BooleanOptionalAction, default=True,
                    help="also run with --db-ps-mode=auto (server-side prepared statements), direct and through "
                         "the proxy (default on; --no-ps skips it)")
    ap.add_argument("--idle-clients", type=int, default=2000, metavar="N",
                    help="idle-client memory measurement on a fresh proxy (default 2000; 0 skips it)")
    ap.add_argument("--profile", action="store_true",
                    help="extra proxy phase under py-spy; prints the top functions (not part of the table)")
    ap.add_argument("--profile-out", default="/tmp/mpp-bench-profile.txt",
                    help="where the raw py-spy samples go (default /tmp/mpp-bench-profile.txt)")
    ap.add_argument("--profile-native", action="store_true",
                    help="with --profile: py-spy --native, so time in C code (uvloop, sockets) gets its own frames")
    ap.add_argument("--proxy-rev", metavar="REV",
                    help="run proxy/ as of this git revision (e.g. HEAD) instead of the working tree")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                    help="proxy log level (default info)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the proxy log and config (path is printed)")
    ap.add_argument("--haproxy", action="store_true",
                    help="also run each round through haproxy in TCP mode (one thread): a C byte relay as the "
                         "reference for the hop's own cost (needs haproxy: apt-get install haproxy)")
    ap.add_argument("--proxy-nice", type=int, default=-5, metavar="N",
                    help="CPU share of the proxy (and of haproxy): nice N for its session, -5 = 3x the default "
                         "share, as CPUWeight=300 in systemd/mysql-pool-proxy.service gives the service; 0 = the "
                         "default share (default -5; see README)")
    ap.add_argument("--one-session", action="store_true",
                    help="run MariaDB and the proxy in the benchmark's own session, with sysbench, instead of "
                         "one session each as separate services would run (see README)")
    ap.add_argument("--backend-socket", action="store_true",
                    help="the proxy (and haproxy) reach the server over its unix socket instead of TCP; "
                         "sysbench still uses TCP, to the server directly and to the proxy")
    ap.add_argument("--client-socket", action="store_true",
                    help="sysbench reaches the server, the proxy (listen.unix_socket) and haproxy over unix "
                         "sockets instead of TCP")
    ap.add_argument("--tls", action="store_true",
                    help="TLS everywhere: sysbench to the server, the proxy and haproxy (which relays it), and the "
                         "proxy to the server (backend.tls verify_identity), with throwaway certificates")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.time < 1 or args.pool < 1 or args.rounds < 1:
        ap.error("--threads, --rounds, --time and --pool must be positive")
    if not 0 <= args.idle_clients <= 10000:
        ap.error("--idle-clients must be between 0 and 10000")

    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the server and the proxy.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    failed = False
    workloads: list[Workload] = []
    limit = args.time + 60  # a phase taking this long is a hang
    tls_dir: Path | None = None
    try:
        sysbench = ensure_sysbench()
        sb_version = subprocess.run([sysbench, "--version"], capture_output=True, text=True).stdout.strip()
        nofile = idle_clients.raise_nofile(max(args.idle_clients, args.threads) + 1024)
        tls = None
        if args.tls:
            tls_dir = Path(tempfile.mkdtemp(prefix="mpp-bench-tls-", dir="/tmp"))
            tls = make_tls_files(tls_dir)
            (tls_dir / "cacert.pem").symlink_to("ca.pem")  # the name sysbench's --mysql-ssl looks for
        with proxy_source(args.proxy_rev) as src, private_mariadb(
                max(500, args.threads * 2 + 50), own_session=not args.one_session,
                tls_files=(tls.ca, tls.server_cert, tls.server_key) if tls else None) as db:
            db.make_account(SB_USER, SB_PASSWORD, SB_DB)
            prep = subprocess.run(sysbench_base(sysbench, db.port, args) + ["--threads=4", "prepare"],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
            if prep.returncode != 0:
                raise BenchError(f"sysbench prepare failed ({prep.returncode}):\n{prep.stdout[-3000:]}\n{prep.stderr[-3000:]}")
            cpus = os.cpu_count()
            print(f"{sb_version}; MariaDB {db.version} on {HOST}:{db.port}; {cpus} CPUs; ulimit -n {nofile}")
            print(f"{describe_source(args.proxy_rev)}; pool max_connections {args.pool}, queue_timeout 30")
            print(session_layout(args.one_session))
            links = [("sysbench", args.client_socket), ("the proxy and haproxy to the server", args.backend_socket)]
            print("; ".join(f"{who} over {'unix sockets' if unix else 'TCP'}" for who, unix in links)
                  + ("; TLS on every connection" if tls else ""))
            print(f"oltp_point_select: {args.tables} tables x {args.table_size} rows, {args.threads} threads, "
                  f"{args.rounds} round{'s' if args.rounds != 1 else ''} of direct then proxy, {args.time} s per phase", flush=True)

            tls_config = {"listen": {"tls_cert": tls.server_cert, "tls_key": tls.server_key},
                          "backend": {"tls": "verify_identity", "tls_ca": tls.ca}} if tls else None
            proxy = Proxy(db, SB_USER, SB_PASSWORD, pool=args.pool, queue_timeout=30, log_level=args.log_level,
                          own_session=not args.one_session, via_socket=args.backend_socket,
                          client_socket=args.client_socket, extra=tls_config,
                          src_root=src)
            relay = ByteRelay(db, via_socket=args.backend_socket, client_socket=args.client_socket) if args.haproxy else None
            try:
                if relay is not None:
                    relay.__enter__()
                proxy.start()
                share = set_cpu_share(proxy.pid, args.proxy_nice, not args.one_session)
                if relay is not None:
                    set_cpu_share(relay.pid, args.proxy_nice, True)
                print(f"CPU share of the proxy{' and haproxy' if relay is not None else ''}: {share}", flush=True)
                modes = [("point_select", "disable")] + ([("point_select ps", "auto")] if args.ps else [])
                for name, ps_mode in modes:
                    w = Workload(name)
                    workloads.append(w)
                    print(f"- {name} (--db-ps-mode={ps_mode}):", flush=True)
                    for i in range(1, args.rounds + 1):
                        print(f"    round {i}: direct ...", end="", flush=True)
                        d = run_sysbench(f"{name} direct, round {i}", sysbench_run_cmd(sysbench, db.socket if args.client_socket else db.port, args, ps_mode),
                                         limit, {"mariadbd": db.pid}, tls_dir)
                        print(f" {d.qps:,.0f} qps; proxy ...", end="", flush=True)
                        p: SysbenchResult | None = None
                        if proxy.alive:
                            p = run_sysbench(f"{name} proxy, round {i}",
                                             sysbench_run_cmd(sysbench, proxy.client_address, args, ps_mode), limit,
                                             {"mariadbd": db.pid, "proxy": proxy.pid}, tls_dir)
                            ratio = f" ({p.qps / d.qps:.2f}x)" if p.ok and d.ok and d.qps else ""
                            print(f" {p.qps:,.0f} qps{ratio}", flush=True)
                        else:
                            print(" skipped: the proxy is not running", flush=True)
                        w.rounds.append((d, p))
                        for r in (d, p):
                            if r is not None and not r.ok:
                                failed = True
                                report_failure(r, proxy if r is p else None)
                        if relay is not None:
                            print(f"    round {i}: haproxy ...", end="", flush=True)
                            h = run_sysbench(f"{name} haproxy, round {i}",
                                             sysbench_run_cmd(sysbench, relay.client_address, args, ps_mode), limit,
                                             {"mariadbd": db.pid, "haproxy": relay.pid}, tls_dir)
                            w.relayed.append(h)
                            ratio = f" ({h.qps / d.qps:.2f}x)" if h.ok and d.ok and d.qps else ""
                            print(f" {h.qps:,.0f} qps{ratio}" if h.ok else f" FAILED: {h.problem}", flush=True)
                        if p is not None and p.ok and (p.errors or p.reconnects):
                            print(f"      note: through the proxy sysbench saw {p.errors} ignored errors, "
                                  f"{p.reconnects} reconnects")
                        if p is None:
                            break  # the proxy is gone: no point in more rounds

                profile_lines: list[str] = []
                if args.profile and proxy.alive:
                    out = Path(args.profile_out)
                    print(f"- profile: point_select through the proxy under py-spy ({args.time} s) ...", end="", flush=True)
                    spy = start_profiler(proxy.pid, args.time, out, args.profile_native)
                    if spy is not None:
                        time.sleep(0.5)
                        pr = run_sysbench("point_select proxy+py-spy", sysbench_run_cmd(sysbench, proxy.port, args, "disable"),
                                          limit, {"proxy": proxy.pid}, tls_dir)
                        spy_out = spy.communicate(timeout=args.time + 60)[0].decode(errors="replace")
                        print(f" {pr.qps:,.0f} qps while sampled", flush=True)
                        if spy.returncode != 0 or not out.exists():
                            profile_lines = [f"py-spy failed ({spy.returncode}):", *spy_out.strip().splitlines()[-10:]]
                        else:
                            profile_lines = summarize_profile(out)

                final_log = proxy.log()
                problems = proxy_problems(final_log)
                alive = proxy.alive
            finally:
                if relay is not None:
                    relay.__exit__()
                code = proxy.stop()
                if args.keep_logs:
                    print(f"proxy log and config kept in {proxy.base}")
                proxy.close(keep_files=args.keep_logs)

            print()
            print_table(workloads)
            print_relay_table(workloads)
            print_cpu_per_query(workloads)
            rounds = f"{args.rounds} rounds" if args.rounds != 1 else "1 round"
            print(f"({rounds} of {args.time} s direct, then {args.time} s through the proxy; qps: median over the "
                  "rounds; ratio: median of the per-round ratios (proxy qps / the same round's direct qps), min..max: "
                  "their range; p50/p99: medians over the rounds, p99 as reported by sysbench --percentile=99, p50 from "
                  "its latency histogram; cpu: CPU time of the process over all the rounds' phases / their length, "
                  f"100% = one CPU, {os.cpu_count()} CPUs in all; other: the rest of the machine's busy time (other "
                  "processes, interrupts))")
            if not alive:
                failed = True
                print(f"!! the proxy died during the run (exit code {code}); tail of its log:")
                for ln in final_log.splitlines()[-12:]:
                    print("  | " + ln)
            if problems:
                print("proxy log warnings/errors:")
                for ln in problems:
                    print("  " + ln)
            if profile_lines:
                print("\nprofile of the proxy (py-spy):")
                for ln in profile_lines:
                    print("  " + ln)

            if args.idle_clients:
                extra = {"listen": {"max_client_connections": max(10000, args.idle_clients + 100), "handshake_timeout": 30}}
                with Proxy(db, SB_USER, SB_PASSWORD, pool=args.pool, extra=extra, src_root=src) as fresh:
                    idle_clients.open_client(fresh.host, fresh.port, SB_USER, SB_PASSWORD, SB_DB).close()
                    res = idle_clients.measure(fresh.host, fresh.port, fresh.pid, SB_USER, SB_PASSWORD, SB_DB,
                                               args.idle_clients)
                print("\nidle clients on a fresh proxy:")
                for ln in res.lines():
                    print("  " + ln)
    except BenchError as e:
        print(f"\nbench: {e}", file=sys.stderr)
        return 1
    finally:
        if tls_dir is not None:
            shutil.rmtree(tls_dir, ignore_errors=True)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
