<?php
// PHP PDO_mysql (mysqlnd) scenarios; see common.php for how they are run and compared.
// Usage: DB_HOST=... DB_PORT=... DB_USER=... DB_PASSWORD=... DB_NAME=... php pdo.php [scenario ...]

declare(strict_types=1);

require __DIR__ . '/common.php';

/** @param array<int, mixed> $options */
function pdo(array $options = [], string $charset = 'utf8mb4'): PDO
{
    $dsn = sprintf('mysql:host=%s;port=%d;dbname=%s;charset=%s', Cfg::host(), Cfg::port(), Cfg::db(), $charset);
    return new PDO($dsn, Cfg::user(), Cfg::password(), $options + [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::ATTR_TIMEOUT => 10,
    ]);
}

function all(PDO $db, string $sql): array
{
    return $db->query($sql)->fetchAll(PDO::FETCH_NUM);
}

function meta(PDOStatement $s): array
{
    $out = [];
    for ($i = 0; $i < $s->columnCount(); $i++) {
        $m = $s->getColumnMeta($i);
        $out[] = [$m['name'], $m['native_type'] ?? null, $m['len'], $m['precision'], $m['flags'], $m['pdo_type'], $m['table']];
    }
    return $out;
}

function pdo_error(PDOException $e): array
{
    return [$e->getCode(), $e->errorInfo, $e->getMessage()];
}

/** The same work with emulated prepares (PDO's default) or the server's (COM_STMT_*). */
function prepares(Log $log, bool $emulate): void
{
    $db = pdo([PDO::ATTR_EMULATE_PREPARES => $emulate, PDO::ATTR_STRINGIFY_FETCHES => false]);
    $t = $emulate ? 'php_p_emul' : 'php_p_native';
    $db->exec("DROP TABLE IF EXISTS $t");
    $db->exec("CREATE TABLE $t (id INT AUTO_INCREMENT PRIMARY KEY, s VARCHAR(40), d DECIMAL(8,2), f DOUBLE, b BLOB, dt DATETIME, j JSON, n INT NULL)");
    $ins = $db->prepare("INSERT INTO $t (s, d, f, b, dt, j, n) VALUES (:s, :d, :f, :b, :dt, :j, :n)");
    foreach ([['a', '1.50', 0.25], ['ünï', '-2.00', 1e10], ["quo'te", '0.01', -0.5]] as $i => [$s, $d, $f]) {
        $ins->bindValue(':s', $s);
        $ins->bindValue(':d', $d);
        $ins->bindValue(':f', $f);
        $ins->bindValue(':b', str_repeat(chr($i), 1000) . "\x00\xff", PDO::PARAM_LOB);
        $ins->bindValue(':dt', '2024-05-0' . ($i + 1) . ' 10:00:00');
        $ins->bindValue(':j', json_encode(['i' => $i, 'tags' => ['x', 'y']]));
        $ins->bindValue(':n', $i ? $i : null, $i ? PDO::PARAM_INT : PDO::PARAM_NULL);
        $ins->execute();
        $log->add("insert $i", [$ins->rowCount(), $db->lastInsertId()]);
    }
    $sel = $db->prepare("SELECT id, s, d, f, LENGTH(b), HEX(RIGHT(b, 2)), dt, j, n, ? AS echo FROM $t WHERE id > ? ORDER BY id");
    $sel->execute(['é', 0]);
    $log->add('meta', meta($sel));
    $log->add('rows', $sel->fetchAll(PDO::FETCH_ASSOC));
    $sel->execute(['x', 2]);  // executed again
    $log->add('again', $sel->fetchAll(PDO::FETCH_NUM));
    $sel->closeCursor();
    $upd = $db->prepare("UPDATE $t SET f = f * 2 WHERE id <= ?");
    $upd->execute([2]);
    $log->add('update rowCount', $upd->rowCount());
    $upd->execute([2]);
    $log->add('update again', $upd->rowCount());
    $log->add('exec multi-row insert', $db->exec("INSERT INTO $t (s) VALUES ('p'), ('q'), ('r')"));
    $log->add('exec update', $db->exec("UPDATE $t SET s = 'p' WHERE s IN ('p', 'q')"));
    $log->add('lastInsertId', $db->lastInsertId());
    try {
        $db->prepare('SELECT * FROM no_such_table WHERE id = ?')->execute([1]);
        $log->add('prepare error', 'none');
    } catch (PDOException $e) {
        $log->add('prepare error', pdo_error($e));
    }
    try {
        $db->exec("INSERT INTO $t (id) VALUES (1)");
    } catch (PDOException $e) {
        $log->add('duplicate', pdo_error($e));
    }
    // Many statements prepared and dropped, as a long PHP request does.
    $sum = 0;
    for ($i = 0; $i < 300; $i++) {
        $s = $db->prepare("SELECT ? + $i");
        $s->execute([1]);
        $sum += (int) $s->fetchColumn();
        $s = null;
    }
    $log->add('300 statements', $sum);
    $log->add('server keeps at most a few', all($db, "SELECT VARIABLE_VALUE <= 3 FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'PREPARED_STMT_COUNT'"));
    $log->add('buffered query', $db->getAttribute(PDO::MYSQL_ATTR_USE_BUFFERED_QUERY));
    $db->setAttribute(PDO::MYSQL_ATTR_USE_BUFFERED_QUERY, false);
    $s = $db->prepare('SELECT seq FROM seq_1_to_5000');
    $s->execute();
    $n = 0;
    while ($row = $s->fetch(PDO::FETCH_NUM)) {
        $n += (int) $row[0];
    }
    $log->add('unbuffered', $n);
}

