//! The slow path: a full parse with sqlparser (MySqlDialect), used only when the lexical
//! classifier is unsure. A statement sqlparser cannot parse either is treated as a write.

use sqlparser::ast::Statement;
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use super::classify::StatementClass;

/// The class sqlparser sees, or `None` when it cannot parse the statement.
pub fn classify(sql: &[u8]) -> Option<StatementClass> {
    let sql = std::str::from_utf8(sql).ok()?;
    let stmts = Parser::parse_sql(&MySqlDialect {}, sql).ok()?;
    if stmts.len() > 1 {
        return Some(StatementClass::Multi);
    }
    let stmt = stmts.first()?;
    Some(match stmt {
        Statement::Query(q) => {
            if q.locks.is_empty() {
                StatementClass::Read
            } else {
                StatementClass::ReadPrimary
            }
        }
        Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowFunctions { .. } => StatementClass::Read,
        Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Call(_) => StatementClass::Write,
        Statement::StartTransaction { .. } => StatementClass::Begin,
        Statement::Commit { .. } => StatementClass::Commit,
        Statement::Rollback {
            savepoint: None, ..
        } => StatementClass::Rollback,
        _ => StatementClass::Other,
    })
}

/// The tables a statement names (lower-case, `db.table` when qualified), from a full parse;
/// empty when it cannot be parsed. Used only by rules that match on tables.
pub fn tables(sql: &[u8]) -> Vec<String> {
    let Ok(sql) = std::str::from_utf8(sql) else {
        return Vec::new();
    };
    let Ok(stmts) = Parser::parse_sql(&MySqlDialect {}, sql) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let _ = sqlparser::ast::visit_relations(&stmts, |name| {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| p.to_string().trim_matches('`').to_ascii_lowercase())
            .collect();
        out.push(parts.join("."));
        std::ops::ControlFlow::<()>::Continue(())
    });
    out
}
