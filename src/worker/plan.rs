//! What a built worker reads and how: each route's topics bound to route factories, the
//! retry and dead-letter topics to check or create, the publisher, the transactional parts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use tower::Service;

use super::route::{DltService, Route};
use super::topics::TopicPlan;
use crate::client;
use crate::error::BoxError;
use crate::headers::HeaderProfile;
use crate::layer::breaker::Breaker;
use crate::layer::output::Output;
use crate::layer::retry_topic::RetryTopicLayer;
use crate::layer::Stage;
use crate::policy::RetryPolicy;
use crate::publish::{IntoOutputs, KafkaPublisher, Publish};
use crate::runtime::{
    DeadLetter, KeyOrderRole, RouteFactory, ServiceRoute, TopicBinding, TxnParts, TxnPublisher,
    TxnState,
};
use crate::transaction::Transactional;
use crate::{Error, Record};

/// Builds a route's topic bindings once the worker knows its retry layer and publisher.
type MakeBindings = Box<
    dyn FnOnce(
        Option<RetryTopicLayer>,
        Option<Arc<dyn Publish>>,
    ) -> Vec<(String, Arc<dyn RouteFactory>, Stage)>,
>;

/// A route as the builder keeps it until `build`: its settings, and its service behind
/// [`MakeBindings`].
pub(super) struct PendingRoute {
    pub(super) name: String,
    pub(super) topics: Vec<String>,
    pub(super) concurrency: usize,
    pub(super) retry: Option<RetryPolicy>,
    pub(super) has_dlt: bool,
    pub(super) group: Option<String>,
    /// See `Route::layered`.
    pub(super) layered: bool,
    /// False after `Route::without_headers`.
    pub(super) read_headers: bool,
    /// The handler's response type can hold output records.
    pub(super) produces: bool,
    /// See `Route::breaker`.
    pub(super) breaker: Option<Arc<Breaker>>,
    /// See `Route::handler_timeout`.
    pub(super) handler_timeout: Option<Duration>,
    /// The handler's error type, for dead letters whose error names none (unless it is a
    /// boxed trait object, which names nothing).
    declared_error: Option<&'static str>,
    /// See `Route::key_ordering`.
    pub(super) key_ordering: Option<crate::AfterDeadLetter>,
    make: MakeBindings,
}

impl PendingRoute {
    /// Keeps `route` for `build`.
    pub(super) fn new<S>(route: Route<S>) -> Self
    where
        S: Service<Record> + Clone + Send + 'static,
        S::Response: IntoOutputs,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let produces = <S::Response as IntoOutputs>::MAY_PRODUCE;
        PendingRoute {
            name: route.name.clone(),
            topics: route.topics.clone(),
            concurrency: route.concurrency,
            retry: route.retry.clone(),
            has_dlt: route.dlt.is_some(),
            group: route.group.clone(),
            layered: route.layered,
            read_headers: route.read_headers,
            produces,
            breaker: route.breaker.clone(),
            handler_timeout: route.handler_timeout,
            declared_error: route
                .error_type
                .or(Some(std::any::type_name::<S::Error>()))
                .filter(|name| !name.contains("dyn ")),
            key_ordering: route.key_ordering,
            make: Box::new(move |layer, output| {
                let Route {
                    name,
                    topics,
                    service,
                    concurrency,
                    dlt,
                    ..
                } = route;
                match output.filter(|_| produces) {
                    Some(p) => {
                        let service = Output::new(service, p);
                        bindings(&name, topics, concurrency, dlt, service, layer)
                    }
                    None => bindings(&name, topics, concurrency, dlt, service, layer),
                }
            }),
        }
    }
}

