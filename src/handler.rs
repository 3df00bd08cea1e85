//! Handler functions: what `#[retryable_topic]` and `#[dlt_handler]` turn an `async fn` into.
//!
//! A handler's parameters are extracted from the record ([`FromRecord`]): the [`Record`]
//! itself, a decoded payload [`Json<T>`] (a decode failure is a [`DecodeError`], fatal: the
//! record goes to the DLT once), and a [`RetryContext`] (attempt number and original
//! coordinates). It returns `Result<(), E>` with `E: std::error::Error + Send + Sync`.

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
