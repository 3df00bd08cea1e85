//! # redrive
//!
//! Durable retries and dead-letter topics for Kafka consumers, as a tower-layered consumer
//! runtime: Spring Kafka's `@RetryableTopic` for Rust.
//!
//! ```no_run
//! use std::time::Duration;
//! use redrive::{BoxError, CommitPolicy, Record, policy::RetryPolicy, Route, Worker};
//! use tower::service_fn;
//!
//! # async fn run() -> Result<(), redrive::Error> {
//! let orders = Route::new("orders", service_fn(|r: Record| async move {
//!     println!("{}", r.coordinates());
//!     Ok::<_, BoxError>(())
//! }))
//! // orders-retry-1000, orders-retry-2000, then orders-dlt.
//! .retry(RetryPolicy::new().attempts(3).exponential(Duration::from_secs(1), 2.0, Duration::from_secs(10)));
//!
//! Worker::builder()
//!     .bootstrap_servers("127.0.0.1:9092")
//!     .group_id("billing")
//!     .commit_policy(CommitPolicy::async_every(1000))
//!     .route(orders)
//!     .build()?
//!     .run_until(redrive::shutdown_signal())
//!     .await
//! # }
//! ```
//!
//! A handler is a [`tower::Service`]`<`[`Record`]`>`, or an async fn under
//! `#[retryable_topic]`. A [`Worker`] (one consumer group member) runs a task per assigned
//! partition that drives each record through the route's service (in order, one at a time by
//! default); a failure becomes a copy in the next retry topic, and after the last attempt in
//! the dead-letter topic, with Spring Kafka's headers so both can share topics. Offsets are
//! committed by an explicit [`CommitPolicy`], and only once a record's outcome is final (its
//! handler succeeded, or its copy is durable): a crash means a record may be handled twice,
//! never zero times. A [`transaction::Transactional`] worker does consume-transform-produce
//! exactly once.
//!
//! The contract (layers, topics, headers, the commit rule, classification, metrics) is in
//! `docs/design.md`; the figures behind the defaults are in `BENCHMARKS.md`.
//!
//! ## The allocator
//!
//! redrive does not choose the allocator; that is the application's call. librdkafka
//! allocates on one thread what another frees, and glibc's `malloc` makes those threads
//! contend: with jemalloc for every allocation of the process (`tikv-jemallocator` with its
//! feature `unprefixed_malloc_on_supported_platforms`, so librdkafka uses it too), a worker
//! handled 1.24-1.51x the records per second, and the `redrive` binary uses it. A process that
//! stays on glibc runs best with `GLIBC_TUNABLES=glibc.malloc.mxfast=0` (BENCHMARKS.md,
//! Tuning).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
pub mod admin;
pub mod client;
mod clock;
mod commit;
mod error;
mod handler;
pub mod headers;
mod key_order;
pub mod layer;
pub mod metrics;
mod partition_state;
pub mod policy;
pub mod publish;
mod record;
mod runtime;
mod timestamp;
pub mod transaction;
mod worker;

pub use commit::{Acknowledgment, CommitMode, CommitPolicy, CommitTrigger, ParseCommitPolicyError};
pub use error::{
    error_chain, BoxError, DecodeError, Error, ErrorType, Fatal, FollowedDeadLetter, Halt,
    Panicked, RetryAfter, Unavailable,
};
#[cfg(feature = "json")]
pub use handler::Json;
pub use handler::{FromRecord, RetryContext};
pub use key_order::AfterDeadLetter;
pub use record::{Coordinates, Record};
#[cfg(feature = "macros")]
pub use redrive_macros::{dlt_handler, retryable_topic};
pub use runtime::CommitErrorCallback;
pub use timestamp::{Timestamp, TimestampType};
pub use worker::route::{IntoRoute, Route};
pub use worker::{
    shutdown_signal, BlockReason, BlockedPartition, Worker, WorkerBuilder, WorkerHandle,
};

// The README's examples compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

/// Re-exported so users name the same versions redrive uses.
pub use rdkafka;
pub use tower;
