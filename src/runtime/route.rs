//! A route as the runtime sees it: a factory of partition tasks with the service type erased.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

use super::partition::{run_partition, PartitionStart};
use crate::error::BoxError;
use crate::layer::Stage;
use crate::Record;

/// How the worker handles one topic.
#[derive(Clone)]
pub(crate) struct TopicBinding {
    pub name: Arc<str>,
    pub route: Arc<dyn RouteFactory>,
    pub stage: Stage,
    /// Retry topics: a due time further ahead than this is treated as garbage.
    pub max_wait: Duration,
    /// False when a layer (retry topic, DLT) records outcomes itself.
    pub count_outcomes: bool,
    /// Records carry their partition's state: for a layer that may defer their completion
    /// (the retry-topic layer, see `Record::defer`) or for manual acknowledgement. Without
    /// it they still work everywhere (a layer that cannot defer finishes inline), and skip
    /// a reference count per record.
    pub carry_state: bool,
    /// False for a route that takes its records without headers (`Route::without_headers`):
    /// the poll thread then never asks librdkafka to parse them.
    pub read_headers: bool,
    /// Where a record of this topic goes when the transactional loop gives up on it; `None`
    /// for a route without a dead-letter topic (and for the dead-letter topic itself).
    pub dead_letter: Option<DeadLetter>,
    /// The topic's part in per-key ordering.
    pub key_order: KeyOrderRole,
}

/// A topic's part in per-key ordering (docs/design.md, Key ordering).
#[derive(Clone, Debug, Default)]
pub(crate) enum KeyOrderRole {
    /// Not a topic of a route with key ordering (or its dead-letter topic).
    #[default]
    None,
    /// A main topic: the owner of its partition P also reads partition P of these retry
    /// topics, and parks records of keys in their chain.
    Main {
        retry_topics: Vec<Arc<str>>,
        after_dead_letter: crate::AfterDeadLetter,
    },
    /// A retry topic of such a main topic: assigned with its main partition, not subscribed.
    Chain,
}

/// A route's dead-letter topic, as the transactional loop writes to it.
#[derive(Clone, Debug)]
pub(crate) struct DeadLetter {
    pub topic: Arc<str>,
    /// The copy keeps its record's partition (the policy sets no partition count).
    pub keep_partition: bool,
    /// The policy's bound on header texts.
    pub max_text: usize,
    /// The policy's header profile.
    pub profile: crate::headers::HeaderProfile,
}

/// A route with its service type erased, able to start a task per assigned partition.
pub(crate) trait RouteFactory: Send + Sync {
    fn name(&self) -> &Arc<str>;
    fn concurrency(&self) -> usize;
    fn spawn(&self, handle: &Handle, start: PartitionStart) -> JoinHandle<()>;
    /// A clone of the service, for the transactional loop.
    fn service(&self) -> tower::util::BoxService<Record, (), BoxError>;
}

/// The factory for a concrete service type, so the per-record path is monomorphized.
pub(crate) struct ServiceRoute<S> {
    name: Arc<str>,
    concurrency: usize,
    // Services need not be Sync; the lock is taken only when a partition is assigned.
    service: Mutex<S>,
}

impl<S> ServiceRoute<S> {
    pub(crate) fn new(name: Arc<str>, concurrency: usize, service: S) -> Self {
        ServiceRoute {
            name,
            concurrency,
            service: Mutex::new(service),
        }
    }
}

impl<S> RouteFactory for ServiceRoute<S>
where
    S: Service<Record> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn spawn(&self, handle: &Handle, start: PartitionStart) -> JoinHandle<()> {
        let svc = self
            .service
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        handle.spawn(run_partition(svc, start))
    }

    fn service(&self) -> tower::util::BoxService<Record, (), BoxError> {
        let svc = self
            .service
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tower::util::BoxService::new(svc.map_response(|_| ()).map_err(Into::into))
    }
}
