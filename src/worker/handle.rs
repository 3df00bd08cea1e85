//! The handle that stops a running worker and reads its progress.

use std::sync::Arc;

use crate::runtime::{RuntimeShared, TxnState};
use crate::transaction::TransactionStats;

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

    /// Partitions whose failure copies the broker keeps refusing (an ACL, a missing topic, a
    /// broker down), as (topic, partition, how long): each takes no new record until its copy
    /// is sent, and resumes by itself once it is. For readiness checks and alerts.
    pub fn blocked_partitions(&self) -> Vec<(String, i32, std::time::Duration)> {
        let now = crate::clock::now_ms();
        self.rt
            .assignment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|p| {
                let since = p.copies_failing_since()?;
                let took = std::time::Duration::from_millis((now - since).max(0) as u64);
                Some((p.topic.to_string(), p.partition, took))
            })
            .collect()
    }

    /// True once shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.rt.shutdown.load(std::sync::atomic::Ordering::Acquire)
    }
}