/// The transactional parts of a worker: its transactional producer and the publisher that
/// sends inside its transactions.
/// `manual_ack` and `custom_publisher` say whether the application asked for either, which a
/// transactional worker cannot have.
pub(super) fn transactional(
    t: Transactional,
    manual_ack: bool,
    custom_publisher: bool,
    producer_config: &mut ClientConfig,
) -> Result<TxnParts, Error> {
    if t.id.trim().is_empty() {
        return Err(Error::config("transactional_id", "must not be empty"));
    }
    if t.batch_size == 0 {
        return Err(Error::config("batch_size", "must be at least 1"));
    }
    if t.timeout < Duration::from_secs(1) {
        return Err(Error::config("transaction_timeout", "must be at least 1s"));
    }
    let (initial, max) = t.rollback_backoff;
    if initial.is_zero() || max < initial {
        return Err(Error::config(
            "rollback_backoff",
            format!(
                "the initial wait ({initial:?}) must be above 0 and at most the maximum ({max:?})"
            ),
        ));
    }
    if t.max_failed_transactions == 0 {
        return Err(Error::config(
            "max_failed_transactions",
            "must be at least 1",
        ));
    }
    if manual_ack {
        return Err(Error::config(
            "manual_ack",
            "a transactional worker commits offsets with its transactions; manual acknowledgement does not apply",
        ));
    }
    if custom_publisher {
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
    Ok(TxnParts {
        publisher: Arc::new(TxnPublisher::new(producer.clone())),
        producer,
        settings: t,
        state: Arc::new(TxnState::default()),
    })
}

/// The publisher of copies and outputs: the application's, or a Kafka producer when a route
/// has a retry policy or may return records; none otherwise.
pub(super) fn publisher(
    routes: &[PendingRoute],
    given: Option<Arc<dyn Publish>>,
    producer_config: &ClientConfig,
) -> Result<Option<Arc<dyn Publish>>, Error> {
    if !routes.iter().any(|r| r.retry.is_some() || r.produces) {
        return Ok(None);
    }
    match given {
        Some(p) => Ok(Some(p)),
        None => Ok(Some(Arc::new(KafkaPublisher::new(producer_config)?))),
    }
}

/// What the worker reads: every topic's binding, the subscription, and the retry and
/// dead-letter topics to check or create.
pub(super) struct Planned {
    pub(super) by_topic: HashMap<String, TopicBinding>,
    pub(super) topics: Vec<String>,
    pub(super) plans: Vec<TopicPlan>,
    /// The routes' circuit breakers, named after their group and route.
    pub(super) breakers: Vec<Arc<Breaker>>,
    /// Some route keeps its keys in order.
    pub(super) key_ordering: bool,
}

/// Binds every route's topics; a topic read by two routes is an error.
pub(super) fn topics(
    routes: Vec<PendingRoute>,
    publisher: Option<Arc<dyn Publish>>,
    group: &str,
    manual_ack: bool,
) -> Result<Planned, Error> {
    let mut planned = Planned {
        by_topic: HashMap::new(),
        topics: Vec::new(),
        plans: Vec::new(),
        breakers: Vec::new(),
        key_ordering: false,
    };
    let mut owner: HashMap<String, String> = HashMap::new();
    for r in routes {
        let layer = retry_layer(&r, publisher.as_ref(), group, &mut planned.plans);
        if let Some(b) = &r.breaker {
            b.bind(group, &r.name);
            planned.breakers.push(b.clone());
        }
        let max_wait = r
            .retry
            .as_ref()
            .map_or(Duration::ZERO, RetryPolicy::max_hold);
        let managed = r.retry.is_some();
        let dead_letters = dead_letters(&r, group);
        let mut roles = key_order_roles(&r, group);
        planned.key_ordering |= !roles.is_empty();
        let (name, layered, read_headers) = (r.name.clone(), r.layered, r.read_headers);
        for (t, factory, stage) in (r.make)(layer, publisher.clone()) {
            if let Some(other) = owner.insert(t.clone(), name.clone()) {
                return Err(Error::config(
                    "topic",
                    format!("topic `{t}` is read by two routes, `{other}` and `{name}`"),
                ));
            }
            let binding = TopicBinding {
                name: Arc::from(t.as_str()),
                route: factory,
                stage,
                max_wait,
                count_outcomes: !managed,
                carry_state: managed || layered || manual_ack,
                read_headers,
                dead_letter: dead_letters.get(&t).cloned(),
                key_order: roles.remove(&t).unwrap_or_default(),
            };
            let subscribed = !matches!(binding.key_order, KeyOrderRole::Chain);
            planned.by_topic.insert(t.clone(), binding);
            if subscribed {
                planned.topics.push(t);
            }
        }
    }
    Ok(planned)
}

/// The part each main and retry topic of a route with key ordering plays in it.
fn key_order_roles(r: &PendingRoute, group: &str) -> HashMap<String, KeyOrderRole> {
    let (Some(after_dead_letter), Some(policy)) = (r.key_ordering, r.retry.as_ref()) else {
        return HashMap::new();
    };
    let policy = policy.for_group(group);
    let mut out = HashMap::new();
    for main in &r.topics {
        let topology = policy.topology(main);
        let retry_topics: Vec<Arc<str>> = topology
            .retry_topics()
            .iter()
            .map(|t| Arc::from(t.as_str()))
            .collect();
        for t in topology.retry_topics() {
            out.insert(t.clone(), KeyOrderRole::Chain);
        }
        let role = KeyOrderRole::Main {
            retry_topics,
            after_dead_letter,
        };
        out.insert(main.clone(), role);
    }
    out
}

/// The producer's `compression.type` unless a property sets it: lz4 while any route writes
/// Spring's headers (their names and values repeat from copy to copy) or output records; none
/// when every copy carries the compact header (`client::COMPACT_PRODUCER_COMPRESSION`).
pub(super) fn copy_compression(routes: &[PendingRoute]) -> &'static str {
    compression_for(
        routes
            .iter()
            .map(|r| (r.retry.as_ref().map(|p| p.headers), r.produces)),
    )
}

