"""YAML configuration, validated into dataclasses.

Every error names the key path (``pool.max_connections``) and what is wrong, so
``mysql-pool-proxy check`` can tell an operator exactly which line to fix.
The top level holds either one ``backend`` and one ``pool`` (a single pool, named by
``pool.name``), or ``pools``: named pools, each with its own server account, limits and
client users; there a top-level ``backend`` and ``pool`` are defaults every pool inherits.
A client's login name decides its pool, so each name may reach one pool only.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = "/etc/mysql-pool-proxy/config.yaml"
AUTH_PLUGINS = ("mysql_native_password", "caching_sha2_password")
# backend.tls, named as the mysql client's --ssl-mode values are.
TLS_MODES = ("disabled", "preferred", "required", "verify_ca", "verify_identity")


def _is_loopback(host: str) -> bool:
    """A host name or address that stays on this machine."""
    return host in ("localhost", "::1") or host.startswith("127.")


class ConfigError(ValueError):
    """A configuration problem, with the key path it concerns."""


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 3307
    # Plugin named in the greeting; clients that scramble for the other one are accepted with it, others
    # get an auth switch. caching_sha2_password: MySQL 8.4/9 clients (libmysqlclient 9 has no
    # mysql_native_password) only log in when the greeting offers it; MariaDB clients answer either.
    auth_plugin: str = "caching_sha2_password"
    # Clients that connect and do not finish the handshake within this many seconds are dropped.
    handshake_timeout: float = 10.0
    max_client_connections: int = 10000
    # Also listen on this unix socket path (clients: mysql -S PATH, or host "localhost" in
    # libmysqlclient-based drivers). Same logins as over TCP; local processes only.
    unix_socket: str | None = None
    # TLS for clients: offered when a certificate and its key are given (PEM).
    tls_cert: str | None = None
    tls_key: str | None = None
    # Mutual TLS: clients on TLS must present a certificate this CA (PEM) signed.
    tls_ca: str | None = None
    # Refuse TCP clients that log in without TLS (unix socket clients are local, as for mysqld).
    require_tls: bool = False

    @property
    def address(self) -> str:
        """Where clients reach the proxy, for logs and status lines."""
        return f"{self.host}:{self.port}" + (f" and {self.unix_socket}" if self.unix_socket else "")


@dataclass(frozen=True)
class BackendConfig:
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = ""
    password: str = field(default="", repr=False)
    password_file: str | None = None
    unix_socket: str | None = None
    # Schema a link opens with when the client names none.
    database: str | None = None
    # Collation id a backend link is opened with (45 = utf8mb4_general_ci).
    collation: int = 45
    # TLS to the server: one of TLS_MODES; None picks by address (see tls_mode).
    tls: str | None = None
    tls_ca: str | None = None  # CA bundle for verify_ca / verify_identity (default: the system's)
    tls_cert: str | None = None  # a client certificate, for accounts created REQUIRE X509
    tls_key: str | None = None

    @property
    def address(self) -> str:
        """Where links go: the unix socket when one is set (it wins over host and port)."""
        return self.unix_socket or f"{self.host}:{self.port}"

    @property
    def tls_mode(self) -> str:
        """The TLS mode in force. Unset: 'verify_ca' when a CA is given (as the mysql client does),
        else 'preferred' over a network, as mysql clients do, and 'disabled' over a unix socket or
        loopback, where TLS would cost CPU and protect nothing."""
        if self.tls is not None:
            return self.tls
        if self.tls_ca:
            return "verify_ca"
        if self.unix_socket or _is_loopback(self.host):
            return "disabled"
        return "preferred"


@dataclass(frozen=True)
class PoolConfig:
    name: str = "main"
    max_connections: int = 5
    queue_timeout: float = 10.0
    connect_timeout: float = 5.0
    # How many links may be connecting at once (no thundering herd after a restart).
    max_concurrent_connects: int = 2
    # COM_PING an idle link before reuse when it sat idle longer than this.
    ping_after_idle: float = 30.0
    # Close links idle longer than this (keep it below the server's wait_timeout).
    idle_timeout: float = 300.0
    # Close links older than this once they are idle.
    max_lifetime: float = 3600.0
    # Roll back and disconnect a client idle inside a transaction for longer (0: never).
    idle_transaction_timeout: float = 0.0
    # Close a client idle this long while it holds a link for itself (pinned: a transaction, a
    # user variable, a lock ...); its link is reset (rolled back) and returns (0: never).
    pinned_idle_timeout: float = 600.0
    # Close a client that reads none of a response for this long (it holds a link meanwhile).
    client_write_timeout: float = 60.0
    # Every link held by a client idle while pinned, and clients waiting this long: a stall (an
    # app waiting for a second connection while its first holds a transaction). A victim's
    # transaction is rolled back (its next statement gets 1213) and its link goes to a waiter.
    stall_timeout: float = 1.0
    # Seconds between reconnect attempts while the server is unreachable grow to this cap.
    reconnect_backoff_max: float = 2.0


@dataclass(frozen=True)
class UserConfig:
    user: str
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class AdminConfig:
    """The admin console: log in as this user (mysql -uadmin -P3307) to run SHOW POOLS etc."""

    user: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics over HTTP (GET /metrics); port 0: off."""

    host: str = "127.0.0.1"
    port: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PoolSpec:
    """One named pool: the server account its links log in with, its limits, who may use it."""

    backend: BackendConfig
    pool: PoolConfig
    # Client accounts. Empty: clients log in with the backend account's own name and password.
    users: tuple[UserConfig, ...] = ()
    # Where its settings sit in the file ('' for the single-pool form, 'pools.NAME.' otherwise).
    key_prefix: str = ""

    @property
    def name(self) -> str:
        return self.pool.name

    def logins(self) -> dict[str, str]:
        """Client user name -> the password it logs in with."""
        if not self.users:
            return {self.backend.user: self.backend.password}
        return {u.user: u.password for u in self.users}


