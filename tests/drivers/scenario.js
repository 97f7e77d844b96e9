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
  const victim = await connect();
  await c.query(`KILL ${victim.threadId}`);
  try { await victim.query('SELECT 1'); out('victim survived KILL'); } catch (e) { out('victim killed', e.code === 'PROTOCOL_CONNECTION_LOST' || e.fatal === true); }
  await c.query(`DROP DATABASE ${db}`);
  out('done');
  await c.end();
  victim.destroy();
})().catch((e) => { console.error(e); process.exit(1); });
