//! The consumer runtime: one poll thread per worker, one task per assigned partition.
//!
//! Data flows one way: the poll thread takes each partition's records from the partition's
//! own librdkafka queue in batches and hands them to the partition's task (see `fetch`);
//! the task runs the route's tower service and marks the outcome in the partition's offset
//! tracker; the poll thread also serves rebalances and commits what the trackers allow.
//!
//! Back-pressure never blocks other partitions: a task that is busy, or waits for a retry's
//! due time, does not take its next batch, the poll thread then leaves that partition's
//! records in librdkafka's queue, and librdkafka stops fetching the partition once its queue
//! holds `partition_queue` records or 1 MiB. Records handed to handlers and not yet
//! final are bounded worker-wide by `max_in_flight_records` and `max_in_flight_bytes`.

mod committer;
mod context;
mod fetch;
mod lag;
mod partition;
mod poll;
pub(crate) mod tracker;
mod transactional;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::commit::CommitPolicy;

pub(crate) use committer::Committer;
pub(crate) use context::RuntimeContext;
pub(crate) use lag::spawn_lag_thread;
pub(crate) use partition::{run_partition, PartitionStart};
pub(crate) use poll::poll_loop;
pub(crate) use transactional::{txn_loop, TxnParts, TxnPublisher, TxnState};

/// How the worker handles one topic.
#[derive(Clone)]
pub(crate) struct TopicBinding {
    pub name: Arc<str>,
    pub route: Arc<dyn crate::worker::route::RouteFactory>,
    pub stage: crate::layer::Stage,
    /// Retry topics: a due time further ahead than this is treated as garbage.
    pub max_wait: Duration,
    /// False when a layer (retry topic, DLT) records outcomes itself.
    pub count_outcomes: bool,
    /// Records carry their partition's state: for a layer that may defer their completion
    /// (the retry-topic layer, see `Record::defer`) or for manual acknowledgement. Without
    /// it they still work everywhere (a layer that cannot defer finishes inline), and skip
    /// a reference count per record.
    pub carry_state: bool,
    /// False for a route that takes its records without headers (`Route::without_headers`):
    /// the poll thread then never asks librdkafka to parse them.
    pub read_headers: bool,
}

/// Called with the error and the offsets of a failed asynchronous commit.
pub type CommitErrorCallback = Arc<dyn Fn(&KafkaError, &[(String, i32, i64)]) + Send + Sync>;

/// Settings of the runtime, fixed when the worker is built.
#[derive(Clone)]
pub(crate) struct RuntimeConfig {
    pub commit: CommitPolicy,
    pub manual_ack: bool,
    pub max_in_flight_records: u64,
    pub max_in_flight_bytes: u64,
    pub max_poll_records: usize,
    pub drain_timeout: Duration,
    pub poll_timeout: Duration,
    pub lag_interval: Duration,
    pub on_commit_error: Option<CommitErrorCallback>,
}

/// State shared by the poll thread, the partition tasks and worker handles.
pub(crate) struct RuntimeShared {
    pub group: Arc<str>,
    pub config: RuntimeConfig,
    /// Records whose outcome became final, over the worker's life.
    pub finished_records: AtomicU64,
    /// Set by a failed async commit: the next commit resends every position.
    pub commit_resend: AtomicBool,
    pub shutdown: AtomicBool,
    pub shutdown_notify: tokio::sync::Notify,
    /// The partitions currently assigned, for handles, lag and readiness checks.
    pub assignment: std::sync::Mutex<Vec<Arc<PartitionShared>>>,
    /// Poll bursts completed by partition tasks (the unit of the per-batch commit policy).
    pub bursts: AtomicU64,
    /// Bound on records handed to handlers and not final.
    pub records_bound: Bound,
    /// Bound on their bytes.
    pub bytes_bound: Bound,
    /// The poll thread, parked while it has nothing to do.
    pub poller: std::sync::OnceLock<std::thread::Thread>,
    /// Set when the consumer's main queue (events, not records) became non-empty.
    pub events_waiting: AtomicBool,
}

