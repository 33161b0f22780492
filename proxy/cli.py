"""Command line: ``mysql-pool-proxy run|check|health -c FILE``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sys

from . import __version__
from . import config as config_mod
from . import tls
from .mysql.constants import Err
from .mysql.messages import ServerError, parse_handshake
from .mysql.packets import PacketReader, ProtocolError

log = logging.getLogger("proxy")


def _stderr_is_the_journal() -> bool:
    """systemd names the journal stream it connected in JOURNAL_STREAM ("device:inode")."""
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def _setup_logging(level: str) -> None:
    # The journal stamps every line itself; a second timestamp would only widen them.
    stamp = "" if _stderr_is_the_journal() else "%(asctime)s "
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format=stamp + "%(levelname)s %(name)s: %(message)s",
    )


def _install_uvloop() -> str:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


def cmd_check(cfg: config_mod.Config, path: str) -> int:
    listen = cfg.listen
    print(f"config {path}: OK")
    print(f"  listen      {listen.host}:{listen.port} (auth {listen.auth_plugin}, at most {listen.max_client_connections} clients)")
    if listen.unix_socket:
        print(f"              and unix socket {listen.unix_socket}")
    if listen.tls_cert:
        print(f"              TLS offered to clients{', required over TCP' if listen.require_tls else ''}"
              + (f"; client certificates from {listen.tls_ca} required" if listen.tls_ca else ""))
    for spec in cfg.pools:
        b, p = spec.backend, spec.pool
        print(f"  pool '{p.name}'  at most {p.max_connections} server connections; clients wait up to {p.queue_timeout:g}s")
        print(f"    backend   {b.user}@{b.address}" + (f" database {b.database}" if b.database else "")
              + f" (tls {b.tls_mode})")
        who = ", ".join(u.user for u in spec.users) if spec.users else f"{b.user} (the backend account)"
        print(f"    clients   log in as {who}")
    if cfg.metrics.port:
        print(f"  metrics     http://{cfg.metrics.address}/metrics")
    for w in cfg.warnings:
        print(f"  warning: {w}")
    return 0


# A wildcard listen address is reached over loopback.
_LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def cmd_health(listen: config_mod.ListenConfig, timeout: float) -> int:
    """Healthy (0) when the configured listen address answers with a protocol 10 greeting.

    For container health checks and monitoring: it reads the port from the same config the
    proxy runs with, so changing ``listen.port`` cannot leave a check probing the old one. It
    sends nothing and closes after the greeting (the proxy logs that at debug level only).
    A proxy at ``max_client_connections`` greets with ERR 1040: it is busy, not broken, and
    stays healthy, so that an orchestrator does not restart it and drop every client.
    """
    host = _LOOPBACK_FOR.get(listen.host, listen.host)
    where = f"{host}:{listen.port}"
    reader = PacketReader(max_payload=1 << 16)
    try:
        with socket.create_connection((host, listen.port), timeout) as sock:
            sock.settimeout(timeout)
            packets: list[tuple[int, bytes]] = []
            while not packets:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ProtocolError("closed before the greeting")
                packets = reader.feed(chunk)
        greeting = parse_handshake(packets[0][1])
    except ServerError as e:
        print(f"mysql-pool-proxy: {where} answered with error {e.code}: {e.message}", file=sys.stderr)
        return 0 if e.code == Err.CON_COUNT else 1
    except (OSError, ProtocolError) as e:
        print(f"mysql-pool-proxy: {where} is not serving: {e}", file=sys.stderr)
        return 1
    print(f"{where}: {greeting.server_version}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mysql-pool-proxy", description="MySQL/MariaDB connection pooler")
    parser.add_argument("--version", action="version", version=f"mysql-pool-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (
        ("run", "serve clients"),
        ("check", "validate the config and print what it would do"),
        ("health", "exit 0 if the proxy configured in FILE answers with a greeting (for health checks)"),
    )
    for name, text in commands:
        p = sub.add_parser(name, help=text)
        p.add_argument("-c", "--config", default=config_mod.DEFAULT_PATH, help=f"YAML file (default {config_mod.DEFAULT_PATH})")
        if name == "health":
            p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the greeting (default 3)")
        else:
            p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides log_level")
    args = parser.parse_args(argv)
    try:
        if args.command == "health":
            return cmd_health(config_mod.load_listen(args.config), args.timeout)
        cfg = config_mod.load(args.config)
        for spec in cfg.pools:
            tls.backend_context(spec.backend)  # a certificate file that does not load is a config error too
        tls.listen_context(cfg.listen)
    except config_mod.ConfigError as e:
        print(f"mysql-pool-proxy: config error: {e}", file=sys.stderr)
        return 2
    if args.command == "check":
        return cmd_check(cfg, args.config)
    _setup_logging(args.log_level or cfg.log_level)
    loop_name = _install_uvloop()
    from .server import ProxyServer

    log.info("mysql-pool-proxy %s starting (%s)", __version__, loop_name)
    # The relay allocates many short-lived objects and few cycles: collect
    # cycles less often, and never rescan what was loaded at start.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        asyncio.run(ProxyServer(cfg, args.config).serve())
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
