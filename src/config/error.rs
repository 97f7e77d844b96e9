//! Configuration errors. Each names the file (or environment variable) and the key.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// Deserialisation failed (unknown key, wrong type, bad TOML).
    #[error("{0}")]
    Parse(String),
    /// A rule file is invalid (the message names the file, the rule and the key).
    #[error("{0}")]
    Rules(String),
    /// A value parsed but is not acceptable.
    #[error("{file}: key `{key}`: {msg}", file = file.display())]
    Invalid {
        file: PathBuf,
        key: String,
        msg: String,
    },
}

impl ConfigError {
    pub(super) fn from_figment(file: &Path, err: figment::Error) -> Self {
        let mut out = String::new();
        for e in err {
            let key = e.path.join(".");
            let source = match &e.metadata {
                Some(m) if m.name.contains("environment") => {
                    format!(
                        "environment variable SLUICE_{}",
                        e.path.join("__").to_uppercase()
                    )
                }
                // The path as the user gave it (figment would print it relative to the cwd).
                Some(m) if matches!(m.source, Some(figment::Source::File(_))) => {
                    file.display().to_string()
                }
                Some(m) => m
                    .source
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| m.name.to_string()),
                None => file.display().to_string(),
            };
            if !out.is_empty() {
                out.push('\n');
            }
            if key.is_empty() {
                let _ = write!(out, "{source}: {}", e.kind);
            } else {
                let _ = write!(out, "{source}: key `{key}`: {}", e.kind);
            }
        }
        ConfigError::Parse(out)
    }
}
