//! A partition task's source of records: batches from the poll thread, taken within the
//! worker-wide bounds on records and bytes in flight.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::fetch::{Cursor, Feed};
use super::shared::RuntimeShared;
use crate::partition_state::PartitionShared;
use crate::Record;

/// A record pulled from the partition's queue, with its share of the in-flight bounds.
pub(super) struct Pulled<'r> {
    pub(super) record: Record,
    pub(super) permits: InFlight<'r>,
}

/// A record's share of the worker-wide in-flight bounds, released when dropped (or kept by
/// its partition's [`Source`] for the next record, see [`Source::recycle`]). It borrows the
/// runtime state rather than holding an `Arc`: a shared reference count would be two
/// contended atomic operations per record across the worker threads.
pub(super) struct InFlight<'r> {
    rt: &'r RuntimeShared,
    records: u64,
    bytes: u64,
}

impl<'r> InFlight<'r> {
    /// No share: for a record that gave its own back.
    pub(super) fn none(rt: &'r RuntimeShared) -> Self {
        InFlight {
            rt,
            records: 0,
            bytes: 0,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.records > 0 {
            self.rt.records_bound.give(self.records);
        }
        if self.bytes > 0 {
            self.rt.bytes_bound.give(self.bytes);
        }
    }
}

/// Takes one partition's records from the batches the poll thread hands over. Back-pressure
/// is natural: while the task does not take its batch, the poll thread leaves the partition's
/// records in librdkafka's bounded queue, which stops fetching when full.
///
/// A record is built only once its permits are taken, so nothing is held across a wait but
/// the batch itself: every wait is cancel-safe and no record is ever dropped.
pub(super) struct Source<'r> {
    feed: Feed,
    batch: Option<Cursor>,
    shared: Arc<PartitionShared>,
    /// This partition's own copy of the topic name, so the records' reference counting does
    /// not contend with other partitions' tasks.
    topic: Arc<str>,
    rt: &'r RuntimeShared,
    /// Whether records carry the partition's state (see [`Record::defer`] and
    /// [`Record::acknowledgment`]): only where something can use it, since the reference
    /// count is two atomic operations per record.
    carry_state: bool,
    /// Permits of finished records, kept for the next one: the bounds are shared by every
    /// task, and taking and giving back per record were four contended atomic operations.
    /// Given back before any wait, so a partition never holds more than its last record's.
    spare: InFlight<'r>,
}

impl<'r> Source<'r> {
    pub(super) fn new(
        feed: Feed,
        shared: Arc<PartitionShared>,
        rt: &'r RuntimeShared,
        carry_state: bool,
    ) -> Self {
        Source {
            feed,
            batch: None,
            topic: Arc::from(&*shared.topic),
            shared,
            rt,
            carry_state,
            spare: InFlight::none(rt),
        }
    }

    /// The next record, or None once the partition is stopped. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<Pulled<'r>> {
        self.release_spare();
        loop {
            if self.shared.stopping() {
                return None;
            }
            let Some(want) = self.peek() else {
                tokio::select! {
                    biased;
                    // Not handed over: the uncommitted records are read again later.
                    _ = self.shared.stopped() => return None,
                    batch = self.feed.take() => self.batch = Some(batch?),
                }
                continue;
            };
            // The waiting futures (which register with `Notify`s) only when a bound is full.
            if !self.rt.records_bound.try_take(1) {
                tokio::select! {
                    biased;
                    _ = self.shared.stopped() => return None,
                    _ = self.rt.records_bound.take(1) => {}
                }
            }
            // Gives the record permit back if the wait below is cancelled.
            let mut permits = InFlight::none(self.rt);
            permits.records = 1;
            if !self.rt.bytes_bound.try_take(want) {
                tokio::select! {
                    biased;
                    _ = self.shared.stopped() => return None,
                    _ = self.rt.bytes_bound.take(want) => {}
                }
            }
            permits.bytes = want;
            return self.take(permits);
        }
    }

    /// The next record if one is waiting and the bounds have room, without awaiting
    /// anything; None otherwise (then [`Source::next`] waits). The common case, a partition
    /// with a backlog, so skips the per-record futures and `Notify` registrations.
    pub(super) fn try_next(&mut self) -> Option<Pulled<'r>> {
        if self.shared.stopping() {
            return None;
        }
        let want = self.peek()?;
        let mut permits = InFlight::none(self.rt);
        if self.spare.records > 0 {
            self.spare.records -= 1;
        } else if !self.rt.records_bound.try_take(1) {
            return None;
        }
        permits.records = 1;
        if self.spare.bytes >= want {
            self.spare.bytes -= want;
        } else if self.rt.bytes_bound.try_take(want - self.spare.bytes) {
            self.spare.bytes = 0;
        } else {
            return None;
        }
        permits.bytes = want;
        self.take(permits)
    }

    /// Keeps a finished record's permits for the next record.
    pub(super) fn recycle(&mut self, mut permits: InFlight<'r>) {
        self.spare.records += std::mem::take(&mut permits.records);
        self.spare.bytes += std::mem::take(&mut permits.bytes);
    }

    /// Gives the kept permits back to the worker-wide bounds.
    pub(super) fn release_spare(&mut self) {
        drop(std::mem::replace(&mut self.spare, InFlight::none(self.rt)));
    }

    /// The byte permits the next record of the current batch, or of a batch already handed
    /// over, needs (at least one, so empty records count); None when none is waiting.
    fn peek(&mut self) -> Option<u64> {
        loop {
            if let Some(bytes) = self.batch.as_ref().and_then(Cursor::peek_bytes) {
                return Some((bytes as u64).max(1));
            }
            if self.batch.take().is_some() {
                // A batch is the unit of the per-batch commit policy.
                self.rt.bursts.fetch_add(1, Ordering::Relaxed);
            }
            self.batch = Some(self.feed.try_take()?);
        }
    }

    /// Takes the record [`Source::peek`] saw, its permits taken.
    fn take(&mut self, permits: InFlight<'r>) -> Option<Pulled<'r>> {
        let cursor = self.batch.as_mut()?;
        let mut record = cursor.next_record(&self.topic, self.shared.partition)?;
        if self.carry_state {
            record.partition_state = Some(self.shared.clone());
        }
        let max = self.rt.config.max_in_flight_bytes;
        if permits.bytes > max {
            tracing::warn!(record = %record.coordinates(), bytes = permits.bytes, max_in_flight_bytes = max, "record is larger than max_in_flight_bytes; it is handled, alone");
        }
        self.shared.dispatched();
        Some(Pulled { record, permits })
    }
}
