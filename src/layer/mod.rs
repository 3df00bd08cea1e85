//! Tower layers redrive puts around a route's handler.
//!
//! - [`retry_topic`]: turns a handler failure into a retry-topic or dead-letter publication
//!   (the heart of `@RetryableTopic`).
//! - [`dlt`]: runs a route's dead-letter handler under its DLT strategy.

pub mod dlt;
pub mod retry_topic;

pub use dlt::{DltHandler, DltHandlerLayer};
pub use retry_topic::{RetryTopic, RetryTopicLayer};

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

/// Returned by a layer when a partition must stop at this record without committing it.
/// The runtime logs it, leaves the offset uncommitted and stops the partition's task.
#[derive(Debug, thiserror::Error)]
#[error("partition halted: {0}")]
pub struct Halt(pub String);

/// The current time in ms since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
