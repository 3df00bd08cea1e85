//! The circuit breaker's settings: when an outage opens a route's breaker and how it probes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::duration;
use crate::error::Unavailable;

/// Says whether a failure is an outage of the handler's dependency.
pub type OutagePredicate = Arc<dyn Fn(&(dyn std::error::Error + 'static)) -> bool + Send + Sync>;

/// Asks the handler's dependency whether it is up (an HTTP health endpoint, a `SELECT 1`).
pub type HealthCheck = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// When a route's circuit breaker opens, and how it comes back (docs/design.md, Circuit
/// breaker).
///
/// Only *outage* failures count: an [`Unavailable`] in the error's `source()` chain, or what
/// [`outage_when`](Self::outage_when) says. The breaker opens after `consecutive_failures`
/// outage failures in a row, or when at least `min_calls` of the last `window` calls ended
/// and `failure_ratio` of them were outages. While open, the route's partitions (main and
/// retry topics) hold their current record and take no other, so librdkafka stops fetching
/// them; nothing goes down the retry chain because of the outage. After `open_for` one
/// record is tried (half-open): a success closes the breaker, an outage opens it again for
/// twice as long, up to `max_open_for`. A breaker starts half-open: the route's first record
/// probes alone, so a process started during an outage sends nothing down the chain for it.
///
/// ```
/// use std::time::Duration;
/// use redrive::policy::CircuitBreaker;
///
/// let breaker = CircuitBreaker::new()
///     .consecutive_failures(3)
///     .open_for(Duration::from_millis(500), Duration::from_secs(30))
///     .outage_when(|e| e.to_string().contains("connection refused"));
/// assert!(breaker.validate().is_ok());
/// let parsed: CircuitBreaker = serde_json::from_str(r#"{ "consecutive_failures": 3, "open_for": "500ms" }"#).unwrap();
/// assert_eq!(parsed.consecutive_failures, 3);
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreaker {
    /// Outage failures in a row that open the breaker; default 5.
    pub consecutive_failures: u32,
    /// The share of outages among the last `window` calls that opens the breaker; default 0.5.
    pub failure_ratio: f64,
    /// How many recent calls the ratio looks at; default 20.
    pub window: u32,
    /// The fewest calls in the window before the ratio counts; default 10.
    pub min_calls: u32,
    /// How long the breaker stays open before its first probe; default 1 s.
    #[serde(with = "duration")]
    pub open_for: Duration,
    /// The longest it stays open after failed probes (each doubles the wait); default 60 s.
    #[serde(with = "duration")]
    pub max_open_for: Duration,
    #[serde(skip)]
    outage: Option<OutagePredicate>,
    #[serde(skip)]
    health: Option<HealthCheck>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: 20,
            min_calls: 10,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(60),
            outage: None,
            health: None,
        }
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("consecutive_failures", &self.consecutive_failures)
            .field("failure_ratio", &self.failure_ratio)
            .field("window", &self.window)
            .field("min_calls", &self.min_calls)
            .field("open_for", &self.open_for)
            .field("max_open_for", &self.max_open_for)
            .field("outage_when", &self.outage.is_some())
            .field("health_check", &self.health.is_some())
            .finish()
    }
}

/// Equal settings; two predicates are equal only when they are the same one.
impl PartialEq for CircuitBreaker {
    fn eq(&self, o: &Self) -> bool {
        let same_predicate = match (&self.outage, &o.outage) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        let same_check = match (&self.health, &o.health) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same_predicate
            && same_check
            && self.consecutive_failures == o.consecutive_failures
            && self.failure_ratio == o.failure_ratio
            && self.window == o.window
            && self.min_calls == o.min_calls
            && self.open_for == o.open_for
            && self.max_open_for == o.max_open_for
    }
}

impl CircuitBreaker {
    /// The defaults: 5 outages in a row or half of the last 20 calls (10 at least) open it,
    /// for 1 s at first and at most 60 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Outage failures in a row that open the breaker.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// Opens when `ratio` of the last `window` calls were outages, once `min_calls` ended.
    pub fn failure_ratio(mut self, ratio: f64, window: u32, min_calls: u32) -> Self {
        self.failure_ratio = ratio;
        self.window = window;
        self.min_calls = min_calls;
        self
    }

