"""The SQL lexer, and what a statement may leave behind on its link.

The server's session trackers report variables, the schema, the transaction and "something else
changed". They say nothing of named locks, LOCK TABLES, SQL PREPARE, HANDLER, XA,
SQL_CALC_FOUND_ROWS, user variables assigned inside a SELECT, or whatever a stored routine does.
This module reads the whole statement, once, and says what it may leave. A link is shared only
when both witnesses, the trackers and this lexer, say it is clean; whatever the lexer cannot read
with certainty (an unknown statement, a stored function or procedure, an unterminated string or
comment) pins.

How, in time linear in the statement's length:

1. ``_FAST``: most statements are one plain SELECT / INSERT / UPDATE / DELETE / REPLACE with no
   quote, comment, parenthesis, '@' or ';'. One anchored regex proves it (its repeated group has
   disjoint branches, so it cannot backtrack more than once per byte) and ``classify`` is done.
2. Otherwise ``_code``: one pass over the text with ``_LEX``, an alternation whose branches each
   consume a whole string literal, quoted identifier or comment (an unterminated one to the end of
   the text). Out comes the *code*: each literal, quoted identifier and comment becomes one GAP
   byte, and executable comments (``/*! */``, ``/*M! */``) open, since their text is code. Nothing
   inside a literal or a comment can be mistaken for a keyword after that. It is one ``re.sub``
   with a constant replacement, so it runs in C (a few milliseconds per MB).
3. The code is split at ';' into statements, and each is classified by its leading keyword and by
   the functions it calls. Only simple regexes without nested repetition run over the code.

Backslashes: whether ``\\'`` ends a string depends on NO_BACKSLASH_ESCAPES, which the proxy may not
know. A text with a backslash is read both ways; when the readings differ, the statement pins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Flag, auto


class Kind(Flag):
    NONE = 0
    LOCK_TABLES = auto()  # LOCK TABLES, FLUSH TABLES ... WITH READ LOCK / FOR EXPORT
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
    IS_USED_LOCK = auto()  # answers a server thread id: the proxy maps it to the id clients know
    FOLLOW_UP = auto()  # asks about the previous statement (warnings, row count ...)
    SET_TRANSACTION = auto()  # characteristics of the next transaction only
    USER_VARIABLE = auto()
    TEMPORARY_TABLE = auto()
    LOAD_LOCAL = auto()  # LOAD DATA / LOAD XML ... LOCAL INFILE
    SETS_LAST_INSERT_ID = auto()  # LAST_INSERT_ID(expr): the new value may only be in a result set
    USER_VARIABLE_ASSIGNED = auto()  # @v := ..., INTO @v, SET @v, CALL p(@v): pins whatever the tracker says
    UNCERTAIN = auto()  # may leave state the proxy cannot see: a routine, EXECUTE, an unknown form
    PROCESSLIST = auto()  # SHOW [FULL] PROCESSLIST: answered by the proxy with its own ids
    PROCESSLIST_TABLE = auto()  # reads information_schema.PROCESSLIST: its ids are mapped
    TRANSACTION_END = auto()  # COMMIT / ROLLBACK (without AND CHAIN)
    ROLLBACK = auto()  # a plain ROLLBACK: what a client sends after its transaction was lost
    EXECUTE = auto()  # EXECUTE name: does what the text prepared under that name does
    SAVEPOINT = auto()  # part of a transaction though the server may not say one is open
    SESSION_SET = auto()  # alone: exactly one SET NAMES or SET autocommit (session_set), which the proxy may answer


# Kinds that only ever add pins; a statement that failed may still have left them (a
# multi-statement runs up to its failing statement). The others (UNLOCK, RELEASE, DEALLOCATE,
# XA_END, TRANSACTION_END) count only when the whole statement succeeded.
PINNING = (Kind.LOCK_TABLES | Kind.GET_LOCK | Kind.PREPARE | Kind.XA_START | Kind.HANDLER_OPEN
           | Kind.TEMPORARY_TABLE | Kind.USER_VARIABLE_ASSIGNED | Kind.UNCERTAIN | Kind.SET_TRANSACTION)


@dataclass(slots=True)
class Classified:
    kind: Kind = Kind.NONE
    names: list[str] = field(default_factory=list)  # PREPARE / DEALLOCATE statement names, in order
    deallocated: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    # PREPARE name FROM '<text>': what the text does when executed; None when it is not one
    # literal (FROM @var): its EXECUTE may do anything.
    prepared: dict[str, Classified | None] = field(default_factory=dict)
    kill_id: int | None = None  # KILL's id; None with Kind.KILL: a form the proxy does not translate
    kill_query_only: bool = False
    # Named locks by name (a literal, lowercased); None: a name the lexer cannot know (an expression).
    locks_taken: list[bytes | None] = field(default_factory=list)
    locks_released: list[bytes | None] = field(default_factory=list)
    statements: int = 0  # non-empty statements in the text
    # Every statement only reads (SELECT / SHOW ... calling no function with an effect): safe to
    # send again on another link when the first one died before answering.
    read_only: bool = False


# -- step 1: the fast path ---------------------------------------------------------------------

# One plain DML statement: a plain leading keyword, and no quote, comment, '(' '@' ';' '\\' or '#'
# anywhere. Each branch of _FAST_FORBIDDEN starts with a literal byte, so the regex engine skips
# to candidates in C (about 1 ns a byte).
_FAST_LEAD = re.compile(rb"\s*(?:select|insert|update|delete|replace)\s")
_FAST_FORBIDDEN = re.compile(rb"'|\"|`|@|#|;|\\|\(|/\*|--")
# Keywords that matter in such a statement though it has no parenthesis: NEXT VALUE FOR a
# sequence, SQL_CALC_FOUND_ROWS (checked inline in classify). Bound methods: the hot path
# saves an attribute lookup each.
_fast_lead = _FAST_LEAD.match
_fast_forbidden = _FAST_FORBIDDEN.search


# -- step 2: literals and comments out -----------------------------------------------------------

# Where a literal, a quoted identifier, a comment or an executable comment's delimiter was, the
# code has this byte: the rules below read it as whitespace (a literal between two keywords is a
# syntax error, so reading it as a gap can only find more, never less) and as a name before '('.
GAP = b"\x01"


def _lexer(backslash_escapes: bool) -> re.Pattern[bytes]:
    """Each branch consumes a whole token; unrolled loops (``[^']*(?:''[^']*)*``) keep it linear."""
    if backslash_escapes:
        single, double = rb"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'", rb'"[^"\\]*(?:(?:\\.|"")[^"\\]*)*"'
    else:
        single, double = rb"'[^']*(?:''[^']*)*'", rb'"[^"]*(?:""[^"]*)*"'
    # A run of literals with only digits, commas, ')' and spaces between them (a row of a bulk
    # INSERT) is one token: none of those bytes can make a keyword or a call, and a dump's
    # megabyte of rows then costs a few thousand matches instead of a million.
    more = rb"(?:[0-9,.)\s]*(?:%s|%s))*" % (single, double)
    # Every branch starts with a literal byte, so the regex engine skips in C to the next
    # quote, '/', '*', '-' or '#' instead of trying each branch at every position.
    return re.compile(
        single + more + b"|" + double + more
        + rb"|`[^`]*(?:``[^`]*)*`"  # a quoted identifier
        # Executable comments open and end (group 'code'): the text between is code.
        + rb"|/(?P<code>\*(?:m?!|!m?)[0-9]*)|\*(?P<end>/)"
        + rb"|/\*[^*]*(?:\*+[^*/][^*]*)*(?:\*+/|\**\Z)"  # a comment (an unterminated one: to the end)
        + rb"|-(?=-[\x00-\x20]|-\Z)[^\n]*|\#[^\n]*",
        re.S,
    )


_LEX = _lexer(True)
_LEX_NO_ESCAPES = _lexer(False)
_QUOTES = (b"'", b'"', b"`")


def _code(lowered: bytes, lexer: re.Pattern[bytes]) -> tuple[bytes, bool]:
    """The code of ``lowered``, and whether every literal and identifier was terminated.

    One ``sub`` with a constant replacement: it runs in C, a few milliseconds per MB.
    """
    code = lexer.sub(GAP, lowered)
    # A quote left over opened a literal that never ends: the server fails on it, or reads it
    # otherwise than this lexer. Either way the text after it is read as code (more, not less).
    return code, not any(q in code for q in _QUOTES)


# -- step 3: statements -------------------------------------------------------------------------

_LEAD = re.compile(rb"[\s\x01(]*([a-z_]+)")
# Function calls, found in the code read backwards: a '(' (a rare byte, which the regex engine
# skips to in C) and the name before it, with its qualifier. Forwards, the engine would try a
# name at every letter. A GAP as the name is a quoted name, or a comment between a name and its
# '(': unknown, so it pins. Keywords before a parenthesis are in _CALLABLE.
# A qualifier's dot must follow the name (GAP there may be a quoted column: `t`.`c` IN (...)).
_CALL_REVERSED = re.compile(rb"\(\s*(?:\x01|[\w$]+)(?:\s*\.)?")
_NAME_START = frozenset(b"abcdefghijklmnopqrstuvwxyz_\x01")
QUALIFIED = b"."  # the name _call_names gives a qualified call (db.f()): never a built-in


def _call_names(code: bytes) -> set[bytes]:
    """The names called in ``code`` (lowercased), each once."""
    out = set()
    for match in set(_CALL_REVERSED.findall(code[::-1])):  # whole matches: no tuple per call
        if match.endswith(b"."):
            out.add(QUALIFIED)
            continue
        name = match[1:].lstrip(b" \t\r\n\x0b\x0c")
        if name[-1] in _NAME_START:  # "1(" is not a call
            out.add(name[::-1])
    return out


# Where a statement's expressions start, for statements that also name tables and columns
# before a parenthesis (INSERT INTO t (a, b), CREATE TABLE t (...)): after these words.
_INSERT_EXPRESSIONS = re.compile(rb"\b(?:values?|select|set)\b")
_DDL_EXPRESSIONS = re.compile(rb"\bselect\b")
# LOAD DATA's SET clause, `SET col = expr` (not CHARACTER SET x).
_LOAD_EXPRESSIONS = re.compile(rb"\bset[\s\x01]+(?:[\w$]+|\x01)(?:[\s\x01]*\.[\s\x01]*(?:[\w$]+|\x01))?[\s\x01]*=")
# A common table expression's column list, `name (a, b) AS (`: not a call.
_CTE_COLUMNS = re.compile(rb"(?:[a-z_][\w$]*|\x01)[\s\x01]*\([^()]*\)[\s\x01]*as[\s\x01]*\(")
# Leads whose statements evaluate no expression the lexer must look into.
_NO_EXPRESSIONS = frozenset(
    b"drop rename truncate analyze optimize check checksum repair grant revoke help install uninstall purge reset "
    b"change binlog cache savepoint release use start stop commit rollback begin flush xa lock unlock prepare "
    b"deallocate kill shutdown restart backup".split()
)
def _gaps(pattern: bytes) -> re.Pattern[bytes]:
    """A rule over code, written readably: a space stands for one or more gaps (whitespace, or
    GAP where a literal or comment was), '~' for zero or more."""
    return re.compile(pattern.replace(b" ", rb"[\s\x01]+").replace(b"~", rb"[\s\x01]*"))


_USER_VAR = re.compile(rb"@(?<!@@)(?!@)")
_USER_VAR_ASSIGNED = _gaps(rb"@(?<!@@)(?:[\w$.]+|\x01)~:=|\binto @(?!@)")
_DIAGNOSTIC_VAR = re.compile(rb"@@(?:session\.|local\.)?(?:warning_count|error_count)\b")
_SEQUENCE = _gaps(rb"(?:n(?<![\w$]n)ext|p(?<![\w$]p)revious) value for\b")
_ROUTINE_DEFINITION = _gaps(rb"create (?:or replace )?(?:definer~=[^\s]* )?"
                            rb"(?:aggregate )?(?:procedure|function|trigger|event|package)\b")
_KILL = _gaps(rb"kill (?:(hard|soft) )?(?:(query|connection) )?(?:id )?(\d+)~\Z")
_PREPARE = _gaps(rb"prepare ([\w$]+) from\b")
_EXECUTE = _gaps(rb"execute ([\w$]+)\b")
_DEALLOCATE = _gaps(rb"(?:deallocate|drop) prepare ([\w$]+)")
_TRANSACTION_END = _gaps(rb"(commit|rollback)(?: work)?(?: and no chain)?(?: (?:no )?release)?~\Z")
_FOLLOW_UP_SHOW = _gaps(rb"show (?:count~\(~\*~\) )?(?:warnings|errors)\b")
_PROCESSLIST = _gaps(rb"show (?:full )?processlist~\Z")
_WRITES = _gaps(rb"\b(?:insert|update|delete|replace|into|for update|for share|lock in|analyze)\b")
_SET_TRANSACTION = _gaps(rb"set transaction\b")
_SET_ROLE = _gaps(rb"set (?:role|default role)\b")
_TEMPORARY = _gaps(rb"create (?:or replace )?temporary\b")
_LOCK_TABLES = _gaps(rb"lock tables?\b")
_UNLOCK_TABLES = _gaps(rb"unlock tables?\b")
_FLUSH_LOCK = _gaps(rb"\bwith read lock\b|\bfor export\b")
_XA_START = _gaps(rb"xa (?:start|begin)\b")
_XA_END = _gaps(rb"xa (?:commit|rollback)\b")
_HANDLER_OPEN = _gaps(rb"handler [^\s\x01]+ open\b")
_DIAGNOSTICS = _gaps(rb"get (?:current |stacked )?diagnostics\b")
_LOAD_LOCAL = _gaps(rb"load (?:data|xml)\b[^;]*?\blocal\b")
_BEGIN_COMPOUND = _gaps(rb"begin not atomic\b")
_SETS_LAST_INSERT_ID = _gaps(rb"\blast_insert_id~\(~[^\s\x01)]")

# Leading keyword -> (test of the statement's code, what it finds), the first that matches.
_LEAD_RULES = {
    b"unlock": [(_UNLOCK_TABLES.match, Kind.UNLOCK_TABLES)],
    b"flush": [(_FLUSH_LOCK.search, Kind.LOCK_TABLES)],
    b"xa": [(_XA_START.match, Kind.XA_START), (_XA_END.match, Kind.XA_END)],
    b"handler": [(_HANDLER_OPEN.match, Kind.HANDLER_OPEN)],
    b"show": [(_FOLLOW_UP_SHOW.match, Kind.FOLLOW_UP), (_PROCESSLIST.match, Kind.PROCESSLIST)],
    b"get": [(_DIAGNOSTICS.match, Kind.FOLLOW_UP)],
    b"load": [(_LOAD_LOCAL.match, Kind.LOAD_LOCAL)],
    b"begin": [(_BEGIN_COMPOUND.match, Kind.UNCERTAIN)],  # BEGIN NOT ATOMIC: a compound statement
}

# Leading keywords of statements that leave nothing the trackers would not report, or whose
# effects the rules below find. Anything else is UNCERTAIN.
_KNOWN_LEADS = frozenset(
    b"select insert update delete replace with values table do set create drop alter rename truncate "
    b"analyze optimize check checksum repair grant revoke explain describe desc help install uninstall "
    b"purge reset change binlog cache signal resignal savepoint release use show start stop commit "
    b"rollback begin load flush xa handler kill lock unlock prepare execute deallocate call get "
    b"shutdown restart".split()
)
_READ_LEADS = frozenset(b"select show values table with explain describe desc help".split())

# Names before '(' that are not stored routines: the built-in functions of MySQL 8.4/9.x and
# MariaDB 10.11/11.x that a pooled statement may call, keywords and type names. A name missing
# here makes its statement pin (a stored function may take a lock or set a variable): safe, and
# visible as "untracked session state" in SHOW CLIENTS.
_CALLABLE = frozenset(
    b"""
    in values value exists any all some as on using over not and or xor when then else from join select where if
    key index primary unique foreign references check constraint partition partitions by default table into set
    case with is like rlike regexp between union except intersect having distinct row rows range lateral
    json_table columns nested path for of match against returns returning interval limit group order window
    char varchar nchar nvarchar character int integer bigint smallint tinyint mediumint decimal dec numeric float
    double real bit binary varbinary enum year time timestamp datetime date text blob national precision
    unsigned signed generated virtual stored persistent system_time tables fulltext spatial period straight_join
    ignore force use
    abs acos asin atan atan2 ceil ceiling conv cos cot crc32 crc32c degrees div exp floor format ln log log10 log2
    mod oct pi pow power radians rand round sign sin sqrt tan truncate
    ascii bin bit_length char_length character_length chr concat concat_ws elt export_set field find_in_set
    from_base64 hex insert instr lcase left length load_file locate lower lpad ltrim make_set mid octet_length ord
    position quote repeat replace reverse right rpad rtrim soundex space strcmp substr substring substring_index
    to_base64 trim ucase unhex upper weight_string natural_sort_key format_bytes format_pico_time sformat
    regexp_instr regexp_like regexp_replace regexp_substr
    adddate addtime convert_tz curdate current_date current_time current_timestamp curtime date_add date_format
    date_sub datediff day dayname dayofmonth dayofweek dayofyear extract from_days from_unixtime get_format hour
    last_day localtime localtimestamp makedate maketime microsecond minute month monthname now period_add
    period_diff quarter sec_to_time second str_to_date subdate subtime sysdate time_format time_to_sec timediff
    timestampadd timestampdiff to_days to_seconds unix_timestamp utc_date utc_time utc_timestamp week weekday
    weekofyear yearweek add_months months_between trunc
    avg bit_and bit_or bit_xor count group_concat json_arrayagg json_objectagg max min std stddev stddev_pop
    stddev_samp sum var_pop var_samp variance cume_dist dense_rank first_value lag last_value lead nth_value
    ntile percent_rank rank row_number median percentile_cont percentile_disc
    cast convert coalesce greatest least ifnull isnull nullif nvl nvl2 decode decode_oracle interval
    benchmark charset coercibility collation current_role current_user database schema found_rows
    last_insert_id row_count session_user system_user user version icu_version roles_graphml
    aes_decrypt aes_encrypt compress uncompress uncompressed_length md5 sha sha1 sha2 password
    random_bytes statement_digest statement_digest_text validate_password_strength kdf des_encrypt des_decrypt
    encrypt old_password encode
    bin_to_uuid uuid uuid_short uuid_to_bin is_uuid inet_aton inet_ntoa inet6_aton inet6_ntoa is_ipv4
    is_ipv4_compat is_ipv4_mapped is_ipv6 any_value default grouping name_const sleep get_lock release_lock
    release_all_locks is_free_lock is_used_lock connection_id nextval lastval setval master_pos_wait
    master_gtid_wait source_pos_wait wait_for_executed_gtid_set gtid_subset gtid_subtract
    column_create column_get column_add column_delete column_exists column_list column_check column_json
    binlog_gtid_pos wsrep_last_seen_gtid wsrep_last_written_gtid wsrep_sync_wait_upto_gtid
    sys_guid to_char soundex ps_current_thread_id ps_thread_id format_pico_time
    geomcollection geometrycollection linestring multilinestring multipoint multipolygon point polygon
    mbrcontains mbrcoveredby mbrcovers mbrdisjoint mbrequals mbrintersects mbroverlaps mbrtouches mbrwithin
    boundary buffer centroid contains crosses dimension disjoint endpoint envelope equals exteriorring
    geometryn geometrytype glength interiorringn intersects isclosed isempty isring issimple numgeometries
    numinteriorrings numpoints overlaps pointn srid startpoint touches within x y
    astext asbinary aswkb aswkt geomfromtext geomfromwkb pointfromtext linefromtext polyfromtext
    """.split()
)
# Prefixes of built-in families (JSON_*, ST_*, REGEXP_*).
_CALLABLE_PREFIXES = (b"json_", b"st_", b"regexp_")
# Built-ins with an effect beyond their answer: never sent twice.
_NOT_PURE = frozenset(
    b"get_lock release_lock release_all_locks nextval lastval setval last_insert_id found_rows row_count "
    b"master_pos_wait master_gtid_wait source_pos_wait wait_for_executed_gtid_set connection_id".split()
)


def _callable(name: bytes) -> bool:
    return name in _CALLABLE or name.startswith(_CALLABLE_PREFIXES)


def _expressions(lead: bytes, s: bytes) -> bytes:
    """The part of statement code ``s`` where a name before '(' is a function call."""
    if lead in _NO_EXPRESSIONS:
        return b""
    if lead == b"insert" or lead == b"replace" or lead == b"load":
        m = (_LOAD_EXPRESSIONS if lead == b"load" else _INSERT_EXPRESSIONS).search(s)
        return s[m.start():] if m else b""
    if lead == b"create" or lead == b"alter":
        if _ROUTINE_DEFINITION.match(s):
            return b""  # its body runs when called, and CALL pins
        m = _DDL_EXPRESSIONS.search(s)
        return s[m.start():] if m else b""
    if lead == b"with":
        return _CTE_COLUMNS.sub(b"(", s)
    return s


# What a leading keyword alone says (the rest of _statement looks further).
_ROUTINE_LEADS = frozenset((b"call", b"backup"))
# A statement's kinds that still let it count as a plain read.
_READ_KINDS = Kind.FOLLOW_UP | Kind.CALC_FOUND_ROWS | Kind.PROCESSLIST | Kind.USER_VARIABLE


def _statement(s: bytes, out: Classified) -> bool:
    """Fold one statement's code into ``out``; True when it only reads."""
    m = _LEAD.match(s)
    if m is None:
        if s.strip(b" \t\r\n\x0b\x0c\x01"):
            out.kind |= Kind.UNCERTAIN
        return True
    out.statements += 1
    lead = m.group(1)
    s = s[m.start(1):]
    kind = Kind.NONE
    read_only = lead in _READ_LEADS
    if lead not in _KNOWN_LEADS or lead in _ROUTINE_LEADS:
        kind |= Kind.UNCERTAIN  # unknown, or a routine / prepared statement: it may do anything
    elif lead == b"select":
        if b"sql_calc_found_rows" in s:
            kind |= Kind.CALC_FOUND_ROWS
    elif lead == b"set":
        if _SET_TRANSACTION.match(s):
            kind |= Kind.SET_TRANSACTION
        elif _SET_ROLE.match(s):
            kind |= Kind.UNCERTAIN
        if _USER_VAR.search(s):
            kind |= Kind.USER_VARIABLE_ASSIGNED  # SET @v (the tracker reports it too)
    elif lead == b"create":
        if _TEMPORARY.match(s):
            kind |= Kind.TEMPORARY_TABLE
    elif lead == b"drop" or lead == b"deallocate":
        d = _DEALLOCATE.match(s)
        if d:
            kind |= Kind.DEALLOCATE
            out.names.append(d.group(1).decode())
            out.deallocated.append(d.group(1).decode())
        elif lead == b"deallocate":
            kind |= Kind.DEALLOCATE  # of a name in quotes: no name to match, so no pin ends
    elif lead == b"prepare":
        kind |= Kind.PREPARE
        p = _PREPARE.match(s)
        if p:
            out.names.append(p.group(1).decode())
            out.prepared[p.group(1).decode()] = None  # its text: see _prepared_texts
        else:
            kind |= Kind.UNCERTAIN  # a quoted name: no DEALLOCATE can be matched to it
    elif lead == b"execute":
        e = _EXECUTE.match(s)
        if e:
            kind |= Kind.EXECUTE
            out.executed.append(e.group(1).decode())
        else:
            kind |= Kind.UNCERTAIN
    elif lead == b"lock":
        kind |= Kind.LOCK_TABLES if _LOCK_TABLES.match(s) else Kind.UNCERTAIN
    elif lead in _LEAD_RULES:
        for test, found in _LEAD_RULES[lead]:
            if test(s):
                kind |= found
                break
    elif lead == b"kill":
        kind |= Kind.KILL
        k = _KILL.match(s)
        if k:
            out.kill_id = int(k.group(3))
            out.kill_query_only = k.group(2) == b"query"
    elif lead == b"savepoint":
        kind |= Kind.SAVEPOINT
    elif lead == b"commit" or lead == b"rollback":
        t = _TRANSACTION_END.match(s)
        if t:
            kind |= Kind.TRANSACTION_END
            if t.group(1) == b"rollback" and b"release" not in s:
                kind |= Kind.ROLLBACK

    # What any statement may hold, wherever it stands.
    if b"@" in s:
        if _USER_VAR.search(s):
            kind |= Kind.USER_VARIABLE
            # CALL p(@v), GET DIAGNOSTICS @n, LOAD DATA ... (@v) assign what they name.
            if lead == b"call" or lead == b"get" or lead == b"load" or _USER_VAR_ASSIGNED.search(s):
                kind |= Kind.USER_VARIABLE_ASSIGNED
        if _DIAGNOSTIC_VAR.search(s):
            kind |= Kind.FOLLOW_UP
    if b"value" in s and _SEQUENCE.search(s):
        kind |= Kind.UNCERTAIN  # sequences: PREVIOUS VALUE FOR is per session
    if read_only and _WRITES.search(s):
        read_only = False  # EXPLAIN ANALYZE, WITH ... DELETE, SELECT ... INTO / FOR UPDATE
    expressions = _expressions(lead, s) if b"(" in s else b""
    if expressions:
        for name in _call_names(expressions):
            if name == b"is_used_lock":
                kind |= Kind.IS_USED_LOCK
            if not _callable(name):
                kind |= Kind.UNCERTAIN  # a stored function (or a quoted name): it may do anything
            elif name in _NOT_PURE:
                read_only = False
                if name == b"get_lock":
                    kind |= Kind.GET_LOCK
                elif name == b"release_lock":
                    kind |= Kind.RELEASE_LOCK
                elif name == b"release_all_locks":
                    kind |= Kind.RELEASE_ALL_LOCKS
                elif name == b"connection_id":
                    kind |= Kind.CONNECTION_ID
                elif name == b"found_rows" or name == b"row_count":
                    kind |= Kind.FOLLOW_UP
                elif name == b"last_insert_id":
                    if _SETS_LAST_INSERT_ID.search(expressions):
                        kind |= Kind.SETS_LAST_INSERT_ID
                else:
                    kind |= Kind.UNCERTAIN  # sequences, replication waits: not for a shared link
    out.kind |= kind
    return read_only and not kind & ~_READ_KINDS


