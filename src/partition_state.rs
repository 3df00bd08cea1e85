//! The state of one assigned partition that its task, the poll thread, the layers and the
//! records handed to handlers share: commit position, stop flag, deferred completions and the
//! manual-acknowledgement channel. A leaf: it depends on nothing else of the crate but the
//! clock, so the record and the layers can hold it without depending on the runtime.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// State of one assigned partition shared between the poll thread and its task.
pub(crate) struct PartitionShared {
    pub topic: Arc<str>,
    pub partition: i32,
    pub route: Arc<str>,
    /// The commit position, or -1 before the first record.
    committable: AtomicI64,
    /// The last position committed to the broker, or -1.
    committed: AtomicI64,
    /// Timestamp (ms) of the oldest record handed over and not final, or -1.
    oldest_ts: AtomicI64,
    /// Set on revoke or shutdown: start no further record.
    stop: AtomicBool,
    /// Wakes a task waiting for records or a due time when the partition is stopped.
    stop_notify: tokio::sync::Notify,
    dispatched_records: AtomicU64,
    /// Offsets whose completion a layer took over (see [`Deferral`]), not yet reported back.
    deferred: Mutex<Vec<i64>>,
    /// Length of `deferred`, read without the lock on the hot path.
    deferred_len: AtomicUsize,
    deferred_tx: tokio::sync::mpsc::UnboundedSender<Completion>,
    finished_records: AtomicU64,
    /// Where handlers' acknowledgements go, in manual-acknowledgement mode.
    pub ack_tx: Option<tokio::sync::mpsc::UnboundedSender<AckEvent>>,
    /// Failure copies of this partition's records that the broker refused and that are being
    /// sent again; while any is, the partition's task takes no new record.
    failing_copies: AtomicU64,
    /// When the oldest of them first failed (epoch ms), or -1.
    failing_since: AtomicI64,
    /// Since when (epoch ms) every read of the partition's queue has returned an error and no
    /// record, or -1.
    fetch_failing_since: AtomicI64,
    /// Records past the committed offset at the last lag check, or -1 before the first.
    lag_records: AtomicI64,
    /// A layer halted the partition at a record on purpose (`Halt`): its task ended.
    halted: AtomicBool,
    /// Why the task ended on its own, when it knows (the worker's error names it).
    failure: Mutex<Option<String>>,
    /// The blocked keys of the main-topic partition, for a route with key ordering: set on
    /// the main partition and on each of its retry partitions.
    pub key_gate: Option<Arc<crate::key_order::KeyGate>>,
}

/// What a manual-acknowledgement handle tells its partition's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AckEvent {
    /// A handle for the record at this offset was taken.
    Taken(i64),
    /// The record was acknowledged.
    Acked(i64),
    /// A handle (with all its clones) was dropped without acknowledging.
    Dropped(i64),
}

/// Marks a failure copy of the partition as failing until dropped (sent, or given up).
pub(crate) struct FailingCopy(Arc<PartitionShared>);

impl Drop for FailingCopy {
    fn drop(&mut self) {
        if self.0.failing_copies.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.failing_since.store(-1, Ordering::Release);
        }
    }
}

/// Most records a partition may have deferred at once; beyond it layers finish inline.
const MAX_DEFERRED: usize = 10_000;

/// A record's completion, taken over by a layer: the record becomes final when the future
/// given to [`Deferral::complete_after`] finishes. Dropping it unused leaves the record
/// unfinished (redelivered after a restart or rebalance).
pub(crate) struct Deferral {
    offset: i64,
    tx: tokio::sync::mpsc::UnboundedSender<Completion>,
}

impl Deferral {
    /// Completes the record when `work` finishes. The partition's own task runs it, so a
    /// deferred acknowledgement costs no task of its own (a spawn, its scheduling, and a
    /// wake-up from the producer's thread per failed record).
    pub(crate) fn complete_after(self, work: futures_util::future::BoxFuture<'static, ()>) {
        let _ = self.tx.send(Completion::After(Tagged(self.offset, work)));
    }

    /// Completes the record now; callable from any thread (a delivery callback's).
    pub(crate) fn complete(self) {
        let _ = self.tx.send(Completion::Done(self.offset));
    }
}

