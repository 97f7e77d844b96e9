//! Routing rules: TOML files listed in `[routing] rules`, evaluated in order for every text
//! query; the first rule whose every condition matches decides. A rule can send the statement
//! to the primary or a replica, set its lag budget, make "no replica within budget" an error,
//! or deny the statement with a message. Loading validates everything, so a bad file stops the
//! start-up with an error naming the file, the rule and the key.

use std::net::IpAddr;

pub use crate::config::Cidr;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use super::classify::StatementClass;

/// A rule file: `[[rule]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default, rename = "match")]
    when: RawMatch,
    #[serde(default)]
    action: RawAction,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    class: Option<Vec<String>>,
    regex: Option<String>,
    tables: Option<Vec<String>>,
    user: Option<Vec<String>>,
    schema: Option<Vec<String>>,
    client: Option<Vec<String>>,
    /// Matches statements with no `WHERE` (e.g. an UPDATE or DELETE of a whole table).
    #[serde(default)]
    without_where: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    route: Option<String>,
    max_lag_ms: Option<u64>,
    on_no_replica: Option<String>,
    deny: Option<String>,
    #[serde(default)]
    log_only: bool,
}

/// Where a rule sends a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleRoute {
    Primary,
    Replica,
}

/// What to do when a read finds no replica within its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnNoReplica {
    #[default]
    Primary,
    Error,
}

/// A validated rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub file: PathBuf,
    classes: Option<Vec<StatementClass>>,
    regex: Option<Regex>,
    tables: Option<Vec<String>>,
    users: Option<Vec<String>>,
    schemas: Option<Vec<String>>,
    clients: Option<Vec<Cidr>>,
    without_where: bool,
    pub route: Option<RuleRoute>,
    pub max_lag_ms: Option<u64>,
    pub on_no_replica: OnNoReplica,
    pub deny: Option<String>,
    /// Matches are logged and counted, the action is not applied.
    pub log_only: bool,
}

/// What the statement is matched against.
pub struct Subject<'a> {
    pub sql: &'a [u8],
    pub class: StatementClass,
    pub user: &'a str,
    pub schema: Option<&'a [u8]>,
    pub client: IpAddr,
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {place}: {msg}", file = file.display())]
pub struct RuleError {
    pub file: PathBuf,
    /// `rule "name" (rule[3]), key `match.regex`` or similar.
    pub place: String,
    pub msg: String,
}

/// The classes a rule can name: every statement class (`command` never matches a query).
const CLASSES: [StatementClass; StatementClass::COUNT] = StatementClass::ALL;

/// Loads rule files in order. Relative paths are taken from `base` (the config file's folder).
pub fn load(paths: &[String], base: &Path) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    for p in paths {
        let path = if Path::new(p).is_absolute() {
            PathBuf::from(p)
        } else {
            base.join(p)
        };
        let text = std::fs::read_to_string(&path).map_err(|e| RuleError {
            file: path.clone(),
            place: "file".into(),
            msg: e.to_string(),
        })?;
        rules.extend(parse(&text, &path)?);
    }
    Ok(rules)
}

