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

mod acks;
mod chain;
mod committer;
mod context;
mod fetch;
mod lag;
mod meters;
mod parking;
mod partition;
mod poll;
mod route;
mod shared;
mod source;
mod tracker;
mod transactional;

pub(crate) use committer::Committer;
pub(crate) use context::RuntimeContext;
pub(crate) use fetch::FETCH_FAILING_AFTER;
pub(crate) use lag::spawn_lag_thread;
pub(crate) use poll::poll_loop;
pub(crate) use route::{DeadLetter, KeyOrderRole, RouteFactory, ServiceRoute, TopicBinding};
pub use shared::CommitErrorCallback;
pub(crate) use shared::{RuntimeConfig, RuntimeShared};
pub(crate) use transactional::{txn_loop, TxnParts, TxnPublisher, TxnState};