    /// How long it stays open before the first probe, and at most after failed probes.
    pub fn open_for(mut self, first: Duration, max: Duration) -> Self {
        self.open_for = first;
        self.max_open_for = max;
        self
    }

    /// Also counts as an outage what `predicate` says is one (an [`Unavailable`] always is).
    pub fn outage_when(
        mut self,
        predicate: impl Fn(&(dyn std::error::Error + 'static)) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.outage = Some(Arc::new(predicate));
        self
    }

    /// Asks `check` before each probe, and before the route's first record: while it answers
    /// false the breaker stays open (each failed check doubles the wait, as a failed probe
    /// does) and no record is handed to the handler. So a route whose dependency is down at
    /// start-up starts paused, and a resumed route starts with a dependency that says it is
    /// up.
    ///
    /// ```
    /// use redrive::policy::CircuitBreaker;
    ///
    /// let breaker = CircuitBreaker::new().health_check(|| Box::pin(async {
    ///     // e.g. an HTTP GET of the service's /healthz, or `SELECT 1`
    ///     true
    /// }));
    /// assert!(breaker.has_health_check());
    /// ```
    pub fn health_check(
        mut self,
        check: impl Fn() -> BoxFuture<'static, bool> + Send + Sync + 'static,
    ) -> Self {
        self.health = Some(Arc::new(check));
        self
    }

    /// True when a [`health_check`](Self::health_check) gates probes and start-up.
    pub fn has_health_check(&self) -> bool {
        self.health.is_some()
    }

    /// Runs the health check; true without one.
    pub(crate) async fn healthy(&self) -> bool {
        match &self.health {
            Some(check) => check().await,
            None => true,
        }
    }

    /// True when `err` is an outage of the handler's dependency.
    pub fn is_outage(&self, err: &(dyn std::error::Error + 'static)) -> bool {
        Unavailable::is_in(err) || self.outage.as_ref().is_some_and(|p| p(err))
    }

    /// Checks the settings; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.consecutive_failures == 0 {
            return Err("consecutive_failures must be at least 1".into());
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(format!(
                "failure_ratio must be above 0 and at most 1, not {}",
                self.failure_ratio
            ));
        }
        if self.window == 0 || self.min_calls == 0 || self.min_calls > self.window {
            return Err(format!(
                "min_calls ({}) must be between 1 and window ({})",
                self.min_calls, self.window
            ));
        }
        if self.open_for.is_zero() || self.max_open_for < self.open_for {
            return Err(format!(
                "open_for ({:?}) must be above 0 and at most max_open_for ({:?})",
                self.open_for, self.max_open_for
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_key() {
        let zero = CircuitBreaker::new().consecutive_failures(0).validate();
        assert!(zero.unwrap_err().contains("consecutive_failures"));
        let ratio = CircuitBreaker::new().failure_ratio(1.5, 20, 10).validate();
        assert!(ratio.unwrap_err().contains("failure_ratio"));
        let calls = CircuitBreaker::new().failure_ratio(0.5, 5, 10).validate();
        assert!(calls.unwrap_err().contains("min_calls"));
        let open = CircuitBreaker::new()
            .open_for(Duration::from_secs(2), Duration::from_secs(1))
            .validate();
        assert!(open.unwrap_err().contains("open_for"));
        assert!(CircuitBreaker::new().validate().is_ok());
    }

    #[test]
    fn an_unavailable_anywhere_in_the_chain_is_an_outage() {
        let b = CircuitBreaker::new();
        let wrapped: crate::BoxError = Box::new(crate::RetryAfter::new(
            Duration::from_secs(1),
            Unavailable::new("db down"),
        ));
        assert!(b.is_outage(&*wrapped));
        let plain: crate::BoxError = "bad record".into();
        assert!(!b.is_outage(&*plain));
        let b = b.outage_when(|e| e.to_string() == "bad record");
        assert!(b.is_outage(&*plain));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<CircuitBreaker>(r#"{ "treshold": 3 }"#).unwrap_err();
        assert!(err.to_string().contains("treshold"), "{err}");
    }
}
