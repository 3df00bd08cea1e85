//! Tower layers redrive puts around a route's handler.
//!
//! - [`retry_topic`]: turns a handler failure into a retry-topic or dead-letter publication
//!   (the heart of `@RetryableTopic`).
//! - [`dlt`]: runs a route's dead-letter handler under its DLT strategy.
//! - [`output`]: publishes the records a handler returns (consume-transform-produce).

pub mod dlt;
pub mod output;
pub mod retry_topic;

pub use dlt::{DltHandler, DltHandlerLayer};
pub use output::{Output, OutputLayer};
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

/// A handler panicked; handled like any other error (retried by the retry layer).
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {0}")]
pub struct Panicked(pub String);

impl Panicked {
    pub(crate) fn from_payload(p: &(dyn std::any::Any + Send)) -> Self {
        let msg = if let Some(s) = p.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = p.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_owned()
        };
        Panicked(msg)
    }
}

/// Calls a ready service, turning a panic (in `call` or in its future) into a [`Panicked`]
/// error and the service's error into a `BoxError`.
pub(crate) fn guarded_call<S>(
    svc: &mut S,
    record: crate::Record,
) -> impl std::future::Future<Output = Result<(), crate::BoxError>>
where
    S: tower::Service<crate::Record>,
    S::Error: Into<crate::BoxError>,
{
    use futures_util::FutureExt;
    use std::panic::AssertUnwindSafe;
    let fut = std::panic::catch_unwind(AssertUnwindSafe(|| svc.call(record)));
    async move {
        let fut = fut.map_err(|p| Box::new(Panicked::from_payload(&*p)) as crate::BoxError)?;
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(p) => Err(Box::new(Panicked::from_payload(&*p)) as crate::BoxError),
        }
    }
}

/// The current time in ms since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