# A named lock call up to its first argument.
_LOCK_CALL = re.compile(rb"\b(get_lock|release_lock)\s*\(\s*")


def _lock_names(lowered: bytes, lexer: re.Pattern[bytes], out: Classified) -> None:
    """The names of GET_LOCK / RELEASE_LOCK calls, in the order of the text (a rare path).

    A name that is not one literal right after the '(' (an expression, a variable, a comment in
    between) is None: a lock nobody can be seen to release, so the session stays pinned."""
    calls: list[tuple[bytes, int]] = []  # (function, where its argument starts)
    literals: dict[int, bytes] = {}  # start -> the literal's text, quotes stripped
    pos = 0
    for m in lexer.finditer(lowered):
        start, end = m.span()
        calls += [(c.group(1), c.end()) for c in _LOCK_CALL.finditer(lowered, pos, start)]
        if m.lastgroup is not None:
            continue  # executable comment delimiters: the text around them is code
        if lowered[start] in b"'\"":
            quote = lowered[start:start + 1]
            literals[start] = lowered[start + 1:end - 1].replace(quote + quote, quote)
        pos = end
    calls += [(c.group(1), c.end()) for c in _LOCK_CALL.finditer(lowered, pos)]
    for function, arg in calls:
        name = literals.get(arg)
        if name is not None and b"\\" in name:
            name = None  # escapes: the server's reading of the name is not certain
        (out.locks_taken if function == b"get_lock" else out.locks_released).append(name)


