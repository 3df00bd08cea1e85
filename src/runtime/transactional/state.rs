//! What the transactional loop shares with the rebalance callbacks and worker handles.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::transaction::TransactionStats;

/// A partition: its interned topic name and number.
pub(crate) type Key = (Arc<str>, i32);

/// What the rebalance callbacks tell the loop, and the counts handles read.
#[derive(Default)]
pub(crate) struct TxnState {
    pub rebalanced: AtomicBool,
    pub assignment: Mutex<Vec<(String, i32)>>,
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    pub records_committed: AtomicU64,
    pub records_given_up: AtomicU64,
    pub offsets: Mutex<BTreeMap<(String, i32), i64>>,
}

impl TxnState {
    pub(crate) fn stats(&self) -> TransactionStats {
        TransactionStats {
            committed: self.committed.load(Ordering::Relaxed),
            aborted: self.aborted.load(Ordering::Relaxed),
            records_committed: self.records_committed.load(Ordering::Relaxed),
            offsets: self
                .offsets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            records_given_up: self.records_given_up.load(Ordering::Relaxed),
        }
    }
}