/// Parses one rule file's text (`path` only names it in errors and in `SHOW RULES`).
pub fn parse(text: &str, path: &Path) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    let path = path.to_path_buf();
    let err = |place: String, msg: String| RuleError {
        file: path.clone(),
        place,
        msg,
    };
    {
        let file: RuleFile = toml::from_str(text).map_err(|e| {
            let place = e.span().map_or("file".to_string(), |sp| {
                let line = text[..sp.start.min(text.len())].lines().count().max(1);
                format!("line {line}")
            });
            err(place, e.message().to_string())
        })?;
        for (i, r) in file.rule.into_iter().enumerate() {
            let at = |key: &str| format!("rule {:?} (rule[{i}]), key `{key}`", r.name);
            let classes = match r.when.class {
                None => None,
                Some(names) => Some(
                    names
                        .iter()
                        .map(|n| {
                            CLASSES
                                .iter()
                                .copied()
                                .find(|c| c.as_str() == n)
                                .ok_or_else(|| {
                                    let known: Vec<&str> =
                                        CLASSES.iter().map(|c| c.as_str()).collect();
                                    err(
                                        at("match.class"),
                                        format!(
                                            "unknown class {n:?}; expected one of {}",
                                            known.join(", ")
                                        ),
                                    )
                                })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let regex = match r.when.regex {
                None => None,
                Some(re) => Some(
                    regex::RegexBuilder::new(&re)
                        .case_insensitive(true)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| err(at("match.regex"), format!("invalid regex: {e}")))?,
                ),
            };
            let clients = match r.when.client {
                None => None,
                Some(list) => Some(
                    list.iter()
                        .map(|c| Cidr::parse(c).ok_or_else(|| err(at("match.client"), format!("expected an address or CIDR such as 10.0.0.0/8, found {c:?}"))))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let route = match r.action.route.as_deref() {
                None => None,
                Some("primary") => Some(RuleRoute::Primary),
                Some("replica") => Some(RuleRoute::Replica),
                Some(o) => {
                    return Err(err(
                        at("action.route"),
                        format!("expected \"primary\" or \"replica\", found {o:?}"),
                    ))
                }
            };
            let on_no_replica = match r.action.on_no_replica.as_deref() {
                None | Some("primary") => OnNoReplica::Primary,
                Some("error") => OnNoReplica::Error,
                Some(o) => {
                    return Err(err(
                        at("action.on_no_replica"),
                        format!("expected \"primary\" or \"error\", found {o:?}"),
                    ))
                }
            };
            if r.name.is_empty() {
                return Err(err(
                    format!("rule[{i}], key `name`"),
                    "expected a non-empty name".into(),
                ));
            }
            rules.push(Rule {
                name: r.name,
                file: path.clone(),
                classes,
                regex,
                tables: r
                    .when
                    .tables
                    .map(|t| t.into_iter().map(|s| s.to_ascii_lowercase()).collect()),
                users: r.when.user,
                schemas: r.when.schema,
                without_where: r.when.without_where,
                clients,
                route,
                max_lag_ms: r.action.max_lag_ms,
                on_no_replica,
                deny: r.action.deny,
                log_only: r.action.log_only,
            });
        }
    }
    Ok(rules)
}

impl Rule {
    /// Whether every condition of the rule holds for `s`. Cheap conditions are checked first;
    /// the regex (over the normalized statement) and table names (from the parser) only when
    /// everything else matched.
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        if self.classes.as_ref().is_some_and(|c| !c.contains(&s.class)) {
            return false;
        }
        if self
            .users
            .as_ref()
            .is_some_and(|u| !u.iter().any(|u| u == s.user))
        {
            return false;
        }
        if let Some(schemas) = &self.schemas {
            let Some(db) = s.schema else { return false };
            if !schemas.iter().any(|x| x.as_bytes() == db) {
                return false;
            }
        }
        if self
            .clients
            .as_ref()
            .is_some_and(|c| !c.iter().any(|c| c.contains(s.client)))
        {
            return false;
        }
        if self.without_where && super::lexer::has_keyword(s.sql, b"WHERE") {
            return false;
        }
        if let Some(re) = &self.regex {
            if !re.is_match(&super::lexer::normalize(s.sql)) {
                return false;
            }
        }
        if let Some(tables) = &self.tables {
            let found = super::slow_path::tables(s.sql);
            if !found.iter().any(|t| {
                tables
                    .iter()
                    .any(|w| w == t || t.rsplit('.').next() == Some(w.as_str()))
            }) {
                return false;
            }
        }
        true
    }
}

/// The first rule matching `s`.
pub fn first_match<'r>(rules: &'r [Rule], s: &Subject<'_>) -> Option<&'r Rule> {
    rules.iter().find(|r| r.matches(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_rule_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                let rules = load(&[p.display().to_string()], Path::new("/"))
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(!rules.is_empty(), "{} has no rules", p.display());
                n += 1;
            }
        }
        assert!(n >= 2, "default.toml and an example are shipped");
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load_one(text: &str) -> Result<Vec<Rule>, RuleError> {
        let f = write(text);
        load(&[f.path().display().to_string()], Path::new("/"))
    }

    #[test]
    fn errors_name_file_rule_and_key() {
        let e = load_one("[[rule]]\nname = \"bad\"\nmatch.regex = \"(unclosed\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rule \"bad\" (rule[0]), key `match.regex`"),
            "{e}"
        );
        assert!(e.contains(".toml"), "{e}");
        let e = load_one("[[rule]]\nname = \"x\"\nmatch.colour = \"red\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = load_one("[[rule]]\nname = \"c\"\nmatch.class = [\"reads\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("match.class") && e.contains("read_primary"),
            "{e}"
        );
        let e = load_one("[[rule]]\nname = \"r\"\naction.route = \"sideways\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("action.route"), "{e}");
        let e = load_one("[[rule]]\nname = \"n\"\nmatch.client = [\"10.0.0.0/40\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("match.client"), "{e}");
    }

    #[test]
    fn matching() {
        let rules = load_one(
            r#"
[[rule]]
name = "no-drop"
match.class = ["ddl"]
match.regex = "^(DROP|TRUNCATE) "
match.user = ["app"]
action.deny = "DROP and TRUNCATE are not allowed for the application"

[[rule]]
name = "reports"
match.tables = ["report_daily"]
action.route = "replica"
action.max_lag_ms = 60000

[[rule]]
name = "office"
match.client = ["10.1.0.0/16"]
action.on_no_replica = "error"

[[rule]]
name = "no-unbounded-delete"
match.regex = "^(UPDATE|DELETE) "
match.tables = ["orders"]
match.without_where = true
action.deny = "UPDATE and DELETE on orders need a WHERE"
"#,
        )
        .unwrap();
        let subject = |sql: &'static str, class, user: &'static str, ip: &str| Subject {
            sql: sql.as_bytes(),
            class,
            user,
            schema: None,
            client: ip.parse().unwrap(),
        };
        let name = |s: &Subject<'_>| first_match(&rules, s).map(|r| r.name.clone());
        let w = StatementClass::Write;
        let hit = |sql: &'static str| name(&subject(sql, w, "app", "127.0.0.1"));
        assert_eq!(
            hit("DELETE FROM orders").as_deref(),
            Some("no-unbounded-delete")
        );
        assert_eq!(
            hit("update shop.orders set x = 1 /* WHERE */").as_deref(),
            Some("no-unbounded-delete")
        );
        assert_eq!(hit("DELETE FROM orders WHERE id = 7"), None);
        assert_eq!(hit("DELETE FROM carts"), None);
        assert_eq!(
            hit("UPDATE orders SET note = 'no where here' WHERE id = 1"),
            None
        );
        assert_eq!(
            name(&subject(
                "drop table t",
                StatementClass::Ddl,
                "app",
                "127.0.0.1"
            ))
            .as_deref(),
            Some("no-drop")
        );
        assert_eq!(
            name(&subject(
                "drop table t",
                StatementClass::Ddl,
                "admin",
                "127.0.0.1"
            )),
            None
        );
        assert_eq!(
            name(&subject(
                "CREATE TABLE t (a int)",
                StatementClass::Ddl,
                "app",
                "127.0.0.1"
            )),
            None
        );
        assert_eq!(
            name(&subject(
                "SELECT * FROM shop.report_daily",
                StatementClass::Read,
                "app",
                "127.0.0.1"
            ))
            .as_deref(),
            Some("reports")
        );
        assert_eq!(
            name(&subject(
                "SELECT 1",
                StatementClass::Read,
                "app",
                "10.1.2.3"
            ))
            .as_deref(),
            Some("office")
        );
        assert_eq!(
            name(&subject(
                "SELECT 1",
                StatementClass::Read,
                "app",
                "10.2.0.1"
            )),
            None
        );
        assert_eq!(rules[1].max_lag_ms, Some(60000));
        assert_eq!(rules[2].on_no_replica, OnNoReplica::Error);
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.255.1.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_none());
    }
}
