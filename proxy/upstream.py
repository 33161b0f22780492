"""One named pool and what the proxy learns of the server behind it.

A proxy has one Upstream per configured pool. Each owns its Pool (the cap), the TLS
context its links use, and the facts read from its server on the first link: collation
ids, the account's connection limit, the schemas known to exist. Clients are routed to
one by the user name they log in with (``Config.pool_of``).
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any

from .backend import BackendLink, LinkLost, open_link
from .config import PoolSpec
from .mysql.constants import Command
from .mysql.messages import ServerError
from .pool import Pool, PoolTimeout
from .session import CHARSET_VARIABLES

log = logging.getLogger("proxy.upstream")

_GRANT_LIMIT = re.compile(r"MAX_USER_CONNECTIONS\s+(\d+)", re.I)
# SET NAMES answers kept per server: one per (charset, collation, context) a client sent.
MAX_CHARSET_ANSWERS = 64


@dataclass(frozen=True, slots=True)
class CharsetAnswer:
    """What this server did for one SET NAMES: the character-set variables it set, and the
    session-state block a client with default trackers got in its OK (no warnings, no error)."""

    values: dict[str, str]
    block: bytes


class Upstream:
    def __init__(self, spec: PoolSpec, backend_tls: ssl.SSLContext | None) -> None:
        """``backend_tls``: ``tls.backend_context(spec.backend)``, built by the caller first so that a
        certificate that does not load fails the start or the reload before anything changes."""
        self.spec = spec
        self.backend_tls = backend_tls
        self.pool = Pool(spec.pool, self._connect)
        self.pool.on_first_link = self._learn_server
        self.known_schemas: set[str] = set()
        self.collations: dict[int, tuple[str, str]] = {}
        # Each character set's default collation (IS_DEFAULT; MariaDB 11.2+'s character_set_collations aside).
        self.default_collations: dict[str, str] = {}
        self.account_limit: int | None = None
        # information_schema.PROCESSLIST's columns on this server (they differ by flavour), for
        # sql.rewrite_processlist_table; empty until the first link has told.
        self.processlist_columns: list[str] = []
        # Whether a new session's sql_mode lets backslashes escape in strings (the lexer's reading
        # of '\''); None until a link has told. Read again on each link: a reload may change servers.
        self.backslash_escapes: bool | None = None
        # SET NAMES answers learned from this server (frontend: answered by the proxy from then on).
        self.charset_answers: dict[tuple[object, ...], CharsetAnswer] = {}
        # The character-set variables the server gave the last link for the handshake collation
        # links log in with (backend.collation), as read back on it; empty until a link has told.
        self.link_charset: dict[str, str] = {}
        # Handshake collation ids the server replaces by another default (see _learn_server).
        self.remapped: dict[int, tuple[str, str]] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    async def _connect(self, kind: int, on_idle_death: Any, timeout: float) -> BackendLink:
        link = await open_link(self.spec.backend, kind=kind, timeout=timeout, tls=self.backend_tls,
                               on_idle_death=on_idle_death)
        if link.facts.sql_mode is not None:
            self.backslash_escapes = "NO_BACKSLASH_ESCAPES" not in link.facts.sql_mode.upper()
        self.link_charset = {n: link.state.variables[n] for n in CHARSET_VARIABLES if n in link.state.variables}
        return link

    def charset_variables(self, collation_id: int) -> dict[str, str]:
        """The character-set variables a client's handshake collation sets (as the server would)."""
        found = self.remapped.get(collation_id) or self.collations.get(collation_id)
        if (found is None or collation_id == self.spec.backend.collation) and len(self.link_charset) == 4:
            # What the server itself made of that id on a link: MariaDB 11.2+ turns a character
            # set's primary collation (utf8mb4_general_ci) into its @@character_set_collations
            # choice (utf8mb4_uca1400_ai_ci); MySQL and MariaDB 10 keep it.
            return dict(self.link_charset)
        found = found or self.collations.get(self.spec.backend.collation)
        if found is None:
            return {}
        charset, collation = found
        return dict(zip(CHARSET_VARIABLES, (charset, charset, charset, collation)))

    def learn_charset_answer(self, key: tuple[object, ...], answer: CharsetAnswer) -> None:
        if key in self.charset_answers or len(self.charset_answers) < MAX_CHARSET_ANSWERS:
            self.charset_answers[key] = answer

    async def _learn_server(self, link: BackendLink) -> None:
        """On the first link: collation ids, the account's connection limit."""
        link.set_held()
        collations, grants, limit, charsets = await link.exchange([
            (Command.QUERY, b"SELECT ID, CHARACTER_SET_NAME, COLLATION_NAME, IS_DEFAULT FROM information_schema.COLLATIONS"),
            (Command.QUERY, b"SHOW GRANTS"),
            (Command.QUERY, b"SELECT @@max_user_connections"),
            (Command.QUERY, b"SELECT CHARACTER_SET_NAME, DEFAULT_COLLATE_NAME FROM information_schema.CHARACTER_SETS"),
        ])
        rows = collations.rows()
        self.collations = {int(r[0] or 0): (r[1] or "", r[2] or "") for r in rows}
        self.default_collations = {r[1] or "": r[2] or "" for r in rows if (r[3] or "").lower() == "yes"}
        # MariaDB 11.2+ (@@character_set_collations): a character set it maps to another default
        # has no IS_DEFAULT collation left, and a handshake naming its primary collation (the
        # <charset>_general_ci of the Unicode sets mapped by default) gets the mapped one.
        defaults = {r[0] or "": r[1] or "" for r in charsets.rows()}
        self.remapped = {i: (cs, defaults[cs]) for i, (cs, name) in self.collations.items()
                         if cs not in self.default_collations and name == f"{cs}_general_ci"
                         and defaults.get(cs, name) != name}
        (columns,) = await link.exchange([(Command.QUERY, b"SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE "
                                           b"TABLE_SCHEMA = 'information_schema' AND TABLE_NAME = 'PROCESSLIST' "
                                           b"ORDER BY ORDINAL_POSITION")])
        self.processlist_columns = [r[0] or "" for r in columns.rows()]
        limit_value = None
        for (grant,) in grants.rows():
            m = _GRANT_LIMIT.search(grant or "")
            if m and int(m.group(1)) > 0:
                limit_value = int(m.group(1))
        if limit_value is None:
            global_limit = int(limit.rows()[0][0] or 0)
            limit_value = global_limit or None
        self.account_limit = limit_value
        cap = self.spec.pool.max_connections
        if limit_value is not None and cap > limit_value:
            log.warning(
                "pool %s: max_connections %d exceeds the account's limit of %d connections "
                "(max_user_connections); the proxy will hold at most what the server allows",
                self.name, cap, limit_value,
            )
        if link.facts.wait_timeout and self.spec.pool.idle_timeout >= link.facts.wait_timeout:
            log.warning(
                "pool %s: idle_timeout %gs is not below the server's wait_timeout %ds; "
                "the server will drop idle links first (they are replaced, but set idle_timeout lower)",
                self.name, self.spec.pool.idle_timeout, link.facts.wait_timeout,
            )

    async def warm_up(self) -> None:
        """Open one link at start: learn the server version for greetings and check the account."""
        try:
            link = await self.pool.acquire(False)
        except PoolTimeout as e:
            log.warning("pool %s: server not reachable at start (%s); clients will queue until it is",
                        self.name, e.message)
            return
        self.pool.release(link)

    async def kill_backend_thread(self, thread_id: int, query_only: bool) -> None:
        """KILL [QUERY] on the server, run on a pooled link (never outside the cap)."""
        try:
            link = await self.pool.acquire(False)
        except PoolTimeout as e:
            log.warning("KILL of thread %d not sent: %s", thread_id, e.message)
            return
        try:
            link.set_held()
            await link.exchange([(Command.QUERY, b"KILL %s%d" % (b"QUERY " if query_only else b"", thread_id))])
        except ServerError as e:
            log.info("KILL of thread %d: %s", thread_id, e.message)
        except (LinkLost, OSError):
            self.pool.discard(link)
            return
        self.pool.release(link)

    def apply(self, spec: PoolSpec, backend_tls: ssl.SSLContext | None) -> None:
        """A reload's new settings for this pool: links opened from now on follow them."""
        if spec.backend != self.spec.backend:
            # New credentials or address: no link of the old ones is lent again.
            self.pool.retire_all()
            self.known_schemas.clear()
            self.charset_answers.clear()
        self.spec = spec
        self.backend_tls = backend_tls
        self.pool.resize(spec.pool)
