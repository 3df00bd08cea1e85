//! Publishes the records a handler returns (see [`IntoOutputs`](crate::publish::IntoOutputs)) before the input counts as
//! handled: consume-transform-produce.
//!
//! At least once, each output is acknowledged by the broker before the input's offset may be
//! committed; a failed publish fails the input (so a retry policy retries it, outputs
//! included). In a transactional worker the outputs join the input's transaction instead and
//! the transaction's commit is their acknowledgement.
//!
//! The worker puts this layer around every route's handler; handlers returning `()` skip it.

mod error;
mod future;
mod layer;
mod service;

pub use error::OutputError;
pub use future::ResponseFuture;
pub use layer::OutputLayer;
pub use service::Output;
