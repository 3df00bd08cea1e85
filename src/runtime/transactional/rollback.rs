//! After a rolled-back transaction: the partition of the record to blame waits (exponential
//! back-off) while the others go on, and a record that failed `max_failed_transactions`
//! transactions is given up: dead-lettered, or skipped on a route without a dead-letter
//! topic (Spring's `DefaultAfterRollbackProcessor` with a recoverer).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::{Offset, TopicPartitionList};

use super::state::Key;
use crate::clock::now_ms;
use crate::headers;
use crate::layer::retry_topic::{hop_copy, Hop};
use crate::publish::Outgoing;
use crate::runtime::route::DeadLetter;
use crate::transaction::Transactional;
use crate::Record;

/// The record a failed transaction is blamed on, and why it failed.
#[derive(Clone, Debug)]
pub(super) struct Blame {
    pub key: Key,
    pub offset: i64,
    pub why: String,
}

/// A record to give up the next time its partition is handled.
#[derive(Clone, Debug)]
pub(super) struct GiveUp {
    pub offset: i64,
    pub why: String,
    pub failures: u32,
}

/// What waits after a failed transaction.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// The blamed record's partition, this long.
    Partition(Key, Duration),
    /// The whole loop: nothing could be blamed.
    Loop(Duration),
}

/// Failed transactions, per partition's blamed record.
#[derive(Default)]
pub(super) struct Rollbacks {
    /// Per partition: the record blamed last and how many transactions it failed.
    failed: HashMap<Key, (i64, u32)>,
    give_up: HashMap<Key, GiveUp>,
    /// Failed transactions in a row that no record was blamed for.
    unblamed: u32,
}

impl Rollbacks {
    /// Counts a failed transaction and says what waits, and how long.
    pub(super) fn failed(&mut self, blame: Option<Blame>, settings: &Transactional) -> Wait {
        let Some(b) = blame else {
            self.unblamed += 1;
            return Wait::Loop(backoff(settings, self.unblamed));
        };
        let entry = self.failed.entry(b.key.clone()).or_insert((b.offset, 0));
        if entry.0 != b.offset {
            *entry = (b.offset, 0);
        }
        entry.1 += 1;
        let failures = entry.1;
        if failures >= settings.max_failed_transactions {
            tracing::error!(
                topic = %b.key.0, partition = b.key.1, offset = b.offset, failures, why = %b.why,
                "a record failed every transaction it was in; the next one gives it up"
            );
            let give_up = GiveUp {
                offset: b.offset,
                why: b.why,
                failures,
            };
            self.give_up.insert(b.key.clone(), give_up);
        }
        Wait::Partition(b.key, backoff(settings, failures))
    }

    /// After a commit: records whose partitions moved past them are forgotten.
    pub(super) fn committed(&mut self, positions: &TopicPartitionList) {
        self.unblamed = 0;
        for e in positions.elements() {
            let Offset::Offset(position) = e.offset() else {
                continue;
            };
            let passed = |k: &Key, offset: i64| {
                !(&*k.0 == e.topic() && k.1 == e.partition() && offset < position)
            };
            self.failed.retain(|k, (offset, _)| passed(k, *offset));
            self.give_up.retain(|k, g| passed(k, g.offset));
        }
    }

    /// The record of partition `k` to give up, if any.
    pub(super) fn give_up(&self, k: &Key) -> Option<GiveUp> {
        self.give_up.get(k).cloned()
    }

    /// After a rebalance positions restart from the committed offsets; counts stay (the same
    /// record fails again), but partitions this worker lost are forgotten.
    pub(super) fn keep_only(&mut self, assigned: &[(String, i32)]) {
        let owned = |k: &Key| assigned.iter().any(|(t, p)| **t == *k.0 && *p == k.1);
        self.failed.retain(|k, _| owned(k));
        self.give_up.retain(|k, _| owned(k));
    }
}

/// `initial`, doubled per failure after the first, at most `max`.
fn backoff(settings: &Transactional, failures: u32) -> Duration {
    let (initial, max) = settings.rollback_backoff;
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(31));
    initial.saturating_mul(factor).min(max)
}

/// Why a record was given up, as the dead-letter copy's exception headers say.
#[derive(Debug, thiserror::Error)]
#[error("the record failed {failures} transactions: {why}")]
pub(super) struct GaveUp {
    pub failures: u32,
    pub why: String,
}

/// The dead-letter copy of a record given up.
pub(super) fn dead_letter_copy(
    record: &Record,
    target: &DeadLetter,
    group: &str,
    give_up: &GiveUp,
) -> Outgoing {
    let err = GaveUp {
        failures: give_up.failures,
        why: give_up.why.clone(),
    };
    let hop = Hop {
        topic: &target.topic,
        attempt: headers::attempt_of(record.headers()),
        due_ms: now_ms(),
        group,
        max_text: target.max_text,
        keep_partition: target.keep_partition,
        declared_error: None,
        profile: target.profile,
    };
    hop_copy(record, &err, &hop)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn blame(offset: i64) -> Option<Blame> {
        Some(Blame {
            key: (Arc::from("t"), 0),
            offset,
            why: "handler failed".into(),
        })
    }

    #[test]
    fn the_blamed_partition_backs_off_and_the_record_is_given_up_after_the_limit() {
        let settings = Transactional::new("t")
            .rollback_backoff(Duration::from_millis(100), Duration::from_millis(300))
            .max_failed_transactions(3);
        let mut r = Rollbacks::default();
        let key: Key = (Arc::from("t"), 0);
        let waits: Vec<Wait> = (0..3).map(|_| r.failed(blame(7), &settings)).collect();
        let ms = |n| Wait::Partition(key.clone(), Duration::from_millis(n));
        assert_eq!(waits, [ms(100), ms(200), ms(300)]);
        assert_eq!(
            r.give_up(&key).map(|g| (g.offset, g.failures)),
            Some((7, 3))
        );
        // Another record of the partition starts its own count.
        assert_eq!(r.failed(blame(9), &settings), ms(100));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Offset(8)).unwrap();
        r.committed(&tpl);
        assert!(r.give_up(&key).is_none(), "committed past it");
        assert_eq!(
            r.failed(None, &settings),
            Wait::Loop(Duration::from_millis(100))
        );
        assert_eq!(
            r.failed(None, &settings),
            Wait::Loop(Duration::from_millis(200))
        );
    }
}
