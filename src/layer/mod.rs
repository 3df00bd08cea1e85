//! Tower layers redrive puts around a route's handler.
//!
//! - [`breaker`]: pauses a route while the service behind its handler is down.
//! - [`retry_topic`]: turns a handler failure into a retry-topic or dead-letter publication
//!   (the heart of `@RetryableTopic`).
//! - [`dlt`]: runs a route's dead-letter handler under its DLT strategy.
//! - [`output`]: publishes the records a handler returns (consume-transform-produce).

pub mod breaker;
mod call;
pub mod dlt;
pub mod output;
pub mod retry_topic;

pub(crate) use call::guarded_call;

/// Where a record was read from, relative to its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// A main topic.
    Main,
    /// A retry topic: records wait for their due time.
    Retry,
    /// A dead-letter topic.
    Dlt,
}

impl Stage {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Main => "main",
            Stage::Retry => "retry",
            Stage::Dlt => "dlt",
        }
    }
}
