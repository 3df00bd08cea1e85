//! Exactly-once consume-transform-produce (Kafka Streams' `processing.guarantee =
//! exactly_once_v2`).
//!
//! A transactional worker reads a batch of records, runs each through its route (handlers
//! return output records, see [`IntoOutputs`](crate::publish::IntoOutputs)), and puts in ONE
//! Kafka transaction: the outputs, any retry and dead-letter copies, and the input offsets
//! (`send_offsets_to_transaction` with the consumer group's metadata, KIP-447). Then it commits.
//!
//! - Any failure (a handler error no retry policy routes, a produce error, a failed commit)
//!   aborts the transaction and rewinds the consumer to the last committed offsets: the batch
//!   is read and handled again. Retriable client errors are retried first.
//! - A fatal error stops the worker with [`Error::Fatal`](crate::Error::Fatal): above all a
//!   fenced producer, which means another instance with the same `transactional.id` started
//!   (zombie fencing) or the group moved on.
//! - Retry-topic records not yet due end their partition's part of the batch; the partition
//!   is paused and sought back until the record is due, while other partitions go on.
//!
//! What exactly-once covers: records read from Kafka and written to Kafka by this worker.
//! Readers see the outputs of committed transactions only if they read with
//! `isolation.level = read_committed` (librdkafka's default, and the default of every worker).
//! It does NOT cover side effects outside Kafka: a handler that calls an HTTP service or writes
//! to a database may do so again when a batch is aborted and handled again. Make those
//! idempotent, or keep them out of transactional routes.
//!
//! ```no_run
//! # async fn run() -> Result<(), redrive::Error> {
//! use redrive::publish::Outgoing;
//! use redrive::transaction::Transactional;
//! use redrive::{BoxError, Record, Route, Worker};
//! use tower::service_fn;
//!
//! let worker = Worker::builder()
//!     .bootstrap_servers("127.0.0.1:9092")
//!     .group_id("enricher")
//!     .transactional(Transactional::new("enricher-0").batch_size(5000))
//!     .route(Route::new("orders", service_fn(|r: Record| async move {
//!         let value = r.value().cloned().unwrap_or_default();
//!         Ok::<_, BoxError>(Outgoing::to("orders-enriched").value(value))
//!     })))
//!     .build()?;
//! worker.run_until(redrive::shutdown_signal()).await
//! # }
//! ```

use std::time::Duration;

/// Settings of a transactional worker. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transactional {
    pub(crate) id: String,
    pub(crate) batch_size: usize,
    pub(crate) max_linger: Duration,
    pub(crate) timeout: Duration,
    pub(crate) rollback_backoff: (Duration, Duration),
    pub(crate) max_failed_transactions: u32,
}

impl Transactional {
    /// Transactions under `transactional_id`. Give every instance its own stable id (e.g. the
    /// pod name): a new instance with the id of a running one fences the old one.
    pub fn new(transactional_id: impl Into<String>) -> Self {
        Transactional {
            id: transactional_id.into(),
            batch_size: 5000,
            max_linger: Duration::from_millis(100),
            timeout: Duration::from_secs(60),
            rollback_backoff: (Duration::from_millis(100), Duration::from_secs(10)),
            max_failed_transactions: 5,
        }
    }

    /// Most records per transaction (default 5,000).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// The longest a batch keeps collecting records while more keep arriving (default
    /// 100 ms). A batch also ends when it is full or when no record is waiting.
    pub fn max_linger(mut self, d: Duration) -> Self {
        self.max_linger = d;
        self
    }

    /// `transaction.timeout.ms`, and the deadline of each transactional call (default 60 s).
    pub fn transaction_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// After a transaction aborts because of one record (its handler failed and nothing
    /// routed the failure, or its copy could not be sent), that record's partition waits
    /// `initial`, doubling per further failure up to `max`, before it is handled again; the
    /// other partitions go on at once (default 100 ms to 10 s). An abort no record can be
    /// blamed for (a failed commit) backs off the whole loop the same way.
    pub fn rollback_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.rollback_backoff = (initial, max);
        self
    }

    /// After this many failed transactions for the same record (default 5), the record is
    /// not handed to the handler again: the next transaction writes it to its route's
    /// dead-letter topic (without its value if the copy is too large), or, for a route
    /// without one, skips it with an error log. Either way its offset is committed with the
    /// rest of that transaction and the partition moves on (Spring's
    /// `DefaultAfterRollbackProcessor` with a recoverer).
    pub fn max_failed_transactions(mut self, n: u32) -> Self {
        self.max_failed_transactions = n;
        self
    }

    /// The transactional id.
    pub fn transactional_id(&self) -> &str {
        &self.id
    }
}

/// Counts of a transactional worker's transactions, from
/// [`WorkerHandle::transactions`](crate::WorkerHandle::transactions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionStats {
    /// Transactions committed.
    pub committed: u64,
    /// Transactions aborted (their batches were handled again).
    pub aborted: u64,
    /// Input records whose offsets went out in committed transactions.
    pub records_committed: u64,
    /// The input positions (next offset to read) committed by the last committed transaction
    /// of each partition, as the worker sent them: brokers that do not serve transactional
    /// offsets back (librdkafka's mock cluster) can be checked against this.
    pub offsets: std::collections::BTreeMap<(String, i32), i64>,
    /// Records given up after `max_failed_transactions` failed transactions: dead-lettered,
    /// or skipped on a route without a dead-letter topic.
    pub records_given_up: u64,
}
