#!/usr/bin/env python3
"""Fetch a MySQL or MariaDB server from Debian's archive into a private, cached prefix.

    python3 scripts/get_server.py mysql-9.7        # prints the prefix, fetching it first if needed
    python3 scripts/get_server.py --list           # the servers it knows

The test suite runs on servers this Debian bookworm machine has no package for (MySQL 9.7 LTS from
Debian sid, MariaDB 11.8 LTS from Debian trixie). Nothing on the system is touched, no root is
needed and no Docker: apt-get runs with a private sources list, state dir, empty dpkg status and
package cache, downloads the whole dependency closure (``install --download-only``), and every
.deb is unpacked with ``dpkg -x`` into ``<prefix>/root``. Those builds need a newer glibc than
bookworm's, so each ELF binary gets a small wrapper in ``<prefix>/bin`` or ``<prefix>/sbin`` that
runs it through the prefix's own loader and libraries::

    <prefix>/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path <prefix>/root/usr/lib/x86_64-linux-gnu <binary>

``<prefix>/share`` and ``<prefix>/lib`` point into the unpacked tree, so ``<prefix>`` works as a
``--basedir`` (MariaDB's mariadb-install-db looks for bin/, sbin/ and share/ there).

The archive's signatures are checked with the system's keyring (/usr/share/keyrings/
debian-archive-keyring.gpg; bookworm's holds the trixie keys, which sign sid too);
MYSQL_TEST_SERVER_KEYRING names another keyring file. The mirror is the one the machine's own
apt sources use for Debian (MYSQL_TEST_SERVER_MIRROR overrides it). Prefixes live under
``$MYSQL_TEST_SERVER_CACHE`` (default ``~/.cache/mysql-pool-proxy/servers``); delete one to fetch
it again. Needs only the standard library, apt-get and dpkg.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
READY = "server.json"  # written last: a prefix without it is incomplete and is fetched again


@dataclass(frozen=True, slots=True)
class Source:
    """Where one server comes from: a Debian suite, the packages, the version it must have."""

    suites: tuple[str, ...]
    packages: tuple[str, ...]
    version: str  # the upstream version the packages must start with, e.g. "9.7."
    daemon: str  # the server binary, in sbin/


SERVERS: dict[str, Source] = {
    # MySQL 9.7 LTS: Debian sid is the only suite that has it.
    "mysql-9.7": Source(("sid",), ("mysql-server-core", "mysql-client-core"), "9.7.", "mysqld"),
    # MariaDB 11.8 LTS: Debian 13's release; its security updates come with trixie-security.
    "mariadb-11.8": Source(
        ("trixie", "trixie-security"), ("mariadb-server", "mariadb-client-core"), "11.8.", "mariadbd"
    ),
}

# dpkg architecture -> (multiarch triplet, loader file name)
ARCHES = {
    "amd64": ("x86_64-linux-gnu", "ld-linux-x86-64.so.2"),
    "arm64": ("aarch64-linux-gnu", "ld-linux-aarch64.so.1"),
}


def say(msg: str) -> None:
    print(f"[get_server] {msg}", file=sys.stderr, flush=True)


class FetchError(RuntimeError):
    pass


def cache_root() -> Path:
    env = os.environ.get("MYSQL_TEST_SERVER_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mysql-pool-proxy" / "servers"


def prefix_of(name: str) -> Path:
    return cache_root() / name


def ready_info(prefix: Path) -> dict[str, str] | None:
    try:
        return json.loads((prefix / READY).read_text())
    except (OSError, ValueError):
        return None


def system_mirror() -> str:
    """The Debian mirror the machine's apt uses (deb822 .sources or one-line .list files)."""
    env = os.environ.get("MYSQL_TEST_SERVER_MIRROR")
    if env:
        return env.rstrip("/")
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file() or f.suffix not in (".list", ".sources", ""):
            continue
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        # The archive itself, not debian-security or a third-party repository.
        for uri in re.findall(r"(?:^URIs:|^deb(?:\s+\[[^]]*\])?)\s+(\S+)", text, re.M):
            if re.search(r"/debian/?$", uri) and "security" not in uri:
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def arch() -> tuple[str, str, str]:
    dpkg_arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    if dpkg_arch not in ARCHES:
        raise FetchError(f"architecture {dpkg_arch!r} is not supported (only {', '.join(ARCHES)})")
    return (dpkg_arch, *ARCHES[dpkg_arch])