_PREPARE_FROM = re.compile(rb"\bprepare\s+([\w$]+)\s+from\s*\Z")


def _prepared_texts(sql: bytes, lexer: re.Pattern[bytes], out: Classified) -> None:
    """PREPARE name FROM '<text>': classify the text, for the EXECUTEs of that name (a rare path)."""
    lowered = sql.lower()
    pos = 0
    for m in lexer.finditer(lowered):
        start, end = m.span()
        if m.lastgroup is not None:
            continue
        head = _PREPARE_FROM.search(lowered, pos, start)
        quote = sql[start:start + 1]
        if head and quote in (b"'", b'"') and end - start >= 2:
            # A run of literals is one token: only its first literal is the text.
            literal = _FIRST_LITERAL[quote].match(sql, start)
            name = head.group(1).decode()
            if literal is not None and name in out.prepared:
                body = literal.group(1).replace(quote + quote, quote)
                out.prepared[name] = None if b"\\" in body else classify_all(body)
        pos = end


_FIRST_LITERAL = {b"'": re.compile(rb"'((?:[^']|'')*)'"), b'"': re.compile(rb'"((?:[^"]|"")*)"')}


def _classify_code(code: bytes, certain: bool) -> Classified:
    out = Classified()
    read_only = True
    for statement in code.split(b";"):
        read_only = _statement(statement, out) and read_only
    if not certain:
        out.kind |= Kind.UNCERTAIN
    out.read_only = read_only and certain and out.statements > 0
    if Kind.KILL in out.kind and out.statements > 1:
        out.kill_id = None  # KILL inside a multi-statement: refused, never sent with a backend id
    return out


