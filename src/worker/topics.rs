//! The topics a worker reads: checked at start-up, retry and dead-letter topics created.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::admin::{create_topics, TopicSpec};
use crate::runtime::RuntimeContext;
use crate::Error;

/// Retry and dead-letter topics a worker checks or creates at start-up.
#[derive(Clone, Debug)]
pub(crate) struct TopicPlan {
    pub main: String,
    pub derived: Vec<String>,
    pub partitions: Option<u32>,
    pub replication: Option<i16>,
    pub auto_create: bool,
}

/// Checks the cluster is reachable and the main topics exist, creates or checks the retry
/// and dead-letter topics. Returns the topics it created.
pub(super) fn ensure_topics(
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
    let mut missing: Vec<TopicSpec> = Vec::new();
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
                None if plan.auto_create => missing.push(TopicSpec {
                    name: t.clone(),
                    partitions: required,
                    replication: plan.replication,
                }),
                None => return Err(Error::TopicNotFound { topic: t.clone() }),
            }
        }
    }
    create_topics(admin_config, &missing, timeout)?;
    Ok(missing.into_iter().map(|t| t.name).collect())
}