/// A deferred record's completion, as its partition task receives it.
pub(crate) enum Completion {
    /// Final now.
    Done(i64),
    /// Final once the work is done (the task runs it).
    After(Tagged),
}

/// The completions a partition task waits for: the work of its deferred records.
pub(crate) struct Completions {
    rx: tokio::sync::mpsc::UnboundedReceiver<Completion>,
    running: futures_util::stream::FuturesUnordered<Tagged>,
}

/// Deferred work, resolving to the offset it completes.
pub(crate) struct Tagged(i64, futures_util::future::BoxFuture<'static, ()>);

impl std::future::Future for Tagged {
    type Output = i64;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<i64> {
        let offset = self.0;
        self.1.as_mut().poll(cx).map(|()| offset)
    }
}

impl Completions {
    fn new(rx: tokio::sync::mpsc::UnboundedReceiver<Completion>) -> Self {
        Completions {
            rx,
            running: futures_util::stream::FuturesUnordered::new(),
        }
    }

    /// The next completed offset; None once no deferral can complete any more. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<i64> {
        use futures_util::StreamExt;
        loop {
            tokio::select! {
                biased;
                Some(offset) = self.running.next(), if !self.running.is_empty() => return Some(offset),
                work = self.rx.recv() => match work {
                    Some(Completion::Done(offset)) => return Some(offset),
                    Some(Completion::After(work)) => self.running.push(work),
                    None if self.running.is_empty() => return None,
                    None => return self.running.next().await,
                },
            }
        }
    }

    /// A completed offset if one is ready now, without waiting.
    pub(crate) fn try_next(&mut self) -> Option<i64> {
        use futures_util::FutureExt;
        self.next().now_or_never().flatten()
    }
}

