//! Routes: which topics a service handles.

use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use std::sync::Arc;

use crate::error::BoxError;
use crate::layer::breaker::{Breaker, CircuitBreakerLayer, CircuitBreakerService};
use crate::policy::{CircuitBreaker, RetryPolicy};
use crate::Record;

/// A dead-letter handler with its type erased (the DLT path is not the hot path).
pub type DltService = BoxCloneService<Record, (), BoxError>;

/// A tower service bound to the topics it handles.
///
/// ```
/// use redrive::{Record, Route, BoxError};
/// use tower::service_fn;
///
/// let route = Route::new("orders", service_fn(|record: Record| async move {
///     println!("{}", record.coordinates());
///     Ok::<_, BoxError>(())
/// }))
/// .concurrency(1);
/// ```
///
/// With a [`RetryPolicy`], failures go through retry topics to the dead-letter topic, and a
/// dead-letter handler may consume the latter:
///
/// ```
/// use std::time::Duration;
/// use redrive::{policy::RetryPolicy, BoxError, Record, Route};
/// use tower::service_fn;
///
/// let route = Route::new("orders", service_fn(|r: Record| async move {
///     Err::<(), BoxError>("payment gateway down".into())
/// }))
/// .retry(RetryPolicy::new().attempts(4).exponential(Duration::from_secs(1), 2.0, Duration::from_secs(10)))
/// .dlt_handler(service_fn(|r: Record| async move {
///     eprintln!("dead letter {}", r.coordinates());
///     Ok::<_, BoxError>(())
/// }));
/// ```
#[derive(Clone)]
pub struct Route<S> {
    pub(crate) name: String,
    pub(crate) topics: Vec<String>,
    pub(crate) service: S,
    pub(crate) concurrency: usize,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) dlt: Option<DltService>,
    pub(crate) group: Option<String>,
    /// A layer was added with [`Route::layer`]: it may be a hand-built retry layer, which
    /// defers completions, so the route's records carry their partition's state.
    pub(crate) layered: bool,
    /// False after [`Route::without_headers`].
    pub(crate) read_headers: bool,
    /// The breaker added with [`Route::circuit_breaker`], for its metric labels.
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// The limit set with [`Route::handler_timeout`], checked at build.
    pub(crate) handler_timeout: Option<std::time::Duration>,
    /// Set with [`Route::error_type_name`].
    pub(crate) error_type: Option<&'static str>,
    /// Set with [`Route::key_ordering`].
    pub(crate) key_ordering: Option<crate::AfterDeadLetter>,
}

impl<S> std::fmt::Debug for Route<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .field("dlt_handler", &self.dlt.is_some())
            .field("group", &self.group)
            .field("read_headers", &self.read_headers)
            .field(
                "circuit_breaker",
                &self.breaker.as_ref().map(|b| b.config()),
            )
            .field("handler_timeout", &self.handler_timeout)
            .field("key_ordering", &self.key_ordering)
            .finish()
    }
}

impl<S> Route<S> {
    /// A route that sends the records of `topic` to `service`, one at a time per partition.
    pub fn new(topic: impl Into<String>, service: S) -> Self {
        let topic = topic.into();
        Route {
            name: topic.clone(),
            topics: vec![topic],
            service,
            concurrency: 1,
            retry: None,
            dlt: None,
            group: None,
            layered: false,
            read_headers: true,
            breaker: None,
            handler_timeout: None,
            error_type: None,
            key_ordering: None,
        }
    }

    /// Names the handler's error type in dead letters (`kafka_exception-fqcn`) whose error
    /// names no type of its own, such as an error built from a string (recorded as `error`
    /// otherwise). Without it the service's declared `Error` type is used unless it is a boxed
    /// trait object; `#[retryable_topic]` sets it from the function's `Result<(), E>`. An
    /// [`ErrorType`](crate::ErrorType) in the chain names a failure itself.
    pub fn error_type_name(mut self, name: &'static str) -> Self {
        self.error_type = Some(name);
        self
    }

