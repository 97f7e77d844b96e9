//! GTID positions, compared the way failover needs: "has this server received everything that
//! one has?" A MariaDB position is a list of `domain-server-seq` (the last GTID per
//! replication domain); a MySQL GTID set is `uuid:1-100:105,…`, read here as the last sequence
//! number per source uuid. Positions from the two flavours are never compared with each other.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The last sequence number per domain (MariaDB domain id, or MySQL source uuid).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos {
    seqs: BTreeMap<String, u64>,
    /// The text as the server printed it (used in `MASTER_GTID_WAIT`).
    pub text: String,
}

impl GtidPos {
    /// Parses either flavour; `None` for text that is neither.
    pub fn parse(text: &str) -> Option<GtidPos> {
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut seqs = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            if let Some((uuid, ranges)) = part.split_once(':') {
                // MySQL: uuid:1-5:7-9 → the end of the last interval.
                let mut last = 0u64;
                for r in ranges.split(':') {
                    let end = r.rsplit('-').next()?;
                    last = last.max(end.parse().ok()?);
                }
                let e = seqs.entry(uuid.to_ascii_lowercase()).or_insert(0);
                *e = (*e).max(last);
            } else {
                let mut it = part.split('-');
                let (d, s, n) = (it.next()?, it.next()?, it.next()?);
                if it.next().is_some() {
                    return None;
                }
                d.parse::<u32>().ok()?;
                s.parse::<u32>().ok()?;
                let n: u64 = n.parse().ok()?;
                let e = seqs.entry(d.to_string()).or_insert(0);
                *e = (*e).max(n);
            }
        }
        Some(GtidPos { seqs, text })
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The last sequence number in `domain`.
    pub fn seq(&self, domain: &str) -> Option<u64> {
        self.seqs.get(domain).copied()
    }

    /// Whether this position includes everything `other` has, in every domain.
    pub fn contains(&self, other: &GtidPos) -> bool {
        other
            .seqs
            .iter()
            .all(|(d, n)| self.seqs.get(d).is_some_and(|m| m >= n))
    }

    /// The per-domain maximum of two positions.
    pub fn max(&self, other: &GtidPos) -> GtidPos {
        let mut seqs = self.seqs.clone();
        for (d, n) in &other.seqs {
            let e = seqs.entry(d.clone()).or_insert(0);
            *e = (*e).max(*n);
        }
        let text = if self.contains(other) {
            self.text.clone()
        } else if other.contains(self) {
            other.text.clone()
        } else {
            // Mixed: rebuild MariaDB-style text only when both are MariaDB positions.
            let mut parts: Vec<String> = Vec::new();
            for src in [&self.text, &other.text] {
                for p in src.split(',').filter(|p| !p.is_empty()) {
                    let domain = p.split('-').next().unwrap_or("");
                    let seq = p.rsplit('-').next().and_then(|n| n.parse::<u64>().ok());
                    if seq.is_some()
                        && seq == seqs.get(domain).copied()
                        && !parts.iter().any(|q| q.split('-').next() == Some(domain))
                    {
                        parts.push(p.to_string());
                    }
                }
            }
            parts.join(",")
        };
        GtidPos { seqs, text }
    }

    /// Transactions in all domains: a tie-breaker when neither position contains the other.
    pub fn total(&self) -> u64 {
        self.seqs.values().sum()
    }

    /// How many transactions `other` has that this position lacks (0 when it contains it).
    pub fn missing_from(&self, other: &GtidPos) -> u64 {
        other
            .seqs
            .iter()
            .map(|(d, n)| n.saturating_sub(self.seqs.get(d).copied().unwrap_or(0)))
            .sum()
    }

    /// Orders positions by how advanced they are: containment first, then the total.
    pub fn advance_cmp(&self, other: &GtidPos) -> Ordering {
        match (self.contains(other), other.contains(self)) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => self.total().cmp(&other.total()),
        }
    }
}

impl std::fmt::Display for GtidPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> GtidPos {
        GtidPos::parse(s).unwrap()
    }

    #[test]
    fn mariadb_positions() {
        let a = g("0-1-100");
        let b = g("0-2-101");
        assert!(b.contains(&a));
        assert!(!a.contains(&b));
        assert_eq!(a.advance_cmp(&b), Ordering::Less);
        assert_eq!(g("").advance_cmp(&g("")), Ordering::Equal);
        assert!(g("0-1-5").contains(&g("")));
        assert!(!g("").contains(&g("0-1-5")));
        let multi = g("0-1-10, 1-3-7");
        assert_eq!(multi.seq("1"), Some(7));
        assert!(multi.contains(&g("0-1-9")));
        assert!(!multi.contains(&g("2-1-1")));
        assert_eq!(g("0-1-10").missing_from(&g("0-1-13,1-1-2")), 5);
    }

    #[test]
    fn incomparable_positions_use_the_total() {
        let a = g("0-1-10,1-1-1");
        let b = g("0-1-5,1-1-2");
        assert_eq!(a.advance_cmp(&b), Ordering::Greater);
        let m = a.max(&b);
        assert_eq!(m.seq("0"), Some(10));
        assert_eq!(m.seq("1"), Some(2));
        assert_eq!(m.text, "0-1-10,1-1-2");
    }

    #[test]
    fn mysql_sets() {
        let a = g("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7-9");
        assert_eq!(a.seq("3e11fa47-71ca-11e1-9e33-c80aa9429562"), Some(9));
        let b = g("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-12");
        assert!(b.contains(&a));
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(GtidPos::parse("0-1").is_none());
        assert!(GtidPos::parse("a-b-c").is_none());
        assert!(GtidPos::parse("0-1-2-3").is_none());
        assert!(GtidPos::parse("uuid:x").is_none());
    }
}
