//! Error types.

use rdkafka::error::KafkaError;

/// A type-erased error, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors from building or running a [`Worker`](crate::Worker).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is missing or invalid. `setting` names it as the user wrote it.
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        /// The setting's name (a builder method, config key or librdkafka property).
        setting: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The brokers could not be reached at start-up.
    #[error("cannot reach Kafka at `{bootstrap}` within {timeout:?}: {source}")]
    BrokerUnreachable {
        /// The configured `bootstrap.servers`.
        bootstrap: String,
        /// How long the worker waited.
        timeout: std::time::Duration,
        /// The client's error.
        #[source]
        source: KafkaError,
    },

    /// A subscribed topic does not exist and the worker was not allowed to create it.
    #[error("topic `{topic}` does not exist (create it, or enable topic creation for its route)")]
    TopicNotFound {
        /// The missing topic.
        topic: String,
    },

    /// A topic exists with fewer partitions than the route requires.
    #[error("topic `{topic}` has {actual} partitions but {required} are required")]
    TooFewPartitions {
        /// The topic.
        topic: String,
        /// Its partition count.
        actual: usize,
        /// What the route requires.
        required: usize,
    },

    /// A synchronous commit failed.
    #[error("offset commit failed: {0}")]
    Commit(#[source] KafkaError),

    /// Any other client error.
    #[error("kafka client error: {0}")]
    Kafka(#[from] KafkaError),

    /// The worker must be run inside a Tokio runtime.
    #[error("Worker::run must be called from within a Tokio runtime")]
    NoRuntime,

    /// The worker stopped because of a fatal error.
    #[error("worker stopped: {0}")]
    Fatal(String),
}

impl Error {
    pub(crate) fn config(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            setting: setting.into(),
            reason: reason.into(),
        }
    }

    /// Maps a librdkafka configuration error to a [`Error::Config`] naming the property.
    pub(crate) fn from_client_config(err: KafkaError) -> Self {
        match err {
            KafkaError::ClientConfig(_, desc, key, _) => Error::config(key, desc),
            other => Error::Kafka(other),
        }
    }
}

/// Renders an error and its `source()` chain as `outer: cause: root`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    use std::fmt::Write;
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let _ = write!(out, ": {e}");
        cur = e.source();
    }
    out
}

/// A record's payload could not be decoded. Fatal by default: a poison pill goes straight to
/// the dead-letter topic, once, instead of failing on every retry.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode the record value as {target}: {source}")]
pub struct DecodeError {
    target: &'static str,
    #[source]
    source: BoxError,
}

impl DecodeError {
    /// A decode failure into `target` (a type name, e.g. `"Order"`), caused by `source`.
    pub fn new(target: &'static str, source: impl Into<BoxError>) -> Self {
        DecodeError {
            target,
            source: source.into(),
        }
    }

    /// The type the payload was meant to become.
    pub fn target(&self) -> &'static str {
        self.target
    }
}

/// Wraps an error so that it is never retried: the record goes to the dead-letter topic at
/// once (`redrive_dead_lettered_total{reason="fatal"}`).
///
/// ```
/// # use redrive::Fatal;
/// # fn check(amount: i64) -> Result<(), redrive::BoxError> {
/// if amount < 0 {
///     return Err(Fatal::new(format!("negative amount {amount}")).into());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(#[source] pub BoxError);

impl Fatal {
    /// Marks `err` as fatal.
    pub fn new(err: impl Into<BoxError>) -> Self {
        Fatal(err.into())
    }
}

/// An error with a name for its type: the dead letter's `kafka_exception-fqcn` (what `redrive
/// dlt list --error-type` matches) says `name` instead of the type redrive guesses from the
/// error's `Debug` form (its leading identifier, or the handler's declared error type when that
/// names none). Only the name changes: message, classification and the rest of the chain are
/// the wrapped error's. The sidecar names HTTP failures this way (`http-503`).
///
/// ```
/// # use redrive::ErrorType;
/// # fn charge() -> Result<(), redrive::BoxError> {
/// let declined = std::io::Error::other("card declined");
/// return Err(ErrorType::new("payments.CardDeclined", declined).into());
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct ErrorType {
    /// The type's name, as the dead letter records it.
    pub name: String,
    /// The failure itself.
    #[source]
    pub source: BoxError,
}