def classify_all(sql: bytes, backslash_escapes: bool | None = None, lowered: bytes | None = None) -> Classified:
    """The full reading of a statement (no fast path); ``read_only`` is always computed.

    ``backslash_escapes``: whether the session's sql_mode lets '\\' escape in strings (it does
    unless NO_BACKSLASH_ESCAPES); None when unknown: then a text with a backslash is read both
    ways, and pins when the readings differ."""
    if lowered is None:
        lowered = sql.lower()
    lexer = _LEX_NO_ESCAPES if backslash_escapes is False else _LEX
    out = _classify_code(*_code(lowered, lexer))
    if backslash_escapes is None and b"\\" in lowered:
        other = _classify_code(*_code(lowered, _LEX_NO_ESCAPES))
        if other != out:
            # NO_BACKSLASH_ESCAPES would read it otherwise: pin, and never resend it.
            out.kind |= other.kind | Kind.UNCERTAIN
            out.read_only = False
    if out.kind & (Kind.GET_LOCK | Kind.RELEASE_LOCK):
        _lock_names(lowered, lexer, out)
    if out.prepared:
        _prepared_texts(sql, lexer, out)
    if b"processlist" in lowered and Kind.PROCESSLIST not in out.kind:
        out.kind |= Kind.PROCESSLIST_TABLE
        out.read_only = False
        if Kind.UNCERTAIN in out.kind and b"\\" in lowered:
            out.locks_released.clear()  # two readings: trust no release
    return out


