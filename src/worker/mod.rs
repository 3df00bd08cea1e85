//! The worker: a consumer group member driving routes.

mod builder;
pub(crate) mod route;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

pub(crate) use builder::TopicPlan;
pub use builder::WorkerBuilder;

use crate::runtime::{poll_loop, txn_loop, RuntimeContext, RuntimeShared, TxnParts, TxnState};
use crate::transaction::TransactionStats;
use crate::Error;

/// A consumer group member that drives every record of its routes through their services.
///
/// Build it with [`Worker::builder`], run it with [`Worker::run`], stop it with a
/// [`WorkerHandle`]: in-flight records drain and the final commit is synchronous.
pub struct Worker {
    consumer: BaseConsumer<RuntimeContext>,
    rt: Arc<RuntimeShared>,
    topics: Vec<String>,
    plans: Vec<TopicPlan>,
    admin_config: rdkafka::config::ClientConfig,
    bootstrap: String,
    startup_timeout: Duration,
    txn: Option<TxnParts>,
}

/// Stops a running worker from elsewhere. Cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
    rt: Arc<RuntimeShared>,
    txn: Option<Arc<TxnState>>,
}

impl WorkerHandle {
    /// Asks the worker to stop: no new record starts, in-flight records finish (up to the
    /// drain timeout), final offsets are committed synchronously, then [`Worker::run`] returns.
    pub fn shutdown(&self) {
        self.rt.request_shutdown();
    }

    /// The partitions currently assigned to the worker, as (topic, partition), sorted.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        if let Some(txn) = &self.txn {
            return txn
                .assignment
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        self.rt
            .assignment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| (p.topic.to_string(), p.partition))
            .collect()
    }

    /// Records whose outcome became final since the worker started.
    pub fn records_finished(&self) -> u64 {
        self.rt
            .finished_records
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The transaction counts of a transactional worker; `None` for an at-least-once one.
    pub fn transactions(&self) -> Option<TransactionStats> {
        self.txn.as_ref().map(|t| t.stats())
    }

    /// True once shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.rt.shutdown.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Worker {
    /// Starts configuring a worker.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::new()
    }

    /// A handle to stop the worker.
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            rt: self.rt.clone(),
            txn: self.txn.as_ref().map(|t| t.state.clone()),
        }
    }

    /// The consumer group.
    pub fn group_id(&self) -> &str {
        &self.rt.group
    }

    /// The topics the worker subscribes to.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Connects, checks the topics exist, subscribes and handles records until shut down.
    ///
    /// Must be called within a Tokio runtime; the partition tasks run on it, the Kafka poll
    /// loop runs on a thread of its own.
    pub async fn run(self) -> Result<(), Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let _ = self.consumer.context().handle.set(handle);
        ::metrics::gauge!(crate::metrics::names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"))
            .set(1.0);
        // Failure and event counters exist from the start, at 0.
        let group = self.rt.group.to_string();
        ::metrics::counter!(crate::metrics::names::COMMIT_FAILURES, "group" => group.clone())
            .increment(0);
        ::metrics::counter!(crate::metrics::names::REBALANCES, "group" => group).increment(0);
        let (tx, rx) = tokio::sync::oneshot::channel();
        crate::runtime::spawn_lag_thread(
            self.rt.clone(),
            self.admin_config.clone(),
            self.rt.config.lag_interval,
        )
        .map_err(|e| Error::Fatal(format!("cannot start the lag thread: {e}")))?;
        let Worker {
            consumer,
            rt,
            topics,
            plans,
            admin_config,
            bootstrap,
            startup_timeout,
            txn,
        } = self;
        std::thread::Builder::new()
            .name("redrive-poll".into())
            .spawn(move || {
                let mut consumer = consumer;
                if txn.is_none() {
                    // The poll loop sleeps while idle: events (rebalances, errors) wake it.
                    let rt = consumer.context().rt.clone();
                    let _ = rt.poller.set(std::thread::current());
                    consumer.set_nonempty_callback(move || rt.wake_poller());
                }
                let consumer = Arc::new(consumer);
                let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
                // Asynchronous commits run on a commit thread; a transactional worker commits
                // with its transactions and needs none.
                if txn.is_none() {
                    match crate::runtime::Committer::spawn(
                        Arc::downgrade(&consumer),
                        consumer.context().rt.clone(),
                    ) {
                        Ok(c) => {
                            let _ = consumer.context().committer.set(c);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Error::Fatal(format!(
                                "cannot start the commit thread: {e}"
                            ))));
                            return;
                        }
                    }
                }
                let res = start(
                    &consumer,
                    &topics,
                    &plans,
                    &admin_config,
                    &bootstrap,
                    startup_timeout,
                )
                .and_then(|()| match txn {
                    Some(parts) => txn_loop(consumer, parts),
                    None => poll_loop(consumer),
                });
                let _ = tx.send(res);
            })
            .map_err(|e| Error::Fatal(format!("cannot start the poll thread: {e}")))?;
        let res = rx
            .await
            .unwrap_or_else(|_| Err(Error::Fatal("the poll thread panicked".into())));
        // Also stops the lag thread when start-up failed.
        rt.request_shutdown();
        res
    }

    /// Checks the main topics exist and creates the missing retry and dead-letter topics,
    /// without consuming (for clusters where topics are created up front; `run` does the same
    /// at start-up). Returns the topics it created; an existing topic with too few partitions
    /// is an [`Error::TooFewPartitions`].
    pub async fn create_topics(self) -> Result<Vec<String>, Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let _ = self.consumer.context().handle.set(handle);
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Topic creation blocks on the runtime handle, so it runs off the runtime's threads.
        std::thread::Builder::new()
            .name("redrive-topics".into())
            .spawn(move || {
                let res = ensure_topics(
                    &self.consumer,
                    &self.topics,
                    &self.plans,
                    &self.admin_config,
                    &self.bootstrap,
                    self.startup_timeout,
                );
                let _ = tx.send(res);
            })
            .map_err(|e| Error::Fatal(format!("cannot start a thread: {e}")))?;
        rx.await
            .unwrap_or_else(|_| Err(Error::Fatal("topic creation panicked".into())))
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let handle = self.handle();
        let watcher = tokio::spawn(async move {
            signal.await;
            handle.shutdown();
        });
        let res = self.run().await;
        watcher.abort();
        res
    }
}

