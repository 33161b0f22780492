"""Numbers of the MySQL client/server protocol that the proxy uses."""

from __future__ import annotations



# Plain int namespaces, not enums: the relay reads these several times per
# packet, and enum member access and IntFlag arithmetic cost far more than ints.


class Cap:
    """Capability flags (handshake)."""

    LONG_PASSWORD = 1
    FOUND_ROWS = 1 << 1
    LONG_FLAG = 1 << 2
    CONNECT_WITH_DB = 1 << 3
    NO_SCHEMA = 1 << 4
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    SECURE_CONNECTION = 1 << 15
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24
    OPTIONAL_RESULTSET_METADATA = 1 << 25
    QUERY_ATTRIBUTES = 1 << 27
    SSL_VERIFY_SERVER_CERT = 1 << 30
    REMEMBER_OPTIONS = 1 << 31
    # MariaDB's extended capabilities: 4 more bytes of the handshake, present when the
    # greeting lacks CLIENT_MYSQL (bit 0, LONG_PASSWORD). Kept in bits 32-63 of the same
    # int, as MariaDB Connector/C numbers them.
    CLIENT_MYSQL = LONG_PASSWORD
    MARIADB_EXTENDED_METADATA = 1 << 35  # column definitions name MariaDB's own types (json, uuid, inet6 ...)
    MARIADB_CACHE_METADATA = 1 << 36  # COM_STMT_EXECUTE result sets skip unchanged column definitions


# What the proxy speaks with clients: nothing it would have to translate
# (no DEPRECATE_EOF, QUERY_ATTRIBUTES; SSL is added when configured). FOUND_ROWS,
# MULTI_STATEMENTS, LOCAL_FILES and SESSION_TRACK are per client and honoured;
# COMPRESS is the client side's own framing (proxy/compressed.py), links stay uncompressed.
SERVER_CAPS = (
    Cap.LONG_PASSWORD
    | Cap.FOUND_ROWS
    | Cap.LONG_FLAG
    | Cap.CONNECT_WITH_DB
    | Cap.NO_SCHEMA
    | Cap.COMPRESS
    | Cap.LOCAL_FILES
    | Cap.IGNORE_SPACE
    | Cap.PROTOCOL_41
    | Cap.INTERACTIVE
    | Cap.IGNORE_SIGPIPE
    | Cap.TRANSACTIONS
    | Cap.SECURE_CONNECTION
    | Cap.MULTI_STATEMENTS
    | Cap.MULTI_RESULTS
    | Cap.PS_MULTI_RESULTS
    | Cap.PLUGIN_AUTH
    | Cap.CONNECT_ATTRS
    | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Cap.SESSION_TRACK
)

# What the proxy asks of the server on every backend link. Answer-changing
# flags (FOUND_ROWS, MULTI_STATEMENTS) are added per link to match the client.
BACKEND_CAPS = (
    Cap.LONG_PASSWORD
    | Cap.LONG_FLAG
    | Cap.CONNECT_WITH_DB
    | Cap.LOCAL_FILES
    | Cap.PROTOCOL_41
    | Cap.TRANSACTIONS
    | Cap.SECURE_CONNECTION
    | Cap.MULTI_RESULTS
    | Cap.PS_MULTI_RESULTS
    | Cap.PLUGIN_AUTH
    | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Cap.SESSION_TRACK
)


# Client capabilities that change what the server sends: a link is opened with the
# client's own, and the pool keeps links apart by them (a link's ``kind``).
KIND_CAPS = Cap.FOUND_ROWS | Cap.MARIADB_CACHE_METADATA | Cap.MARIADB_EXTENDED_METADATA


class Status:
    """Server status flags (OK / EOF packets)."""

    IN_TRANS = 1
    AUTOCOMMIT = 1 << 1
    MORE_RESULTS_EXISTS = 1 << 3
    NO_GOOD_INDEX_USED = 1 << 4
    NO_INDEX_USED = 1 << 5
    CURSOR_EXISTS = 1 << 6
    LAST_ROW_SENT = 1 << 7
    DB_DROPPED = 1 << 8
    NO_BACKSLASH_ESCAPES = 1 << 9
    METADATA_CHANGED = 1 << 10
    QUERY_WAS_SLOW = 1 << 11
    PS_OUT_PARAMS = 1 << 12
    IN_TRANS_READONLY = 1 << 13
    SESSION_STATE_CHANGED = 1 << 14