@dataclass(frozen=True)
class Config:
    listen: ListenConfig
    # At least one; the first one's server answers the greeting before a client names its user.
    pools: tuple[PoolSpec, ...]
    admin: AdminConfig = AdminConfig()
    metrics: MetricsConfig = MetricsConfig()
    max_allowed_packet: int = 64 * 1024 * 1024
    shutdown_timeout: float = 30.0
    log_level: str = "info"
    warnings: tuple[str, ...] = ()

    def client_password(self, user: str) -> str | None:
        """The password a client logging in as ``user`` must know, or None if unknown."""
        if self.admin.user and user == self.admin.user:
            return self.admin.password
        for spec in self.pools:
            password = spec.logins().get(user)
            if password is not None:
                return password
        return None

    def pool_of(self, user: str) -> PoolSpec | None:
        """The pool a client logged in as ``user`` uses; None for the admin user and unknown names."""
        for spec in self.pools:
            if user in spec.logins():
                return spec
        return None


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: str, path: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: environment variable {name} is not set")

    return _ENV_RE.sub(sub, value)


def _section(cls: type, raw: Any, path: str, warnings: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, val in raw.items():
        kpath = f"{path}.{key}"
        if key not in known:
            raise ConfigError(f"{kpath}: unknown key (known: {', '.join(sorted(known))})")
        values[key] = _coerce(known[key].type, val, kpath)
    try:
        return cls(**values)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{path}: {e}") from None


def _coerce(type_name: Any, val: Any, path: str) -> Any:
    t = str(type_name)
    if isinstance(val, str):
        val = _interpolate(val, path)
    if t == "bool":
        if isinstance(val, bool):
            return val
        raise ConfigError(f"{path}: expected true or false, got {val!r}")
    if t == "int":
        if isinstance(val, bool) or not isinstance(val, (int, str)):
            raise ConfigError(f"{path}: expected an integer, got {val!r}")
        try:
            return int(val)
        except ValueError:
            raise ConfigError(f"{path}: expected an integer, got {val!r}") from None
    if t == "float":
        if isinstance(val, bool) or not isinstance(val, (int, float, str)):
            raise ConfigError(f"{path}: expected a number of seconds, got {val!r}")
        try:
            return float(val)
        except ValueError:
            raise ConfigError(f"{path}: expected a number, got {val!r}") from None
    if t in ("str", "str | None"):
        if val is None and t == "str | None":
            return None
        if isinstance(val, (dict, list)) or val is None:
            raise ConfigError(f"{path}: expected a string, got {val!r}")
        return str(val)
    raise ConfigError(f"{path}: unsupported type {t}")  # pragma: no cover - programming error


def _read_password_file(path_str: str, key: str, warnings: list[str]) -> str:
    p = Path(path_str)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path_str}: {e.strerror}") from None
    if p.stat().st_mode & stat.S_IROTH:
        warnings.append(f"{key}: {path_str} is world-readable; chmod 600 it")
    return text.rstrip("\r\n")