def sources_list(mirror: str, suites: tuple[str, ...], keyring: str) -> str:
    lines = []
    for suite in suites:
        # Security updates live in their own archive next to the main one.
        uri = re.sub(r"/debian$", "/debian-security", mirror) if suite.endswith("-security") else mirror
        lines.append(f"deb [signed-by={keyring}] {uri} {suite} main")
    return "\n".join(lines) + "\n"


def run(cmd: list[str], what: str) -> str:
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise FetchError(f"{what} failed ({r.returncode}): {' '.join(cmd[:1])} ...\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def apt_options(work: Path, dpkg_arch: str) -> list[str]:
    """Everything apt reads or writes goes to ``work``; the system's apt configuration is not used."""
    return [
        "-q",
        f"-o=Dir::Etc::sourcelist={work / 'sources.list'}",
        "-o=Dir::Etc::sourceparts=-",
        f"-o=Dir::Etc::preferences={work / 'preferences'}",
        "-o=Dir::Etc::preferencesparts=-",
        f"-o=Dir::State::Lists={work / 'lists'}",
        f"-o=Dir::State::status={work / 'status'}",
        f"-o=Dir::Cache={work / 'cache'}",
        f"-o=APT::Architecture={dpkg_arch}",
        "-o=APT::Architectures=",
        "-o=APT::Install-Recommends=false",
        "-o=APT::Install-Suggests=false",
        "-o=Debug::NoLocking=true",  # a private state dir: the system's apt lock is not ours to take
        # As root apt would download as user _apt, who cannot write into a private dir under /root.
        *(["-o=APT::Sandbox::User=root"] if os.geteuid() == 0 else []),
    ]


def download(source: Source, work: Path, mirror: str, dpkg_arch: str) -> list[Path]:
    keyring = os.environ.get("MYSQL_TEST_SERVER_KEYRING", KEYRING)
    if not Path(keyring).is_file():
        raise FetchError(f"no keyring {keyring}: install debian-archive-keyring or set MYSQL_TEST_SERVER_KEYRING")
    for d in ("lists/partial", "cache/archives/partial"):
        (work / d).mkdir(parents=True, exist_ok=True)
    (work / "status").write_text("")  # nothing installed: apt downloads the whole closure
    (work / "preferences").write_text("")
    (work / "sources.list").write_text(sources_list(mirror, source.suites, keyring))
    opts = apt_options(work, dpkg_arch)
    say(f"apt-get update ({', '.join(source.suites)} from {mirror})")
    out = run(["apt-get", *opts, "update"], "apt-get update")
    # apt-get update exits 0 on a bad signature for some sources and only warns: check it.
    if re.search(r"NO_PUBKEY|not signed|EXPKEYSIG|BADSIG|is not valid", out):
        raise FetchError(
            f"the archive's signature could not be checked with {keyring}:\n{out[-2000:]}\n"
            "install a newer debian-archive-keyring, or set MYSQL_TEST_SERVER_KEYRING to a keyring that has the key"
        )
    policy = run(["apt-cache", *opts, "policy", source.packages[0]], "apt-cache policy")
    m = re.search(r"Candidate:\s*(\S+)", policy)
    candidate = m.group(1) if m else "(none)"
    upstream = re.sub(r"^\d+:", "", candidate)
    if not upstream.startswith(source.version):
        raise FetchError(
            f"{', '.join(source.suites)} offers {source.packages[0]} {candidate}, not {source.version}x; "
            "the suite has moved on: update SERVERS in scripts/get_server.py"
        )
    say(f"downloading {' '.join(source.packages)} {candidate} and everything they depend on")
    run(["apt-get", *opts, "-y", "install", "--download-only", *source.packages], "apt-get install --download-only")
    debs = sorted((work / "cache" / "archives").glob("*.deb"))
    if not debs:
        raise FetchError("apt-get downloaded no packages")
    return debs


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


WRAPPER = """#!/bin/sh
# Runs {rel} with the loader and libraries of the prefix (they need a newer glibc than the system's).
p=$(dirname "$(readlink -f "$0")")/..
exec "$p/root/{lib}/{loader}" --library-path "{libpath}" "$p/root/{rel}" "$@"
"""


def make_wrappers(prefix: Path, triplet: str, loader: str) -> None:
    """bin/ and sbin/ of the prefix: a wrapper per ELF program, a link per script."""
    lib = f"usr/lib/{triplet}"
    if not (prefix / "root" / lib / loader).exists():
        raise FetchError(f"the packages brought no loader {lib}/{loader}")
    lib_dirs = [lib] + [d for d in (f"lib/{triplet}",) if (prefix / "root" / d).is_dir()]
    libpath = ":".join(f"$p/root/{d}" for d in lib_dirs)
    for sub in ("bin", "sbin"):
        out = prefix / sub
        out.mkdir(exist_ok=True)
        src = prefix / "root" / "usr" / sub
        for prog in sorted(src.iterdir()) if src.is_dir() else ():
            target = out / prog.name
            if is_elf(prog.resolve()):
                # The program's own path (a symlink stays one) as argv[0]: mysql -> mariadb behaves as mysql.
                target.write_text(WRAPPER.format(rel=f"usr/{sub}/{prog.name}", lib=lib, loader=loader, libpath=libpath))
                target.chmod(0o755)
            elif prog.is_file():
                target.symlink_to(Path("..", "root", "usr", sub, prog.name))
    for sub in ("share", "lib"):
        (prefix / sub).symlink_to(Path("root", "usr", sub))


def fetch(name: str) -> Path:
    """The prefix of server ``name``, fetched first when it is not in the cache."""
    if name not in SERVERS:
        raise FetchError(f"unknown server {name!r}; known: {', '.join(SERVERS)}")
    source = SERVERS[name]
    prefix = prefix_of(name)
    if ready_info(prefix):
        return prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # One fetch at a time per server: parallel test runs wait for the first one.
    with open(prefix.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready_info(prefix):
            return prefix
        started = time.monotonic()
        dpkg_arch, triplet, loader = arch()
        mirror = system_mirror()
        shutil.rmtree(prefix, ignore_errors=True)
        work = prefix / "apt"
        work.mkdir(parents=True)
        debs = download(source, work, mirror, dpkg_arch)
        say(f"unpacking {len(debs)} packages into {prefix / 'root'}")
        for deb in debs:
            run(["dpkg-deb", "-x", str(deb), str(prefix / "root")], f"dpkg -x {deb.name}")
        make_wrappers(prefix, triplet, loader)
        version = check_runs(prefix, source)
        shutil.rmtree(work)  # the .debs and lists (~100 MB) are not needed once unpacked
        info = {"name": name, "version": version, "suites": " ".join(source.suites), "mirror": mirror,
                "packages": " ".join(source.packages), "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (prefix / READY).write_text(json.dumps(info, indent=1) + "\n")
        say(f"{name}: {version} ready in {prefix} ({time.monotonic() - started:.0f} s)")
    return prefix


def check_runs(prefix: Path, source: Source) -> str:
    """The server's ``--version`` through its wrapper: proves the loader and libraries work."""
    out = run([str(prefix / "sbin" / source.daemon), "--version"], f"{source.daemon} --version").strip()
    m = re.search(r"Ver\s+(\S+)", out)
    if not m or not m.group(1).startswith(source.version):
        raise FetchError(f"{source.daemon} --version says {out!r}, expected {source.version}x")
    return m.group(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("server", nargs="?", help=f"one of: {', '.join(SERVERS)}")
    ap.add_argument("--list", action="store_true", help="list the servers and whether each is cached")
    args = ap.parse_args(argv)
    if args.list or not args.server:
        for name, src in SERVERS.items():
            info = ready_info(prefix_of(name))
            state = f"cached: {info['version']} in {prefix_of(name)}" if info else "not fetched"
            print(f"{name:14} Debian {'/'.join(src.suites)}: {' '.join(src.packages)} ({state})")
        return 0
    try:
        print(fetch(args.server))
    except FetchError as e:
        say(f"cannot fetch {args.server}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