    /// Declares the consumer group the route belongs to (Spring's `groupId`). The worker's
    /// `group.id` is taken from it when not set, and must equal it when set.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Routes failures through retry topics and the dead-letter topic under `policy`
    /// (the topics are created at start-up unless `auto_create_topics` is off).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Consumes the route's dead-letter topic with `handler`, under the policy's DLT strategy.
    /// Requires [`retry`](Self::retry).
    pub fn dlt_handler<D>(mut self, handler: D) -> Self
    where
        D: Service<Record> + Clone + Send + 'static,
        D::Error: Into<BoxError>,
        D::Future: Send + 'static,
    {
        self.dlt = Some(BoxCloneService::new(
            handler.map_response(|_| ()).map_err(Into::into),
        ));
        self
    }

    /// Keeps each key's records in order while one of them retries (docs/design.md, Key
    /// ordering): while a record of key K from partition P is anywhere in the retry chain,
    /// later records of K from P wait (parked, in order) and are handled once it succeeded or
    /// was dead-lettered; other keys flow as usual, and records without a key are not
    /// affected. The blocked keys are read back from the retry topics after every
    /// assignment, so order holds across restarts and rebalances.
    ///
    /// Requires a [`RetryPolicy`] and [`concurrency`](Self::concurrency) 1, and a worker
    /// without manual acknowledgement or transactions (the build fails otherwise). The
    /// owner of main partition P reads partition P of the retry topics itself: they are not
    /// part of the group's subscription. Every member of the group must run the route with
    /// key ordering on. Records parked behind a dead letter are handled by default;
    /// [`key_ordering_after_dead_letter`](Self::key_ordering_after_dead_letter) changes that.
    ///
    /// ```
    /// use redrive::{policy::RetryPolicy, BoxError, Record, Route};
    /// use tower::service_fn;
    ///
    /// let route = Route::new("accounts", service_fn(|_r: Record| async move { Ok::<_, BoxError>(()) }))
    ///     .retry(RetryPolicy::new().attempts(4))
    ///     .key_ordering(true);
    /// ```
    pub fn key_ordering(mut self, on: bool) -> Self {
        self.key_ordering = on.then(|| self.key_ordering.unwrap_or_default());
        self
    }

    /// Turns [`key_ordering`](Self::key_ordering) on and says what becomes of the records
    /// parked behind a record that is dead-lettered: handled
    /// ([`AfterDeadLetter::Continue`](crate::AfterDeadLetter), the default) or sent to the
    /// dead-letter topic after it unhandled ([`AfterDeadLetter::Follow`](crate::AfterDeadLetter)).
    pub fn key_ordering_after_dead_letter(mut self, after: crate::AfterDeadLetter) -> Self {
        self.key_ordering = Some(after);
        self
    }

    /// Whether the route keeps key order, and what follows a dead letter if so.
    pub fn key_order(&self) -> Option<crate::AfterDeadLetter> {
        self.key_ordering
    }

    /// The retry policy, if any.
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    /// The circuit breaker's settings, if the route has one.
    pub fn circuit_breaker_settings(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref().map(|b| b.config())
    }

    /// Adds another topic to the route.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Names the route (the `route` metric label); defaults to its first topic.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many records of one partition may be handled at once. The default, 1, keeps each
    /// partition in order. Above 1, records of a partition may finish out of order; commits
    /// still never pass an unfinished record.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Hands the route's records to its service without their headers
    /// ([`Record::headers`] is empty). For a handler that never reads headers: librdkafka
    /// parses each record's header section when asked, even an empty one, at about a fifth of
    /// what reading a record costs the worker's poll thread, and this skips it (the effect on
    /// throughput is in BENCHMARKS.md, Tuning).
    ///
    /// What goes without them: a W3C `traceparent` on the record is not seen (spans derive a
    /// trace id from the record's coordinates instead), and the records reach every layer
    /// without headers, so a hand-built retry layer added with [`layer`](Self::layer) would
    /// send copies without the record's headers. A route with a [`RetryPolicy`] cannot skip
    /// them (the worker's build fails): its retry and dead-letter copies must carry the
    /// record's headers, and its retry topics' own headers say when each copy is due.
    ///
    /// ```
    /// use redrive::{BoxError, Record, Route};
    /// use tower::service_fn;
    ///
    /// let route = Route::new("page-views", service_fn(|r: Record| async move {
    ///     assert!(r.headers().is_empty());
    ///     Ok::<_, BoxError>(())
    /// }))
    /// .without_headers();
    /// ```
    pub fn without_headers(mut self) -> Self {
        self.read_headers = false;
        self
    }

