//! What a record's failure path needs, taken when the record is handed to the handler.

use std::sync::Arc;

use super::shared::{RetryShared, TopicEntry};
use crate::partition_state::PartitionShared;
use crate::Record;

/// The layer's state and one topic's entry behind a pointer of this service's own: each
/// partition's task calls its own clone of the service, so the count every record's future
/// bumps is one only that task writes. (Bumping the shared counts of [`RetryShared`] and
/// [`TopicEntry`] per record made the worker threads pass their cache lines back and forth.)
///
/// It also holds the topic name and partition state the partition's records carry, so the
/// failure path's copy of each record ([`Kept`]) counts no references to them.
pub(crate) struct Bound {
    pub(crate) shared: Arc<RetryShared>,
    pub(crate) entry: Arc<TopicEntry>,
    pub(crate) topic: Arc<str>,
    pub(crate) state: Option<Arc<PartitionShared>>,
}

impl Bound {
    /// Whether `r` came from this binding's partition (the same interned name and state).
    pub(crate) fn binds(&self, r: &Record) -> bool {
        Arc::ptr_eq(&self.topic, &r.topic)
            && self.state.as_ref().map(Arc::as_ptr) == r.partition_state.as_ref().map(Arc::as_ptr)
    }
}

/// The parts of a record its failure path needs besides those its [`Bound`] holds: kept for
/// every call, so a success counts references to the key and value (and headers, if any) but
/// not to the topic name and partition state.
pub(crate) struct Kept {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp: Option<crate::Timestamp>,
    pub(crate) key: Option<bytes::Bytes>,
    pub(crate) value: Option<bytes::Bytes>,
    pub(crate) headers: crate::headers::Headers,
}

impl Kept {
    pub(crate) fn of(r: &Record) -> Self {
        Kept {
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        }
    }

    /// The record again, as the handler received it.
    pub(crate) fn into_record(self, b: &Bound) -> Record {
        Record {
            topic: b.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key,
            value: self.value,
            headers: self.headers,
            partition_state: b.state.clone(),
        }
    }
}

/// Everything the failure path needs; built per record, used only when it fails.
pub(crate) struct FailureCtx<S> {
    pub(crate) bound: Arc<Bound>,
    pub(crate) kept: Kept,
    pub(crate) attempt: u32,
    pub(crate) inner: Option<S>,
}

impl<S> FailureCtx<S> {
    pub(crate) fn count_ok(&self) {
        self.bound.entry.count_ok(self.attempt);
    }
}
