// One scenario with node mysql2 (text protocol and prepared statements), against a port
// (Sluice or MariaDB directly); what it prints is compared between the two.
// Usage: node scenario.js PORT DATABASE   (mysql2 from NODE_PATH)
const mysql = require('mysql2/promise');
const [port, db] = process.argv.slice(2);
const out = (...a) => console.log(a.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join(' '));
// SCENARIO_COMPRESS=1: the compressed protocol (zlib).
const compress = process.env.SCENARIO_COMPRESS === '1';
const connect = () => mysql.createConnection({ host: '127.0.0.1', port: Number(port), user: 'app', password: 'app-pw', supportBigNumbers: true, compress });
(async () => {
  const c = await connect();
  await c.query(`CREATE DATABASE ${db} CHARACTER SET utf8mb4`);
  await c.query(`USE ${db}`);
  await c.query('CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, j JSON, name VARCHAR(50), d DECIMAL(10,2), ts DATETIME(3), b BLOB, f DOUBLE)');
  const [ins] = await c.execute('INSERT INTO t (j, name, d, ts, b, f) VALUES (?, ?, ?, ?, ?, ?)',
    ['{"a": 1}', 'h\u00e9llo \u2713', '12.34', '2024-01-02 03:04:05.678', Buffer.from([0, 1, 255]), 1.5]);
  out('insertId', ins.insertId, 'affected', ins.affectedRows);
  const [ins2] = await c.query("INSERT INTO t (name) VALUES (NULL), ('third')");
  out('insertId', ins2.insertId, 'affected', ins2.affectedRows);
  const [rows, fields] = await c.query('SELECT id, j, name, d, ts, b, f FROM t ORDER BY id');
  out('text rows', rows.map((r) => ({ ...r, ts: r.ts && r.ts.toISOString(), b: r.b && r.b.toString('hex') })));
  out('fields', fields.map((f) => [f.name, f.columnType, f.characterSet, f.columnLength, f.flags]));
  const [prows] = await c.execute('SELECT id, j, name, d, f FROM t WHERE id > ? ORDER BY id', [1]);
  out('prepared rows', prows);
  await c.beginTransaction();
  await c.query("INSERT INTO t (name) VALUES ('rolled back')");
  await c.rollback();
  out('count', (await c.query('SELECT COUNT(*) AS n FROM t'))[0]);
  try { await c.query('INSERT INTO t (id) VALUES (1)'); } catch (e) { out('duplicate key', e.errno, e.sqlState); }
  await c.query("SELECT CAST('abc' AS SIGNED)");
  out('warnings', (await c.query('SHOW WARNINGS'))[0]);
  await c.query("SET time_zone = '+05:00'");
  out('session', (await c.query('SELECT @@time_zone AS tz, LAST_INSERT_ID() AS id'))[0]);
  // Several result sets from one multi-statement query.
  const m = await mysql.createConnection({ host: '127.0.0.1', port: Number(port), user: 'app', password: 'app-pw', database: db, multipleStatements: true, compress });
  const [multi] = await m.query("SELECT 1 AS a; SELECT 'two' AS b, 2 AS c; SELECT COUNT(*) AS n FROM t");
  out('multi', multi);
  // LOAD DATA LOCAL from a stream mysql2 sends.
  await m.query('CREATE TABLE ld (id INT PRIMARY KEY, s VARCHAR(20))');
  const { Readable } = require('stream');
  const lines = Array.from({ length: 1000 }, (_, i) => `${i + 1}\tline ${i + 1}\n`).join('');
  const [ld] = await m.query({ sql: "LOAD DATA LOCAL INFILE 'stream' INTO TABLE ld", infileStreamFactory: () => Readable.from([Buffer.from(lines)]) });
  out('load data', ld.affectedRows, (await m.query('SELECT COUNT(*) AS n, SUM(id) AS s, MAX(s) AS m FROM ld'))[0]);
  // COM_CHANGE_USER to another account, then a wrong password.
  await m.changeUser({ user: 'other', password: 'other-pw', database: db });
  out('changed user', (await m.query('SELECT CURRENT_USER() AS u, DATABASE() = ? AS d', [db]))[0]);
  try { await m.changeUser({ user: 'other', password: 'wrong' }); out('wrong password accepted'); } catch (e) { out('change user refused', e.errno); }
  m.destroy();
  // Character sets: the same stored text read by a client in each character set, text and
  // prepared (autocommit reads: a replica through Sluice); the bytes as they arrive (typeCast
  // to a buffer) and the column character sets.
  await c.query('CREATE TABLE cs (id INT PRIMARY KEY, s VARCHAR(20) CHARACTER SET utf8mb4)');
  await c.query("INSERT INTO cs VALUES (1, ?), (2, ?), (3, 'abc')", ['\u041f\u0440\u0438\u0432\u0435\u0442', 'caf\u00e9']);
  // Through Sluice the reads below go to the replicas, which get the rows a moment later:
  // wait (bounded) until four reads in a row see them.
  const w = await connect();
  let seen = 0;
  for (let i = 0; i < 200 && seen < 4; i++) {
    // A replica that has not yet created the table answers 1146: not yet, like a short count.
    let n = -1;
    try {
      [[{ n }]] = await w.query(`SELECT COUNT(*) AS n FROM ${db}.cs`);
    } catch (e) {
      if (e.errno !== 1146) throw e;
    }
    seen = Number(n) === 3 ? seen + 1 : 0;
    if (seen < 4) await new Promise((r) => setTimeout(r, 10));
  }
  out('replicated', seen === 4);
  await w.end();
  const raw = (field, next) => (field.type === 'VAR_STRING' || field.type === 'STRING' ? (field.buffer() || Buffer.alloc(0)).toString('hex') : next());
  for (const [cs, collation] of [['cp1251', 'CP1251_GENERAL_CI'], ['koi8r', 'KOI8R_GENERAL_CI'], ['cp866', 'CP866_GENERAL_CI'], ['latin1', 'LATIN1_SWEDISH_CI'], ['utf8mb4', 'UTF8MB4_GENERAL_CI'], ['binary', 'BINARY']]) {
    const k = await mysql.createConnection({ host: '127.0.0.1', port: Number(port), user: 'app', password: 'app-pw', database: db, charset: collation, compress });
    const [trows, tfields] = await k.query({ sql: 'SELECT s, id, @@character_set_results AS r, @@collation_connection AS cc FROM cs ORDER BY id', typeCast: raw });
    out(cs, 'text', trows, tfields.map((f) => [f.name, f.columnType, f.characterSet, f.columnLength]));
    const [prows, pfields] = await k.execute('SELECT s, id FROM cs WHERE id > ? ORDER BY id', [0]);
    out(cs, 'prepared', prows.map((r) => [Buffer.isBuffer(r.s) ? r.s.toString('hex') : r.s, r.id]), pfields.map((f) => [f.name, f.columnType, f.characterSet, f.columnLength]));
    await k.end();
  }
  const victim = await connect();
  await c.query(`KILL ${victim.threadId}`);
  try { await victim.query('SELECT 1'); out('victim survived KILL'); } catch (e) { out('victim killed', e.code === 'PROTOCOL_CONNECTION_LOST' || e.fatal === true); }
  await c.query(`DROP DATABASE ${db}`);
  out('done');
  await c.end();
  victim.destroy();
})().catch((e) => { console.error(e); process.exit(1); });