impl RuntimeShared {
    pub(crate) fn new(group: Arc<str>, config: RuntimeConfig) -> Self {
        RuntimeShared {
            group,
            finished_records: AtomicU64::new(0),
            commit_resend: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            shutdown_notify: tokio::sync::Notify::new(),
            assignment: std::sync::Mutex::new(Vec::new()),
            bursts: AtomicU64::new(0),
            records_bound: Bound::new(config.max_in_flight_records),
            bytes_bound: Bound::new(config.max_in_flight_bytes),
            poller: std::sync::OnceLock::new(),
            events_waiting: AtomicBool::new(false),
            config,
        }
    }

    pub(crate) fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.shutdown_notify.notify_waiters();
        if let Some(t) = self.poller.get() {
            t.unpark();
        }
    }

    /// Called by librdkafka when the consumer's main queue goes from empty to non-empty.
    pub(crate) fn wake_poller(&self) {
        self.events_waiting.store(true, Ordering::Release);
        if let Some(t) = self.poller.get() {
            t.unpark();
        }
    }
}

/// A worker-wide bound (records or bytes in flight) with no lock on the fast path: takers
/// that find it full wait for a release.
pub(crate) struct Bound {
    used: AtomicU64,
    max: u64,
    waiting: AtomicBool,
    released: tokio::sync::Notify,
}

impl Bound {
    fn new(max: u64) -> Self {
        Bound {
            used: AtomicU64::new(0),
            max,
            waiting: AtomicBool::new(false),
            released: tokio::sync::Notify::new(),
        }
    }

    /// Takes `n` unless that would exceed the bound; one item larger than the whole bound is
    /// let through when nothing else is in flight, so it is handled alone, not never.
    pub(crate) fn try_take(&self, n: u64) -> bool {
        // SeqCst with `give` and the flag in `take`: either the releaser sees the flag or
        // the waiter's retry sees the release (a plain load on x86).
        let mut cur = self.used.load(Ordering::SeqCst);
        loop {
            if cur > 0 && cur.saturating_add(n) > self.max {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Takes `n`, waiting for releases while the bound is full.
    pub(crate) async fn take(&self, n: u64) {
        loop {
            if self.try_take(n) {
                return;
            }
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            // A release between the failed try and the flag is not missed: try again.
            if self.try_take(n) {
                return;
            }
            released.await;
        }
    }

    pub(crate) fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::SeqCst);
        // Load first: an unconditional swap would write the shared flag on every release.
        if self.waiting.load(Ordering::SeqCst) && self.waiting.swap(false, Ordering::AcqRel) {
            self.released.notify_waiters();
        }
    }
}

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
    deferred: std::sync::Mutex<Vec<i64>>,
    /// Length of `deferred`, read without the lock on the hot path.
    deferred_len: std::sync::atomic::AtomicUsize,
    deferred_tx: tokio::sync::mpsc::UnboundedSender<Completion>,
    finished_records: AtomicU64,
    /// Where handlers' acknowledgements go, in manual-acknowledgement mode.
    pub ack_tx: Option<tokio::sync::mpsc::UnboundedSender<i64>>,
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
        ack_tx: Option<tokio::sync::mpsc::UnboundedSender<i64>>,
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
            deferred: std::sync::Mutex::new(Vec::new()),
            deferred_len: std::sync::atomic::AtomicUsize::new(0),
            deferred_tx,
            finished_records: AtomicU64::new(0),
            ack_tx,
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

    /// Publishes the tracker's commit position and oldest unfinished record.
    pub(crate) fn observe(&self, tracker: &tracker::OffsetTracker) {
        if let Some(p) = tracker.committable() {
            self.committable.store(p, Ordering::Release);
        }
        self.oldest_ts
            .store(tracker.oldest_timestamp().unwrap_or(-1), Ordering::Relaxed);
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
            let wait = due_ms - crate::layer::now_ms();
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