impl PartitionShared {
    pub(crate) fn new(
        topic: Arc<str>,
        partition: i32,
        route: Arc<str>,
        ack_tx: Option<tokio::sync::mpsc::UnboundedSender<AckEvent>>,
        key_gate: Option<Arc<crate::key_order::KeyGate>>,
    ) -> (Self, Completions) {
        let (deferred_tx, deferred_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = PartitionShared {
            topic,
            partition,
            route,
            committable: AtomicI64::new(-1),
            committed: AtomicI64::new(-1),
            oldest_ts: AtomicI64::new(-1),
            stop: AtomicBool::new(false),
            stop_notify: tokio::sync::Notify::new(),
            dispatched_records: AtomicU64::new(0),
            deferred: Mutex::new(Vec::new()),
            deferred_len: AtomicUsize::new(0),
            deferred_tx,
            finished_records: AtomicU64::new(0),
            ack_tx,
            failing_copies: AtomicU64::new(0),
            failing_since: AtomicI64::new(-1),
            fetch_failing_since: AtomicI64::new(-1),
            lag_records: AtomicI64::new(-1),
            halted: AtomicBool::new(false),
            failure: Mutex::new(None),
            key_gate,
        };
        (shared, Completions::new(deferred_rx))
    }

    pub(crate) fn defer(self: &Arc<Self>, offset: i64) -> Option<Deferral> {
        let mut d = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        if d.len() >= MAX_DEFERRED {
            return None;
        }
        d.push(offset);
        self.deferred_len.store(d.len(), Ordering::Release);
        Some(Deferral {
            offset,
            tx: self.deferred_tx.clone(),
        })
    }

    /// True (once) when a layer deferred the completion of `offset`.
    pub(crate) fn take_deferred(&self, offset: i64) -> bool {
        if self.deferred_len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut d = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        let found = match d.iter().position(|o| *o == offset) {
            Some(i) => {
                d.swap_remove(i);
                true
            }
            None => false,
        };
        self.deferred_len.store(d.len(), Ordering::Release);
        found
    }

    pub(crate) fn committable(&self) -> Option<i64> {
        match self.committable.load(Ordering::Acquire) {
            -1 => None,
            o => Some(o),
        }
    }

    /// Publishes the partition's commit position and the timestamp of its oldest unfinished
    /// record, as its offset tracker knows them.
    pub(crate) fn observe(&self, committable: Option<i64>, oldest_timestamp: Option<i64>) {
        if let Some(p) = committable {
            self.committable.store(p, Ordering::Release);
        }
        self.oldest_ts
            .store(oldest_timestamp.unwrap_or(-1), Ordering::Relaxed);
    }

    pub(crate) fn committed(&self) -> Option<i64> {
        match self.committed.load(Ordering::Acquire) {
            -1 => None,
            o => Some(o),
        }
    }

    pub(crate) fn set_committed(&self, position: i64) {
        self.committed.store(position, Ordering::Release);
    }

    pub(crate) fn oldest_timestamp(&self) -> Option<i64> {
        match self.oldest_ts.load(Ordering::Relaxed) {
            -1 => None,
            t => Some(t),
        }
    }

    /// Marks one of the partition's failure copies as refused by the broker, until the
    /// returned guard is dropped.
    pub(crate) fn copy_failing(self: &Arc<Self>) -> FailingCopy {
        if self.failing_copies.fetch_add(1, Ordering::AcqRel) == 0 {
            self.failing_since
                .store(crate::clock::now_ms(), Ordering::Release);
        }
        FailingCopy(self.clone())
    }

    /// Since when (epoch ms) a failure copy of the partition has been failing, if one is.
    pub(crate) fn copies_failing_since(&self) -> Option<i64> {
        match self.failing_since.load(Ordering::Acquire) {
            -1 => None,
            t => Some(t),
        }
    }

    /// Records whether the partition's reads fail (`Some(since)`, epoch ms) or not.
    pub(crate) fn set_fetch_failing(&self, since: Option<i64>) {
        self.fetch_failing_since
            .store(since.unwrap_or(-1), Ordering::Release);
    }

    /// Since when (epoch ms) the partition's reads have failed with records waiting to be
    /// read, if they do: a read error on a partition with nothing to read blocks nothing.
    pub(crate) fn fetch_failing_since(&self) -> Option<i64> {
        if self.lag_records.load(Ordering::Relaxed) <= 0 {
            return None;
        }
        match self.fetch_failing_since.load(Ordering::Acquire) {
            -1 => None,
            t => Some(t),
        }
    }

    /// Records past the committed offset, as the lag thread last saw them.
    pub(crate) fn set_lag_records(&self, records: i64) {
        self.lag_records.store(records, Ordering::Relaxed);
    }

    /// Marks the partition halted on purpose by a layer.
    pub(crate) fn mark_halted(&self) {
        self.halted.store(true, Ordering::Release);
    }

    /// Records why the task is about to end on its own.
    pub(crate) fn set_failure(&self, why: String) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Why the task ended on its own, if it said.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True once a layer halted the partition on purpose.
    pub(crate) fn halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.stop_notify.notify_waiters();
    }

    /// Completes once the partition is stopped.
    pub(crate) async fn stopped(&self) {
        let notified = self.stop_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.stopping() {
            return;
        }
        notified.await;
    }

    /// Waits until `due_ms` (epoch ms). A waiting task does not read its partition's queue,
    /// so librdkafka stops fetching the partition once its queue is full; other partitions
    /// are not affected. False when the partition was stopped first.
    pub(crate) async fn hold_until(&self, due_ms: i64) -> bool {
        let stopped = self.stopped();
        tokio::pin!(stopped);
        loop {
            let wait = due_ms - crate::clock::now_ms();
            if wait <= 0 {
                return !self.stopping();
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                _ = stopped.as_mut() => return false,
            }
        }
    }

    /// Counts a record handed to the handler. Only the partition's task writes the count, so
    /// a load and a store do (no locked read-modify-write per record).
    pub(crate) fn dispatched(&self) {
        bump(&self.dispatched_records);
    }

    /// Records handed to the handler and not yet final.
    pub(crate) fn in_flight(&self) -> u64 {
        self.dispatched_records
            .load(Ordering::Relaxed)
            .saturating_sub(self.finished_records.load(Ordering::Relaxed))
    }

    /// Counts a record final for this partition; the worker-wide count is the caller's.
    /// Single writer, as [`PartitionShared::dispatched`].
    pub(crate) fn finished(&self) {
        bump(&self.finished_records);
    }
}

/// Adds one to a counter that only one thread writes.
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}
