"""Binary prepared-statement payloads: statement ids and parameter types.

Clients see statement ids the proxy gives them; each link has its own server
ids. These functions rewrite the id in a COM_STMT_* payload and make a
COM_STMT_EXECUTE carry its parameter types whenever the server statement it
lands on was last bound with other types (by another client) or never.
"""

from __future__ import annotations

import struct

from .packets import ProtocolError

_EXECUTE_HEAD = 1 + 4 + 1 + 4  # command, statement id, flags, iteration count
# MariaDB 10.2+: the statement id that means "the one prepared last on this connection" (no
# PREPARE failed since), so a client can send COM_STMT_PREPARE and COM_STMT_EXECUTE together.
LAST_PREPARED = 0xFFFFFFFF
CURSOR_TYPE_READ_ONLY = 0x01
_U32 = struct.Struct("<I")  # a statement id; precompiled: read and rewritten for every execute


def statement_id(payload: bytes) -> int:
    """The statement id of any COM_STMT_* payload (it always follows the command byte)."""
    if len(payload) < 5:
        raise ProtocolError("truncated prepared-statement command")
    return int(_U32.unpack_from(payload, 1)[0])


def with_statement_id(payload: bytes, new_id: int) -> bytes:
    return payload[:1] + _U32.pack(new_id) + payload[5:]


def prepare_ok_with_id(payload: bytes | memoryview, new_id: int) -> bytes:
    """A COM_STMT_PREPARE OK packet answering with ``new_id``."""
    return bytes(payload[:1]) + _U32.pack(new_id) + bytes(payload[5:])


def bind_execute(payload: bytes, server_id: int, num_params: int, known_types: bytes | None,
                 server_types: bytes | None) -> tuple[bytes, bytes | None]:
    """Rewrite a COM_STMT_EXECUTE for ``server_id``.

    ``known_types``: the parameter types the client last bound for the statement;
    ``server_types``: the ones the server statement was last executed with (None:
    unknown). Types the client leaves out are added unless the server already has
    them. Returns the new payload and the types the statement is now bound with.
    """
    if len(payload) < _EXECUTE_HEAD:
        raise ProtocolError("truncated COM_STMT_EXECUTE")
    if num_params == 0:
        return with_statement_id(payload, server_id), known_types
    bitmap_end = _EXECUTE_HEAD + (num_params + 7) // 8
    if len(payload) < bitmap_end + 1:
        raise ProtocolError("truncated COM_STMT_EXECUTE parameters")
    rest = bitmap_end + 1
    if payload[bitmap_end]:
        types_end = rest + 2 * num_params
        if len(payload) < types_end:
            raise ProtocolError("truncated COM_STMT_EXECUTE parameter types")
        return with_statement_id(payload, server_id), payload[rest:types_end]
    if known_types is None:
        raise ProtocolError("COM_STMT_EXECUTE without parameter types for a statement never bound")
    if known_types == server_types:
        # The usual case once every link has run the statement: the server re-binds nothing.
        return with_statement_id(payload, server_id), known_types
    head = payload[:1] + _U32.pack(server_id) + payload[5:bitmap_end]
    return head + b"\x01" + known_types + payload[rest:], known_types