/// Checks the cluster is reachable and the main topics exist, creates or checks the retry
/// and dead-letter topics. Returns the topics it created.
fn ensure_topics(
    consumer: &BaseConsumer<RuntimeContext>,
    topics: &[String],
    plans: &[TopicPlan],
    admin_config: &rdkafka::config::ClientConfig,
    bootstrap: &str,
    timeout: Duration,
) -> Result<Vec<String>, Error> {
    let unreachable = |source| Error::BrokerUnreachable {
        bootstrap: bootstrap.to_owned(),
        timeout,
        source,
    };
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(unreachable)?;
    let partitions = |md: &rdkafka::metadata::Metadata, topic: &str| {
        md.topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len())
    };
    let derived: std::collections::HashSet<&str> = plans
        .iter()
        .flat_map(|p| p.derived.iter().map(String::as_str))
        .collect();
    for topic in topics.iter().filter(|t| !derived.contains(t.as_str())) {
        if partitions(&md, topic).is_none() {
            return Err(Error::TopicNotFound {
                topic: topic.clone(),
            });
        }
    }
    let mut missing: Vec<(String, usize, Option<i16>)> = Vec::new();
    for plan in plans {
        let main = partitions(&md, &plan.main).ok_or_else(|| Error::TopicNotFound {
            topic: plan.main.clone(),
        })?;
        // Copies keep their partition, so each derived topic needs at least the main's count.
        let required = plan.partitions.map_or(main, |p| p as usize);
        for t in &plan.derived {
            match partitions(&md, t) {
                Some(actual) if actual < required => {
                    return Err(Error::TooFewPartitions {
                        topic: t.clone(),
                        actual,
                        required,
                    })
                }
                Some(_) => {}
                None if plan.auto_create => missing.push((t.clone(), required, plan.replication)),
                None => return Err(Error::TopicNotFound { topic: t.clone() }),
            }
        }
    }
    if !missing.is_empty() {
        create_topics(consumer, admin_config, &missing, timeout)?;
    }
    Ok(missing.into_iter().map(|(t, _, _)| t).collect())
}

/// [`ensure_topics`], then subscribes.
fn start(
    consumer: &BaseConsumer<RuntimeContext>,
    topics: &[String],
    plans: &[TopicPlan],
    admin_config: &rdkafka::config::ClientConfig,
    bootstrap: &str,
    timeout: Duration,
) -> Result<(), Error> {
    ensure_topics(consumer, topics, plans, admin_config, bootstrap, timeout)?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).map_err(|e| match e {
        KafkaError::Subscription(s) => Error::config("topics", s),
        other => Error::Kafka(other),
    })?;
    tracing::info!(group = %consumer.context().rt.group, topics = ?topics, "subscribed");
    Ok(())
}

/// Creates retry and dead-letter topics and waits until the metadata shows them.
fn create_topics(
    consumer: &BaseConsumer<RuntimeContext>,
    admin_config: &rdkafka::config::ClientConfig,
    missing: &[(String, usize, Option<i16>)],
    timeout: Duration,
) -> Result<(), Error> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> =
        admin_config.create().map_err(Error::from_client_config)?;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(t, n, r)| {
            NewTopic::new(
                t,
                *n as i32,
                TopicReplication::Fixed(r.map_or(-1, i32::from)),
            )
        })
        .collect();
    let handle = consumer
        .context()
        .handle
        .get()
        .expect("the runtime handle is set before start");
    let results = handle
        .block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(timeout))))
        .map_err(Error::Kafka)?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, "created topic"),
            // Another worker of the group may have created it first.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(Error::Fatal(format!(
                    "cannot create topic `{t}`: {code} (create it up front, or check the broker allows topic creation)"
                )))
            }
        }
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let md = consumer.fetch_metadata(None, timeout)?;
        let ready = missing.iter().all(|(t, n, _)| {
            md.topics()
                .iter()
                .any(|m| m.name() == t && m.error().is_none() && m.partitions().len() >= *n)
        });
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::Fatal(
                "created retry/DLT topics did not appear in the metadata in time".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Completes on ctrl-c or SIGTERM: pass it to [`Worker::run_until`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
