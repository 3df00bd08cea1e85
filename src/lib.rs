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
//!
//! ## Throughput: the allocator matters
//!
//! librdkafka allocates on one thread what another frees (every fetched record, every
//! header section it parses, every retry copy it sends), and it asks for zeroed memory
//! (`calloc`) per record. glibc's `malloc` (2.36) serves `calloc` outside its per-thread
//! cache and makes threads that free each other's memory contend for its arenas. With
//! jemalloc for every allocation of the process, librdkafka's included, a worker on 2 cores
//! handled 1.24-1.51x the records per second (all successes, 10 % failing through a retry
//! topic, and the sidecar over HTTP alike; a raw rdkafka loop gained 1.11-1.27x;
//! BENCHMARKS.md, session 14). redrive does not choose the allocator for you, since that is
//! the application's call; the `redrive` binary uses jemalloc. To do the same, add
//! `tikv-jemallocator` with its feature `unprefixed_malloc_on_supported_platforms` (which
//! makes C code linked into the binary, librdkafka included, use it too) and declare it in
//! your binary:
//!
//! ```text
//! #[global_allocator]
//! static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
//! ```
//!
//! Where the process stays on glibc, start it with `GLIBC_TUNABLES=glibc.malloc.mxfast=0`.
//! The retry copies' headers, allocated on the runtime's threads and freed on librdkafka's,
//! pile up in glibc's fast bins, and the next large allocation or free in that arena
//! consolidates the whole pile on a worker thread (10-24 ms measured after a burst of
//! failures: records due then start late). Without fast bins that pass does not exist; in
//! alternating runs the retry path also ran faster in every pair (11-22 % at 16-22 % less
//! CPU over 3-round runs) and the all-success path no slower (BENCHMARKS.md, sessions
//! 19-20).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod client;
mod clock;
pub mod commit;
pub mod error;
pub mod handler;
pub mod headers;
pub mod layer;
pub mod metrics;
mod partition_state;
pub mod policy;
pub mod publish;
pub mod record;
mod runtime;
pub mod timestamp;
pub mod transaction;
mod worker;

pub use commit::{Acknowledgment, CommitMode, CommitPolicy, CommitTrigger};
pub use error::{BoxError, DecodeError, Error, Fatal};
#[cfg(feature = "json")]
pub use handler::Json;
pub use handler::{FromRecord, RetryContext};
pub use headers::{Header, Headers};
pub use policy::RetryPolicy;
pub use record::Record;
#[cfg(feature = "macros")]
pub use redrive_macros::{dlt_handler, retryable_topic};
pub use runtime::CommitErrorCallback;
pub use timestamp::{Timestamp, TimestampType};
pub use worker::route::{IntoRoute, Route};
pub use worker::{shutdown_signal, Worker, WorkerBuilder, WorkerHandle};

// The README's examples compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

/// Re-exported so users name the same versions redrive uses.
pub use rdkafka;
pub use tower;
