//! Which dead letters a command works on.

use redrive::headers::Original;
use redrive::Record;

use super::now_ms;

/// Which dead letters a command works on. Empty fields select everything.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only these partitions.
    pub partitions: Vec<i32>,
    /// Offsets from this one (inclusive).
    pub from_offset: Option<i64>,
    /// Offsets up to this one (inclusive).
    pub to_offset: Option<i64>,
    /// Dead-lettered at or after this time (epoch ms; the DLT record's timestamp).
    pub since_ms: Option<i64>,
    /// Dead-lettered before this time (epoch ms).
    pub until_ms: Option<i64>,
    /// `since` and `until` as written (`2h`): they, not the times resolved at this run, name
    /// the default replay group, so running the same command again resumes where it ended
    /// instead of sending again what it sent.
    pub written: (Option<String>, Option<String>),
    /// Only records with exactly this key.
    pub key: Option<String>,
    /// Only records whose error type (`kafka_exception-fqcn` or its cause) contains this,
    /// ignoring case.
    pub error_type: Option<String>,
}

impl Selection {
    /// Whether `r` is selected.
    pub fn matches(&self, r: &Record) -> bool {
        if !self.partitions.is_empty() && !self.partitions.contains(&r.partition()) {
            return false;
        }
        if self.from_offset.is_some_and(|o| r.offset() < o)
            || self.to_offset.is_some_and(|o| r.offset() > o)
        {
            return false;
        }
        let ts = r.timestamp().map(|t| t.millis);
        if let Some(since) = self.since_ms {
            if ts.is_none_or(|t| t < since) {
                return false;
            }
        }
        if let Some(until) = self.until_ms {
            if ts.is_none_or(|t| t >= until) {
                return false;
            }
        }
        if let Some(k) = &self.key {
            if r.key().map(|b| &b[..]) != Some(k.as_bytes()) {
                return false;
            }
        }
        if let Some(want) = &self.error_type {
            let want = want.to_ascii_lowercase();
            let o = Original::read(r.headers());
            let hit = [o.exception_fqcn, o.exception_cause_fqcn]
                .into_iter()
                .flatten()
                .any(|t| t.to_ascii_lowercase().contains(&want));
            if !hit {
                return false;
            }
        }
        true
    }

    /// A stable text form, for the default replay group name.
    fn canonical(&self) -> String {
        let since = self
            .written
            .0
            .clone()
            .or(self.since_ms.map(|t| t.to_string()));
        let until = self
            .written
            .1
            .clone()
            .or(self.until_ms.map(|t| t.to_string()));
        format!(
            "p={:?};from={:?};to={:?};since={:?};until={:?};key={:?};err={:?}",
            self.partitions,
            self.from_offset,
            self.to_offset,
            since,
            until,
            self.key,
            self.error_type
        )
    }
}

/// Parses `--since`/`--until`: an RFC 3339 time, or a duration meaning that long ago
/// (`2h`, `30m`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s.trim()) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .map_err(|_| format!("`{s}` is before 1970"));
    }
    match humantime::parse_duration(s.trim()) {
        Ok(ago) => Ok(now_ms() - ago.as_millis() as i64),
        Err(_) => Err(format!(
            "`{s}` is neither a time (2026-11-24T10:00:00Z) nor a duration ago (2h, 30m)"
        )),
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The default consumer group of a replay: one per DLT topic, selection and destination.
pub fn replay_group(dlt_topic: &str, selection: &Selection, to: Option<&str>) -> String {
    let h = fnv1a(&format!("{dlt_topic}|{}|{to:?}", selection.canonical()));
    format!("redrive-replay.{dlt_topic}.{h:016x}")
}
