<?php
// One scenario with PHP's mysqli and PDO (mysqlnd), against a port (Sluice or MariaDB
// directly); what it prints is compared between the two. Usage: php scenario.php PORT DATABASE
[$_, $port, $db] = $argv;
mysqli_report(MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT);
function out(...$a) { echo implode(' ', array_map(fn($x) => is_string($x) ? $x : json_encode($x), $a)), "\n"; }
$c = new mysqli('127.0.0.1', 'app', 'app-pw', '', (int)$port);
$c->set_charset('utf8mb4');
$c->query("CREATE DATABASE $db CHARACTER SET utf8mb4");
$c->select_db($db);
$c->query("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, j JSON, name VARCHAR(50), d DECIMAL(10,2), ts DATETIME(3), b BLOB, f DOUBLE)");
$s = $c->prepare("INSERT INTO t (j, name, d, ts, b, f) VALUES (?, ?, ?, ?, ?, ?)");
$j = '{"a": 1}'; $n = "h\u{e9}llo \u{2713}"; $d = "12.34"; $ts = "2024-01-02 03:04:05.678"; $b = "\x00\x01\xff"; $f = 1.5;
$s->bind_param('sssssd', $j, $n, $d, $ts, $b, $f);
$s->execute();
out('insert_id', $s->insert_id, 'affected', $s->affected_rows);
$c->query("INSERT INTO t (name) VALUES (NULL), ('third')");
out('insert_id', $c->insert_id, 'affected', $c->affected_rows);
$r = $c->query("SELECT id, j, name, d, ts, HEX(b) AS b, f FROM t ORDER BY id");
foreach ($r->fetch_fields() as $fi) out('field', $fi->name, $fi->type, $fi->charsetnr, $fi->length);
while ($row = $r->fetch_assoc()) out(json_encode($row));
$s = $c->prepare("SELECT id, name, d, f, ts FROM t WHERE id > ? ORDER BY id");
$one = 1; $s->bind_param('i', $one); $s->execute();
$res = $s->get_result();
while ($row = $res->fetch_row()) out('prepared', json_encode($row));
$c->begin_transaction(); $c->query("INSERT INTO t (name) VALUES ('rolled back')"); $c->rollback();
out('count', $c->query("SELECT COUNT(*) FROM t")->fetch_row());
try { $c->query("INSERT INTO t (id) VALUES (1)"); } catch (mysqli_sql_exception $e) { out('duplicate key', $e->getCode(), $e->getSqlState()); }
$c->query("SELECT CAST('abc' AS SIGNED)")->fetch_all();
out('warning_count', $c->warning_count);
out('warnings', $c->query("SHOW WARNINGS")->fetch_all());
$c->query("SET time_zone = '+05:00'");
out('session', $c->query("SELECT @@time_zone, LAST_INSERT_ID()")->fetch_row());
// PDO with native prepares.
$p = new PDO("mysql:host=127.0.0.1;port=$port;dbname=$db;charset=utf8mb4", 'app', 'app-pw',
    [PDO::ATTR_EMULATE_PREPARES => false, PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_STRINGIFY_FETCHES => false]);
$st = $p->prepare("SELECT id, name, d, f FROM t WHERE id >= ? ORDER BY id");
$st->execute([1]);
out('pdo', $st->fetchAll(PDO::FETCH_NUM));
out('pdo meta', $st->getColumnMeta(2)['native_type'] ?? null);
// KILL with the id the driver got in the greeting: the victim's next statement fails.
$victim = new mysqli('127.0.0.1', 'app', 'app-pw', '', (int)$port);
$c->query("KILL " . $victim->thread_id);
try { $victim->query("SELECT 1"); out('victim survived KILL'); } catch (mysqli_sql_exception $e) { out('victim killed', $e->getCode()); }
$c->query("DROP DATABASE $db");
out('done');
