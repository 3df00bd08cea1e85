//! Topic creation, for the worker's retry and dead-letter topics and for tools that create
//! main topics up front (the sidecar's `topics create`).

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::Error;

/// A topic to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: String,
    /// Its partition count.
    pub partitions: usize,
    /// Its replication factor; `None` takes the cluster's default.
    pub replication: Option<i16>,
}

/// Creates `topics` with an admin client of `admin_config` (see
/// [`client::admin_config`](crate::client::admin_config)) and waits until the cluster's
/// metadata shows each with its partitions. A topic that exists already (another worker of
/// the group created it first) is no error. Returns the names this call created.
///
/// Blocks the calling thread: call it off the async runtime's threads (the worker does, on
/// its own thread) or in `spawn_blocking`.
pub fn create_topics(
    admin_config: &ClientConfig,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<String>, Error> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let admin: AdminClient<DefaultClientContext> =
        admin_config.create().map_err(Error::from_client_config)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let replication = TopicReplication::Fixed(t.replication.map_or(-1, i32::from));
            NewTopic::new(&t.name, t.partitions as i32, replication)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout.max(Duration::from_secs(1))));
    let results = block_on(admin.create_topics(&new, &opts)).map_err(Error::Kafka)?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(t) => {
                tracing::info!(topic = %t, "created topic");
                created.push(t);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(Error::Fatal(format!(
                    "cannot create topic `{t}`: {code} (create it up front, or check the broker allows topic creation)"
                )))
            }
        }
    }
    wait_visible(&admin, topics, timeout)?;
    Ok(created)
}

/// Waits until the metadata shows every topic with at least its partitions.
fn wait_visible(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let md = admin.inner().fetch_metadata(None, timeout)?;
        let ready = topics.iter().all(|t| {
            md.topics().iter().any(|m| {
                m.name() == t.name && m.error().is_none() && m.partitions().len() >= t.partitions
            })
        });
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Fatal(
                "created topics did not appear in the metadata in time".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs an admin future to completion on this thread. rdkafka's admin futures are completed
/// by its own background thread, so they need no async runtime.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
