//! What the code `#[retryable_topic]` and `#[dlt_handler]` generate calls into. Not part of
//! the API: it may change in any release.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::BoxError;
use crate::Record;

/// The return type of a handler function.
#[diagnostic::on_unimplemented(
    message = "a handler must return `Result<(), E>` with `E: std::error::Error + Send + Sync + 'static`, not `{Self}`",
    label = "unsupported return type"
)]
pub trait HandlerResult {
    /// Converts into the service's result.
    fn into_result(self) -> Result<(), BoxError>;
}

impl<E: std::error::Error + Send + Sync + 'static> HandlerResult for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(|e| Box::new(e) as BoxError)
    }
}

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// A handler function as a tower service.
#[derive(Clone)]
pub struct FnService {
    f: Arc<dyn Fn(Record) -> HandlerFuture + Send + Sync>,
}

impl FnService {
    /// Wraps `f`.
    pub fn new(f: impl Fn(Record) -> HandlerFuture + Send + Sync + 'static) -> Self {
        FnService { f: Arc::new(f) }
    }
}

impl tower::Service<Record> for FnService {
    type Response = ();
    type Error = BoxError;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: Record) -> HandlerFuture {
        (self.f)(record)
    }
}

/// A function marked `#[dlt_handler]`.
pub trait DltHandlerFn {
    /// The handler as a service.
    fn into_service(self) -> FnService;
}
