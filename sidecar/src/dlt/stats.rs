//! `dlt stats`: a dead-letter topic's records counted by error type and by age.

use std::collections::BTreeMap;

use redrive::headers::Original;
use redrive::Record;

/// The age buckets, by upper bound in ms (the last one unbounded).
const AGES: [(&str, i64); 5] = [
    ("<1h", 3_600_000),
    ("1h-1d", 86_400_000),
    ("1d-7d", 7 * 86_400_000),
    ("7d-30d", 30 * 86_400_000),
    (">30d", i64::MAX),
];

/// Counts of dead letters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records counted.
    pub total: u64,
    /// By `kafka_exception-fqcn` (`-` when absent).
    pub by_error_type: BTreeMap<String, u64>,
    /// By the age of the dead letter (its timestamp), in the buckets of [`Stats::age_buckets`].
    pub by_age: BTreeMap<&'static str, u64>,
    /// The oldest and newest dead letter's timestamp, epoch ms.
    pub oldest_ms: Option<i64>,
    /// See `oldest_ms`.
    pub newest_ms: Option<i64>,
    /// When ages are measured from, epoch ms (the time of the first record counted).
    now_ms: i64,
}

impl Stats {
    /// The age buckets' names, youngest first.
    pub fn age_buckets() -> impl Iterator<Item = &'static str> {
        AGES.iter().map(|(name, _)| *name)
    }

    /// Counts `r`.
    pub fn add(&mut self, r: &Record) {
        if self.now_ms == 0 {
            self.now_ms = super::now_ms();
        }
        self.total += 1;
        let o = Original::read(r.headers());
        let kind = o.exception_fqcn.unwrap_or_else(|| "-".into());
        *self.by_error_type.entry(kind).or_default() += 1;
        let Some(ts) = r.timestamp().map(|t| t.millis) else {
            *self.by_age.entry("unknown").or_default() += 1;
            return;
        };
        self.oldest_ms = Some(self.oldest_ms.map_or(ts, |o| o.min(ts)));
        self.newest_ms = Some(self.newest_ms.map_or(ts, |n| n.max(ts)));
        let age = self.now_ms - ts;
        let bucket = AGES
            .iter()
            .find(|(_, max)| age < *max)
            .map_or(">30d", |(n, _)| n);
        *self.by_age.entry(bucket).or_default() += 1;
    }

    /// Text lines for a route and its DLT topic.
    pub fn text(&self, route: &str, topic: &str) -> String {
        let ago = |ms: Option<i64>| {
            ms.map_or("-".into(), |t| {
                let secs = (self.now_ms - t).max(0) / 1000;
                let (n, unit) = match secs {
                    0..60 => (secs, "s"),
                    60..3_600 => (secs / 60, "m"),
                    3_600..86_400 => (secs / 3_600, "h"),
                    _ => (secs / 86_400, "d"),
                };
                format!("{n}{unit} ago")
            })
        };
        let list = |m: &BTreeMap<String, u64>| {
            let mut v: Vec<(&String, &u64)> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            v.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ages: Vec<String> = Self::age_buckets()
            .chain(["unknown"])
            .filter_map(|b| self.by_age.get(b).map(|n| format!("{b} {n}")))
            .collect();
        format!(
            "route {route} ({topic}): {} dead letters, oldest {}, newest {}\n  by error type: {}\n  by age: {}\n",
            self.total,
            ago(self.oldest_ms),
            ago(self.newest_ms),
            if self.total == 0 { "-".into() } else { list(&self.by_error_type) },
            if ages.is_empty() { "-".into() } else { ages.join(", ") },
        )
    }

    /// One JSON object for a route and its DLT topic.
    pub fn json(&self, route: &str, topic: &str) -> serde_json::Value {
        serde_json::json!({
            "route": route,
            "topic": topic,
            "total": self.total,
            "oldest_ms": self.oldest_ms,
            "newest_ms": self.newest_ms,
            "by_error_type": self.by_error_type,
            "by_age": self.by_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use redrive::headers::{self, Headers};
    use redrive::{Timestamp, TimestampType};

    fn dead(kind: &str, age_ms: i64) -> Record {
        let mut h = Headers::new();
        h.push(
            headers::EXCEPTION_FQCN,
            Some(Bytes::copy_from_slice(kind.as_bytes())),
        );
        Record::new("orders-dlt", 0, 0)
            .with_headers(h)
            .with_timestamp(Timestamp {
                millis: super::super::now_ms() - age_ms,
                kind: TimestampType::LogAppendTime,
            })
    }

    #[test]
    fn counts_by_error_type_and_age() {
        let mut s = Stats::default();
        for r in [
            dead("http-503", 60_000),
            dead("http-503", 2 * 3_600_000),
            dead("http-400", 3 * 86_400_000),
            dead("http-503", 40 * 86_400_000),
        ] {
            s.add(&r);
        }
        s.add(&Record::new("orders-dlt", 0, 9));
        assert_eq!(s.total, 5);
        assert_eq!(s.by_error_type["http-503"], 3);
        assert_eq!(s.by_error_type["http-400"], 1);
        assert_eq!(s.by_error_type["-"], 1);
        let ages: Vec<(&str, u64)> = s.by_age.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            ages,
            [
                ("1d-7d", 1),
                ("1h-1d", 1),
                ("<1h", 1),
                (">30d", 1),
                ("unknown", 1)
            ]
        );
        let text = s.text("orders", "orders-dlt");
        assert!(
            text.contains("5 dead letters, oldest 40d ago, newest 1m ago")
                && text.contains("http-503 3, - 1, http-400 1"),
            "{text}"
        );
        assert_eq!(s.json("orders", "orders-dlt")["by_age"][">30d"], 1);
    }
}
