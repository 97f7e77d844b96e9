//! Finding the installed server, installer and client binaries, and a bootstrapped template
//! data directory that every node copies (bootstrapping once instead of once per node).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::SandboxError;

#[derive(Debug, Clone)]
pub struct Binaries {
    pub server: PathBuf,
    pub install_db: PathBuf,
    pub client: PathBuf,
    pub is_mariadb: bool,
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

impl Binaries {
    pub fn find() -> Result<Binaries, SandboxError> {
        let server = find(&["mariadbd", "mysqld"]).ok_or(SandboxError::Missing {
            what: "a MariaDB/MySQL server",
            names: "mariadbd, mysqld".into(),
            package: "mariadb-server",
        })?;
        let install_db =
            find(&["mariadb-install-db", "mysql_install_db"]).ok_or(SandboxError::Missing {
                what: "the data-directory installer",
                names: "mariadb-install-db, mysql_install_db".into(),
                package: "mariadb-server",
            })?;
        let client = find(&["mariadb", "mysql"]).ok_or(SandboxError::Missing {
            what: "the command-line client",
            names: "mariadb, mysql".into(),
            package: "mariadb-client",
        })?;
        let is_mariadb = server.file_name().is_some_and(|n| n == "mariadbd")
            || std::fs::read_link(&server).is_ok_and(|t| t.to_string_lossy().contains("mariadbd"));
        Ok(Binaries {
            server,
            install_db,
            client,
            is_mariadb,
        })
    }

    /// A bootstrapped data directory, made once per server binary and shared (read-only) by
    /// every topology on the machine. Built aside and renamed into place, so concurrent test
    /// processes never see a half-made template.
    pub async fn template_datadir(&self) -> Result<PathBuf, SandboxError> {
        let meta = std::fs::metadata(&self.server)
            .map_err(|e| SandboxError::Io(self.server.display().to_string(), e))?;
        let stamp = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let base = std::env::temp_dir();
        let target = base.join(format!("sluice-datadir-template-{}-{stamp}", meta.len()));
        if target.join("mysql").is_dir() {
            return Ok(target);
        }
        let work = tempfile::Builder::new()
            .prefix("sluice-template-build-")
            .tempdir_in(&base)
            .map_err(|e| SandboxError::Io("template build dir".into(), e))?;
        let data = work.path().join("data");
        let tmp = work.path().join("tmp");
        std::fs::create_dir_all(&tmp)
            .map_err(|e| SandboxError::Io(tmp.display().to_string(), e))?;
        let out = tokio::process::Command::new(&self.install_db)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
                "--innodb-log-file-size=8M",
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| SandboxError::Io(self.install_db.display().to_string(), e))?;
        if !out.status.success() {
            return Err(SandboxError::Start {
                name: "template".into(),
                detail: format!(
                    "{} failed: {}{}",
                    self.install_db.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        match std::fs::rename(&data, &target) {
            Ok(()) => Ok(target),
            // Another process won the race: use its template.
            Err(_) if target.join("mysql").is_dir() => Ok(target),
            Err(e) => Err(SandboxError::Io(target.display().to_string(), e)),
        }
    }
}

/// Copies a directory tree (`cp -a`, which keeps it simple and fast).
pub fn copy_dir(from: &Path, to: &Path) -> Result<(), SandboxError> {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| SandboxError::Io("cp".into(), e))?;
    if st.success() {
        Ok(())
    } else {
        Err(SandboxError::Io(
            format!("cp -a {} {}", from.display(), to.display()),
            std::io::Error::other("copy failed"),
        ))
    }
}
