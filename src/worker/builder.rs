//! The worker builder.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tower::Service;

use super::route::{IntoRoute, Route};
use super::run::Worker;
use super::topics::TopicPlan;
use crate::client;
use crate::commit::CommitPolicy;
use crate::error::BoxError;
use crate::layer::{Output, RetryTopicLayer, Stage};
use crate::policy::{DltStrategy, RetryPolicy};
use crate::publish::{IntoOutputs, KafkaPublisher, Publish};
use crate::runtime::{
    CommitErrorCallback, RouteFactory, RuntimeConfig, RuntimeContext, RuntimeShared, ServiceRoute,
    TopicBinding, TxnParts, TxnPublisher, TxnState,
};
use crate::transaction::Transactional;
use crate::{Error, Record};

type MakeBindings = Box<
    dyn FnOnce(
        Option<RetryTopicLayer>,
        Option<Arc<dyn Publish>>,
    ) -> Vec<(String, Arc<dyn RouteFactory>, Stage)>,
>;

struct PendingRoute {
    name: String,
    topics: Vec<String>,
    concurrency: usize,
    retry: Option<RetryPolicy>,
    has_dlt: bool,
    group: Option<String>,
    /// See `Route::layered`.
    layered: bool,
    /// False after `Route::without_headers`.
    read_headers: bool,
    /// The handler's response type can hold output records.
    produces: bool,
    make: MakeBindings,
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
    lag_interval: Duration,
    on_commit_error: Option<CommitErrorCallback>,
    routes: Vec<PendingRoute>,
    publisher: Option<Arc<dyn Publish>>,
    transactional: Option<Transactional>,
}

impl Worker {
    /// Starts configuring a worker.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::new()
    }
}

impl Default for WorkerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerBuilder {
    /// The [`max_poll_records`](Self::max_poll_records) default: records the poll thread
    /// hands a partition's task at once. Each hand-over can wake the task's thread, and the
    /// worker threads handle records faster than the one poll thread copies them: with 500
    /// they parked and woke ~1.5 times as often, and an all-success workload used ~8 % more
    /// CPU per record at ~8 % less throughput than with 2,000 (BENCHMARKS.md, Tuning).
    /// A batch still ends at 256 KiB, so the bound on what a partition holds is unchanged.
    /// Unlike Java's `max.poll.records` (500), it counts one partition's records, not a
    /// whole poll's.
    pub const DEFAULT_MAX_POLL_RECORDS: usize = 2_000;

