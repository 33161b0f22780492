// node mysql2 scenarios, run straight to the server and through the proxy (tests/test_clients_node.py).
//
// Prints one JSON object {"scenario": [[label, value], ...], ...}; nothing in it may depend on which
// of the two it talked to (no thread ids, no ports). An error ends only its own scenario and is
// recorded as a value (code, errno, sqlState, message).
// Usage: DB_HOST=... DB_PORT=... DB_USER=... DB_PASSWORD=... DB_NAME=... node client.js [scenario ...]
'use strict';

const crypto = require('crypto');
const mysql = require('mysql2');
const mysqlp = require('mysql2/promise');

for (const name of ['DB_HOST', 'DB_PORT', 'DB_USER', 'DB_PASSWORD', 'DB_NAME']) {
  if (!process.env[name]) {
    process.stderr.write(`missing environment variable ${name}\n`);
    process.exit(2);
  }
}

const base = {
  host: process.env.DB_HOST,
  port: Number(process.env.DB_PORT),
  user: process.env.DB_USER,
  password: process.env.DB_PASSWORD,
  database: process.env.DB_NAME,
  connectTimeout: 10000,
  timezone: 'Z',
  // The server's default collation. mysql2's own default (utf8mb4_unicode_ci) has a scenario of its own,
  // default_charset: through the proxy its result columns name the wrong collation (see the test).
  charset: 'UTF8MB4_GENERAL_CI',
};

function connect(options = {}) {
  return mysqlp.createConnection({ ...base, ...options });
}

// JSON-safe and comparable: Buffers as hex, Dates as ISO text, floats with fixed digits.
function norm(v) {
  if (v === undefined) return '(undefined)';
  if (Buffer.isBuffer(v)) return `hex:${v.toString('hex')}`;
  if (v instanceof Date) return `date:${Number.isNaN(v.getTime()) ? 'invalid' : v.toISOString()}`;
  if (typeof v === 'bigint') return `bigint:${v}`;
  if (typeof v === 'number' && !Number.isInteger(v)) return `float:${v.toPrecision(10)}`;
  if (Array.isArray(v)) return v.map(norm);
  if (v && typeof v === 'object') {
    const out = {};
    for (const k of Object.keys(v)) out[k] = norm(v[k]);
    return out;
  }
  return v;
}

// What a driver tells about columns: everything but what names the connection.
function fields(fs) {
  return (fs || []).map((f) => [f.name, f.orgName, f.table, f.orgTable, f.columnType, f.characterSet,
    f.columnLength, f.flags, f.decimals, f.type, f.encoding, f.extendedTypeName]);
}

// An OK result (ResultSetHeader), all of it: mysql2 parses changedRows from the info text and
// hands session-tracker entries through as stateChanges.
function okFacts(r) {
  return { ...r };
}

function errFacts(e) {
  return { code: e.code, errno: e.errno, sqlState: e.sqlState, message: e.sqlMessage || e.message };
}

const typesSql = "SELECT 1 AS i, -2.5 AS d, 'héllo' AS s, NULL AS n, CAST('2024-02-29 12:34:56.789' AS DATETIME(3)) AS dt, "
  + "CAST('2024-02-29' AS DATE) AS da, x'00ff' AS b, 9007199254740993 AS big, CAST(1.5 AS DECIMAL(10,3)) AS dec3, "
  + "TIME('12:00:01') AS t, JSON_OBJECT('k', JSON_ARRAY(1, 'two')) AS jo";

