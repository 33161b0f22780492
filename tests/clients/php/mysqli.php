<?php
// PHP mysqli (mysqlnd) scenarios; see common.php for how they are run and compared.
// Usage: DB_HOST=... DB_PORT=... DB_USER=... DB_PASSWORD=... DB_NAME=... php mysqli.php [scenario ...]

declare(strict_types=1);

require __DIR__ . '/common.php';

mysqli_report(MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT);

function connect(int $flags = 0, ?string $host = null, ?string $charset = null, bool $localInfile = false): mysqli
{
    $m = mysqli_init();
    $m->options(MYSQLI_OPT_CONNECT_TIMEOUT, 10);
    $m->options(MYSQLI_OPT_READ_TIMEOUT, 20);  // a hang becomes an error, not a stuck run
    if ($localInfile) {
        $m->options(MYSQLI_OPT_LOCAL_INFILE, true);
    }
    if ($charset !== null) {
        $m->options(MYSQLI_SET_CHARSET_NAME, $charset);
    }
    $m->real_connect($host ?? Cfg::host(), Cfg::user(), Cfg::password(), Cfg::db(), Cfg::port(), null, $flags);
    return $m;
}

/** @return list<array<string, mixed>> */
function fields(mysqli_result $r): array
{
    $out = [];
    foreach ($r->fetch_fields() as $f) {
        $out[] = [$f->name, $f->orgname, $f->table, $f->orgtable, $f->type, $f->charsetnr, $f->flags, $f->length, $f->decimals];
    }
    return $out;
}

function rows(mysqli $m, string $sql): array
{
    $r = $m->query($sql);
    return $r === true ? ['ok', $m->affected_rows] : $r->fetch_all(MYSQLI_NUM);
}

function ok_facts(mysqli $m): array
{
    return ['affected' => $m->affected_rows, 'info' => $m->info, 'insert_id' => $m->insert_id, 'warnings' => $m->warning_count];
}

function stmt_rows(mysqli_stmt $s): array
{
    $r = $s->get_result();
    return ['fields' => fields($r), 'rows' => $r->fetch_all(MYSQLI_NUM)];
}

function types_query(Log $log, mysqli $m): void
{
    $r = $m->query("SELECT 1 AS i, -2.5 AS d, 'héllo' AS s, NULL AS n, CAST('2024-02-29 12:34:56' AS DATETIME) AS dt, "
        . "CAST('2024-02-29' AS DATE) AS da, x'00ff' AS b, 12345678901234 AS big, CAST(1.5 AS DECIMAL(10,3)) AS dec3");
    $log->add('fields', fields($r));
    $log->add('rows', $r->fetch_all(MYSQLI_NUM));
}

