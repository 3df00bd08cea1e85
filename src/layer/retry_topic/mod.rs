//! The retry-topic router: a handler failure becomes a copy in the next retry topic, or in
//! the dead-letter topic, and the record counts as handled only once the broker acknowledged
//! that copy (docs/design.md, The commit rule).
//!
//! ```text
//! orders --fail--> orders-retry-1000 --fail--> orders-retry-2000 --fail--> orders-dlt
//! ```
//!
//! Each copy keeps key, value (a tombstone stays one), and user headers byte for byte, and
//! carries Spring Kafka's retry headers (see [`crate::headers`]). Publishing is retried with
//! back-off until it succeeds; meanwhile the record is not final, so its offset is never
//! committed past.

mod context;
mod delivery;
mod failure;
mod future;
mod layer;
mod ordering;
mod service;
mod shared;

pub use future::ResponseFuture;
pub use layer::RetryTopicLayer;
pub use service::RetryTopic;

pub(crate) use delivery::{failure_copy, hop_copy, publish_until_acked, Hop};
pub(crate) use shared::RetryShared;
