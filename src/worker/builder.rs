//! The worker builder.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use tower::Service;

use super::route::{IntoRoute, RouteFactory, ServiceRoute};
use super::Worker;
use crate::commit::CommitPolicy;
use crate::error::BoxError;
use crate::runtime::{CommitErrorCallback, RuntimeConfig, RuntimeContext, RuntimeShared};
use crate::{Error, Record};

/// Properties redrive owns: the commit rule cannot hold if librdkafka commits by itself.
const OWNED_PROPERTIES: [&str; 2] = ["enable.auto.commit", "enable.auto.offset.store"];

struct PendingRoute {
    name: String,
    topics: Vec<String>,
    concurrency: usize,
    factory: Arc<dyn RouteFactory>,
}

/// Configures a [`Worker`]. Every mistake is reported by [`build`](Self::build) with the
/// setting's name.
///
/// ```no_run
/// # async fn run() -> Result<(), redrive::Error> {
/// use redrive::{BoxError, CommitPolicy, Record, Route, Worker};
/// use tower::service_fn;
///
/// let worker = Worker::builder()
///     .bootstrap_servers("127.0.0.1:9092")
///     .group_id("billing")
///     .commit_policy(CommitPolicy::async_every(1000))
///     .property("session.timeout.ms", "6000")
///     .route(Route::new("orders", service_fn(|r: Record| async move {
///         println!("{}", r.coordinates());
///         Ok::<_, BoxError>(())
///     })))
///     .build()?;
/// worker.run_until(redrive::shutdown_signal()).await
/// # }
/// ```
pub struct WorkerBuilder {
    props: BTreeMap<String, String>,
    commit: CommitPolicy,
    manual_ack: bool,
    max_in_flight_records: u64,
    max_in_flight_bytes: u64,
    partition_queue: usize,
    max_poll_records: usize,
    drain_timeout: Duration,
    startup_timeout: Duration,
    poll_timeout: Duration,
    on_commit_error: Option<CommitErrorCallback>,
    routes: Vec<PendingRoute>,
}

impl Default for WorkerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerBuilder {
    /// A builder with the defaults: commit `async:5s`, 10,000 records / 64 MiB in flight,
    /// 30 s drain and start-up timeouts, `auto.offset.reset=earliest`.
    pub fn new() -> Self {
        WorkerBuilder {
            props: BTreeMap::new(),
            commit: CommitPolicy::default(),
            manual_ack: false,
            max_in_flight_records: 10_000,
            max_in_flight_bytes: 64 << 20,
            partition_queue: 1024,
            max_poll_records: 500,
            drain_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
            poll_timeout: Duration::from_millis(100),
            on_commit_error: None,
            routes: Vec::new(),
        }
    }

    /// `bootstrap.servers`.
    pub fn bootstrap_servers(self, servers: impl Into<String>) -> Self {
        self.property("bootstrap.servers", servers)
    }

    /// `group.id`, the consumer group (required).
    pub fn group_id(self, group: impl Into<String>) -> Self {
        self.property("group.id", group)
    }

