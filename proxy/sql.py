"""A tiny statement classifier for what the server's session tracker does not report.

The server tells us about variables, schema, transactions and "something else
changed" (user variables, temporary tables). It says nothing about named locks,
LOCK TABLES, SQL-level PREPARE, SQL_CALC_FOUND_ROWS or statements that ask about
the previous one. One precompiled search decides whether a query needs a closer
look at all; almost every query does not, and costs one regex scan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Flag, auto


class Kind(Flag):
    NONE = 0
    LOCK_TABLES = auto()  # LOCK TABLES, FLUSH TABLES ... WITH READ LOCK
    UNLOCK_TABLES = auto()
    GET_LOCK = auto()
    RELEASE_LOCK = auto()
    RELEASE_ALL_LOCKS = auto()
    PREPARE = auto()  # SQL-level PREPARE name FROM ...
    DEALLOCATE = auto()
    CALC_FOUND_ROWS = auto()
    XA_START = auto()
    XA_END = auto()  # XA COMMIT / XA ROLLBACK
    HANDLER_OPEN = auto()
    KILL = auto()
    CONNECTION_ID = auto()
    FOLLOW_UP = auto()  # asks about the previous statement (warnings, row count ...)
    SET_TRANSACTION = auto()  # characteristics of the next transaction only
    USER_VARIABLE = auto()
    TEMPORARY_TABLE = auto()
    LOAD_LOCAL = auto()  # LOAD DATA / LOAD XML ... LOCAL INFILE
    SETS_LAST_INSERT_ID = auto()  # LAST_INSERT_ID(expr): the new value may only be in a result set
    USER_VARIABLE_ASSIGNED = auto()  # @v := ..., INTO @v, CALL p(@v): no tracker reports these


@dataclass
class Classified:
    kind: Kind = Kind.NONE
    names: list[str] = field(default_factory=list)  # PREPARE / DEALLOCATE statement names
    kill_id: int | None = None
    kill_query_only: bool = False


# One scan finds whether anything is worth a closer look: a necessary condition for every
# rule below (tests/test_sql_session.py checks that it never hides one). Each word is
# found through one of its rarer letters (k, p, w, x, h, _, g, c, @), then look-arounds
# check the rest: a pattern whose branches all start with a literal lets the regex engine
# skip ahead to those letters in C instead of trying every word at every position
# (3 to 4 times faster; the query text is scanned for every COM_QUERY).
_TRIGGER = re.compile(
    rb"@|k(?<=lock)|k(?=ill)|p(?=repare)|p(?<=temp)(?=orary)|w(?<=show)|w(?<=found_row)|x(?=a\b)"
    rb"|h(?=andler)|_(?<=connection_)(?=id)|_(?<=row_)(?=count)|_(?<=insert_)(?=id)"
    rb"|g(?<=diag)(?=nostics)|c(?<=transac)(?=tion)|c(?<=loc)(?=al)"
)
# Statement-leading keywords: at the start, after a ';', or after leading comments.
_LEAD = rb"(?:^|;)\s*(?:(?:/\*.*?\*/|--\s[^\n]*(?:\n|$)|#[^\n]*(?:\n|$))\s*)*"
_RULES: list[tuple[Kind, re.Pattern[bytes]]] = [
    (Kind.LOCK_TABLES, re.compile(_LEAD + rb"(?:lock\s+tables?\b|flush\s+tables?\b.*\bwith\s+read\s+lock)", re.S)),
    (Kind.UNLOCK_TABLES, re.compile(_LEAD + rb"unlock\s+tables?\b", re.S)),
    (Kind.GET_LOCK, re.compile(rb"\bget_lock\s*\(")),
    (Kind.RELEASE_LOCK, re.compile(rb"\brelease_lock\s*\(")),
    (Kind.RELEASE_ALL_LOCKS, re.compile(rb"\brelease_all_locks\s*\(")),
    (Kind.CALC_FOUND_ROWS, re.compile(rb"\bsql_calc_found_rows\b")),
    (Kind.XA_START, re.compile(_LEAD + rb"xa\s+(?:start|begin)\b", re.S)),
    (Kind.XA_END, re.compile(_LEAD + rb"xa\s+(?:commit|rollback)\b", re.S)),
    (Kind.HANDLER_OPEN, re.compile(_LEAD + rb"handler\s+\S+\s+open\b", re.S)),
    (Kind.CONNECTION_ID, re.compile(rb"\bconnection_id\s*\(\s*\)")),
    (
        Kind.FOLLOW_UP,
        re.compile(
            rb"\brow_count\s*\(|\bfound_rows\s*\(|@@(?:session\.)?(?:warning_count|error_count)\b|"
            + _LEAD
            + rb"(?:show\s+(?:count\s*\(\s*\*\s*\)\s+)?(?:warnings|errors)\b|get\s+(?:current\s+|stacked\s+)?diagnostics\b)",
            re.S,
        ),
    ),
    (Kind.SET_TRANSACTION, re.compile(_LEAD + rb"set\s+transaction\b", re.S)),
    (Kind.USER_VARIABLE, re.compile(rb"(?<![@\w])@(?!@)")),
    (Kind.TEMPORARY_TABLE, re.compile(rb"\bcreate\s+(?:or\s+replace\s+)?temporary\s+table\b")),
    (Kind.SETS_LAST_INSERT_ID, re.compile(rb"\blast_insert_id\s*\(\s*[^\s)]")),
    (Kind.USER_VARIABLE_ASSIGNED, re.compile(rb"(?<![@\w])@`?\w+`?\s*:=|\binto\s+@(?!@)|\bcall\b[^;]*(?<![@\w])@(?!@)", re.S)),
    (Kind.LOAD_LOCAL, re.compile(_LEAD + rb"load\s+(?:data|xml)\s+(?:(?:low_priority|concurrent)\s+)?local\b", re.S)),
]
_PREPARE = re.compile(_LEAD + rb"prepare\s+`?(\w+)`?\s+from\b", re.S)
_DEALLOCATE = re.compile(_LEAD + rb"(?:deallocate|drop)\s+prepare\s+`?(\w+)`?", re.S)
_KILL = re.compile(_LEAD + rb"kill\s+(?:(hard|soft)\s+)?(?:(query|connection)\s+)?(\d+)\s*;?\s*$", re.S)


# Only the head of a statement is classified: a 16 MiB INSERT must not stall
# the event loop in regex scans (what matters is at the start or near it).
CLASSIFY_LIMIT = 64 * 1024


def classify(sql: bytes) -> Classified | None:
    """None for the common query that needs no special handling."""
    # One lowercase copy of the head; every pattern here is written in lowercase.
    sql = sql[:CLASSIFY_LIMIT].lower()
    if not _TRIGGER.search(sql):
        return None
    return _classify_lowered(sql)


def _classify_lowered(sql: bytes) -> Classified | None:
    """Every rule, without the trigger's shortcut."""
    out = Classified()
    for kind, rule in _RULES:
        if rule.search(sql):
            out.kind |= kind
    for m in _PREPARE.finditer(sql):
        out.kind |= Kind.PREPARE
        out.names.append(m.group(1).decode())
    for m in _DEALLOCATE.finditer(sql):
        out.kind |= Kind.DEALLOCATE
        out.names.append(m.group(1).decode())
    kill = _KILL.search(sql)
    if kill:
        out.kind |= Kind.KILL
        out.kill_id = int(kill.group(3))
        out.kill_query_only = bool(kill.group(2)) and kill.group(2).lower() == b"query"
    return out if out.kind else None


def rewrite_call(sql: bytes, function: str, value: int) -> bytes:
    """Replace ``FUNCTION()`` with a value the proxy knows (the column keeps its name when alone)."""
    name = function.encode()
    alone = re.match(rb"^\s*select\s+(" + name + rb"\s*\(\s*\))\s*;?\s*$", sql, re.I)
    if alone:
        return b"SELECT %d AS `%s`" % (value, alone.group(1))
    return re.sub(rb"\b" + name + rb"\s*\(\s*\)", b"(%d)" % value, sql, flags=re.I)


def rewrite_connection_id(sql: bytes, proxy_id: int) -> bytes:
    """Make CONNECTION_ID() answer the id the client's greeting gave it."""
    return rewrite_call(sql, "connection_id", proxy_id)
