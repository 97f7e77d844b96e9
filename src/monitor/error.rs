//! The monitor's errors: a bounded step that timed out, an error from the server or the
//! driver, or a refusal with its reason.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A bounded step did not finish in time (its connection is in an unknown state).
    #[error("{what} timed out after {} ms", .after.as_millis())]
    Timeout { what: String, after: Duration },
    /// The server or the driver said no.
    #[error("{}", describe(.0))]
    Mysql(#[from] mysql_async::Error),
    /// A statement that failed, with the error.
    #[error("{statement}: {source}")]
    Statement {
        statement: String,
        #[source]
        source: Box<MonitorError>,
    },
    /// Not possible now, and why (not connected, not a replica, no candidate, …).
    #[error("{0}")]
    Refused(String),
}

impl MonitorError {
    /// The server's error code, when the server refused.
    pub fn server_code(&self) -> Option<u16> {
        match self {
            MonitorError::Mysql(mysql_async::Error::Server(s)) => Some(s.code),
            MonitorError::Statement { source, .. } => source.server_code(),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        match self {
            MonitorError::Timeout { .. } => true,
            MonitorError::Statement { source, .. } => source.is_timeout(),
            _ => false,
        }
    }
}

impl From<String> for MonitorError {
    fn from(s: String) -> Self {
        MonitorError::Refused(s)
    }
}

impl From<&str> for MonitorError {
    fn from(s: &str) -> Self {
        MonitorError::Refused(s.to_string())
    }
}

fn describe(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("ERROR {} ({}): {}", s.code, s.state, s.message),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_timeouts_survive_wrapping() {
        let t = MonitorError::Statement {
            statement: "STOP SLAVE".into(),
            source: Box::new(MonitorError::Timeout {
                what: "STOP SLAVE".into(),
                after: Duration::from_millis(1500),
            }),
        };
        assert!(t.is_timeout());
        assert_eq!(
            t.to_string(),
            "STOP SLAVE: STOP SLAVE timed out after 1500 ms"
        );
        assert_eq!(t.server_code(), None);
        let r: MonitorError = "candidate not connected".into();
        assert!(!r.is_timeout());
        assert_eq!(r.to_string(), "candidate not connected");
    }
}
