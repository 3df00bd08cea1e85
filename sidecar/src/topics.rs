//! `redrive topics create --partitions N`: main topics for development clusters.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use super::config::Config;
use redrive::BoxError;

/// Creates the routes' main topics that do not exist yet, with `partitions` partitions and
/// the cluster's default replication. Returns the topics created.
pub(crate) async fn create_main_topics(
    config: &Config,
    partitions: i32,
) -> Result<Vec<String>, BoxError> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::from_iter(config.kafka.0.clone()).create()?;
    let timeout = config.worker.startup_timeout;
    let md = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|e| format!("cannot read the cluster's topics within {timeout:?}: {e}"))?;
    let mut missing: Vec<&str> = config
        .routes
        .iter()
        .map(|r| r.topic.as_str())
        .filter(|t| {
            !md.topics()
                .iter()
                .any(|m| m.name() == *t && m.error().is_none())
        })
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout.max(Duration::from_secs(1))));
    let mut created = Vec::new();
    for res in admin.create_topics(&new, &opts).await? {
        match res {
            Ok(t) => created.push(t),
            // Created meanwhile by someone else: what was asked for is true.
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("cannot create topic `{t}`: {e}").into()),
        }
    }
    Ok(created)
}
