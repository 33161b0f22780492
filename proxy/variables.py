"""Session variables a server reports but no session can set, per server flavour.

The proxy asks every link to report its changed variables (``session_track_system_variables='*'``)
and replays them onto the next link a session gets. The tracker also reports some read-only
variables: replaying one fails the statement it precedes (``1238 Variable 'statement_id' is a
read only variable``), and since the server changes them itself they are no state of the session
either. Names otherwise follow the server: replay sends the name the tracker reported
(``transaction_isolation`` on MySQL 8+ and MariaDB 11.1+, ``tx_isolation`` before), so no
name is translated here.
"""

from __future__ import annotations

NOT_SETTABLE: dict[str, frozenset[str]] = {
    # MySQL 8.0+: the id of the statement that just ran, reported along with any other change.
    "mysql": frozenset({"statement_id"}),
    "mariadb": frozenset(),
}

# What the session layer skips. The union: an answer does not say which flavour sent it, and no
# server has a settable variable named as another's read-only one.
NEVER_REPLAYED: frozenset[str] = frozenset().union(*NOT_SETTABLE.values())