    /// Any librdkafka consumer property, passed through as is.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.props.insert(key.into(), value.into());
        self
    }

    /// Many librdkafka properties at once.
    pub fn properties<K: Into<String>, V: Into<String>>(
        mut self,
        props: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in props {
            self.props.insert(k.into(), v.into());
        }
        self
    }

    /// When and how offsets are committed.
    pub fn commit_policy(mut self, policy: CommitPolicy) -> Self {
        self.commit = policy;
        self
    }

    /// Manual acknowledgement: a record's offset becomes committable only when the handler
    /// calls [`Record::acknowledgment`]`.acknowledge()` (or the record failed and its error
    /// was handled).
    pub fn manual_ack(mut self, manual: bool) -> Self {
        self.manual_ack = manual;
        self
    }

    /// Bound on records read and not yet final; above it fetching pauses.
    pub fn max_in_flight_records(mut self, n: u64) -> Self {
        self.max_in_flight_records = n;
        self
    }

    /// Bound on bytes (key + value + headers) read and not yet final.
    pub fn max_in_flight_bytes(mut self, n: u64) -> Self {
        self.max_in_flight_bytes = n;
        self
    }

    /// Records buffered per partition ahead of its handler.
    pub fn partition_queue(mut self, n: usize) -> Self {
        self.partition_queue = n;
        self
    }

    /// Records in one poll batch (the unit of the per-batch commit policy).
    pub fn max_poll_records(mut self, n: usize) -> Self {
        self.max_poll_records = n;
        self
    }

    /// How long revoke and shutdown wait for in-flight records before abandoning them.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// How long start-up waits for the cluster's metadata.
    pub fn startup_timeout(mut self, d: Duration) -> Self {
        self.startup_timeout = d;
        self
    }

    /// Called (on the poll thread) when an asynchronous commit fails, with the offsets it
    /// carried. They are sent again by the next commit either way.
    pub fn on_commit_error(
        mut self,
        f: impl Fn(&rdkafka::error::KafkaError, &[(String, i32, i64)]) + Send + Sync + 'static,
    ) -> Self {
        self.on_commit_error = Some(Arc::new(f));
        self
    }

    /// Adds a route.
    pub fn route<R>(mut self, route: R) -> Self
    where
        R: IntoRoute,
        R::Service: Service<Record> + Clone + Send + 'static,
        <R::Service as Service<Record>>::Error: Into<BoxError>,
        <R::Service as Service<Record>>::Future: Send + 'static,
    {
        let route = route.into_route();
        let factory = Arc::new(ServiceRoute::new(
            Arc::from(route.name.as_str()),
            route.concurrency,
            route.service,
        ));
        self.routes.push(PendingRoute {
            name: route.name,
            topics: route.topics,
            concurrency: route.concurrency,
            factory,
        });
        self
    }

    /// Validates the configuration and creates the consumer.
    pub fn build(self) -> Result<Worker, Error> {
        let group = match self.props.get("group.id") {
            Some(g) if !g.trim().is_empty() => g.clone(),
            _ => {
                return Err(Error::config(
                    "group.id",
                    "required: a worker is a consumer group member (WorkerBuilder::group_id)",
                ))
            }
        };
        let bootstrap = match self.props.get("bootstrap.servers") {
            Some(b) if !b.trim().is_empty() => b.clone(),
            _ => {
                return Err(Error::config(
                    "bootstrap.servers",
                    "required (WorkerBuilder::bootstrap_servers)",
                ))
            }
        };
        for key in OWNED_PROPERTIES {
            if let Some(v) = self.props.get(key) {
                if v != "false" {
                    return Err(Error::config(
                        key,
                        format!("must stay false (got `{v}`): redrive commits only offsets whose records are final; choose a CommitPolicy instead"),
                    ));
                }
            }
        }
        self.commit
            .validate()
            .map_err(|r| Error::config("commit_policy", r))?;
        for (setting, value) in [
            ("max_in_flight_records", self.max_in_flight_records),
            ("max_in_flight_bytes", self.max_in_flight_bytes),
            ("partition_queue", self.partition_queue as u64),
            ("max_poll_records", self.max_poll_records as u64),
        ] {
            if value == 0 {
                return Err(Error::config(setting, "must be at least 1"));
            }
        }
        if self.routes.is_empty() {
            return Err(Error::config(
                "route",
                "a worker needs at least one route (WorkerBuilder::route)",
            ));
        }
        let mut by_topic: HashMap<String, (Arc<str>, Arc<dyn RouteFactory>)> = HashMap::new();
        let mut owner: HashMap<&str, &str> = HashMap::new();
        let mut topics = Vec::new();
        for r in &self.routes {
            if r.concurrency == 0 {
                return Err(Error::config(
                    "concurrency",
                    format!("route `{}`: must be at least 1", r.name),
                ));
            }
            if r.topics.is_empty() {
                return Err(Error::config(
                    "topics",
                    format!("route `{}` reads no topic", r.name),
                ));
            }
            for t in &r.topics {
                if t.trim().is_empty() {
                    return Err(Error::config(
                        "topic",
                        format!("route `{}`: empty topic name", r.name),
                    ));
                }
                if let Some(other) = owner.insert(t, &r.name) {
                    return Err(Error::config(
                        "topic",
                        format!(
                            "topic `{t}` is read by two routes, `{other}` and `{}`",
                            r.name
                        ),
                    ));
                }
                by_topic.insert(t.clone(), (Arc::from(t.as_str()), r.factory.clone()));
                topics.push(t.clone());
            }
        }

        let rt = Arc::new(RuntimeShared::new(
            Arc::from(group.as_str()),
            RuntimeConfig {
                commit: self.commit,
                manual_ack: self.manual_ack,
                max_in_flight_records: self.max_in_flight_records,
                max_in_flight_bytes: self.max_in_flight_bytes,
                partition_queue: self.partition_queue,
                max_poll_records: self.max_poll_records,
                drain_timeout: self.drain_timeout,
                poll_timeout: self.poll_timeout,
                on_commit_error: self.on_commit_error,
            },
        ));
        let mut cfg = ClientConfig::new();
        cfg.set("auto.offset.reset", "earliest");
        for (k, v) in &self.props {
            cfg.set(k, v);
        }
        for key in OWNED_PROPERTIES {
            cfg.set(key, "false");
        }
        let consumer = cfg
            .create_with_context(RuntimeContext::new(rt.clone(), by_topic))
            .map_err(Error::from_client_config)?;
        Ok(Worker {
            consumer,
            rt,
            topics,
            bootstrap,
            startup_timeout: self.startup_timeout,
        })
    }
}