const scenarios = {
  async query_and_execute(log) {
    const c = await connect();
    let [rows, fs] = await c.query(typesSql);
    log('query fields', fields(fs));
    log('query rows', rows);
    [rows, fs] = await c.execute(typesSql);
    log('execute fields', fields(fs));
    log('execute rows', rows);
    await c.query('DROP TABLE IF EXISTS node_types');
    await c.query('CREATE TABLE node_types (id INT AUTO_INCREMENT PRIMARY KEY, j JSON, d DATE, dt DATETIME(6), ts TIMESTAMP(3) NULL, '
      + 'u BIGINT UNSIGNED, e ENUM("x","y"), st SET("a","b"), bl BLOB, dc DECIMAL(20,6), f FLOAT, g VARCHAR(10) CHARACTER SET latin1)');
    const ins = 'INSERT INTO node_types (j, d, dt, ts, u, e, st, bl, dc, f, g) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)';
    const values = ['{"a": [1, 2, {"b": null}], "c": "ü"}', '2024-12-31', new Date(Date.UTC(2020, 0, 2, 3, 4, 5, 678)),
      '2021-06-07 08:09:10.123', '18446744073709551615', 'y', 'a,b', Buffer.from([0, 1, 254, 255]), '-12345.678901', 0.5, 'é'];
    log('query insert', okFacts((await c.query(ins, values))[0]));
    log('execute insert', okFacts((await c.execute(ins, values))[0]));
    [rows, fs] = await c.query('SELECT * FROM node_types ORDER BY id');
    log('table fields', fields(fs));
    log('table rows (query)', rows);
    [rows] = await c.execute('SELECT * FROM node_types WHERE id > ? ORDER BY id', [0]);
    log('table rows (execute)', rows);
    [rows] = await c.query({ sql: 'SELECT j, d, dt, u FROM node_types', rowsAsArray: true, dateStrings: true, supportBigNumbers: true, bigNumberStrings: true });
    log('dateStrings and bigNumberStrings', rows);
    [rows] = await c.query({ sql: 'SELECT JSON_EXTRACT(j, "$.a") AS a, j->>"$.c" AS c FROM node_types LIMIT 1' });
    log('json functions', rows);
    for (let i = 0; i < 3; i++) {
      [rows] = await c.execute('SELECT ? + 1 AS n, ? AS s, ? AS nul', [i, `v${i}`, null]);
      log(`execute again ${i}`, rows);
    }
    c.unprepare('SELECT ? + 1 AS n, ? AS s, ? AS nul');
    await c.end();
  },
  async default_charset(log) {
    // mysql2's default collation, utf8mb4_unicode_ci (224): the server then names it in every
    // text column's definition, also after statements that run on other links through the proxy.
    const { charset, ...options } = base;
    const c = await mysqlp.createConnection(options);
    for (let i = 0; i < 3; i++) {
      const [rows, fs] = await c.query("SELECT 'é' AS e, @@collation_connection AS co, @@character_set_results AS cr");
      log(`round ${i}`, [rows, fields(fs)]);
      const [rows2, fs2] = await c.execute('SELECT ? AS p', ['x']);
      log(`execute ${i}`, [rows2, fields(fs2)]);
    }
    await c.end();
  },
  async ok_packets(log) {
    const c = await connect();
    await c.query('DROP TABLE IF EXISTS node_ok');
    await c.query('CREATE TABLE node_ok (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(5) UNIQUE, n INT DEFAULT 0)');
    log('multi-row insert', okFacts((await c.query("INSERT INTO node_ok (v) VALUES ('a'), ('b'), ('c')"))[0]));
    log('update', okFacts((await c.query('UPDATE node_ok SET n = n + 1 WHERE id < 3'))[0]));
    log('update nothing changed', okFacts((await c.query('UPDATE node_ok SET n = n WHERE id < 3'))[0]));
    log('execute update', okFacts((await c.execute('UPDATE node_ok SET n = ? WHERE id = ?', [5, 1]))[0]));
    log('insert ignore', okFacts((await c.query("INSERT IGNORE INTO node_ok (v) VALUES ('a'), ('zz')"))[0]));
    log('truncation warning', okFacts((await c.query("INSERT IGNORE INTO node_ok (v) VALUES ('toolong')"))[0]));
    log('show warnings', (await c.query('SHOW WARNINGS'))[0]);
    log('set time_zone', okFacts((await c.query("SET time_zone = '+02:00'"))[0]));
    log('set names', okFacts((await c.query('SET NAMES utf8mb4'))[0]));
    log('set user variable', okFacts((await c.query('SET @u = 1'))[0]));
    log('set sql_mode', okFacts((await c.query("SET sql_mode = 'ANSI_QUOTES'"))[0]));
    log('use', okFacts((await c.query(`USE ${base.database}`))[0]));
    log('set autocommit', okFacts((await c.query('SET autocommit = 0'))[0]));
    log('commit', okFacts((await c.query('COMMIT'))[0]));
    log('begin', okFacts((await c.query('BEGIN'))[0]));
    log('rollback', okFacts((await c.query('ROLLBACK'))[0]));
    try {
      await c.query('INSERT INTO node_ok (v) VALUES (?)', ['a']);
    } catch (e) {
      log('duplicate', errFacts(e));
    }
    try {
      await c.execute('SELEKT ?', [1]);
    } catch (e) {
      log('prepare error', errFacts(e));
    }
    await c.end();
  },
  async multiple_statements(log) {
    const c = await connect({ multipleStatements: true });
    const [results, fs] = await c.query("DROP TABLE IF EXISTS node_multi; CREATE TABLE node_multi (id INT); INSERT INTO node_multi VALUES (1), (2); SELECT * FROM node_multi; UPDATE node_multi SET id = id * 10; SELECT id, 'x' AS y FROM node_multi");
    log('results', results);
    log('fields', fs.map((f) => fields(f)));
    try {
      await c.query('SELECT 1; SELEKT 2; SELECT 3');
    } catch (e) {
      log('error in the middle', errFacts(e));
    }
    log('after', (await c.query('SELECT COUNT(*) AS n FROM node_multi'))[0]);
    await c.end();
    const single = await connect();
    try {
      await single.query('SELECT 1; SELECT 2');
      log('without multipleStatements', 'accepted');
    } catch (e) {
      log('without multipleStatements', errFacts(e));
    }
    await single.end();
  },
  async stored_procedures(log) {
    const c = await connect();
    await c.query('DROP PROCEDURE IF EXISTS node_proc');
    await c.query("CREATE PROCEDURE node_proc(IN n INT) BEGIN SELECT seq FROM seq_1_to_3 WHERE seq <= n; SELECT 'second' AS s, n; END");
    log('query call', (await c.query('CALL node_proc(2)'))[0]);
    log('execute call', (await c.execute('CALL node_proc(?)', [3]))[0]);
    log('execute call again', (await c.execute('CALL node_proc(?)', [1]))[0]);
    log('after', (await c.query('SELECT 1 AS one'))[0]);
    await c.end();
  },
  async transactions(log) {
    const c = await connect();
    await c.query('DROP TABLE IF EXISTS node_tx');
    await c.query('CREATE TABLE node_tx (id INT PRIMARY KEY) ENGINE=InnoDB');
    await c.beginTransaction();
    await c.execute('INSERT INTO node_tx VALUES (?)', [1]);
    log('inside', (await c.query('SELECT COUNT(*) AS n, @@in_transaction AS t FROM node_tx'))[0]);
    await c.rollback();
    await c.beginTransaction();
    await c.query('INSERT INTO node_tx VALUES (2)');
    await c.commit();
    log('after', (await c.query('SELECT id FROM node_tx'))[0]);
    await c.end();
  },
  async stream_large_result(log) {
    const c = mysql.createConnection(base);
    const hash = crypto.createHash('md5');
    let n = 0;
    await new Promise((resolve, reject) => {
      c.query("SELECT seq, REPEAT('r', seq % 300) AS pad, seq * 1.5 AS f FROM seq_1_to_60000")
        .stream({ highWaterMark: 100 })
        .on('data', (row) => { n += 1; hash.update(JSON.stringify(norm(row))); })
        .on('end', resolve)
        .on('error', reject);
    });
    log('streamed', [n, hash.digest('hex')]);
    const [rows] = await c.promise().query('SELECT COUNT(*) AS n FROM seq_1_to_10');
    log('after stream', rows);
    await c.promise().end();
  },
  async pool(log) {
    const pool = mysqlp.createPool({ ...base, connectionLimit: 4, waitForConnections: true, queueLimit: 0 });
    await pool.query('DROP TABLE IF EXISTS node_pool');
    await pool.query('CREATE TABLE node_pool (id INT AUTO_INCREMENT PRIMARY KEY, w INT)');
    const work = [];
    for (let w = 0; w < 20; w++) {
      work.push((async () => {
        const conn = await pool.getConnection();
        try {
          await conn.query('SET @w = ?', [w]);
          await conn.execute('INSERT INTO node_pool (w) SELECT @w');
          const [rows] = await conn.query('SELECT @w AS w, LAST_INSERT_ID() > 0 AS has_id');
          return rows[0];
        } finally {
          conn.release();
        }
      })());
    }
    log('each connection kept its variable', (await Promise.all(work)).map((r) => r.w));
    const parallel = await Promise.all(Array.from({ length: 12 }, (_, i) => pool.execute('SELECT ? * 2 AS d, SLEEP(0.01) AS s', [i])));
    log('parallel executes', parallel.map(([rows]) => rows[0].d));
    log('rows', (await pool.query('SELECT COUNT(*) AS n, SUM(w) AS s FROM node_pool'))[0]);
    await pool.end();
  },
  async change_user(log) {
    const c = await connect();
    await c.query("SET @cu = 'before', time_zone = '+05:00'");
    await c.query('CREATE TEMPORARY TABLE node_tmp (id INT)');
    await c.changeUser({ user: base.user, password: base.password, database: base.database });
    log('after changeUser', (await c.query('SELECT @cu AS cu, @@time_zone AS tz, DATABASE() AS db'))[0]);
    try {
      await c.query('SELECT * FROM node_tmp');
      log('temporary table', 'still there');
    } catch (e) {
      log('temporary table', errFacts(e));
    }
    log('execute after changeUser', (await c.execute('SELECT ? AS x', ['y']))[0]);
    await c.changeUser({ user: base.user, password: base.password, charset: 'latin1_swedish_ci' });
    log('charset after changeUser', (await c.query("SELECT @@character_set_client AS cs, @@collation_connection AS co, 'é' AS e"))[0]);
    await c.end();
  },
  async compress(log) {
    const c = await connect({ compress: true });
    log('select', (await c.query("SELECT 1 AS one, 'zip' AS s"))[0]);
    const [rows] = await c.query("SELECT seq, REPEAT('c', 100) AS pad FROM seq_1_to_30000");
    log('big result', [rows.length, crypto.createHash('md5').update(JSON.stringify(rows)).digest('hex')]);
    const blob = Buffer.alloc(2 * 1024 * 1024, 'q');
    crypto.randomFillSync(blob, 0, 100000);
    await c.query('DROP TABLE IF EXISTS node_zip');
    await c.query('CREATE TABLE node_zip (id INT PRIMARY KEY, b LONGBLOB)');
    log('big insert', okFacts((await c.execute('INSERT INTO node_zip VALUES (?, ?)', [1, blob]))[0]));
    const md5 = crypto.createHash('md5').update(blob).digest('hex');
    log('blob back', (await c.query('SELECT LENGTH(b) AS n, MD5(b) = ? AS same FROM node_zip', [md5]))[0]);
    log('update', okFacts((await c.query('UPDATE node_zip SET id = 2'))[0]));
    await c.end();
  },
  async errors(log) {
    const c = await connect();
    for (const sql of ['SELEKT 1', 'SELECT * FROM no_such_table', 'SELECT 1 FROM DUAL WHERE 1 = (SELECT 1 UNION SELECT 2)']) {
      try {
        await c.query(sql);
        log(sql, 'no error');
      } catch (e) {
        log(sql, errFacts(e));
      }
    }
    log('usable', (await c.query('SELECT 2 AS two'))[0]);
    await c.end();
    try {
      await connect({ password: 'wrong' });
      log('wrong password', 'accepted');
    } catch (e) {
      log('wrong password', [e.code, e.errno, e.sqlState]);
    }
  },
};

async function main() {
  const only = process.argv.slice(2);
  const out = {};
  for (const [name, fn] of Object.entries(scenarios)) {
    if (only.length && !only.includes(name)) continue;
    const items = [];
    const log = (label, value) => items.push([label, norm(value)]);
    try {
      await fn(log);
    } catch (e) {
      log('exception', errFacts(e));
    }
    out[name] = items;
  }
  // Exit once written: a socket some scenario left open (an errored pool, say) must not keep it running.
  process.stdout.write(`${JSON.stringify(out, null, 1)}\n`, () => process.exit(0));
}

main().catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exit(1);
});
