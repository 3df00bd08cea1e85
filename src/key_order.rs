//! Per-key ordering (docs/design.md, Key ordering): what one main-topic partition's task
//! (which parks later records of keys in the retry chain), the tasks of its retry partitions
//! and the retry layer (which say when a record enters or leaves the chain) share. A leaf like
//! `partition_state`: the layers and the runtime hold it without depending on each other.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// A record entering or leaving the retry chain, as the main partition's task learns it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChainEvent {
    /// The main-topic record at this offset, of this key, went to a retry topic.
    Enter(Bytes, i64),
    /// It left the chain: succeeded (false) or was dead-lettered (true).
    Leave(Bytes, i64, bool),
}

/// A map by record key. Every record of a key-ordered partition looks its key up: foldhash,
/// seeded per map like std's hasher, costs a fraction of SipHash.
pub(crate) type KeyMap<V> = HashMap<Bytes, V, foldhash::fast::RandomState>;

/// Key -> the main-topic offsets of its records in the retry chain.
pub(crate) type Chain = KeyMap<Held>;

/// The main-topic offsets of one key's records in the chain: one, except for copies written
/// twice around a crash, so the first takes no allocation of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    first: Option<i64>,
    more: Vec<i64>,
}

impl Held {
    /// Offsets `offsets`, each once.
    #[cfg(test)]
    pub(crate) fn of(offsets: &[i64]) -> Self {
        let mut held = Held::default();
        offsets.iter().for_each(|o| held.insert(*o));
        held
    }

    pub(crate) fn insert(&mut self, offset: i64) {
        if self.contains(offset) {
            return;
        }
        match self.first {
            None => self.first = Some(offset),
            Some(_) => self.more.push(offset),
        }
    }

    pub(crate) fn remove(&mut self, offset: i64) {
        if self.first == Some(offset) {
            self.first = self.more.pop();
        } else {
            self.more.retain(|o| *o != offset);
        }
    }

    pub(crate) fn contains(&self, offset: i64) -> bool {
        self.first == Some(offset) || self.more.contains(&offset)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

/// What the main-topic partition's task, the tasks of its retry partitions and the retry
/// layer share for key ordering. The task alone keeps the blocked keys (no lock per record):
/// the layer and the retry partitions tell it through a channel. A record enters before its
/// copy is sent, so it is told of the entry before anyone can tell it of the leave.
pub(crate) struct KeyGate {
    tx: tokio::sync::mpsc::UnboundedSender<ChainEvent>,
    /// The receiving end and the chain read back after assignment, taken by the task.
    start: Mutex<Option<(tokio::sync::mpsc::UnboundedReceiver<ChainEvent>, Chain)>>,
    /// True once the chain was read back after assignment; no task of the partition or its
    /// retry partitions handles a record before.
    ready: tokio::sync::watch::Sender<bool>,
    after_dead_letter: AfterDeadLetter,
    /// Parked records that follow a dead letter of their key (main-topic offsets), asked by
    /// the layer for every record: `any_follow` spares the lock while there are none.
    follow: Mutex<HashSet<i64>>,
    any_follow: AtomicBool,
}

impl KeyGate {
    pub(crate) fn new(after_dead_letter: AfterDeadLetter) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        KeyGate {
            tx,
            start: Mutex::new(Some((rx, Chain::default()))),
            ready: tokio::sync::watch::Sender::new(false),
            after_dead_letter,
            follow: Mutex::new(HashSet::new()),
            any_follow: AtomicBool::new(false),
        }
    }

    /// The record at `offset` of `key` went to the retry chain.
    pub(crate) fn enter(&self, key: &Bytes, offset: i64) {
        // A copy: a key sliced from a fetched batch would keep the batch's whole buffer alive
        // for as long as the record stays in the chain.
        let _ = self
            .tx
            .send(ChainEvent::Enter(Bytes::copy_from_slice(key), offset));
    }

    /// The record at `offset` of `key` left the chain: it succeeded, or was dead-lettered.
    pub(crate) fn leave(&self, key: &Bytes, offset: i64, dead: bool) {
        let _ = self.tx.send(ChainEvent::Leave(key.clone(), offset, dead));
    }

    /// What becomes of records parked behind a dead letter.
    pub(crate) fn after_dead_letter(&self) -> AfterDeadLetter {
        self.after_dead_letter
    }

    /// The parked record at `offset` follows its key's dead letter.
    pub(crate) fn mark_follow(&self, offset: i64) {
        let mut follow = self.follow.lock().unwrap_or_else(|e| e.into_inner());
        follow.insert(offset);
        self.any_follow.store(true, Ordering::Release);
    }

    /// Whether the record at `offset` follows a dead letter (asked once, as it is handled).
    pub(crate) fn take_follow(&self, offset: i64) -> bool {
        if !self.any_follow.load(Ordering::Acquire) {
            return false;
        }
        let mut follow = self.follow.lock().unwrap_or_else(|e| e.into_inner());
        let taken = follow.remove(&offset);
        self.any_follow.store(!follow.is_empty(), Ordering::Release);
        taken
    }

    /// Sets the chain read back after assignment and lets the partitions' tasks start.
    pub(crate) fn restore(&self, chain: Chain) {
        if let Some((_, c)) = self
            .start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            *c = chain;
        }
        self.ready.send_replace(true);
    }

    /// Completes once the chain is restored.
    pub(crate) async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives in `self`: the wait ends only by the value.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// The main partition's task takes the events and the restored chain, once.
    pub(crate) fn take_start(
        &self,
    ) -> Option<(tokio::sync::mpsc::UnboundedReceiver<ChainEvent>, Chain)> {
        self.start.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_arrive_in_order_with_the_restored_chain() {
        let gate = KeyGate::new(AfterDeadLetter::Continue);
        let k = Bytes::from_static(b"k");
        gate.restore([(k.clone(), Held::of(&[1]))].into_iter().collect());
        gate.ready().await;
        gate.enter(&k, 5);
        gate.leave(&k, 5, true);
        let (mut rx, chain) = gate.take_start().unwrap();
        assert_eq!(chain[&k], Held::of(&[1]));
        assert_eq!(rx.try_recv().unwrap(), ChainEvent::Enter(k.clone(), 5));
        assert_eq!(rx.try_recv().unwrap(), ChainEvent::Leave(k, 5, true));
        assert!(gate.take_start().is_none());
    }

    #[test]
    fn held_offsets_are_kept_once_each() {
        let mut h = Held::of(&[3, 3, 5]);
        assert!(h.contains(3) && h.contains(5) && !h.contains(4));
        h.remove(3);
        assert!(!h.contains(3) && !h.is_empty());
        h.remove(5);
        assert!(h.is_empty());
    }

    #[test]
    fn follow_marks_are_taken_once() {
        let gate = KeyGate::new(AfterDeadLetter::Follow);
        assert!(!gate.take_follow(3));
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
