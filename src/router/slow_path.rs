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
