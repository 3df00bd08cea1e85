//! The retry policy: how many attempts, how long between them, which errors are retried, and
//! what happens after the last one.
//!
//! One type serves the builder, the serde config of the sidecar and the `#[retryable_topic]`
//! macro, so every key has one name and one meaning. Defaults equal Spring Kafka's
//! `@RetryableTopic` where Spring has one: 3 attempts, a fixed 1 s back-off (one `-retry`
//! topic), an exponential maximum of 30 s, the `always_retry_on_error` DLT strategy.
//!
//! ```
//! use std::time::Duration;
//! use redrive::policy::RetryPolicy;
//!
//! // The builder ...
//! let built = RetryPolicy::new()
//!     .attempts(4)
//!     .exponential(Duration::from_secs(1), 2.0, Duration::from_secs(10));
//! // ... and the config file read into the same type.
//! let parsed: RetryPolicy = serde_json::from_str(
//!     r#"{ "attempts": 4, "backoff": { "delay": "1s", "multiplier": 2.0, "max": "10s" } }"#,
//! ).unwrap();
//! assert_eq!(built, parsed);
//! assert_eq!(built.topology("orders").retry_topics(), ["orders-retry-1000", "orders-retry-2000", "orders-retry-4000"]);
//! ```

mod breaker;
mod classify;
pub mod duration;
mod matcher;
mod retry;
mod topology;

pub use breaker::{CircuitBreaker, OutagePredicate};
pub use classify::{Classification, FatalReason};
pub use matcher::ErrorMatcher;
pub use retry::{Backoff, DltStrategy, InMemoryRetries, RetryPolicy, TopicSuffix};
pub use topology::{Hop, Topology};
