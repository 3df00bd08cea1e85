//! # redrive
//!
//! Durable retries and dead-letter topics for Kafka consumers, as a tower-layered consumer
//! runtime.
//!
//! A handler is a [`tower::Service`]`<`[`Record`]`>`. A [`Worker`] (one consumer group member)
//! runs a task per assigned partition that takes the partition's records in batches from the
//! poll thread and drives each record through the route's service (in order, one at a time
//! by default); the poll thread commits offsets by an explicit
//! [`CommitPolicy`]. The commit rule: an offset is committed only when its record's outcome is
//! final, so a crash means a record may be handled twice, never zero times.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod commit;
pub mod error;
pub mod handler;
pub mod headers;
pub mod layer;
pub mod metrics;
pub mod policy;
pub mod publish;
pub mod record;
mod runtime;
#[cfg(feature = "sidecar")]
pub mod sidecar;
pub mod transaction;
mod worker;

pub use commit::{Acknowledgment, CommitMode, CommitPolicy, CommitTrigger};
pub use error::{BoxError, DecodeError, Error, Fatal};
#[cfg(feature = "json")]
pub use handler::Json;
pub use handler::{FromRecord, RetryContext};
pub use policy::RetryPolicy;
pub use record::{Header, Headers, Record, Timestamp, TimestampType};
#[cfg(feature = "macros")]
pub use redrive_macros::{dlt_handler, retryable_topic};
pub use runtime::CommitErrorCallback;
pub use worker::route::{IntoRoute, Route};
pub use worker::{shutdown_signal, Worker, WorkerBuilder, WorkerHandle};

// The README's examples compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

/// Re-exported so users name the same versions redrive uses.
pub use rdkafka;
pub use tower;
