//! What the poll thread, the partition tasks and worker handles share: the runtime's settings
//! and the worker-wide bounds on records and bytes in flight.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::commit::CommitPolicy;
use crate::partition_state::PartitionShared;

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
    /// The publisher of copies, whose fatal error stops the worker. Weak: a handle that
    /// outlives the worker must not keep the publisher's producer alive.
    pub publisher: Option<std::sync::Weak<dyn crate::publish::Publish>>,
    /// The routes' circuit breakers, whose state gauges are refreshed with the others.
    pub breakers: Vec<Arc<crate::layer::breaker::Breaker>>,
    /// The consumer configuration that reads a retry chain back after an assignment, when a
    /// route keeps its keys in order (docs/design.md, Key ordering).
    pub chain_reader: Option<rdkafka::config::ClientConfig>,
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
    /// Set once the consumer joined its group (its first assignment, empty or not).
    pub joined: AtomicBool,
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
            joined: AtomicBool::new(false),
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
