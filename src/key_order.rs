//! Per-key ordering (docs/design.md, Key ordering): which keys of one main-topic partition
//! have a record in the retry chain, shared by the partition's task (which parks later records
//! of those keys), the tasks of its retry partitions and the retry layer (which say when a
//! record enters or leaves the chain). A leaf like `partition_state`: the layers and the
//! runtime hold it without depending on each other.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;

/// What becomes of records parked behind a record that is dead-lettered. In config files:
/// `"continue"` or `"follow"`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AfterDeadLetter {
    /// They are handled, in order, as if the dead-lettered record had succeeded (the
    /// default): nothing reaches the DLT that did not fail.
    #[default]
    Continue,
    /// They follow it to the dead-letter topic without being handled (the error type
    /// `redrive::FollowedDeadLetter`), for handlers whose later records make no sense
    /// without the earlier one. Records of the key read after that are handled again.
    Follow,
}

impl std::fmt::Display for AfterDeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AfterDeadLetter::Continue => "continue",
            AfterDeadLetter::Follow => "follow",
        })
    }
}

impl std::str::FromStr for AfterDeadLetter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "continue" => Ok(AfterDeadLetter::Continue),
            "follow" => Ok(AfterDeadLetter::Follow),
            other => Err(format!(
                "unknown value `{other}`; expected `continue` or `follow`"
            )),
        }
    }
}

/// Where a key stands for a record of its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyState {
    /// No record of the key is in the retry chain.
    Free,
    /// Another record of the key is: this one waits.
    Blocked,
    /// This very record is (a delivery again after a restart): it is already handled.
    InChain,
}

/// The blocked keys of one main-topic partition.
pub(crate) struct KeyGate {
    inner: Mutex<Inner>,
    /// Wakes the main partition's task when a key left the chain.
    released: tokio::sync::Notify,
    /// Set while `Inner::released` is not empty: the task's per-record look takes no lock.
    any_released: std::sync::atomic::AtomicBool,
    /// True once the chain was read back after assignment; no task of the partition or its
    /// retry partitions handles a record before.
    ready: tokio::sync::watch::Sender<bool>,
    after_dead_letter: AfterDeadLetter,
}

#[derive(Default)]
struct Inner {
    /// Key -> the main-topic offsets of its records in the retry chain (more than one only
    /// for copies written twice around a crash).
    chain: HashMap<Bytes, Vec<i64>>,
    /// Keys that left the chain since the task last looked, and whether by dead letter.
    released: Vec<(Bytes, bool)>,
    /// Parked records that follow a dead letter of their key (main-topic offsets).
    follow: HashSet<i64>,
}

impl KeyGate {
    pub(crate) fn new(after_dead_letter: AfterDeadLetter) -> Self {
        KeyGate {
            inner: Mutex::new(Inner::default()),
            released: tokio::sync::Notify::new(),
            any_released: std::sync::atomic::AtomicBool::new(false),
            ready: tokio::sync::watch::Sender::new(false),
            after_dead_letter,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record at `offset` of `key` went to the retry chain.
    pub(crate) fn enter(&self, key: &Bytes, offset: i64) {
        let mut inner = self.lock();
        let held = inner.chain.entry(key.clone()).or_default();
        if !held.contains(&offset) {
            held.push(offset);
        }
    }

    /// The record at `offset` of `key` left the chain: it succeeded, or was dead-lettered.
    pub(crate) fn leave(&self, key: &[u8], offset: i64, dead: bool) {
        let mut inner = self.lock();
        let Some(held) = inner.chain.get_mut(key) else {
            return;
        };
        held.retain(|o| *o != offset);
        if held.is_empty() {
            let (key, _) = inner.chain.remove_entry(key).expect("present");
            inner.released.push((key, dead));
            self.any_released
                .store(true, std::sync::atomic::Ordering::Release);
            drop(inner);
            self.released.notify_one();
        }
    }

    /// Where `key` stands for its record at `offset`.
    pub(crate) fn state(&self, key: &[u8], offset: i64) -> KeyState {
        match self.lock().chain.get(key) {
            None => KeyState::Free,
            Some(held) if held.contains(&offset) => KeyState::InChain,
            Some(_) => KeyState::Blocked,
        }
    }

    /// Whether a record of `key` is in the chain.
    pub(crate) fn blocked(&self, key: &[u8]) -> bool {
        self.lock().chain.contains_key(key)
    }

    /// The keys that left the chain since the last call, and whether by dead letter.
    pub(crate) fn take_released(&self) -> Vec<(Bytes, bool)> {
        use std::sync::atomic::Ordering;
        if !self.any_released.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut inner = self.lock();
        self.any_released.store(false, Ordering::Release);
        std::mem::take(&mut inner.released)
    }

    /// Completes when a key may have left the chain since the last call.
    pub(crate) async fn released(&self) {
        self.released.notified().await
    }

    /// What becomes of records parked behind a dead letter.
    pub(crate) fn after_dead_letter(&self) -> AfterDeadLetter {
        self.after_dead_letter
    }

    /// The parked record at `offset` follows its key's dead letter.
    pub(crate) fn mark_follow(&self, offset: i64) {
        self.lock().follow.insert(offset);
    }

    /// Whether the record at `offset` follows a dead letter (asked once, as it is handled).
    pub(crate) fn take_follow(&self, offset: i64) -> bool {
        let mut inner = self.lock();
        !inner.follow.is_empty() && inner.follow.remove(&offset)
    }

    /// Sets the chain read back after assignment and lets the partitions' tasks start.
    pub(crate) fn restore(&self, chain: HashMap<Bytes, Vec<i64>>) {
        self.lock().chain = chain;
        self.ready.send_replace(true);
    }

    /// Completes once the chain is restored.
    pub(crate) async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives in `self`: the wait ends only by the value.
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_blocked_until_its_last_record_leaves() {
        let gate = KeyGate::new(AfterDeadLetter::Continue);
        let k = Bytes::from_static(b"k");
        assert_eq!(gate.state(b"k", 5), KeyState::Free);
        gate.enter(&k, 5);
        gate.enter(&k, 5);
        assert_eq!(gate.state(b"k", 5), KeyState::InChain);
        assert_eq!(gate.state(b"k", 9), KeyState::Blocked);
        gate.enter(&k, 7);
        gate.leave(b"k", 5, false);
        assert!(gate.blocked(b"k"));
        assert!(gate.take_released().is_empty());
        gate.leave(b"k", 7, true);
        assert!(!gate.blocked(b"k"));
        assert_eq!(gate.take_released(), vec![(k, true)]);
        // A second copy of a record that already left changes nothing.
        gate.leave(b"k", 7, false);
        assert!(gate.take_released().is_empty());
    }

    #[test]
    fn follow_marks_are_taken_once() {
        let gate = KeyGate::new(AfterDeadLetter::Follow);
        gate.mark_follow(3);
        assert!(!gate.take_follow(4));
        assert!(gate.take_follow(3));
        assert!(!gate.take_follow(3));
    }

    #[test]
    fn after_dead_letter_parses() {
        assert_eq!("follow".parse(), Ok(AfterDeadLetter::Follow));
        assert_eq!("continue".parse(), Ok(AfterDeadLetter::Continue));
        assert!("dlt"
            .parse::<AfterDeadLetter>()
            .unwrap_err()
            .contains("`continue` or `follow`"));
    }
}
