//! The worker builder.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tower::Service;

use super::plan::{self, PendingRoute};
use super::route::IntoRoute;
use super::run::Worker;
use super::validate;
use crate::client;
use crate::commit::CommitPolicy;
use crate::error::BoxError;
use crate::publish::{IntoOutputs, Publish};
use crate::runtime::{CommitErrorCallback, RuntimeConfig, RuntimeContext, RuntimeShared};
use crate::transaction::Transactional;
use crate::{Error, Record};

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
    /// [`DEFAULT_PRODUCER_COMPRESSION`](crate::client::DEFAULT_PRODUCER_COMPRESSION), or to
    /// [`COMPACT_PRODUCER_COMPRESSION`](crate::client::COMPACT_PRODUCER_COMPRESSION) when
    /// every route's copies carry the compact header and no route writes output records.
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
    /// until then no offset at or after the record is committed for its partition. Take it
    /// before the handler returns: a record that returned `Ok` with no live handle can never
    /// be acknowledged, and the worker stops with [`Error::Fatal`](crate::Error::Fatal) naming
    /// it (see [`Acknowledgment`](crate::Acknowledgment)).
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
    /// It also bounds each partition's span from its commit position to its newest record
    /// handed over: a record that stays unfinished (a slow handler, an unacknowledged copy
    /// or acknowledgement) while the records behind it finish pauses its partition at the
    /// bound instead of tracking the topic behind it.
    pub fn max_in_flight_records(mut self, n: u64) -> Self {
        self.max_in_flight_records = n;
        self
    }

    /// Bound on bytes (key + value + headers) read and not yet final. A failed record whose
    /// retry or dead-letter copy is not yet acknowledged keeps its share until it is.
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
    /// A [`KafkaPublisher`](crate::publish::KafkaPublisher) (the worker's own is one) tells the retry layer of each copy's
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
        self.routes.push(PendingRoute::new(route.into_route()));
        self
    }

    /// Validates the configuration and creates the consumer.
    pub fn build(mut self) -> Result<Worker, Error> {
        let group = validate::group(&self.routes, &mut self.props)?;
        let bootstrap = validate::bootstrap(&self.props)?;
        validate::settings(
            &self.props,
            &self.commit,
            self.lag_interval,
            [
                ("max_in_flight_records", self.max_in_flight_records),
                ("max_in_flight_bytes", self.max_in_flight_bytes),
                ("partition_queue", self.partition_queue as u64),
                ("max_poll_records", self.max_poll_records as u64),
            ],
        )?;
        validate::routes(&self.routes)?;
        validate::key_ordering_worker(&self.routes, self.manual_ack, self.transactional.is_some())?;
        if self.transactional.is_some() {
            validate::transactional_consumer(&self.props)?;
            validate::no_breakers(&self.routes)?;
        }
        let compression = plan::copy_compression(&self.routes);
        let mut producer_config = client::producer_config_compressing(&self.props, compression);
        let admin_config = client::admin_config(&self.props);
        let txn = match self.transactional.take() {
            Some(t) => Some(plan::transactional(
                t,
                self.manual_ack,
                self.publisher.is_some(),
                &mut producer_config,
            )?),
            None => None,
        };
        if let Some(t) = &txn {
            self.publisher = Some(t.publisher.clone());
        }
        let publisher = plan::publisher(&self.routes, self.publisher.take(), &producer_config)?;
        let planned = plan::topics(self.routes, publisher.clone(), &group, self.manual_ack)?;
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
                breakers: planned.breakers,
                publisher: publisher.as_ref().map(Arc::downgrade),
                chain_reader: planned
                    .key_ordering
                    .then(|| client::consumer_config(&self.props)),
            },
        ));
        let context = RuntimeContext::new(
            rt.clone(),
            planned.by_topic,
            txn.as_ref().map(|t| t.state.clone()),
        );
        let consumer = client::consumer_config_with_queue(&self.props, self.partition_queue)
            .create_with_context(context)
            .map_err(Error::from_client_config)?;
        Ok(Worker {
            consumer,
            rt,
            topics: planned.topics,
            plans: planned.plans,
            admin_config,
            bootstrap,
            startup_timeout: self.startup_timeout,
            txn,
        })
    }
}