    /// A builder with the defaults: commit `async:5s`, 10,000 records / 64 MiB in flight,
    /// 30 s drain and start-up timeouts, `auto.offset.reset=earliest`.
    pub fn new() -> Self {
        WorkerBuilder {
            props: BTreeMap::new(),
            commit: CommitPolicy::default(),
            manual_ack: false,
            max_in_flight_records: 10_000,
            max_in_flight_bytes: 64 << 20,
            partition_queue: client::DEFAULT_PARTITION_QUEUE,
            max_poll_records: Self::DEFAULT_MAX_POLL_RECORDS,
            drain_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
            poll_timeout: Duration::from_millis(100),
            lag_interval: Duration::from_secs(5),
            on_commit_error: None,
            routes: Vec::new(),
            publisher: None,
            transactional: None,
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

    /// Any librdkafka consumer property, passed through as is. It overrides what redrive sets
    /// otherwise: `auto.offset.reset=earliest`, `isolation.level=read_committed`,
    /// `queued.min.messages` (see [`partition_queue`](Self::partition_queue)),
    /// `queued.max.messages.kbytes=1024`, `fetch.queue.backoff.ms=20` and
    /// `fetch.wait.max.ms` ([`DEFAULT_FETCH_WAIT_MS`](crate::client::DEFAULT_FETCH_WAIT_MS)). The
    /// commit properties (`enable.auto.commit`, `enable.auto.offset.store`) are redrive's own.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.props.insert(key.into(), value.into());
        self
    }

    /// A librdkafka property of the producer that publishes retry and dead-letter copies
    /// (same as `property("producer.<key>", value)`). Connection and security settings
    /// (`bootstrap.servers`, `security.protocol`, `sasl.*`, `ssl.*`, ...) are shared already;
    /// `acks=all` and `enable.idempotence=true` are fixed; `compression.type` defaults to
    /// [`DEFAULT_PRODUCER_COMPRESSION`](crate::client::DEFAULT_PRODUCER_COMPRESSION).
    pub fn producer_property(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.property(format!("producer.{}", key.into()), value)
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
    /// was handled). The handle may be kept and acknowledged after the handler returned;
    /// until then no offset at or after the record is committed for its partition.
    ///
    /// ```no_run
    /// use redrive::{BoxError, Record, Route, Worker};
    /// use tower::service_fn;
    ///
    /// let ledger = service_fn(|r: Record| async move {
    ///     // ... write the record somewhere, then:
    ///     if let Some(ack) = r.acknowledgment() {
    ///         ack.acknowledge();
    ///     }
    ///     Ok::<_, BoxError>(())
    /// });
    /// let worker = Worker::builder()
    ///     .bootstrap_servers("localhost:9092")
    ///     .group_id("ledger")
    ///     .manual_ack(true)
    ///     .route(Route::new("payments", ledger))
    ///     .build()?;
    /// # Ok::<_, redrive::Error>(())
    /// ```
    pub fn manual_ack(mut self, manual: bool) -> Self {
        self.manual_ack = manual;
        self
    }

    /// Bound on records handed to handlers and not yet final, worker-wide; above it the
    /// partition tasks wait (and librdkafka stops prefetching once their queues are full).
    pub fn max_in_flight_records(mut self, n: u64) -> Self {
        self.max_in_flight_records = n;
        self
    }

    /// Bound on bytes (key + value + headers) read and not yet final.
    pub fn max_in_flight_bytes(mut self, n: u64) -> Self {
        self.max_in_flight_bytes = n;
        self
    }

    /// Records librdkafka prefetches per partition ahead of its handler (`queued.min.messages`;
    /// default 100,000, librdkafka's). Prefetched bytes per partition are bounded by
    /// `queued.max.messages.kbytes`, which redrive sets to 1024 (1 MiB; librdkafka's 64 MiB
    /// applies per partition once each has its own queue) unless you set it. librdkafka also
    /// caps each fetch request at that size unless `fetch.max.bytes` is set, and keeps one
    /// fetch in flight per broker: a worker reads at most 1 MiB per broker per round trip.
    /// Against a broker far away, set `fetch.max.bytes` higher (on a local broker larger
    /// fetches measured slower: BENCHMARKS.md, Tuning).
    pub fn partition_queue(mut self, n: usize) -> Self {
        self.partition_queue = n;
        self
    }

    /// Most records the poll thread hands a partition's task at once (a batch also ends after
    /// 256 KiB); a batch is the unit of the per-batch commit policy. Default
    /// [`DEFAULT_MAX_POLL_RECORDS`](Self::DEFAULT_MAX_POLL_RECORDS) (2,000).
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

    /// How often consumer lag (`redrive_consumer_lag_records`/`_seconds`) is measured; 5 s by
    /// default. Each refresh asks the broker for the watermarks of every assigned partition.
    pub fn lag_interval(mut self, d: Duration) -> Self {
        self.lag_interval = d;
        self
    }

    /// Called (on the commit thread) when an asynchronous commit fails, with the offsets it
    /// carried. They are sent again by the next commit either way.
    pub fn on_commit_error(
        mut self,
        f: impl Fn(&rdkafka::error::KafkaError, &[(String, i32, i64)]) + Send + Sync + 'static,
    ) -> Self {
        self.on_commit_error = Some(Arc::new(f));
        self
    }

    /// Publishes retry and dead-letter copies with `publisher` instead of the worker's own
    /// idempotent `acks=all` producer (e.g. to share one producer between workers).
    ///
    /// A [`KafkaPublisher`] (the worker's own is one) tells the retry layer of each copy's
    /// acknowledgement straight from librdkafka's delivery report; any other implementation
    /// through the future [`Publish::publish`] returns, which costs a few allocations and a
    /// task wake-up more per failure (see [`Publish::as_kafka`]).
    pub fn publisher(mut self, publisher: Arc<dyn Publish>) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Makes the worker transactional: outputs, retry and dead-letter copies and input offsets
    /// of each batch commit in one Kafka transaction (see [`crate::transaction`]). The commit
    /// policy does not apply (the transaction commits the offsets); routes handle each
    /// partition's records one at a time.
    pub fn transactional(mut self, settings: Transactional) -> Self {
        self.transactional = Some(settings);
        self
    }

    /// Adds a route. Its handler may return records (see
    /// [`IntoOutputs`](crate::publish::IntoOutputs)); they are published before the input
    /// counts as handled.
    pub fn route<R>(mut self, route: R) -> Self
    where
        R: IntoRoute,
        R::Service: Service<Record> + Clone + Send + 'static,
        <R::Service as Service<Record>>::Response: IntoOutputs,
        <R::Service as Service<Record>>::Error: Into<BoxError>,
        <R::Service as Service<Record>>::Future: Send + 'static,
    {
        let route = route.into_route();
        let (name, topics, concurrency) =
            (route.name.clone(), route.topics.clone(), route.concurrency);
        let retry = route.retry.clone();
        let has_dlt = route.dlt.is_some();
        let group = route.group.clone();
        let (layered, read_headers) = (route.layered, route.read_headers);
        let produces = <<R::Service as Service<Record>>::Response as IntoOutputs>::MAY_PRODUCE;
        let make: MakeBindings = Box::new(move |layer, output| {
            let Route {
                name,
                topics,
                service,
                concurrency,
                dlt,
                ..
            } = route;
            match output.filter(|_| produces) {
                Some(p) => bindings(
                    &name,
                    topics,
                    concurrency,
                    dlt,
                    Output::new(service, p),
                    layer,
                ),
                None => bindings(&name, topics, concurrency, dlt, service, layer),
            }
        });
        self.routes.push(PendingRoute {
            name,
            topics,
            concurrency,
            retry,
            has_dlt,
            group,
            layered,
            read_headers,
            produces,
            make,
        });
        self
    }

    /// Validates the configuration and creates the consumer.
    pub fn build(mut self) -> Result<Worker, Error> {
        // Routes may declare their group (`#[retryable_topic(group = ..)]`).
        let declared: Vec<(&str, &str)> = self
            .routes
            .iter()
            .filter_map(|r| Some((r.name.as_str(), r.group.as_deref()?)))
            .collect();
        if let Some((route, g)) = declared.first() {
            match self.props.get("group.id") {
                Some(w) if w != g => {
                    return Err(Error::config(
                        "group.id",
                        format!(
                        "route `{route}` declares group `{g}` but the worker's group.id is `{w}`"
                    ),
                    ))
                }
                _ => {}
            }
            if let Some((other, g2)) = declared.iter().find(|(_, x)| x != g) {
                return Err(Error::config(
                    "group",
                    format!("routes `{route}` and `{other}` declare different groups (`{g}`, `{g2}`); a worker is one group member: use two workers"),
                ));
            }
            let g = g.to_string();
            self.props.insert("group.id".into(), g);
        }
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
        for key in client::OWNED_PROPERTIES {
            if let Some(v) = self.props.get(key) {
                if v != "false" {
                    return Err(Error::config(
                        key,
                        format!("must stay false (got `{v}`): redrive commits only offsets whose records are final; choose a CommitPolicy instead"),
                    ));
                }
            }
        }
        for (key, required) in client::DURABILITY {
            let key = format!("producer.{key}");
            if let Some(v) = self.props.get(&key) {
                if v != required {
                    return Err(Error::config(
                        key,
                        format!("must stay `{required}` (got `{v}`): a retry or dead-letter copy counts only once the broker has it durably"),
                    ));
                }
            }
        }
        self.commit
            .validate()
            .map_err(|r| Error::config("commit_policy", r))?;
        if self.lag_interval < Duration::from_millis(100) {
            return Err(Error::config("lag_interval", "must be at least 100ms"));
        }
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
            if let Some(t) = r.topics.iter().find(|t| t.trim().is_empty()) {
                return Err(Error::config(
                    "topic",
                    format!("route `{}`: empty topic name `{t}`", r.name),
                ));
            }
            if !r.read_headers && r.retry.is_some() {
                return Err(Error::config(
                    "without_headers",
                    format!(
                        "route `{}` has a retry policy: its retry and dead-letter copies carry the record's headers, so it must read them",
                        r.name
                    ),
                ));
            }
            match &r.retry {
                Some(p) => p.validate().map_err(|e| match e {
                    Error::Config { setting, reason } => {
                        Error::config(setting, format!("route `{}`: {reason}", r.name))
                    }
                    other => other,
                })?,
                None if r.has_dlt => {
                    return Err(Error::config(
                        "dlt_handler",
                        format!(
                            "route `{}` has a DLT handler but no retry policy (Route::retry)",
                            r.name
                        ),
                    ))
                }
                None => {}
            }
            if r.has_dlt
                && r.retry
                    .as_ref()
                    .is_some_and(|p| p.dlt_strategy == DltStrategy::NoDlt)
            {
                return Err(Error::config(
                    "dlt_handler",
                    format!(
                        "route `{}` has a DLT handler but its dlt_strategy is no_dlt",
                        r.name
                    ),
                ));
            }
        }

        let mut producer_config = client::producer_config(&self.props);
        let admin_config = client::admin_config(&self.props);
        let txn = match self.transactional.take() {
            None => None,
            Some(t) => {
                if t.id.trim().is_empty() {
                    return Err(Error::config("transactional_id", "must not be empty"));
                }
                if t.batch_size == 0 {
                    return Err(Error::config("batch_size", "must be at least 1"));
                }
                if t.timeout < Duration::from_secs(1) {
                    return Err(Error::config("transaction_timeout", "must be at least 1s"));
                }
                if self.manual_ack {
                    return Err(Error::config(
                        "manual_ack",
                        "a transactional worker commits offsets with its transactions; manual acknowledgement does not apply",
                    ));
                }
                if self.publisher.is_some() {
                    return Err(Error::config(
                        "publisher",
                        "a custom publisher cannot join the worker's transactions",
                    ));
                }
                producer_config
                    .set("transactional.id", &t.id)
                    .set("transaction.timeout.ms", t.timeout.as_millis().to_string());
                for (k, v) in client::DURABILITY {
                    producer_config.set(k, v);
                }
                let producer: rdkafka::producer::FutureProducer = producer_config
                    .create()
                    .map_err(Error::from_client_config)?;
                let publisher = Arc::new(TxnPublisher::new(producer.clone()));
                self.publisher = Some(publisher.clone());
                Some(TxnParts {
                    producer,
                    publisher,
                    settings: t,
                    state: Arc::new(TxnState::default()),
                })
            }
        };
        let publisher: Option<Arc<dyn Publish>> =
            if self.routes.iter().any(|r| r.retry.is_some() || r.produces) {
                match self.publisher {
                    Some(p) => Some(p),
                    None => Some(Arc::new(KafkaPublisher::new(&producer_config)?)),
                }
            } else {
                None
            };

        let mut by_topic: HashMap<String, TopicBinding> = HashMap::new();
        let mut owner: HashMap<String, String> = HashMap::new();
        let mut topics = Vec::new();
        let mut plans = Vec::new();
        for r in self.routes {
            let layer = match (&r.retry, &publisher) {
                (Some(policy), Some(publisher)) => {
                    let mains: Vec<&str> = r.topics.iter().map(String::as_str).collect();
                    for main in &r.topics {
                        let t = policy.topology(main);
                        plans.push(TopicPlan {
                            main: main.clone(),
                            derived: t.derived_topics().map(str::to_owned).collect(),
                            partitions: policy.partitions,
                            replication: policy.replication_factor,
                            auto_create: policy.auto_create_topics,
                        });
                    }
                    Some(RetryTopicLayer::new(
                        policy.clone(),
                        &mains,
                        publisher.clone(),
                        &group,
                        &r.name,
                    ))
                }
                _ => None,
            };
            let max_wait = r
                .retry
                .as_ref()
                .map_or(Duration::ZERO, RetryPolicy::max_hold);
            let managed = r.retry.is_some();
            for (t, factory, stage) in (r.make)(layer, publisher.clone()) {
                if let Some(other) = owner.insert(t.clone(), r.name.clone()) {
                    return Err(Error::config(
                        "topic",
                        format!(
                            "topic `{t}` is read by two routes, `{other}` and `{}`",
                            r.name
                        ),
                    ));
                }
                by_topic.insert(
                    t.clone(),
                    TopicBinding {
                        name: Arc::from(t.as_str()),
                        route: factory,
                        stage,
                        max_wait,
                        count_outcomes: !managed,
                        carry_state: managed || r.layered || self.manual_ack,
                        read_headers: r.read_headers,
                    },
                );
                topics.push(t);
            }
        }

        let consumer_config = client::consumer_config_with_queue(&self.props, self.partition_queue);
        let rt = Arc::new(RuntimeShared::new(
            Arc::from(group.as_str()),
            RuntimeConfig {
                commit: self.commit,
                manual_ack: self.manual_ack,
                max_in_flight_records: self.max_in_flight_records,
                max_in_flight_bytes: self.max_in_flight_bytes,
                max_poll_records: self.max_poll_records,
                drain_timeout: self.drain_timeout,
                poll_timeout: self.poll_timeout,
                lag_interval: self.lag_interval,
                on_commit_error: self.on_commit_error,
            },
        ));
        let consumer = consumer_config
            .create_with_context(RuntimeContext::new(
                rt.clone(),
                by_topic,
                txn.as_ref().map(|t| t.state.clone()),
            ))
            .map_err(Error::from_client_config)?;
        Ok(Worker {
            consumer,
            rt,
            topics,
            plans,
            admin_config,
            bootstrap,
            startup_timeout: self.startup_timeout,
            txn,
        })
    }
}

/// The topic bindings of one route: its main topics, and with a retry policy its retry topics
/// and (with a DLT handler) its dead-letter topic.
fn bindings<S>(
    name: &str,
    topics: Vec<String>,
    concurrency: usize,
    dlt: Option<super::route::DltService>,
    service: S,
    layer: Option<RetryTopicLayer>,
) -> Vec<(String, Arc<dyn RouteFactory>, Stage)>
where
    S: Service<Record> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let rname: Arc<str> = Arc::from(name);
    let mut out: Vec<(String, Arc<dyn RouteFactory>, Stage)> = Vec::new();
    match layer {
        None => {
            let f: Arc<dyn RouteFactory> = Arc::new(ServiceRoute::new(rname, concurrency, service));
            out.extend(topics.into_iter().map(|t| (t, f.clone(), Stage::Main)));
        }
        Some(layer) => {
            let policy = layer.policy().clone();
            let dlt_factory: Option<Arc<dyn RouteFactory>> = dlt.map(|d| {
                Arc::new(ServiceRoute::new(
                    rname.clone(),
                    1,
                    tower::Layer::layer(&layer.dlt_layer(), d),
                )) as Arc<dyn RouteFactory>
            });
            let f: Arc<dyn RouteFactory> = Arc::new(ServiceRoute::new(
                rname,
                concurrency,
                tower::Layer::layer(&layer, service),
            ));
            for main in topics {
                let topology = policy.topology(&main);
                for t in topology.retry_topics() {
                    out.push((t.clone(), f.clone(), Stage::Retry));
                }
                if let (Some(dlt), Some(df)) = (topology.dlt(), &dlt_factory) {
                    out.push((dlt.to_owned(), df.clone(), Stage::Dlt));
                }
                out.push((main, f.clone(), Stage::Main));
            }
        }
    }
    out
}
