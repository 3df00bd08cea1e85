//! Commit policies: when the worker commits consumed offsets, and how.
//!
//! The rule every policy obeys: a partition's committed position is the lowest offset whose
//! outcome is not yet final, so a commit never passes a record still being handled.

mod ack;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use ack::Acknowledgment;

/// Whether a commit waits for the broker's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitMode {
    /// Block until the broker confirms; a failure is returned to the caller.
    Sync,
    /// Send and go on; failures are reported through the commit callback and the log, and the
    /// offsets are sent again by the next commit. One commit request is in flight at a time:
    /// commits due while one is being made are sent as one, with the newest positions.
    Async,
}

/// When the worker commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommitTrigger {
    /// After every record whose outcome is final. Records finished while a commit was being
    /// made are covered by the next one.
    PerRecord,
    /// After every `n` records whose outcome is final (Spring's `COUNT`). Like Spring's,
    /// the count is checked once per round of the poll loop, so a busy worker whose rounds
    /// finish more than `n` records commits once per round: at full speed on the benchmark's
    /// machine, `n = 1,000` made one commit every 5,000-9,000 records (BENCHMARKS.md,
    /// Method).
    EveryRecords(u64),
    /// On a timer (Spring's `TIME`).
    Interval(Duration),
    /// When every record of a poll batch is final (Spring's `BATCH`).
    PerBatch,
}

/// A commit policy: a [`CommitMode`] and a [`CommitTrigger`].
///
/// Parses from strings of the form `MODE:WHEN`, e.g. `async:1000`, `sync:record`,
/// `async:5s`, `sync:batch`; the same form is used in config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CommitPolicy {
    /// Sync or async.
    pub mode: CommitMode,
    /// When to commit.
    pub trigger: CommitTrigger,
}

impl CommitPolicy {
    /// A policy from its parts.
    pub const fn new(mode: CommitMode, trigger: CommitTrigger) -> Self {
        CommitPolicy { mode, trigger }
    }
    /// Synchronous commit after every record.
    pub const fn sync_per_record() -> Self {
        Self::new(CommitMode::Sync, CommitTrigger::PerRecord)
    }
    /// Asynchronous commit after every record.
    pub const fn async_per_record() -> Self {
        Self::new(CommitMode::Async, CommitTrigger::PerRecord)
    }
    /// Synchronous commit every `n` records.
    pub const fn sync_every(n: u64) -> Self {
        Self::new(CommitMode::Sync, CommitTrigger::EveryRecords(n))
    }
    /// Asynchronous commit every `n` records.
    pub const fn async_every(n: u64) -> Self {
        Self::new(CommitMode::Async, CommitTrigger::EveryRecords(n))
    }
    /// Synchronous commit on an interval.
    pub const fn sync_interval(every: Duration) -> Self {
        Self::new(CommitMode::Sync, CommitTrigger::Interval(every))
    }
    /// Asynchronous commit on an interval.
    pub const fn async_interval(every: Duration) -> Self {
        Self::new(CommitMode::Async, CommitTrigger::Interval(every))
    }
    /// Synchronous commit per poll batch.
    pub const fn sync_per_batch() -> Self {
        Self::new(CommitMode::Sync, CommitTrigger::PerBatch)
    }
    /// Asynchronous commit per poll batch.
    pub const fn async_per_batch() -> Self {
        Self::new(CommitMode::Async, CommitTrigger::PerBatch)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        match self.trigger {
            CommitTrigger::EveryRecords(0) => Err("commit every 0 records is not a policy".into()),
            CommitTrigger::Interval(d) if d.is_zero() => {
                Err("a commit interval must be longer than zero".into())
            }
            _ => Ok(()),
        }
    }
}

/// The default is `async:5s`, like Kafka's `auto.commit.interval.ms`, but only ever
/// committing records whose outcome is final.
impl Default for CommitPolicy {
    fn default() -> Self {
        Self::async_interval(Duration::from_secs(5))
    }
}

/// An unparseable commit policy string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown commit policy `{input}`: expected `MODE:WHEN` with MODE = sync|async and WHEN = record|batch|<count>|<duration>, e.g. `async:1000`, `sync:record`, `async:5s`")]
pub struct ParseCommitPolicyError {
    input: String,
}

impl FromStr for CommitPolicy {
    type Err = ParseCommitPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseCommitPolicyError {
            input: s.to_owned(),
        };
        let (mode, when) = s.trim().split_once(':').ok_or_else(err)?;
        let mode = match mode.trim().to_ascii_lowercase().as_str() {
            "sync" => CommitMode::Sync,
            "async" => CommitMode::Async,
            _ => return Err(err()),
        };
        let when = when.trim();
        let trigger = match when.to_ascii_lowercase().as_str() {
            "record" | "per-record" | "per_record" => CommitTrigger::PerRecord,
            "batch" | "per-batch" | "per_batch" => CommitTrigger::PerBatch,
            w => match w.parse::<u64>() {
                Ok(n) => CommitTrigger::EveryRecords(n),
                Err(_) => CommitTrigger::Interval(humantime::parse_duration(w).map_err(|_| err())?),
            },
        };
        let policy = CommitPolicy { mode, trigger };
        policy.validate().map_err(|_| err())?;
        Ok(policy)
    }
}

impl fmt::Display for CommitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            CommitMode::Sync => "sync",
            CommitMode::Async => "async",
        };
        match self.trigger {
            CommitTrigger::PerRecord => write!(f, "{mode}:record"),
            CommitTrigger::PerBatch => write!(f, "{mode}:batch"),
            CommitTrigger::EveryRecords(n) => write!(f, "{mode}:{n}"),
            CommitTrigger::Interval(d) => write!(f, "{mode}:{}", humantime::format_duration(d)),
        }
    }
}

impl Serialize for CommitPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CommitPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_round_trips() {
        for (s, p) in [
            ("sync:record", CommitPolicy::sync_per_record()),
            ("async:record", CommitPolicy::async_per_record()),
            ("async:1000", CommitPolicy::async_every(1000)),
            ("sync:batch", CommitPolicy::sync_per_batch()),
            (
                "async:5s",
                CommitPolicy::async_interval(Duration::from_secs(5)),
            ),
            (
                "sync:250ms",
                CommitPolicy::sync_interval(Duration::from_millis(250)),
            ),
        ] {
            let parsed: CommitPolicy = s.parse().unwrap();
            assert_eq!(parsed, p, "{s}");
            assert_eq!(parsed.to_string().parse::<CommitPolicy>().unwrap(), p);
        }
    }

    #[test]
    fn rejects_garbage_with_a_useful_message() {
        for s in [
            "",
            "sometimes",
            "sync",
            "maybe:record",
            "async:0",
            "async:0s",
            "sync:5 sekunds",
        ] {
            let e = s.parse::<CommitPolicy>().unwrap_err().to_string();
            assert!(e.contains("unknown commit policy"), "{s}: {e}");
            assert!(e.contains("sync|async"), "{e}");
        }
    }
}
