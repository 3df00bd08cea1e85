//! The handle that stops a running worker and reads its progress.

use std::sync::Arc;

use crate::runtime::{RuntimeShared, TxnState};
use crate::transaction::TransactionStats;

/// A partition that makes no progress: see [`WorkerHandle::blocked_partitions`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockedPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// How long it has been blocked.
    pub since: std::time::Duration,
    /// Why.
    pub reason: BlockReason,
}

/// Why a partition makes no progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockReason {
    /// The broker refuses a failure copy of one of its records; it takes no new record until
    /// the copy is sent.
    CopiesRefused,
    /// Every read of its records returns an error.
    Unreadable,
}

impl std::fmt::Display for BlockReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlockReason::CopiesRefused => "the broker refuses its failure copies",
            BlockReason::Unreadable => "its records cannot be read",
        })
    }
}

/// Stops a running worker from elsewhere. Cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
    pub(super) rt: Arc<RuntimeShared>,
    pub(super) txn: Option<Arc<TxnState>>,
}

impl WorkerHandle {
    /// Asks the worker to stop: no new record starts, in-flight records finish (up to the
    /// drain timeout), final offsets are committed synchronously, then [`Worker::run`](crate::Worker::run) returns.
    pub fn shutdown(&self) {
        self.rt.request_shutdown();
    }

    /// The partitions currently assigned to the worker, as (topic, partition), sorted.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        if let Some(txn) = &self.txn {
            return txn
                .assignment
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        self.rt
            .assignment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| (p.topic.to_string(), p.partition))
            .collect()
    }

    /// Records whose outcome became final since the worker started.
    pub fn records_finished(&self) -> u64 {
        self.rt
            .finished_records
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The transaction counts of a transactional worker; `None` for an at-least-once one.
    pub fn transactions(&self) -> Option<TransactionStats> {
        self.txn.as_ref().map(|t| t.stats())
    }

    /// True once the worker joined its consumer group: its first assignment arrived, even an
    /// empty one (a member with no partition to read is a healthy member).
    pub fn has_joined(&self) -> bool {
        self.rt.joined.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Partitions that make no progress, and why: the broker keeps refusing their failure
    /// copies (an ACL, a missing topic, a broker down), or their records cannot be read (an
    /// unsupported codec, a corrupt batch) for 10 s or more. Each resumes by itself once the
    /// cause is fixed. For readiness checks and alerts (the sidecar's `/readyz` uses it).
    pub fn blocked_partitions(&self) -> Vec<BlockedPartition> {
        let now = crate::clock::now_ms();
        let age = |since: i64| std::time::Duration::from_millis((now - since).max(0) as u64);
        let assigned = self.rt.assignment.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for p in assigned.iter() {
            // A read error may be retried away at once: only a streak with no record counts.
            let unreadable = p
                .fetch_failing_since()
                .filter(|s| age(*s) >= crate::runtime::FETCH_FAILING_AFTER);
            let causes = [
                (p.copies_failing_since(), BlockReason::CopiesRefused),
                (unreadable, BlockReason::Unreadable),
            ];
            for (since, reason) in causes {
                if let Some(since) = since {
                    out.push(BlockedPartition {
                        topic: p.topic.to_string(),
                        partition: p.partition,
                        since: age(since),
                        reason,
                    });
                }
            }
        }
        out
    }

    /// True once shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.rt.shutdown.load(std::sync::atomic::Ordering::Acquire)
    }
}