def classify(sql: bytes, backslash_escapes: bool | None = None) -> Classified | None:
    """None for the common statement that needs no special handling (the relay's hot path)."""
    lowered = sql.lower()
    if (_fast_lead(lowered) and not _fast_forbidden(lowered)
            and b"value" not in lowered and b"sql_calc_found_rows" not in lowered and b"processlist" not in lowered):
        return None
    out = classify_all(sql, backslash_escapes, lowered)
    if out.kind:
        return out
    if lowered[:3] == b"set" and session_set(sql) is not None:
        out.kind = Kind.SESSION_SET
        return out
    return None


_SCHEMA_FREE_LEADS = frozenset((b"set", b"select", b"do", b"show"))
_NAMES_A_TABLE = re.compile(rb"\b(?:from|into|table|tables|update|join|call|database|schema|columns|index|keys|status|"
                            rb"create|triggers|events|procedure|function|grants|warnings|errors|privileges)\b")


def needs_no_schema(sql: bytes) -> bool:
    """True only for statements that provably read nothing of the default database: SET NAMES,
    SET sql_mode = '...', SELECT @@x, ... (no table, no function call: DATABASE() would tell)."""
    code, certain = _code(sql.lower(), _LEX)
    if not certain or b"(" in code or _NAMES_A_TABLE.search(code):
        return False
    for statement in code.split(b";"):
        m = _LEAD.match(statement)
        if m is not None and m.group(1) not in _SCHEMA_FREE_LEADS:
            return False
    return True