$scenarios = [
    'connect_and_types' => function (Log $log): void {
        $m = connect();
        $log->add('server_info', $m->server_info);
        $log->add('protocol', $m->protocol_version);
        $log->add('charset', $m->character_set_name());
        $log->add('session charset', rows($m, 'SELECT @@character_set_client, @@character_set_connection, @@character_set_results, @@collation_connection'));
        types_query($log, $m);
        $m->query('DROP TABLE IF EXISTS php_m_types');
        $m->query("CREATE TABLE php_m_types (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20), u VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci, "
            . "l VARCHAR(10) CHARACTER SET latin1, t TEXT, bl BLOB, j JSON, f FLOAT, e ENUM('a','b'), ts TIMESTAMP NULL)");
        $m->query("INSERT INTO php_m_types (v, u, l, t, bl, j, f, e, ts) VALUES ('v', 'ü', 'é', 'text', x'0102', '{\"a\": [1, 2]}', 1.25, 'b', '2020-01-01 00:00:00')");
        $r = $m->query('SELECT * FROM php_m_types');
        $log->add('table fields', fields($r));
        $log->add('table rows', $r->fetch_all(MYSQLI_ASSOC));
        $log->add('ping', $m->ping());
        $log->add('escape', $m->real_escape_string("a'b\"c\\d\0e"));
        $m->close();
    },
    'update_and_insert_info' => function (Log $log): void {
        $m = connect();
        $m->query('DROP TABLE IF EXISTS php_m_info');
        $m->query('CREATE TABLE php_m_info (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(8) NOT NULL, n INT NOT NULL DEFAULT 0, UNIQUE KEY (v))');
        $m->query("INSERT INTO php_m_info (v) VALUES ('a'), ('b'), ('c')");
        $log->add('multi-row insert', ok_facts($m));
        $m->query("INSERT INTO php_m_info (v) VALUES ('d')");
        $log->add('one-row insert', ok_facts($m));
        $m->query('UPDATE php_m_info SET n = n + 1 WHERE id <= 2');
        $log->add('update', ok_facts($m));
        $m->query('UPDATE php_m_info SET n = n WHERE id <= 2');
        $log->add('update changing nothing', ok_facts($m));
        $m->query("INSERT IGNORE INTO php_m_info (v) VALUES ('a'), ('e')");
        $log->add('insert ignore', ok_facts($m));
        $m->query("INSERT INTO php_m_info (v) VALUES ('a') ON DUPLICATE KEY UPDATE n = n + 10");
        $log->add('on duplicate key', ok_facts($m));
        $m->query("REPLACE INTO php_m_info (id, v) VALUES (1, 'z')");
        $log->add('replace', ok_facts($m));
        $m->query("INSERT INTO php_m_info (v) SELECT CONCAT(v, 'x') FROM php_m_info");
        $log->add('insert select', ok_facts($m));
        $m->query('ALTER TABLE php_m_info ADD COLUMN w INT');
        $log->add('alter', ok_facts($m));
        $m->query("UPDATE php_m_info SET n = 'abc' WHERE id = 2");
        $log->add('update with warning', ok_facts($m));
        $w = $m->get_warnings();
        $log->add('warnings', $w ? [$w->errno, $w->message, $w->sqlstate] : null);
        $m->query('DELETE FROM php_m_info WHERE id > 3');
        $log->add('delete', ok_facts($m));
        $log->add('rows', rows($m, 'SELECT id, v, n FROM php_m_info ORDER BY id'));
        $log->add('ROW_COUNT after select', rows($m, 'SELECT ROW_COUNT()'));
    },
    'errors' => function (Log $log): void {
        $m = connect();
        foreach (['SELEKT 1', 'SELECT * FROM no_such_table', "SELECT 1 FROM DUAL WHERE 1 = (SELECT 1 UNION SELECT 2)"] as $sql) {
            try {
                $m->query($sql);
                $log->add($sql, 'no error');
            } catch (mysqli_sql_exception $e) {
                $log->add($sql, [$e->getCode(), $e->getSqlState(), $e->getMessage(), $m->errno, $m->sqlstate]);
            }
        }
        $log->add('still usable', rows($m, 'SELECT 42'));
    },
    'prepared' => function (Log $log): void {
        $m = connect();
        $m->query('DROP TABLE IF EXISTS php_m_ps');
        $m->query('CREATE TABLE php_m_ps (id INT AUTO_INCREMENT PRIMARY KEY, s VARCHAR(50), d DOUBLE, b BLOB, dt DATETIME(3))');
        $ins = $m->prepare('INSERT INTO php_m_ps (s, d, b, dt) VALUES (?, ?, ?, ?)');
        $log->add('param count', $ins->param_count);
        $s = 'x';
        $d = 0.0;
        $b = null;
        $dt = '2024-01-01 00:00:00.123';
        $ins->bind_param('sdbs', $s, $d, $b, $dt);
        foreach (['one', 'twö', null] as $i => $value) {
            $s = $value;
            $d = $i * 1.5;
            $ins->send_long_data(2, str_repeat(chr(65 + $i), 70000));  // COM_STMT_SEND_LONG_DATA
            $ins->execute();
            $log->add("insert $i", [$ins->affected_rows, $ins->insert_id]);
        }
        $ins->close();
        $sel = $m->prepare('SELECT id, s, d, LENGTH(b), MD5(b), dt, ? AS echo FROM php_m_ps WHERE id >= ? ORDER BY id');
        $echo = 'é';
        $min = 2;
        $sel->bind_param('si', $echo, $min);
        $sel->execute();
        $log->add('select', stmt_rows($sel));
        $min = 1;
        $sel->execute();  // the same statement again, other values
        $sel->store_result();
        $log->add('num_rows', $sel->num_rows);
        $sel->bind_result($c1, $c2, $c3, $c4, $c5, $c6, $c7);
        $got = [];
        while ($sel->fetch()) {
            $got[] = [$c1, $c2, $c3, $c4, $c5, $c6, $c7];
        }
        $log->add('bound results', $got);
        $sel->reset();
        $sel->close();
        $upd = $m->prepare('UPDATE php_m_ps SET d = d + ? WHERE id < ?');
        $add = 1.0;
        $lim = 3;
        $upd->bind_param('di', $add, $lim);
        $upd->execute();
        $log->add('update affected', $upd->affected_rows);
        $upd->close();
        try {
            $m->prepare('SELECT * FROM no_such_table WHERE id = ?');
        } catch (mysqli_sql_exception $e) {
            $log->add('prepare error', [$e->getCode(), $e->getMessage()]);
        }
        $cur = $m->prepare('SELECT id, s FROM php_m_ps ORDER BY id');
        $cur->attr_set(MYSQLI_STMT_ATTR_CURSOR_TYPE, MYSQLI_CURSOR_TYPE_READ_ONLY);
        $cur->attr_set(MYSQLI_STMT_ATTR_PREFETCH_ROWS, 1);
        $cur->execute();
        $cur->bind_result($i1, $s1);
        $got = [];
        while ($cur->fetch()) {
            $got[] = [$i1, $s1];
        }
        $log->add('cursor rows', $got);
        $cur->close();
        $log->add('after cursor', rows($m, 'SELECT COUNT(*) FROM php_m_ps'));
    },
    'transactions' => function (Log $log): void {
        $m = connect();
        $m->query('DROP TABLE IF EXISTS php_m_tx');
        $m->query('CREATE TABLE php_m_tx (id INT PRIMARY KEY) ENGINE=InnoDB');
        $m->begin_transaction();
        $m->query('INSERT INTO php_m_tx VALUES (1), (2)');
        $log->add('in trx', rows($m, 'SELECT COUNT(*), @@in_transaction FROM php_m_tx'));
        $m->rollback();
        $log->add('after rollback', rows($m, 'SELECT COUNT(*), @@in_transaction FROM php_m_tx'));
        $m->autocommit(false);
        $m->query('INSERT INTO php_m_tx VALUES (3)');
        $log->add('autocommit off', rows($m, 'SELECT @@autocommit, @@in_transaction'));
        $m->commit();
        $m->autocommit(true);
        $m->begin_transaction(MYSQLI_TRANS_START_READ_ONLY);
        try {
            $m->query('INSERT INTO php_m_tx VALUES (4)');
        } catch (mysqli_sql_exception $e) {
            $log->add('read-only trx', [$e->getCode(), $e->getMessage()]);
        }
        $m->commit();
        $m->begin_transaction(0, 'named');
        $m->query('INSERT INTO php_m_tx VALUES (5)');
        $m->savepoint('sp1');
        $m->query('INSERT INTO php_m_tx VALUES (6)');
        $m->release_savepoint('sp1');
        $m->commit();
        $log->add('final', rows($m, 'SELECT id FROM php_m_tx ORDER BY id'));
    },
    'stored_procedures' => function (Log $log): void {
        $m = connect();
        $m->query('DROP TABLE IF EXISTS php_m_proc');
        $m->query('CREATE TABLE php_m_proc (id INT PRIMARY KEY, v VARCHAR(10))');
        $m->query("INSERT INTO php_m_proc VALUES (1, 'a'), (2, 'b'), (3, 'c')");
        $m->query('DROP PROCEDURE IF EXISTS php_m_two_sets');
        $m->query("CREATE PROCEDURE php_m_two_sets(IN lim INT, OUT total INT)
            BEGIN
              SELECT id, v FROM php_m_proc WHERE id <= lim ORDER BY id;
              SELECT COUNT(*) AS n FROM php_m_proc;
              UPDATE php_m_proc SET v = UPPER(v) WHERE id = 1;
              SELECT COUNT(*) INTO total FROM php_m_proc;
            END");
        $m->query('DROP PROCEDURE IF EXISTS php_m_no_sets');
        $m->query('CREATE PROCEDURE php_m_no_sets() BEGIN UPDATE php_m_proc SET v = LOWER(v); END');
        // Text protocol: every result set, then the CALL's own OK.
        $m->multi_query('CALL php_m_two_sets(2, @total)');
        $sets = [];
        do {
            if ($r = $m->store_result()) {
                $sets[] = $r->fetch_all(MYSQLI_NUM);
                $r->free();
            } else {
                $sets[] = ['ok', $m->affected_rows];
            }
        } while ($m->more_results() && $m->next_result());
        $log->add('text call', $sets);
        $log->add('out param', rows($m, 'SELECT @total'));
        $m->query('CALL php_m_no_sets()');
        $log->add('call without sets', ok_facts($m));
        // Binary protocol: OUT parameters come as a result set of their own.
        $s = $m->prepare('CALL php_m_two_sets(?, @t2)');
        $lim = 3;
        $s->bind_param('i', $lim);
        $s->execute();
        $sets = [];
        do {
            if ($r = $s->get_result()) {
                $sets[] = $r->fetch_all(MYSQLI_NUM);
            }
        } while ($s->more_results() && $s->next_result());
        $log->add('prepared call', $sets);
        $s->close();
        $log->add('link still usable', rows($m, 'SELECT @t2, COUNT(*) FROM php_m_proc'));
        // A CALL executed with a read-only cursor asked for: the server opens none for a CALL.
        $s = $m->prepare('CALL php_m_two_sets(?, @t4)');
        $s->attr_set(MYSQLI_STMT_ATTR_CURSOR_TYPE, MYSQLI_CURSOR_TYPE_READ_ONLY);
        $lim = 2;
        $s->bind_param('i', $lim);
        $s->execute();
        $sets = [];
        do {
            if ($r = $s->get_result()) {
                $sets[] = $r->fetch_all(MYSQLI_NUM);
            }
        } while ($s->more_results() && $s->next_result());
        $log->add('call with a cursor asked for', $sets);
        $s->close();
        $log->add('after it', rows($m, 'SELECT @t4'));
        $m->query('CALL php_m_two_sets(1, @t3)');  // query() stores the first set only: the rest must be drained
        try {
            $m->query('SELECT 1');
            $log->add('after undrained call', 'no error');
        } catch (mysqli_sql_exception $e) {
            $log->add('after undrained call', [$e->getCode(), $e->getMessage()]);
        }
    },
    'multi_query' => function (Log $log): void {
        $m = connect();
        $m->query('DROP TABLE IF EXISTS php_m_multi');
        $m->multi_query("CREATE TABLE php_m_multi (id INT); INSERT INTO php_m_multi VALUES (1), (2); SELECT * FROM php_m_multi; UPDATE php_m_multi SET id = id + 1; SELECT 'x' AS y, ROW_COUNT() AS rc");
        $sets = [];
        do {
            if ($r = $m->store_result()) {
                $sets[] = ['rows', $r->fetch_all(MYSQLI_NUM), fields($r)];
            } else {
                $sets[] = ['ok', ok_facts($m)];
            }
        } while ($m->more_results() && $m->next_result());
        $log->add('sets', $sets);
        try {
            $m->multi_query('SELECT 1; SELEKT 2; SELECT 3');
            $sets = [];
            do {
                if ($r = $m->store_result()) {
                    $sets[] = $r->fetch_all(MYSQLI_NUM);
                }
            } while ($m->more_results() && $m->next_result());
            $log->add('error in the middle', $sets);
        } catch (mysqli_sql_exception $e) {
            $log->add('error in the middle', [$sets, $e->getCode(), $e->getMessage()]);
        }
        $log->add('after', rows($m, 'SELECT COUNT(*) FROM php_m_multi'));
    },
    'load_data_local' => function (Log $log): void {
        $path = temp_file(implode('', array_map(fn ($i) => "$i\tline $i\n", range(1, 500))) . "bad\tx\n");
        $m = connect(localInfile: true);
        $m->query('DROP TABLE IF EXISTS php_m_load');
        $m->query('CREATE TABLE php_m_load (id INT, v VARCHAR(20))');
        $m->query("LOAD DATA LOCAL INFILE '" . $m->real_escape_string($path) . "' INTO TABLE php_m_load");
        $log->add('load', ok_facts($m));
        $log->add('rows', rows($m, 'SELECT COUNT(*), SUM(id), MAX(v) FROM php_m_load'));
        $m->close();
        $m = connect(localInfile: false);
        try {
            $m->query("LOAD DATA LOCAL INFILE '" . $m->real_escape_string($path) . "' INTO TABLE php_m_load");
            $log->add('refused', 'no error');
        } catch (mysqli_sql_exception $e) {
            $log->add('refused', [$e->getCode(), $e->getMessage()]);
        }
        $log->add('after refusal', rows($m, 'SELECT COUNT(*) FROM php_m_load'));
    },
    'compression' => function (Log $log): void {
        $m = connect(MYSQLI_CLIENT_COMPRESS);
        $log->add('select', rows($m, "SELECT 1, 'compressed?'"));
        $big = rows($m, "SELECT seq, REPEAT(CHAR(65 + seq % 26), 200) FROM seq_1_to_20000");
        $log->add('big result', [count($big), md5(json_encode($big))]);
        $m->query('DROP TABLE IF EXISTS php_m_zip');
        $m->query('CREATE TABLE php_m_zip (id INT PRIMARY KEY, b LONGBLOB)');
        $blob = random_bytes(300000) . str_repeat('z', 3000000);
        $s = $m->prepare('INSERT INTO php_m_zip VALUES (1, ?)');
        $s->bind_param('s', $blob);
        $s->execute();
        $log->add('blob insert', $s->affected_rows);
        $log->add('blob back', rows($m, 'SELECT LENGTH(b), MD5(b) = ' . "'" . md5($blob) . "'" . ' FROM php_m_zip'));
        $m->query('UPDATE php_m_zip SET id = 2');
        $log->add('update', ok_facts($m));
        $m->multi_query('SELECT 1; SELECT 2');
        $sets = [];
        do {
            if ($r = $m->store_result()) {
                $sets[] = $r->fetch_all(MYSQLI_NUM);
            }
        } while ($m->more_results() && $m->next_result());
        $log->add('multi', $sets);
        $m->change_user(Cfg::user(), Cfg::password(), Cfg::db());
        $log->add('after change_user', rows($m, 'SELECT DATABASE()'));
    },
    'compression_load_data_local' => function (Log $log): void {
        $path = temp_file(str_repeat("1\tabc\n", 30000));
        $m = connect(MYSQLI_CLIENT_COMPRESS, localInfile: true);
        $m->query('DROP TABLE IF EXISTS php_m_zload');
        $m->query('CREATE TABLE php_m_zload (id INT, v VARCHAR(20))');
        $m->query("LOAD DATA LOCAL INFILE '" . $m->real_escape_string($path) . "' INTO TABLE php_m_zload");
        $log->add('load', ok_facts($m));
        $log->add('rows', rows($m, 'SELECT COUNT(*) FROM php_m_zload'));
    },
    'charsets' => function (Log $log): void {
        foreach (['utf8mb4', 'latin1', 'utf8', 'binary'] as $cs) {
            $m = connect(charset: $cs);
            $log->add("$cs: name", $m->character_set_name());
            $log->add("$cs: session", rows($m, 'SELECT @@character_set_client, @@character_set_results, @@collation_connection'));
            $r = $m->query("SELECT 'é' AS lit, CONVERT('ü' USING latin1) AS l1, _utf8mb4'✓' AS u, HEX('é') AS h");
            $log->add("$cs: fields", fields($r));
            $log->add("$cs: rows", $r->fetch_all(MYSQLI_NUM));
            $m->close();
        }
        $m = connect();
        $m->set_charset('latin1');
        $log->add('set_charset latin1', [$m->character_set_name(), rows($m, "SELECT @@collation_connection, 'é'")]);
        $m->query('SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci');
        $r = $m->query("SELECT @@collation_connection AS c, 'é' AS e");
        $log->add('set names unicode_ci', [fields($r), $r->fetch_all(MYSQLI_NUM)]);
        $m->set_charset('utf8mb4');
        $r = $m->query("SELECT @@collation_connection AS c, 'é' AS e");
        $log->add('set_charset utf8mb4', [fields($r), $r->fetch_all(MYSQLI_NUM)]);
    },
    'change_user' => function (Log $log): void {
        $m = connect();
        $m->query("SET @v = 'kept?', sql_mode = 'ANSI_QUOTES', time_zone = '+03:00'");
        $m->query('CREATE TEMPORARY TABLE php_m_tmp (id INT)');
        $m->query('SET NAMES latin1');
        $m->begin_transaction();
        $log->add('change_user', $m->change_user(Cfg::user(), Cfg::password(), Cfg::db()));
        $log->add('state after', rows($m, 'SELECT @v, @@sql_mode = @@GLOBAL.sql_mode, @@time_zone, DATABASE(), @@in_transaction, @@character_set_client'));
        try {
            $m->query('SELECT * FROM php_m_tmp');
            $log->add('temp table', 'still there');
        } catch (mysqli_sql_exception $e) {
            $log->add('temp table', [$e->getCode(), $e->getMessage()]);
        }
        $log->add('charset name', $m->character_set_name());
        $log->add('change_user no db', $m->change_user(Cfg::user(), Cfg::password(), null));
        $log->add('db after', rows($m, 'SELECT DATABASE()'));
        $m->change_user(Cfg::user(), Cfg::password(), Cfg::db());
        $m->query("SET @before_failure = 'set', time_zone = '+01:00'");
        try {
            $m->change_user(Cfg::user(), 'wrong password', Cfg::db());
            $log->add('wrong password', 'accepted');
        } catch (mysqli_sql_exception $e) {
            $log->add('wrong password', [$e->getCode(), preg_replace("/@'[^']*'/", "@'HOST'", $e->getMessage())]);
        }
        try {
            $log->add('after failed change_user', rows($m, 'SELECT @before_failure, @@time_zone, DATABASE(), CURRENT_USER()'));
        } catch (mysqli_sql_exception $e) {
            $log->add('after failed change_user', [$e->getCode(), $e->getMessage()]);
        }
    },
    'persistent' => function (Log $log): void {
        $m = connect(host: 'p:' . Cfg::host());
        $m->query("SET @pv = 'persisted'");
        $first = rows($m, 'SELECT CONNECTION_ID()')[0][0];
        $m->query('DROP TABLE IF EXISTS php_m_pers');
        $m->query('CREATE TABLE php_m_pers (id INT PRIMARY KEY) ENGINE=InnoDB');
        $m->begin_transaction();
        $m->query('INSERT INTO php_m_pers VALUES (1)');
        $m->close();  // a persistent link goes back to PHP's own pool: mysqlnd rolls back and resets it
        $n = connect(host: 'p:' . Cfg::host());
        $log->add('same connection', rows($n, 'SELECT CONNECTION_ID()')[0][0] === $first);
        $log->add('state after reuse', rows($n, 'SELECT @pv, @@in_transaction'));
        $log->add('rolled back', rows($n, 'SELECT COUNT(*) FROM php_m_pers'));
        $n->close();
    },
    'kill_query' => function (Log $log): void {
        $m = connect();
        $k = connect();
        $id = $m->thread_id;
        $m->query('SELECT SLEEP(5)', MYSQLI_ASYNC);
        usleep(300000);
        $k->query("KILL QUERY $id");
        try {
            $r = $m->reap_async_query();
            $log->add('killed sleep', $r === false ? 'false' : $r->fetch_all(MYSQLI_NUM));
        } catch (mysqli_sql_exception $e) {
            $log->add('killed sleep', [$e->getCode(), $e->getMessage()]);
        }
        $log->add('still connected', rows($m, 'SELECT 7'));
        $k->query("KILL $id");
        usleep(200000);
        try {
            $m->query('SELECT 8');
            $log->add('after kill', 'still alive');
        } catch (mysqli_sql_exception $e) {
            $log->add('after kill', $e->getCode());
        }
    },
];

run_scenarios($scenarios, $argv);