def _document(raw: Any, source: str) -> dict[str, Any]:
    """The parsed YAML document as a mapping (an empty file is an empty one)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    return raw


def parse(raw: Any, source: str = "<config>") -> Config:
    """Validate a parsed YAML document into a Config."""
    raw = _document(raw, source)
    warnings: list[str] = []
    known = {"listen", "backend", "pool", "pools", "users", "admin", "metrics", "max_allowed_packet",
             "shutdown_timeout", "log_level"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(known))})")
    listen = _section(ListenConfig, raw.get("listen"), "listen", warnings)
    pools = _pools(raw, warnings)

    admin = _section(AdminConfig, raw.get("admin"), "admin", warnings)
    if admin.user and not admin.password:
        raise ConfigError("admin.password: required when admin.user is set")
    for spec in pools:
        if admin.user and admin.user in spec.logins():
            raise ConfigError(f"admin.user: must differ from the users of pool '{spec.name}' "
                              "(the admin console serves no SQL)")
    metrics = _section(MetricsConfig, raw.get("metrics"), "metrics", warnings)
    _check(0 <= metrics.port < 65536, "metrics.port", "must be between 1 and 65535 (0: off)")
    _check(not metrics.port or metrics.port != listen.port, "metrics.port", "must differ from listen.port")

    _check_listen(listen)
    if listen.unix_socket and not Path(listen.unix_socket).parent.is_dir():
        # Not an error: systemd's RuntimeDirectory= makes it only when the service starts.
        warnings.append(f"listen.unix_socket: directory {Path(listen.unix_socket).parent} does not exist (yet)")

    max_packet = _coerce("int", raw.get("max_allowed_packet", 64 * 1024 * 1024), "max_allowed_packet")
    _check(max_packet >= 1024, "max_allowed_packet", "must be at least 1024 bytes")
    shutdown = _coerce("float", raw.get("shutdown_timeout", 30.0), "shutdown_timeout")
    _check(shutdown >= 0, "shutdown_timeout", "must be >= 0")
    level = str(raw.get("log_level", "info")).lower()
    _check(level in ("debug", "info", "warning", "error"), "log_level", "must be debug, info, warning or error")
    if not _is_loopback(listen.host):
        warnings.append(f"listen.host: {listen.host} is not loopback; clients from other hosts can reach the proxy")
    if metrics.port and not _is_loopback(metrics.host):
        warnings.append(f"metrics.host: {metrics.host} is not loopback; other hosts can read the metrics")
    return Config(
        listen=listen,
        pools=pools,
        admin=admin,
        metrics=metrics,
        max_allowed_packet=max_packet,
        shutdown_timeout=shutdown,
        log_level=level,
        warnings=tuple(warnings),
    )


_POOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _pools(raw: dict[str, Any], warnings: list[str]) -> tuple[PoolSpec, ...]:
    """The single-pool form (backend, pool, users) or ``pools``, as a tuple of PoolSpecs."""
    named = raw.get("pools")
    if named is None:
        specs = [_pool_spec(raw.get("backend"), raw.get("pool"), raw.get("users"), "", warnings)]
    else:
        if not isinstance(named, dict) or not named:
            raise ConfigError("pools: expected a mapping of pool names to {backend, pool, users}")
        if raw.get("users") is not None:
            raise ConfigError("users: with pools, each pool lists its own users (pools.NAME.users)")
        # The top-level sections are defaults: check them alone first, so an error names where it is.
        defaults = {key: raw.get(key) or {} for key in ("backend", "pool")}
        _section(BackendConfig, defaults["backend"], "backend", warnings)
        _section(PoolConfig, defaults["pool"], "pool", warnings)
        _check("name" not in defaults["pool"], "pool.name", "with pools, a pool's name is its key under pools")
        specs = []
        for name, body in named.items():
            prefix = f"pools.{name}."
            _check(isinstance(name, str) and bool(_POOL_NAME.match(name)), f"pools.{name}",
                   "a pool name is 1-64 letters, digits, '_', '.' or '-'")
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise ConfigError(f"pools.{name}: expected a mapping with backend, pool and users")
            for key in body:
                _check(key in ("backend", "pool", "users"), f"{prefix}{key}", "unknown key (known: backend, pool, users)")
            own_pool = body.get("pool") or {}
            _check(not (isinstance(own_pool, dict) and "name" in own_pool), f"{prefix}pool.name",
                   "a pool's name is its key under pools")
            merged = {}
            for key in ("backend", "pool"):
                own = body.get(key) or {}
                if not isinstance(own, dict):
                    raise ConfigError(f"{prefix}{key}: expected a mapping, got {type(own).__name__}")
                inherited = dict(defaults[key])
                if key == "backend" and {"password", "password_file"} & own.keys():
                    # A pool's own password or password_file replaces whichever the defaults give.
                    inherited.pop("password", None)
                    inherited.pop("password_file", None)
                merged[key] = {**inherited, **own}
            merged["pool"]["name"] = name
            specs.append(_pool_spec(merged["backend"], merged["pool"], body.get("users"), prefix, warnings))
    _warn_shared_accounts(specs, warnings)
    owner: dict[str, str] = {}
    for spec in specs:
        for user in spec.logins():
            if user in owner:
                raise ConfigError(f"{spec.key_prefix}users: user '{user}' already logs in to pool '{owner[user]}'; "
                                  "a client's user name picks its pool, so it can reach one pool only")
            owner[user] = spec.name
    return tuple(specs)


def _warn_shared_accounts(specs: list[PoolSpec], warnings: list[str]) -> None:
    """Pools that log in as the same server account share its max_user_connections."""
    by_account: dict[tuple[str, str], list[PoolSpec]] = {}
    for spec in specs:
        by_account.setdefault((spec.backend.user, spec.backend.address), []).append(spec)
    for (user, address), shared in by_account.items():
        if len(shared) > 1:
            names = ", ".join(f"'{s.name}'" for s in shared)
            total = sum(s.pool.max_connections for s in shared)
            warnings.append(f"pools {names} all log in as {user}@{address}: together they may open {total} "
                            "connections against that account's max_user_connections")


def _pool_spec(backend_raw: Any, pool_raw: Any, users_raw: Any, prefix: str, warnings: list[str]) -> PoolSpec:
    backend = _section(BackendConfig, backend_raw, f"{prefix}backend", warnings)
    pool = _section(PoolConfig, pool_raw, f"{prefix}pool", warnings)
    if backend.password_file:
        if backend.password:
            raise ConfigError(f"{prefix}backend: give either password or password_file, not both")
        backend = _replace(backend, password=_read_password_file(backend.password_file,
                                                                 f"{prefix}backend.password_file", warnings))
    if not backend.user:
        raise ConfigError(f"{prefix}backend.user: required (the MySQL account the pool logs in with)")
    _check_backend_tls(backend, f"{prefix}backend")
    _check(0 < backend.port < 65536, f"{prefix}backend.port", "must be between 1 and 65535")
    _check(0 < backend.collation < 2048, f"{prefix}backend.collation", "must be a collation id")
    p = f"{prefix}pool"
    _check(pool.max_connections >= 1, f"{p}.max_connections", "must be at least 1")
    _check(pool.queue_timeout > 0, f"{p}.queue_timeout", "must be > 0 seconds")
    _check(pool.connect_timeout > 0, f"{p}.connect_timeout", "must be > 0 seconds")
    _check(pool.max_concurrent_connects >= 1, f"{p}.max_concurrent_connects", "must be at least 1")
    for key in ("ping_after_idle", "idle_timeout", "max_lifetime", "idle_transaction_timeout", "pinned_idle_timeout",
                "client_write_timeout", "stall_timeout"):
        _check(getattr(pool, key) >= 0, f"{p}.{key}", "must be >= 0 (0 disables it)")
    _check(pool.reconnect_backoff_max > 0, f"{p}.reconnect_backoff_max", "must be > 0")
    if users_raw is None:
        users_raw = []
    if not isinstance(users_raw, list):
        raise ConfigError(f"{prefix}users: expected a list of {{user, password}}")
    users = tuple(_section(UserConfig, u, f"{prefix}users[{i}]", warnings) for i, u in enumerate(users_raw))
    return PoolSpec(backend=backend, pool=pool, users=users, key_prefix=prefix)


def _replace(obj: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(obj, **changes)


def _check_listen(listen: ListenConfig) -> None:
    _check(listen.auth_plugin in AUTH_PLUGINS, "listen.auth_plugin", f"must be one of {', '.join(AUTH_PLUGINS)}")
    _check(0 < listen.port < 65536, "listen.port", "must be between 1 and 65535")
    _check(listen.handshake_timeout > 0, "listen.handshake_timeout", "must be > 0")
    _check(listen.max_client_connections > 0, "listen.max_client_connections", "must be > 0")
    if listen.unix_socket is not None:
        _check_socket_path(listen.unix_socket, "listen.unix_socket")
    _check((listen.tls_cert is None) == (listen.tls_key is None), "listen.tls_cert", "give tls_cert and tls_key together")
    _check(not listen.require_tls or listen.tls_cert is not None, "listen.require_tls",
           "needs listen.tls_cert and listen.tls_key")
    _check(listen.tls_ca is None or listen.tls_cert is not None, "listen.tls_ca",
           "needs listen.tls_cert and listen.tls_key (the proxy's own certificate)")
    for key in ("tls_cert", "tls_key", "tls_ca"):
        _check_readable(getattr(listen, key), f"listen.{key}")


def _check_backend_tls(backend: BackendConfig, key: str) -> None:
    _check(backend.tls is None or backend.tls in TLS_MODES, f"{key}.tls", f"must be one of {', '.join(TLS_MODES)}")
    mode = backend.tls_mode
    if mode == "verify_identity":
        _check(not backend.unix_socket, f"{key}.tls", "verify_identity checks the certificate against backend.host; "
               "it cannot be used with backend.unix_socket")
    _check((backend.tls_cert is None) == (backend.tls_key is None), f"{key}.tls_cert",
           "give tls_cert and tls_key together")
    # A CA that is silently not checked would give a false sense of safety.
    _check(not (backend.tls_ca and mode in ("preferred", "required")), f"{key}.tls_ca",
           f"only verify_ca and verify_identity check the server's certificate (backend.tls is {mode})")
    for name in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(backend, name)
        if path is not None:
            _check(mode != "disabled", f"{key}.{name}", f"set, but TLS to the server is disabled (backend.tls: {mode})")
            _check_readable(path, f"{key}.{name}")


def _check_readable(path: str | None, key: str) -> None:
    """A file the proxy reads when it starts and reloads (certificates, keys): fail at check time."""
    _check(path is None or (Path(path).is_file() and os.access(path, os.R_OK)), key, f"cannot read {path}")


def _check_socket_path(path_str: str, key: str) -> None:
    # sun_path holds 108 bytes with its terminating NUL; the kernel refuses longer paths.
    _check(path_str.startswith("/"), key, "must be an absolute path")
    _check(len(os.fsencode(path_str)) < 108, key, "too long for a unix socket path (at most 107 bytes)")


def _check(ok: bool, path: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {problem}")


def _read_yaml(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML file."""
    return parse(_read_yaml(path), str(path))


def load_listen(path: str | os.PathLike[str]) -> ListenConfig:
    """Only the ``listen`` section: where the proxy that FILE configures can be reached.

    For ``health``, which probes a running proxy from outside its service: it needs no
    password, so it must not fail on one that only the service's environment provides
    (``${MYSQL_PASSWORD}`` from an EnvironmentFile, a systemd credential).
    """
    raw = _document(_read_yaml(path), str(path))
    listen: ListenConfig = _section(ListenConfig, raw.get("listen"), "listen", [])
    _check_listen(listen)
    return listen
