//! Handler functions: what `#[retryable_topic]` and `#[dlt_handler]` turn an `async fn` into.
//!
//! A handler's parameters are extracted from the record ([`FromRecord`]): the [`Record`]
//! itself, a decoded payload [`Json<T>`] (a decode failure is a [`DecodeError`], fatal: the
//! record goes to the DLT once), and a [`RetryContext`] (attempt number and original
//! coordinates). It returns `Result<(), E>` with `E: std::error::Error + Send + Sync`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::BoxError;
#[cfg(feature = "json")]
use crate::error::DecodeError;
use crate::headers::{self, Original};
use crate::Record;

/// A value a handler parameter can be built from a record.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler parameter",
    label = "not extractable from a record",
    note = "handler parameters are `redrive::Record`, `redrive::Json<T>` (T: serde::de::DeserializeOwned) or `redrive::RetryContext`"
)]
pub trait FromRecord: Sized {
    /// Builds the value; an error fails the record (a [`DecodeError`] is fatal).
    fn from_record(record: &Record) -> Result<Self, BoxError>;
}

impl FromRecord for Record {
    fn from_record(record: &Record) -> Result<Self, BoxError> {
        Ok(record.clone())
    }
}

/// The record's value decoded from JSON. A value that does not decode (or a tombstone) is a
/// [`DecodeError`]: a poison pill, sent to the dead-letter topic once, never retried.
#[cfg(feature = "json")]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

#[cfg(feature = "json")]
impl<T: serde::de::DeserializeOwned> FromRecord for Json<T> {
    fn from_record(record: &Record) -> Result<Self, BoxError> {
        let target = std::any::type_name::<T>();
        let value = record
            .value()
            .ok_or_else(|| DecodeError::new(target, "the record is a tombstone (null value)"))?;
        serde_json::from_slice(value)
            .map(Json)
            .map_err(|e| DecodeError::new(target, e).into())
    }
}

/// Where a record is in its retry flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryContext {
    /// The attempt, 1 = first delivery.
    pub attempt: u32,
    /// The topic this delivery was read from (main, retry or dead-letter topic).
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The original coordinates and the last error, once the record went through a hop.
    pub original: Original,
}

impl RetryContext {
    /// True on the first delivery.
    pub fn is_first_attempt(&self) -> bool {
        self.attempt == 1
    }
}

impl FromRecord for RetryContext {
    fn from_record(record: &Record) -> Result<Self, BoxError> {
        Ok(RetryContext {
            attempt: headers::attempt_of(record.headers()),
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
            original: Original::read(record.headers()),
        })
    }
}

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