def is_retryable_read(sql: bytes, backslash_escapes: bool | None = None) -> bool:
    """A statement with no effect beyond its answer: it may be sent again on another link."""
    return classify_all(sql, backslash_escapes).read_only


# -- statements the proxy may answer itself -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionSet:
    """One statement that only sets replayable session state: SET NAMES (``charset``, and
    ``collation`` when it names one; lowercased, quotes gone) or SET autocommit (``autocommit``)."""

    charset: bytes = b""
    collation: bytes | None = None
    autocommit: bool | None = None


# A name as SET NAMES takes it: bare, or in quotes of any kind (no escapes, no spaces). DEFAULT
# and anything else go to the server, so its errors stay its own.
_SET_NAMES = re.compile(rb"""\s*set\s+names\s+(?P<q1>['"`]?)(?P<charset>[a-z0-9_]+)(?P=q1)"""
                        rb"""(?:\s+collate\s+(?P<q2>['"`]?)(?P<collation>[a-z0-9_]+)(?P=q2))?\s*\Z""", re.I)
_SET_AUTOCOMMIT = re.compile(rb"\s*set\s+(?:session\s+|local\s+|@@session\.|@@local\.|@@)?autocommit\s*=\s*"
                             rb"(0|1|on|off|true|false)\s*\Z", re.I)