    /// The topics this route reads.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Wraps the service in a tower layer.
    pub fn layer<L: tower::Layer<S>>(self, layer: L) -> Route<L::Service> {
        Route {
            name: self.name,
            topics: self.topics,
            service: layer.layer(self.service),
            concurrency: self.concurrency,
            retry: self.retry,
            dlt: self.dlt,
            group: self.group,
            layered: true,
            read_headers: self.read_headers,
            breaker: self.breaker,
            handler_timeout: self.handler_timeout,
            error_type: self.error_type,
            key_ordering: self.key_ordering,
        }
    }

    /// Fails a call of the handler that takes longer than `limit` with tower's `Elapsed`
    /// error ("request timed out"), which the retry policy treats like any other failure:
    /// the record goes to its next retry topic, and the partition moves on. Off by default:
    /// a handler may take as long as it needs while its partition waits. The limit covers the
    /// handler only, not a retry record's wait for its due time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redrive::{policy::RetryPolicy, BoxError, Record, Route};
    /// use tower::service_fn;
    ///
    /// let route = Route::new("orders", service_fn(|_r: Record| async move { Ok::<_, BoxError>(()) }))
    ///     .handler_timeout(Duration::from_secs(30))
    ///     .retry(RetryPolicy::new());
    /// ```
    pub fn handler_timeout(self, limit: std::time::Duration) -> Route<tower::timeout::Timeout<S>> {
        let layered = self.layered;
        Route {
            handler_timeout: Some(limit),
            layered,
            ..self.layer(tower::timeout::TimeoutLayer::new(limit))
        }
    }

    /// Pauses the route while the service behind its handler is down, instead of sending
    /// every record down the retry chain (docs/design.md, Circuit breaker). Failures that
    /// are outages (an [`Unavailable`](crate::Unavailable), or what the settings' predicate
    /// says) open the breaker past its threshold; while open, the route's partitions take no
    /// record and the held ones are tried again once it probes. Not for transactional
    /// workers (their build fails): a paused transaction would outlive its timeout.
    ///
    /// ```
    /// use redrive::{policy::{CircuitBreaker, RetryPolicy}, BoxError, Record, Route, Unavailable};
    /// use tower::service_fn;
    ///
    /// let route = Route::new("orders", service_fn(|r: Record| async move {
    ///     // A refused connection to the database says nothing about the record.
    ///     Err::<(), BoxError>(Unavailable::new("connection refused").into())
    /// }))
    /// .circuit_breaker(CircuitBreaker::new().consecutive_failures(5))
    /// .retry(RetryPolicy::new());
    /// ```
    pub fn circuit_breaker(self, config: CircuitBreaker) -> Route<CircuitBreakerService<S>> {
        let layer = CircuitBreakerLayer::new(config);
        let breaker = Some(layer.breaker().clone());
        // Layered: its records carry their partition's state, so a held record notices a
        // revoke at once instead of at the drain deadline.
        Route {
            breaker,
            ..self.layer(layer)
        }
    }
}

/// Anything that can become a [`Route`]: a `Route` itself, or a handler generated by
/// `#[retryable_topic]`.
pub trait IntoRoute {
    /// The route's service.
    type Service;
    /// Builds the route.
    fn into_route(self) -> Route<Self::Service>;
}

impl<S> IntoRoute for Route<S> {
    type Service = S;
    fn into_route(self) -> Route<S> {
        self
    }
}
