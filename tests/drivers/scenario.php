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
// Several result sets from one multi-statement query.
$c->multi_query("SELECT 1 AS a; SELECT 'two' AS b, 2 AS c; SELECT COUNT(*) AS n FROM t");
do {
    if ($r = $c->store_result()) { out('multi', $r->fetch_all(MYSQLI_ASSOC)); $r->free(); }
} while ($c->more_results() && $c->next_result());
// A prepared CALL with an OUT parameter: mysqlnd does not ask for CLIENT_PS_MULTI_RESULTS, so
// a direct connection sends the procedure's result and the final OK, not the OUT parameters
// (Sluice's server connection asks for them, and leaves them out for mysqlnd).
$c->query("CREATE PROCEDURE outs(IN a INT, OUT b INT) BEGIN SELECT a * 10 AS shown; SET b = a * 2; END");
$s = $c->prepare("CALL outs(?, ?)");
$a = 4; $bout = 0; $s->bind_param('ii', $a, $bout); $s->execute();
$n = 0;
do {
    if ($r = $s->get_result()) { out('call result', $r->fetch_all()); $r->free(); }
    $n++;
} while ($s->more_results() && $s->next_result());
out('call results', $n, 'affected', $s->affected_rows);
$s->close();
// LOAD DATA LOCAL from a file mysqlnd streams, then COM_CHANGE_USER to another account.
$l = mysqli_init();
$l->options(MYSQLI_OPT_LOCAL_INFILE, true);
$l->options(MYSQLI_OPT_LOAD_DATA_LOCAL_DIR, sys_get_temp_dir());
$l->real_connect('127.0.0.1', 'app', 'app-pw', $db, (int)$port);
$path = tempnam(sys_get_temp_dir(), 'ld');
file_put_contents($path, implode('', array_map(fn($i) => "$i\tline $i\n", range(1, 1000))));
$l->query("CREATE TABLE ld (id INT PRIMARY KEY, s VARCHAR(20))");
$l->query("LOAD DATA LOCAL INFILE '$path' INTO TABLE ld");
out('load data', $l->affected_rows, $l->query("SELECT COUNT(*), SUM(id), MAX(s) FROM ld")->fetch_row());
unlink($path);
$l->change_user('other', 'other-pw', $db);
out('changed user', $l->query("SELECT CURRENT_USER(), DATABASE() = '$db', @@time_zone")->fetch_row());
try { $l->change_user('other', 'wrong', $db); out('wrong password accepted'); } catch (mysqli_sql_exception $e) { out('change user refused', $e->getCode()); }
// PDO with native prepares.
$p = new PDO("mysql:host=127.0.0.1;port=$port;dbname=$db;charset=utf8mb4", 'app', 'app-pw',
    [PDO::ATTR_EMULATE_PREPARES => false, PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_STRINGIFY_FETCHES => false]);
$st = $p->prepare("SELECT id, name, d, f FROM t WHERE id >= ? ORDER BY id");
$st->execute([1]);
out('pdo', $st->fetchAll(PDO::FETCH_NUM));
out('pdo meta', $st->getColumnMeta(2)['native_type'] ?? null);
// Character sets: the same stored text read by a client in each character set, text and
// prepared (autocommit reads: a replica through Sluice); the bytes as they arrive and the
// column character sets.
$c->query("CREATE TABLE cs (id INT PRIMARY KEY, s VARCHAR(20) CHARACTER SET utf8mb4)");
$c->query("INSERT INTO cs VALUES (1, '\u{41f}\u{440}\u{438}\u{432}\u{435}\u{442}'), (2, 'caf\u{e9}'), (3, 'abc')");
// Through Sluice the reads below go to the replicas, which get the rows a moment later: wait
// (bounded) until four reads in a row see them.
$w = new mysqli('127.0.0.1', 'app', 'app-pw', $db, (int)$port);
$seen = 0;
for ($i = 0; $i < 200 && $seen < 4; $i++) {
    // A replica that has not yet created the table answers 1146: not yet, like a short count.
    try {
        $n = $w->query("SELECT COUNT(*) FROM cs")->fetch_row()[0];
    } catch (mysqli_sql_exception $e) {
        if ($e->getCode() != 1146) throw $e;
        $n = -1;
    }
    $seen = $n == 3 ? $seen + 1 : 0;
    if ($seen < 4) usleep(10000);
}
out('replicated', $seen == 4);
$w->close();
foreach (['cp1251', 'koi8r', 'cp866', 'latin1', 'utf8mb4', 'binary'] as $cs) {
    $k = new mysqli('127.0.0.1', 'app', 'app-pw', $db, (int)$port);
    $k->set_charset($cs);
    $r = $k->query("SELECT s, id, @@character_set_results AS r, @@collation_connection AS cc FROM cs ORDER BY id");
    out($cs, 'text', array_map(fn($f) => [$f->name, $f->type, $f->charsetnr, $f->length], $r->fetch_fields()),
        array_map(fn($row) => [bin2hex($row[0]), $row[1], $row[2], $row[3]], $r->fetch_all()));
    $s = $k->prepare("SELECT s, id FROM cs WHERE id > ? ORDER BY id");
    $zero = 0; $s->bind_param('i', $zero); $s->execute();
    $meta = $s->result_metadata();
    $res = $s->get_result();
    out($cs, 'prepared', array_map(fn($f) => [$f->name, $f->type, $f->charsetnr, $f->length], $meta->fetch_fields()),
        array_map(fn($row) => [bin2hex($row[0]), $row[1]], $res->fetch_all()));
    $k->close();
}
$p2 = new PDO("mysql:host=127.0.0.1;port=$port;dbname=$db;charset=koi8r", 'app', 'app-pw',
    [PDO::ATTR_EMULATE_PREPARES => false, PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
$st = $p2->prepare("SELECT s FROM cs WHERE id = ?");
$st->execute([1]);
out('pdo koi8r', bin2hex($st->fetchColumn()));
// KILL with the id the driver got in the greeting: the victim's next statement fails.
$victim = new mysqli('127.0.0.1', 'app', 'app-pw', '', (int)$port);
$c->query("KILL " . $victim->thread_id);
try { $victim->query("SELECT 1"); out('victim survived KILL'); } catch (mysqli_sql_exception $e) { out('victim killed', $e->getCode()); }
$c->query("DROP DATABASE $db");
out('done');
