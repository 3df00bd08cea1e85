//! The output service: calls the handler, then publishes what it returned.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use super::future::ResponseFuture;
use crate::error::BoxError;
use crate::publish::{IntoOutputs, Publish};
use crate::Record;

/// The service [`OutputLayer`](super::OutputLayer) produces. See the
/// [module docs](crate::layer::output).
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