def session_set(sql: bytes) -> SessionSet | None:
    """The statement read with certainty as exactly one SET NAMES or SET autocommit, else None.

    The whole text must match: no comment, no second statement, no expression, nothing the
    server could read otherwise (a trailing ';' too goes to the server)."""
    m = _SET_NAMES.match(sql)
    if m is not None:
        charset, collation = m.group("charset").lower(), m.group("collation")
        if charset == b"default" or (collation is not None and collation.lower() == b"default"):
            return None
        return SessionSet(charset, collation.lower() if collation is not None else None)
    m = _SET_AUTOCOMMIT.match(sql)
    if m is not None:
        return SessionSet(autocommit=m.group(1).lower() in (b"1", b"on", b"true"))
    return None


# SET [SESSION] name = 'text' | number: one session variable given a value that reads the same under
# every sql_mode (a single-quoted literal with no backslash, or a plain number).
_SET_ONE_VARIABLE = re.compile(rb"\s*set\s+(?:session\s+|local\s+|@@session\.|@@local\.|@@)?([a-z_][a-z0-9_]*)\s*=\s*"
                               rb"(?:'[^'\\]*'|-?[0-9]+)\s*\Z", re.I)


def variable_overwritten(sql: bytes) -> str | None:
    """The session variable the statement sets to a constant, when that is all it does, else None.

    A replay before it need not set that variable: whatever it held, the statement overwrites it
    (and should it fail, the link keeps the value the proxy knows it has)."""
    m = _SET_ONE_VARIABLE.match(sql)
    return m.group(1).decode().lower() if m is not None else None


# -- rewriting calls the proxy answers ----------------------------------------------------------