$scenarios = [
    'emulated_prepares' => fn (Log $log) => prepares($log, true),
    'native_prepares' => fn (Log $log) => prepares($log, false),
    'found_rows' => function (Log $log): void {
        foreach ([false, true] as $found) {
            $db = pdo([PDO::MYSQL_ATTR_FOUND_ROWS => $found]);
            $db->exec('DROP TABLE IF EXISTS php_p_found');
            $db->exec('CREATE TABLE php_p_found (id INT PRIMARY KEY, v INT)');
            $db->exec('INSERT INTO php_p_found VALUES (1, 0), (2, 0), (3, 1)');
            $log->add("found_rows=$found", $db->exec('UPDATE php_p_found SET v = 1'));
            $s = $db->prepare('UPDATE php_p_found SET v = ?');
            $s->execute([1]);
            $log->add("found_rows=$found prepared", $s->rowCount());
        }
    },
    'transactions' => function (Log $log): void {
        $db = pdo();
        $db->exec('DROP TABLE IF EXISTS php_p_tx');
        $db->exec('CREATE TABLE php_p_tx (id INT PRIMARY KEY) ENGINE=InnoDB');
        $db->beginTransaction();
        $log->add('inTransaction', $db->inTransaction());
        $db->exec('INSERT INTO php_p_tx VALUES (1), (2)');
        $db->rollBack();
        $log->add('after rollback', all($db, 'SELECT COUNT(*) FROM php_p_tx'));
        $db->beginTransaction();
        $db->exec('INSERT INTO php_p_tx VALUES (3)');
        $db->commit();
        $log->add('after commit', all($db, 'SELECT id FROM php_p_tx'));
        try {
            $db->commit();
        } catch (PDOException $e) {
            $log->add('commit without transaction', $e->getMessage());
        }
        $db->setAttribute(PDO::ATTR_AUTOCOMMIT, false);
        $db->exec('INSERT INTO php_p_tx VALUES (4)');
        $log->add('autocommit off', all($db, 'SELECT @@autocommit, @@in_transaction'));
        $db->exec('ROLLBACK');
        $db->setAttribute(PDO::ATTR_AUTOCOMMIT, true);
        $log->add('final', all($db, 'SELECT id FROM php_p_tx ORDER BY id'));
    },
    'stored_procedures' => function (Log $log): void {
        foreach ([true, false] as $emulate) {
            $db = pdo([PDO::ATTR_EMULATE_PREPARES => $emulate]);
            $db->exec('DROP TABLE IF EXISTS php_p_proc');
            $db->exec('CREATE TABLE php_p_proc (id INT PRIMARY KEY)');
            $db->exec('INSERT INTO php_p_proc VALUES (1), (2), (3)');
            $db->exec('DROP PROCEDURE IF EXISTS php_p_sets');
            $db->exec('CREATE PROCEDURE php_p_sets(IN lim INT) BEGIN SELECT id FROM php_p_proc WHERE id <= lim; SELECT COUNT(*) AS n, lim; END');
            $s = $db->prepare('CALL php_p_sets(?)');
            $s->execute([2]);
            $sets = [];
            do {
                $sets[] = [$s->columnCount(), $s->fetchAll(PDO::FETCH_NUM)];
            } while ($s->nextRowset());
            $log->add("emulate=$emulate sets", $sets);
            $s->closeCursor();
            $s->execute([1]);  // the same CALL again
            $log->add("emulate=$emulate again", $s->fetchAll(PDO::FETCH_NUM));
            $s->closeCursor();
            $log->add("emulate=$emulate after", all($db, 'SELECT COUNT(*) FROM php_p_proc'));
        }
    },
    'multi_statements' => function (Log $log): void {
        $db = pdo();
        $s = $db->query("SELECT 1 AS a; SELECT 'two' AS b, 2 AS c; DO 0");
        $sets = [];
        do {
            $sets[] = [$s->columnCount(), $s->fetchAll(PDO::FETCH_NUM)];
        } while ($s->nextRowset());
        $log->add('sets', $sets);
        $db = pdo([PDO::MYSQL_ATTR_MULTI_STATEMENTS => false]);
        try {
            $db->query('SELECT 1; SELECT 2');
            $log->add('multi off', 'accepted');
        } catch (PDOException $e) {
            $log->add('multi off', pdo_error($e));
        }
    },
    'load_data_local' => function (Log $log): void {
        $path = temp_file("1,a\n2,b\n3,c\n4,\"quoted, comma\"\n");
        $db = pdo([PDO::MYSQL_ATTR_LOCAL_INFILE => true]);
        $db->exec('DROP TABLE IF EXISTS php_p_load');
        $db->exec('CREATE TABLE php_p_load (id INT, v VARCHAR(20))');
        $n = $db->exec('LOAD DATA LOCAL INFILE ' . $db->quote($path) . " INTO TABLE php_p_load FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"'");
        $log->add('loaded', $n);
        $log->add('rows', all($db, 'SELECT * FROM php_p_load ORDER BY id'));
    },
    'compression' => function (Log $log): void {
        $db = pdo([PDO::MYSQL_ATTR_COMPRESS => true]);
        $log->add('select', all($db, "SELECT 1, 'z'"));
        $rows = all($db, 'SELECT seq, MD5(seq) FROM seq_1_to_10000');
        $log->add('big', [count($rows), md5(json_encode($rows))]);
        $s = $db->prepare('SELECT ?, LENGTH(?)');
        $s->execute(['x', str_repeat('y', 100000)]);
        $log->add('prepared', $s->fetchAll(PDO::FETCH_NUM));
        $db->exec('DROP TABLE IF EXISTS php_p_zip');
        $db->exec('CREATE TABLE php_p_zip (id INT)');
        $log->add('insert', $db->exec('INSERT INTO php_p_zip VALUES (1), (2)'));
    },
    'charsets' => function (Log $log): void {
        foreach (['utf8mb4', 'latin1', 'utf8'] as $cs) {
            $db = pdo([], $cs);
            $s = $db->query("SELECT @@character_set_client, @@collation_connection, 'é' AS e, HEX('é')");
            $log->add($cs, [meta($s), $s->fetchAll(PDO::FETCH_NUM)]);
        }
        $db = pdo([PDO::MYSQL_ATTR_INIT_COMMAND => 'SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci']);
        $s = $db->query("SELECT @@collation_connection, 'é' AS e");
        $log->add('init command', [meta($s), $s->fetchAll(PDO::FETCH_NUM)]);
    },
    'persistent' => function (Log $log): void {
        $db = pdo([PDO::ATTR_PERSISTENT => true]);
        $id = all($db, 'SELECT CONNECTION_ID()')[0][0];
        $db->exec("SET @pp = 'left over'");
        $db = null;
        $db = pdo([PDO::ATTR_PERSISTENT => true]);
        $log->add('same connection', all($db, 'SELECT CONNECTION_ID()')[0][0] === $id);
        $log->add('state', all($db, 'SELECT @pp'));
    },
    'errors' => function (Log $log): void {
        $db = pdo();
        try {
            $db->query('SELEKT');
        } catch (PDOException $e) {
            $log->add('syntax', pdo_error($e));
        }
        $db->setAttribute(PDO::ATTR_ERRMODE, PDO::ERRMODE_SILENT);
        $log->add('silent', [$db->query('SELECT * FROM nope'), $db->errorCode(), $db->errorInfo()]);
        $log->add('warnings', [all($db, "SELECT CAST('x' AS SIGNED)"), all($db, 'SHOW WARNINGS')]);
    },
];

run_scenarios($scenarios, $argv);