impl ErrorType {
    /// `err`, recorded under the type name `name`.
    pub fn new(name: impl Into<String>, err: impl Into<BoxError>) -> Self {
        ErrorType {
            name: name.into(),
            source: err.into(),
        }
    }
}

/// A retryable error that names the earliest time to try again, e.g. from an HTTP
/// `Retry-After` header. The next retry waits at least `after`, even when the policy's back-off
/// is shorter; it is capped at [`RetryPolicy::max_hold`](crate::policy::RetryPolicy::max_hold), the
/// longest a retry topic holds a record. Matched anywhere in the `source()` chain.
///
/// ```
/// # use std::time::Duration;
/// # use redrive::RetryAfter;
/// # fn call() -> Result<(), redrive::BoxError> {
/// let throttled = std::io::Error::other("503 Service Unavailable");
/// return Err(RetryAfter::new(Duration::from_secs(30), throttled).into());
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{source} (retry after {after:?})")]
pub struct RetryAfter {
    /// The minimum delay before the next attempt.
    pub after: std::time::Duration,
    /// The failure itself; classification (include/exclude rules) looks through to it.
    #[source]
    pub source: BoxError,
}

impl RetryAfter {
    /// `err`, to be retried no sooner than `after` from now.
    pub fn new(after: std::time::Duration, err: impl Into<BoxError>) -> Self {
        RetryAfter {
            after,
            source: err.into(),
        }
    }

    /// The longest `RetryAfter` delay in `err`'s `source()` chain, if any.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<std::time::Duration> {
        let mut cur = Some(err);
        let mut found: Option<std::time::Duration> = None;
        while let Some(e) = cur {
            if let Some(r) = e.downcast_ref::<RetryAfter>() {
                found = Some(found.map_or(r.after, |f| f.max(r.after)));
            }
            cur = e.source();
        }
        found
    }
}

/// A failure that says the handler's dependency is down (a database, the service behind the
/// sidecar), not that the record is bad. A route with a
/// [`CircuitBreaker`](crate::policy::CircuitBreaker) counts these towards opening its breaker;
/// while it is open the route pauses instead of sending records down the retry chain.
/// Matched anywhere in the `source()` chain; other layers look through it to the failure.
///
/// ```
/// # use redrive::{BoxError, Unavailable};
/// # fn call() -> Result<(), BoxError> {
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// return Err(Unavailable::new(refused).into());
/// # }
/// ```
#[derive(Debug)]
pub struct Unavailable(BoxError);

impl Unavailable {
    /// Marks `err` as an outage of the handler's dependency.
    pub fn new(err: impl Into<BoxError>) -> Self {
        Unavailable(err.into())
    }

    /// True when an `Unavailable` is anywhere in `err`'s `source()` chain.
    pub fn is_in(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if e.is::<Unavailable>() {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dependency unavailable")
    }
}

impl std::error::Error for Unavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// The failure written on a record that [`AfterDeadLetter::Follow`](crate::AfterDeadLetter)
/// sent to the dead-letter topic unhandled: an earlier record of its key, which it was parked
/// behind, was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowedDeadLetter;

impl std::fmt::Display for FollowedDeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an earlier record of this key was dead-lettered; key ordering sends the records parked behind it to the dead-letter topic unhandled")
    }
}

impl std::error::Error for FollowedDeadLetter {}

impl From<crate::commit::ParseCommitPolicyError> for Error {
    fn from(e: crate::commit::ParseCommitPolicyError) -> Self {
        Error::config("commit_policy", e.to_string())
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
