//! Criterion: the lexical classifier against a full sqlparser parse, on the same statements;
//! and the session's per-query lexical work with the digest on, in three passes and in one.
//! `cargo bench --bench classifier`.

use criterion::{criterion_group, criterion_main, Criterion};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use std::hint::black_box;

const STATEMENTS: &[(&str, &str)] = &[
    ("point_select", "SELECT c FROM sbtest1 WHERE id=4711"),
    ("range_select", "SELECT DISTINCT c FROM sbtest3 WHERE id BETWEEN 100 AND 199 ORDER BY c"),
    ("update", "UPDATE sbtest2 SET k=k+1 WHERE id=5012"),
    ("insert", "INSERT INTO sbtest1 (id, k, c, pad) VALUES (5012, 4999, '68487932199-96439406143', '22195207048-70116052123')"),
    ("orm_select", "SELECT `auth_user`.`id`, `auth_user`.`password`, `auth_user`.`last_login`, `auth_user`.`is_superuser`, `auth_user`.`username` FROM `auth_user` WHERE `auth_user`.`id` = 1 LIMIT 21"),
];

fn bench(c: &mut Criterion) {
    for (name, sql) in STATEMENTS {
        c.bench_function(&format!("lexical/{name}"), |b| {
            b.iter(|| sluice::router::classify_query(black_box(sql.as_bytes())).class)
        });
        // What a text query costs the session with the query digest on: class, digest and
        // the `LOAD … LOCAL` test, in three passes (as before 2026-12) and in one.
        c.bench_function(&format!("three_passes/{name}"), |b| {
            b.iter(|| {
                let sql = black_box(sql.as_bytes());
                (
                    sluice::router::classify_query(sql).class,
                    sluice::router::lexer::digest(sql),
                    sluice::router::lexer::mentions_load_local(sql),
                )
            })
        });
        c.bench_function(&format!("one_pass/{name}"), |b| {
            b.iter(|| {
                let (c, seen) = sluice::router::classify_query_seen(black_box(sql.as_bytes()));
                (c.class, seen.digest(), seen.load_local())
            })
        });
        c.bench_function(&format!("sqlparser/{name}"), |b| {
            b.iter(|| Parser::parse_sql(&MySqlDialect {}, black_box(sql)).map(|v| v.len()))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
