"""Binary prepared-statement payloads: statement ids and parameter types.

Clients see statement ids the proxy gives them; each link has its own server
ids. These functions rewrite the id in a COM_STMT_* payload and make every
COM_STMT_EXECUTE carry its parameter types, because the server statement it
lands on may have been bound by someone else (or never).
"""

from __future__ import annotations

import struct

from .packets import ProtocolError

_EXECUTE_HEAD = 1 + 4 + 1 + 4  # command, statement id, flags, iteration count
CURSOR_TYPE_READ_ONLY = 0x01


def statement_id(payload: bytes) -> int:
    """The statement id of any COM_STMT_* payload (it always follows the command byte)."""
    if len(payload) < 5:
        raise ProtocolError("truncated prepared-statement command")
    return int(struct.unpack_from("<I", payload, 1)[0])


def with_statement_id(payload: bytes, new_id: int) -> bytes:
    return payload[:1] + struct.pack("<I", new_id) + payload[5:]


def prepare_ok_with_id(payload: bytes | memoryview, new_id: int) -> bytes:
    """A COM_STMT_PREPARE OK packet answering with ``new_id``."""
    return bytes(payload[:1]) + struct.pack("<I", new_id) + bytes(payload[5:])


def bind_execute(payload: bytes, server_id: int, num_params: int, known_types: bytes | None) -> tuple[bytes, bytes | None]:
    """Rewrite a COM_STMT_EXECUTE for ``server_id``, always sending parameter types.

    Returns the new payload and the types now known for the statement.
    """
    if len(payload) < _EXECUTE_HEAD:
        raise ProtocolError("truncated COM_STMT_EXECUTE")
    head = payload[:1] + struct.pack("<I", server_id) + payload[5:_EXECUTE_HEAD]
    if num_params == 0:
        return head + payload[_EXECUTE_HEAD:], known_types
    bitmap_end = _EXECUTE_HEAD + (num_params + 7) // 8
    if len(payload) < bitmap_end + 1:
        raise ProtocolError("truncated COM_STMT_EXECUTE parameters")
    bitmap = payload[_EXECUTE_HEAD:bitmap_end]
    bound = payload[bitmap_end]
    rest = bitmap_end + 1
    if bound:
        types_end = rest + 2 * num_params
        if len(payload) < types_end:
            raise ProtocolError("truncated COM_STMT_EXECUTE parameter types")
        types = payload[rest:types_end]
        return head + bitmap + b"\x01" + types + payload[types_end:], types
    if known_types is None:
        raise ProtocolError("COM_STMT_EXECUTE without parameter types for a statement never bound")
    return head + bitmap + b"\x01" + known_types + payload[rest:], known_types