def _code_spans(sql: bytes, identifiers: bool = False) -> list[tuple[int, int]]:
    """The spans of ``sql`` outside literals and comments (executable comments are code; quoted
    identifiers too with ``identifiers``)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _LEX.finditer(sql.lower()):
        if m.lastgroup is None and not (identifiers and sql[m.start()] == 0x60):
            spans.append((pos, m.start()))
            pos = m.end()
    spans.append((pos, len(sql)))
    return spans


def rewrite_call(sql: bytes, function: str, value: int) -> bytes:
    """Replace ``FUNCTION()`` with a value the proxy knows (the column keeps its name when alone)."""
    name = function.encode()
    alone = re.match(rb"\s*select\s+(" + name + rb"\s*\(\s*\))\s*;?\s*\Z", sql, re.I)
    if alone:
        return b"SELECT %d AS `%s`" % (value, alone.group(1))
    pattern = re.compile(rb"\b" + name + rb"\s*\(\s*\)", re.I)
    out, pos = [], 0
    for start, end in _code_spans(sql):
        for call in pattern.finditer(sql, start, end):
            out += [sql[pos:call.start()], b"(%d)" % value]
            pos = call.end()
    out.append(sql[pos:])
    return b"".join(out)


_IS_USED_LOCK = re.compile(rb"\bis_used_lock\s*\(", re.I)


def rewrite_is_used_lock(sql: bytes, proxy_ids: dict[int, int]) -> bytes:
    """Make IS_USED_LOCK() answer the proxy id of the client holding the lock, not the id of the
    server thread that holds it for that client (``proxy_ids``: thread id -> proxy id). A thread
    that serves no client of this proxy keeps its own id."""
    spans = _code_spans(sql)
    out, pos = [], 0
    for start, end in spans:
        for call in _IS_USED_LOCK.finditer(sql, start, end):
            close = _matching_paren(sql, call.end(), spans)
            if close is None or close < pos or _IS_NULL.match(sql, close + 1):
                continue  # "IS [NOT] NULL" asks nothing of the id: left alone, its column keeps its name
            cases = b"".join(b" WHEN %d THEN %d" % kv for kv in proxy_ids.items())
            out += [sql[pos:call.start()], b"(CASE ", sql[call.start():close + 1],
                    cases or b" WHEN NULL THEN NULL", b" ELSE ", sql[call.start():close + 1], b" END)"]
            pos = close + 1
    out.append(sql[pos:])
    rewritten = b"".join(out)
    alone = _SELECT_ALONE.match(sql)
    if alone and rewritten != sql and _matching_paren(sql, alone.end(), spans) == len(sql.rstrip(b"; \t\r\n")) - 1:
        # SELECT IS_USED_LOCK('x'): the column keeps the name a direct client sees.
        text = sql.rstrip(b"; \t\r\n")[alone.start(1):]
        return rewritten.rstrip(b"; \t\r\n") + b" AS `" + text.replace(b"`", b"``") + b"`"
    return rewritten


_IS_NULL = re.compile(rb"\s*is\s+(?:not\s+)?null\b", re.I)
_SELECT_ALONE = re.compile(rb"\s*select\s+(is_used_lock\s*\()", re.I)


def _matching_paren(sql: bytes, start: int, spans: list[tuple[int, int]]) -> int | None:
    """The index of the ')' closing the '(' just before ``start``, counting parentheses in code only."""
    depth = 1
    for span_start, span_end in spans:
        if span_end <= start:
            continue
        for i in range(max(start, span_start), span_end):
            c = sql[i]
            if c == 0x28:
                depth += 1
            elif c == 0x29:
                depth -= 1
                if not depth:
                    return i
    return None


_PROCESSLIST_TABLE = re.compile(rb"`?information_schema`?\s*\.\s*`?processlist\b`?", re.I)
# After the table: words that are no alias (the derived table then needs one of its own).
_NOT_ALIAS = re.compile(rb"\s*(?:\Z|[,;)]|(?:where|join|inner|cross|left|right|straight_join|natural|on|using|"
                        rb"group|order|limit|having|window|union|except|intersect|for|lock|into|procedure)\b)", re.I)


def rewrite_processlist_table(sql: bytes, columns: list[str], proxy_ids: dict[int, int]) -> bytes:
    """information_schema.PROCESSLIST, as this account may see it: only the threads that serve its
    clients, each under the id that client's greeting gave (``proxy_ids``: thread id -> proxy id).
    The reference becomes a derived table with the server's own columns (``columns``)."""
    if not columns or "ID" not in (c.upper() for c in columns):
        return sql
    cases = b"".join(b" WHEN %d THEN %d" % kv for kv in proxy_ids.items())
    listed = b", ".join(b"`%s`" % c.encode() for c in columns if c.upper() != "ID")
    threads = b", ".join(b"%d" % t for t in proxy_ids) or b"NULL"
    derived = (b"(SELECT CASE `ID`" + (cases or b" WHEN NULL THEN NULL") + b" END AS `ID`, " + listed
               + b" FROM information_schema.PROCESSLIST WHERE `ID` IN (" + threads + b"))")
    out, pos = [], 0
    for start, end in _code_spans(sql, identifiers=True):
        for ref in _PROCESSLIST_TABLE.finditer(sql, start, end):
            aliased = not _NOT_ALIAS.match(sql, ref.end())
            out += [sql[pos:ref.start()], derived, b"" if aliased else b" AS `PROCESSLIST`"]
            pos = ref.end()
    out.append(sql[pos:])
    return b"".join(out)


def rewrite_connection_id(sql: bytes, proxy_id: int) -> bytes:
    """Make CONNECTION_ID() answer the id the client's greeting gave it."""
    return rewrite_call(sql, "connection_id", proxy_id)
