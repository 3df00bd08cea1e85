//! Publishes the records a handler returns (see [`IntoOutputs`]) before the input counts as
//! handled: consume-transform-produce.
//!
//! At least once, each output is acknowledged by the broker before the input's offset may be
//! committed; a failed publish fails the input (so a retry policy retries it, outputs
//! included). In a transactional worker the outputs join the input's transaction instead and
//! the transaction's commit is their acknowledgement.
//!
//! The worker puts this layer around every route's handler; handlers returning `()` skip it.

mod future;
mod layer;

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

pub use future::ResponseFuture;
pub use layer::OutputLayer;

use crate::error::BoxError;
use crate::publish::{IntoOutputs, Publish};
use crate::Record;

/// Publishing an output record failed.
#[derive(Debug, thiserror::Error)]
#[error("publishing an output record to `{topic}` failed: {source}")]
pub struct OutputError {
    /// The output's topic.
    pub topic: String,
    /// The publisher's error.
    #[source]
    pub source: BoxError,
}

/// The service [`OutputLayer`] produces. See the [module docs](self).
#[derive(Clone)]
pub struct Output<S> {
    inner: S,
    publisher: Arc<dyn Publish>,
}

impl<S> Output<S> {
    /// Publishes what `inner` returns through `publisher`.
    pub fn new(inner: S, publisher: Arc<dyn Publish>) -> Self {
        Output { inner, publisher }
    }
}

impl<S> Service<Record> for Output<S>
where
    S: Service<Record>,
    S::Response: IntoOutputs,
    S::Error: Into<BoxError>,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, record: Record) -> Self::Future {
        ResponseFuture::new(self.inner.call(record), self.publisher.clone())
    }
}
