use std::collections::HashMap;
use std::sync::Arc;

use tower::Layer;

use super::service::RetryTopic;
use super::shared::{RetryShared, TopicEntry};
use crate::layer::Stage;
use crate::policy::RetryPolicy;
use crate::publish::Publish;

/// Applies [`RetryTopic`] to a handler.
///
/// Usually built for you by [`Route::retry`](crate::Route::retry), which also subscribes the
/// route to its retry topics and creates them; build it by hand to compose it with your own
/// stack or to test a handler with an in-memory [`Publish`].
#[derive(Clone)]
pub struct RetryTopicLayer {
    shared: Arc<RetryShared>,
}

impl RetryTopicLayer {
    /// A layer for the given main topics under `policy` (as applied by `group`, see
    /// [`RetryPolicy::for_group`]), publishing with `publisher`; `group` and `route` label
    /// metrics and the `kafka_dlt-original-consumer-group` header.
    pub fn new(
        policy: RetryPolicy,
        main_topics: &[&str],
        publisher: Arc<dyn Publish>,
        group: &str,
        route: &str,
    ) -> Self {
        let policy = policy.for_group(group);
        let mut by_topic = HashMap::new();
        for main in main_topics {
            let topology = Arc::new(policy.topology(main));
            by_topic.insert(
                (*main).to_owned(),
                Arc::new(TopicEntry::new(
                    topology.clone(),
                    Stage::Main,
                    &policy,
                    group,
                    route,
                    main,
                )),
            );
            if let Some(dlt) = topology.dlt() {
                by_topic.insert(
                    dlt.to_owned(),
                    Arc::new(TopicEntry::new(
                        topology.clone(),
                        Stage::Dlt,
                        &policy,
                        group,
                        route,
                        dlt,
                    )),
                );
            }
            for t in topology.retry_topics() {
                by_topic.insert(
                    t.clone(),
                    Arc::new(TopicEntry::new(
                        topology.clone(),
                        Stage::Retry,
                        &policy,
                        group,
                        route,
                        t,
                    )),
                );
            }
        }
        RetryTopicLayer {
            shared: Arc::new(RetryShared {
                policy,
                by_topic,
                publisher,
                group: Arc::from(group),
                declared_error: None,
            }),
        }
    }

    /// Names `declared` (the handler's error type) in dead letters whose error names no
    /// type of its own. Called on a new layer, before it is shared.
    pub(crate) fn with_declared_error(mut self, declared: Option<&'static str>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.declared_error = declared;
        }
        self
    }

    /// The layer for the routes' dead-letter handler, sharing this layer's policy and
    /// publisher.
    pub fn dlt_layer(&self) -> crate::layer::dlt::DltHandlerLayer {
        crate::layer::dlt::DltHandlerLayer {
            shared: self.shared.clone(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }
}

impl<S> Layer<S> for RetryTopicLayer {
    type Service = RetryTopic<S>;

    fn layer(&self, inner: S) -> RetryTopic<S> {
        RetryTopic::new(inner, self.shared.clone())
    }
}
