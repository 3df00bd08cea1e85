//! The worker: start-up, the poll thread, and the end of a run.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use super::handle::WorkerHandle;
use super::topics::{ensure_topics, TopicPlan};
use crate::runtime::{
    poll_loop, spawn_lag_thread, txn_loop, Committer, RuntimeContext, RuntimeShared, TxnParts,
};
use crate::Error;

/// A consumer group member that drives every record of its routes through their services.
///
/// Build it with [`Worker::builder`], run it with [`Worker::run`], stop it with a
/// [`WorkerHandle`]: in-flight records drain and the final commit is synchronous.
pub struct Worker {
    pub(super) consumer: BaseConsumer<RuntimeContext>,
    pub(super) rt: Arc<RuntimeShared>,
    pub(super) topics: Vec<String>,
    pub(super) plans: Vec<TopicPlan>,
    pub(super) admin_config: rdkafka::config::ClientConfig,
    pub(super) bootstrap: String,
    pub(super) startup_timeout: Duration,
    pub(super) txn: Option<TxnParts>,
}

impl Worker {
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
        spawn_lag_thread(
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
                    match Committer::spawn(Arc::downgrade(&consumer), consumer.context().rt.clone())
                    {
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
