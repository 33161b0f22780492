"""The ``mariadb`` command-line client through the proxy prints what it prints straight.

With ``-vvv`` the client shows each statement's OK packet as it read it: affected rows, the info
text ("Rows matched: 2  Changed: 2  Warnings: 1") and the warning count, then the warnings
themselves (--show-warnings). Also compression (--compress), LOAD DATA LOCAL (--local-infile), a
procedure with several result sets, and another default character set. Timings ("(0.001 sec)")
are the only thing taken out before comparing.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from clients_harness import fresh_database
from proxy.mysql.messages import parse_handshake
from conftest import APP_PASSWORD, APP_USER, MariaDB, ProxyProcess, recv_packet, run_cli
from test_drivers import Noise, grant_noise_db
from tls_certs import make_tls_files

# The scripts read seq_1_to_N: MariaDB's sequence tables, views the suite makes on MySQL.

DB = "cl_cli"
SCRIPT = """
CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(10), n TINYINT);
INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3);
UPDATE t SET n = n * 50 WHERE id <= 2;
INSERT IGNORE INTO t VALUES (1, 'dup', 0), (4, 'toolongvalue', 4);
REPLACE INTO t VALUES (3, 'r', 3);
DELETE FROM t WHERE id = 4;
DELIMITER //
CREATE PROCEDURE p(IN k INT) BEGIN SELECT id, s FROM t WHERE id <= k ORDER BY id; SELECT COUNT(*) AS n FROM t; END//
DELIMITER ;
CALL p(2);
LOAD DATA LOCAL INFILE '{path}' INTO TABLE t FIELDS TERMINATED BY ',';
SELECT id, s, n FROM t ORDER BY id;
SELECT 'é' AS e, HEX('é') AS h, @@character_set_client AS cs, @@collation_connection AS co;
"""
OPTIONS = {
    "plain": [],
    "compress": ["--compress"],
    "latin1": ["--default-character-set=latin1"],
}
_TIMING = re.compile(r" \(\d+\.\d+ sec\)")


def _run(port: int, path: Path, options: list[str]) -> str:
    sql = SCRIPT.format(path=path)
    rc, out, err = run_cli(port, APP_USER, APP_PASSWORD, sql, DB,
                           extra_args=("-vvv", "--show-warnings", "--local-infile=1", "--table", *options))
    assert rc == 0, f"mariadb exited with {rc}: {err}"
    return _TIMING.sub("", out)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_mariadb_cli_verbose(name: str, mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess],
                             tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("5,five,5\n6,six,6\nseven,7,x\n")
    fresh_database(mariadb, DB)
    direct = _run(mariadb.port, path, OPTIONS[name])
    assert "Rows matched: 2  Changed: 2  Warnings: 0" in direct and "Warning" in direct  # the script did its work
    fresh_database(mariadb, DB)
    grant_noise_db(mariadb)
    p = proxy_factory({"pool": {"max_connections": 2}})
    with Noise(p):
        via = _run(p.port, path, OPTIONS[name])
    assert via.splitlines() == direct.splitlines()


def test_greeting_names_the_servers_collation(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    """Clients that name no character set (the CLI's default-character-set=auto falls back to it,
    mysqlnd without a charset option) take the greeting's: through the proxy it is the server's."""
    p = proxy_factory()
    p.connect().close()  # the proxy has met its server

    def greeting_collation(port: int) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            return parse_handshake(recv_packet(s)[1]).collation

    direct = greeting_collation(mariadb.port)
    assert direct == int(mariadb.sql("SELECT ID FROM information_schema.COLLATIONS WHERE COLLATION_NAME = "
                                     "@@GLOBAL.collation_server")[0][0])
    assert greeting_collation(p.port) == direct


def test_compression_over_tls(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess], tmp_path: Path) -> None:
    """--compress inside TLS: the compression layer sits on the TLS layer (ClientTls.set_protocol).
    The proxy requires TLS, so the login itself proves the client encrypts."""
    tls = make_tls_files(tmp_path / "tls")
    p = proxy_factory({"listen": {"tls_cert": tls.server_cert, "tls_key": tls.server_key, "require_tls": True}})
    sql = "SELECT seq, REPEAT(CHAR(65 + seq % 26), 300) FROM seq_1_to_3000; SELECT 'done'"
    rc, direct, err = run_cli(mariadb.port, APP_USER, APP_PASSWORD, sql, "appdb", extra_args=("--compress",))
    assert rc == 0, err
    rc, via, err = run_cli(p.port, APP_USER, APP_PASSWORD, sql, "appdb",
                           extra_args=("--compress", "--ssl", f"--ssl-ca={tls.ca}"))
    assert rc == 0, err
    assert via == direct and via.endswith("done\n")
