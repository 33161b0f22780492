"""Where one command's response ends: a small state machine fed packet heads.

``ResponseTracker.feed`` is called by the relay for each packet the server
sends (small packets whole, long ones as a prefix). It returns MORE, DONE or
INFILE (the server asked the client for a LOCAL INFILE file: the client's
packets must be relayed up to and including an empty one, then the response
goes on with OK/ERR). Along the way it keeps what the pooler needs to decide:
the last status flags, OK fields, session-state blocks, the error code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .constants import Cap, Command, Status
from .messages import (
    ERR_HEADER,
    LOCAL_INFILE_HEADER,
    OK_HEADER,
    parse_ok,
    read_lenenc_int,
    session_track_for_client,
    strip_session_track,
)
from .packets import SKIM, Buffer, ProtocolError
from .stmt import prepare_ok_with_id

MORE, DONE, INFILE = 0, 1, 2  # MORE is 0: a PacketScanner goes on; DONE and INFILE stop it
# feed's answers without a replacement, built once (the hot path allocates no tuple for them).
_MORE = (MORE, None)
_DONE = (DONE, None)
# Inside a result set only EOF and ERR matter: the scanner may count rows and column
# definitions instead of showing each one (SKIM), and says how many it skimmed.
_SKIM = (SKIM, None)
# A module global: on Python 3.11 reading one costs about 120 instructions less than Command.STMT_EXECUTE.
_EXECUTE = Command.STMT_EXECUTE
# EOF's warnings and status flags, precompiled: read twice per result set.
_warnings_status = struct.Struct("<HH").unpack_from

# States
_FIRST = 0  # first packet of a (next) result: OK, ERR, LOCAL INFILE or column count
_COLUMNS = 1  # column definitions, then EOF
_ROWS = 2  # rows until EOF or ERR
_PREPARE_PARAMS = 3
_PREPARE_COLUMNS = 4
_SINGLE = 5  # exactly one packet: OK / ERR / EOF / raw string
_FIELD_LIST = 6  # column definitions until EOF or ERR
_INFILE_ANSWER = 7  # after the client's file: OK / ERR (may be followed by more results)

# Commands whose answer is one OK / ERR / EOF packet.
_SINGLE_PACKET = frozenset(
    {
        Command.INIT_DB,
        Command.PING,
        Command.REFRESH,
        Command.PROCESS_KILL,
        Command.DEBUG,
        Command.SET_OPTION,
        Command.RESET_CONNECTION,
        Command.STMT_RESET,
        Command.STATISTICS,
        Command.CREATE_DB,
        Command.DROP_DB,
        Command.SHUTDOWN,
        Command.TIME,
    }
)
# Where a response starts, by command (others: _FIRST).
_START_STATE = {cmd: _SINGLE for cmd in _SINGLE_PACKET} | {Command.FIELD_LIST: _FIELD_LIST, Command.STMT_FETCH: _ROWS}
# Commands the server never answers.
NO_RESPONSE = frozenset({Command.QUIT, Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA})
# Commands the tracker can follow (COM_CHANGE_USER is an auth exchange, handled apart).
TRACKED = _SINGLE_PACKET | {Command.QUERY, Command.PROCESS_INFO, Command.FIELD_LIST, Command.STMT_PREPARE, Command.STMT_EXECUTE, Command.STMT_FETCH}


@dataclass
class PrepareOK:
    statement_id: int
    num_columns: int
    num_params: int
    warnings: int


@dataclass
class ResponseTracker:
    """Follows one command's response; reusable through ``start``."""

    client_caps: int = 0  # the receiving client's; OKs are re-encoded when it lacks SESSION_TRACK
    command: int = Command.QUERY
    state: int = _FIRST
    status: int = 0
    status_known: bool = False  # an OK or EOF gave status flags (a PREPARE answer has none)
    warnings: int = 0
    affected_rows: int = 0
    insert_id: int = 0
    error_code: int = 0
    rows: int = 0
    cursor_open: bool = False
    result_set: bool = False  # the (last) result was rows, not an OK
    prepare: PrepareOK | None = None
    state_blocks: list[bytes] = field(default_factory=list)
    unexplained_change: bool = False
    statement_alias: int = 0  # answer COM_STMT_PREPARE with this id instead of the server's
    # The link negotiated MariaDB's metadata caching: a column count is followed by a byte that
    # says whether column definitions follow (an execute's are left out while unchanged).
    cache_metadata: bool = False
    # The link's clients were promised that flag, but its server does not send it (it no longer
    # offers metadata caching: a reload to another server, a downgrade): the tracker adds it.
    flag_without_caching: bool = False
    # Column definitions the response carried, kept for the statement cache: a PREPARE answer's,
    # and with metadata caching, an execute's first result's when the server sent them.
    columns: list[bytes] = field(default_factory=list)
    _columns_left: int = 0
    _columns_after: int = 0
    _capture: bool = False  # keep the column definitions of this result

    def start(self, command: int, statement_alias: int = 0) -> None:
        self.command = command
        self.statement_alias = statement_alias
        self.state = _START_STATE.get(command, _FIRST)
        self.status = self.warnings = self.affected_rows = self.insert_id = self.error_code = self.rows = 0
        self.status_known = self.cursor_open = self.result_set = self.unexplained_change = self._capture = False
        self.prepare = None
        if self.state_blocks:
            self.state_blocks = []
        if self.columns:
            self.columns = []

    # The relay's hot path: one call per packet shown, an Inspector (see PacketScanner): the
    # packet is buf[at:at + length], a long one's prefix when the buffer ends sooner; read in
    # place, sliced only to parse an OK or a column count above 250. ``skimmed``: packets of
    # the current phase (rows, column definitions) the scanner passed since the last call.
    # Returns (event, replacement payload or None); event MORE, SKIM, DONE or INFILE.
    def feed(self, length: int, buf: Buffer, at: int = 0, skimmed: int = 0) -> tuple[int, bytes | None]:
        state = self.state
        first = buf[at] if length else -1
        if state == _ROWS:
            self.rows += skimmed
            if first == 0xFE and length < 9:
                return (self._eof(length, buf, at), None)
            if first == ERR_HEADER:
                return (self._err(length, buf, at), None)
            self.rows += 1  # a row that starts with 0xFE (its first value is 16 MiB or more)
            return _SKIM
        if state == _FIRST or state == _INFILE_ANSWER:
            if first == OK_HEADER:
                return self._ok(memoryview(buf)[at : at + length])
            if first == ERR_HEADER:
                return (self._err(length, buf, at), None)
            if state == _FIRST and first == LOCAL_INFILE_HEADER:
                self.state = _INFILE_ANSWER
                return (INFILE, None)
            if state == _INFILE_ANSWER:
                raise ProtocolError("unexpected packet after LOCAL INFILE data")
            # One byte is the usual count; a longer or broken one is read from the packet alone.
            n = first if 0 < first < 0xFB else read_lenenc_int(memoryview(buf)[at : at + length], 0)[0]
            if not n:
                raise ProtocolError("invalid column count")
            self.state = _COLUMNS
            if self.cache_metadata:
                # Inline for the usual one-byte count; _metadata_flag for a long count, a packet
                # without its flag, and new definitions of an execute (to be kept).
                if length != 2 or first >= 0xFB:
                    return self._metadata_flag(n, length, buf, at)
                if not buf[at + 1]:
                    self._columns_left = 0  # left out: the client has them; the EOF comes next
                    self.result_set = True
                    return _SKIM
                if self.command == _EXECUTE and not self.result_set and not self.columns:
                    return self._metadata_flag(n, length, buf, at)
            self._columns_left = n
            self.result_set = True
            if self.flag_without_caching:
                return SKIM, bytes(buf[at : at + length]) + b"\x01"
            return _SKIM
        if state == _COLUMNS:
            left = self._columns_left - skimmed
            if left > 0:
                self._columns_left = left - 1
                if self._capture:
                    self.columns.append(bytes(buf[at : at + length]))
                    return _MORE
                return _SKIM
            # An EOF packet is 5 to 8 bytes; a longer one led by 0xFE is not one (and its head may be all we see).
            if left < 0 or first != 0xFE or length < 5 or length > 8:
                raise ProtocolError("missing EOF after column definitions")
            self._columns_left = 0
            self._capture = False
            _w, status = _warnings_status(buf, at + 1)
            self.status = status
            self.status_known = True
            if status & Status.CURSOR_EXISTS and self.command == Command.STMT_EXECUTE:
                self.cursor_open = True
                return _DONE
            self.state = _ROWS
            return _SKIM
        if state == _SINGLE:
            if first == OK_HEADER:
                return self._ok(memoryview(buf)[at : at + length])
            if first == ERR_HEADER:
                return (self._err(length, buf, at), None)
            if first == 0xFE and length < 9:
                return (self._eof(length, buf, at), None)
            return _DONE  # COM_STATISTICS: a plain string
        if state == _FIELD_LIST:
            if first == 0xFE and length < 9:
                return (self._eof(length, buf, at), None)
            if first == ERR_HEADER:
                return (self._err(length, buf, at), None)
            return _SKIM
        if state == _PREPARE_PARAMS or state == _PREPARE_COLUMNS:
            if self._columns_left:
                self._columns_left -= 1
                if state == _PREPARE_COLUMNS:
                    self.columns.append(bytes(buf[at : at + length]))
                return _MORE
            if first != 0xFE:
                raise ProtocolError("missing EOF after prepared statement metadata")
            if state == _PREPARE_PARAMS and self._columns_after:
                self._columns_left = self._columns_after
                self.state = _PREPARE_COLUMNS
                return _MORE
            return _DONE
        raise ProtocolError(f"response tracker in unknown state {state}")  # pragma: no cover

    def _metadata_flag(self, n: int, length: int, buf: Buffer, at: int) -> tuple[int, bytes | None]:
        """The column count of a link with metadata caching: are the ``n`` definitions there?"""
        pos = 1 if buf[at] < 0xFB else read_lenenc_int(memoryview(buf)[at : at + length], 0)[1]
        if pos >= length or at + pos >= len(buf):  # (the latter: a huge 'column count', shown as a prefix)
            raise ProtocolError("column count without its metadata flag")
        first_result = not self.result_set
        self.result_set = True
        if not buf[at + pos]:
            self._columns_left = 0  # left out: the client has them; the EOF comes next
            return _SKIM
        self._columns_left = n
        if first_result and not self.columns and self.command == _EXECUTE:
            # New definitions for a prepared statement: the statement caches must learn them.
            self._capture = True
            return _MORE
        return _SKIM

    def _ok(self, p: memoryview) -> tuple[int, bytes | None]:
        if self.command == Command.STMT_PREPARE:
            return self._prepare_ok(p)
        ok = parse_ok(p, Cap.SESSION_TRACK)
        self.result_set = False
        self.status = ok.status
        self.status_known = True
        self.warnings = ok.warnings
        self.affected_rows = ok.affected_rows
        self.insert_id = ok.last_insert_id
        if ok.status & Status.SESSION_STATE_CHANGED:
            if ok.session_state:
                self.state_blocks.append(ok.session_state)
            else:
                self.unexplained_change = True
        replacement = None
        # A client without SESSION_TRACK gets the same bytes less the state block and its flag
        # (the info text is length-encoded either way, so an OK without a block passes as it is);
        # one with it gets what its own session's default trackers would say.
        if ok.status & Status.SESSION_STATE_CHANGED:
            if self.client_caps & Cap.SESSION_TRACK:
                replacement = session_track_for_client(ok)
            else:
                replacement = strip_session_track(p)
        if ok.status & Status.MORE_RESULTS_EXISTS:
            self.state = _FIRST
            return MORE, replacement
        return DONE, replacement

    def _prepare_ok(self, p: memoryview) -> tuple[int, bytes | None]:
        if len(p) < 12:
            raise ProtocolError("truncated COM_STMT_PREPARE response")
        stmt_id, cols, params = struct.unpack_from("<IHH", p, 1)
        warnings = struct.unpack_from("<H", p, 10)[0]
        self.prepare = PrepareOK(stmt_id, cols, params, warnings)
        self.warnings = warnings
        replacement = prepare_ok_with_id(p, self.statement_alias) if self.statement_alias else None
        if params:
            self._columns_left = params
            self._columns_after = cols
            self.state = _PREPARE_PARAMS
            return MORE, replacement
        if cols:
            self._columns_left = cols
            self._columns_after = 0
            self.state = _PREPARE_COLUMNS
            return MORE, replacement
        return DONE, replacement

    # Given only packets shorter than 9 bytes, which are shown whole: ``length`` says which fields are there.
    def _eof(self, length: int, buf: Buffer, at: int) -> int:
        if length >= 5:
            self.warnings, self.status = _warnings_status(buf, at + 1)
            self.status_known = True
        if self.status & Status.SESSION_STATE_CHANGED:
            self.unexplained_change = True
        if self.command == Command.STMT_FETCH:
            self.cursor_open = not self.status & Status.LAST_ROW_SENT
            return DONE
        if self.status & Status.MORE_RESULTS_EXISTS and self.state == _ROWS:
            self.state = _FIRST
            return MORE
        return DONE

    def _err(self, length: int, buf: Buffer, at: int) -> int:
        p = memoryview(buf)[at : at + length]  # rare: the bytes shown, as long as they are
        self.error_code = struct.unpack_from("<H", p, 1)[0] if len(p) >= 3 else 0
        if self.command == Command.STMT_FETCH:
            self.cursor_open = False
        return DONE