class Command:
    SLEEP = 0x00
    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04
    CREATE_DB = 0x05
    DROP_DB = 0x06
    REFRESH = 0x07
    SHUTDOWN = 0x08
    STATISTICS = 0x09
    PROCESS_INFO = 0x0A
    CONNECT = 0x0B
    PROCESS_KILL = 0x0C
    DEBUG = 0x0D
    PING = 0x0E
    TIME = 0x0F
    DELAYED_INSERT = 0x10
    CHANGE_USER = 0x11
    BINLOG_DUMP = 0x12
    TABLE_DUMP = 0x13
    CONNECT_OUT = 0x14
    REGISTER_SLAVE = 0x15
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    DAEMON = 0x1D
    BINLOG_DUMP_GTID = 0x1E
    RESET_CONNECTION = 0x1F


class SessionTrack:
    """Types of session-state-change entries in OK packets."""

    SYSTEM_VARIABLES = 0
    SCHEMA = 1
    STATE_CHANGE = 2
    GTIDS = 3
    TRANSACTION_CHARACTERISTICS = 4
    TRANSACTION_STATE = 5


# COM_SET_OPTION values
MULTI_STATEMENTS_ON = 0
MULTI_STATEMENTS_OFF = 1


class Err:
    """Error codes the proxy sends itself."""

    CON_COUNT = 1040  # too many connections
    HANDSHAKE = 1043  # bad handshake
    DBACCESS_DENIED = 1044
    ACCESS_DENIED = 1045
    NO_DB = 1046
    UNKNOWN_COM = 1047
    BAD_DB = 1049
    UNKNOWN_THREAD = 1094
    NOT_THREAD_OWNER = 1095
    NET_PACKET_TOO_LARGE = 1153
    NET_READ_ERROR = 1158
    NET_PACKETS_OUT_OF_ORDER = 1156
    USER_LIMIT_REACHED = 1226
    LOCK_WAIT_TIMEOUT = 1205
    LOCK_DEADLOCK = 1213  # what a stall's victim gets: its transaction was rolled back
    QUERY_INTERRUPTED = 1317
    UNKNOWN_STMT_HANDLER = 1243
    NOT_SUPPORTED_YET = 1235
    UNSUPPORTED_PS = 1295  # this command is not supported in the prepared statement protocol
    CONNECTION_KILLED = 1927
    SERVER_GONE = 2006  # client-side codes, used for "your backend went away"
    SERVER_LOST = 2013
    SECURE_TRANSPORT_REQUIRED = 3159  # MySQL's require_secure_transport refusal


# Errors on connect that mean "the account or server is full": back-pressure, not a failure.
CAPACITY_ERRORS = frozenset({Err.CON_COUNT, Err.USER_LIMIT_REACHED})

# SQLSTATE for each error the proxy builds.
SQLSTATE: dict[int, str] = {
    Err.CON_COUNT: "08004",
    Err.HANDSHAKE: "08S01",
    Err.SECURE_TRANSPORT_REQUIRED: "HY000",
    Err.DBACCESS_DENIED: "42000",
    Err.ACCESS_DENIED: "28000",
    Err.UNKNOWN_COM: "08S01",
    Err.NET_PACKET_TOO_LARGE: "08S01",
    Err.NET_READ_ERROR: "08S01",
    Err.NET_PACKETS_OUT_OF_ORDER: "08S01",
    Err.USER_LIMIT_REACHED: "42000",
    Err.LOCK_WAIT_TIMEOUT: "HY000",
    Err.LOCK_DEADLOCK: "40001",
    Err.QUERY_INTERRUPTED: "70100",
    Err.UNKNOWN_STMT_HANDLER: "HY000",
    Err.NOT_SUPPORTED_YET: "42000",
    Err.UNSUPPORTED_PS: "HY000",
    Err.CONNECTION_KILLED: "70100",
    Err.SERVER_GONE: "HY000",
    Err.SERVER_LOST: "HY000",
}

SERVER_VERSION = "5.7.99-mysql-pool-proxy"
DEFAULT_COLLATION = 45  # utf8mb4_general_ci