/// [`copy_compression`] of routes given as (the header profile of their copies, whether they
/// write output records).
fn compression_for(routes: impl Iterator<Item = (Option<HeaderProfile>, bool)>) -> &'static str {
    let (mut compact, mut other) = (false, false);
    for (profile, produces) in routes {
        compact |= profile == Some(HeaderProfile::Compact);
        other |= produces || profile == Some(HeaderProfile::Spring);
    }
    if compact && !other {
        client::COMPACT_PRODUCER_COMPRESSION
    } else {
        client::DEFAULT_PRODUCER_COMPRESSION
    }
}

/// The dead-letter topic of each main and retry topic of a route with one.
fn dead_letters(r: &PendingRoute, group: &str) -> HashMap<String, DeadLetter> {
    let Some(policy) = r.retry.as_ref().map(|p| p.for_group(group)) else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for main in &r.topics {
        let topology = policy.topology(main);
        let Some(dlt) = topology.dlt() else { continue };
        let target = DeadLetter {
            topic: Arc::from(dlt),
            keep_partition: policy.partitions.is_none(),
            max_text: policy.max_header_text,
            profile: policy.headers,
        };
        for t in std::iter::once(main).chain(topology.retry_topics()) {
            out.insert(t.clone(), target.clone());
        }
    }
    out
}

/// The retry layer of a route with a retry policy, and its topics' plans.
fn retry_layer(
    r: &PendingRoute,
    publisher: Option<&Arc<dyn Publish>>,
    group: &str,
    plans: &mut Vec<TopicPlan>,
) -> Option<RetryTopicLayer> {
    let (policy, publisher) = (&r.retry.as_ref()?.for_group(group), publisher?);
    for main in &r.topics {
        plans.push(TopicPlan {
            main: main.clone(),
            derived: policy
                .topology(main)
                .derived_topics()
                .map(str::to_owned)
                .collect(),
            partitions: policy.partitions,
            replication: policy.replication_factor,
            auto_create: policy.auto_create_topics,
        });
    }
    let mains: Vec<&str> = r.topics.iter().map(String::as_str).collect();
    Some(
        RetryTopicLayer::new(policy.clone(), &mains, publisher.clone(), group, &r.name)
            .with_declared_error(r.declared_error),
    )
}

/// The topic bindings of one route: its main topics, and with a retry policy its retry topics
/// and (with a DLT handler) its dead-letter topic.
fn bindings<S>(
    name: &str,
    topics: Vec<String>,
    concurrency: usize,
    dlt: Option<DltService>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_copies_alone_go_uncompressed() {
        let (spring, compact) = (Some(HeaderProfile::Spring), Some(HeaderProfile::Compact));
        let of = |routes: &[(Option<HeaderProfile>, bool)]| compression_for(routes.iter().copied());
        assert_eq!(of(&[(compact, false), (None, false)]), "none");
        assert_eq!(of(&[(compact, false), (spring, false)]), "lz4");
        // Output records are the application's data: compressed as before.
        assert_eq!(of(&[(compact, false), (None, true)]), "lz4");
        assert_eq!(of(&[(None, false)]), "lz4");
        assert_eq!(of(&[]), "lz4");
    }
}
