"""Command line: ``mysql-pool-proxy run -c FILE`` and ``mysql-pool-proxy check -c FILE``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from . import __version__
from . import config as config_mod

log = logging.getLogger("proxy")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _install_uvloop() -> str:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


def cmd_check(cfg: config_mod.Config, path: str) -> int:
    b, p, listen = cfg.backend, cfg.pool, cfg.listen
    print(f"config {path}: OK")
    print(f"  listen      {listen.host}:{listen.port} (auth {listen.auth_plugin}, at most {listen.max_client_connections} clients)")
    where = b.unix_socket or f"{b.host}:{b.port}"
    print(f"  backend     {b.user}@{where}" + (f" database {b.database}" if b.database else ""))
    print(f"  pool '{p.name}'  at most {p.max_connections} server connections; clients wait up to {p.queue_timeout:g}s")
    who = ", ".join(u.user for u in cfg.users) if cfg.users else f"{b.user} (the backend account)"
    print(f"  clients     log in as {who}")
    for w in cfg.warnings:
        print(f"  warning: {w}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mysql-pool-proxy", description="MySQL/MariaDB connection pooler")
    parser.add_argument("--version", action="version", version=f"mysql-pool-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "serve clients"), ("check", "validate the config and print what it would do")):
        p = sub.add_parser(name, help=text)
        p.add_argument("-c", "--config", default=config_mod.DEFAULT_PATH, help=f"YAML file (default {config_mod.DEFAULT_PATH})")
        p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides log_level")
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
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
