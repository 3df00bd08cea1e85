//! `redrive topics create --partitions N`: main topics for development clusters.

use rdkafka::consumer::{BaseConsumer, Consumer};
use redrive::admin::{create_topics, TopicSpec};
use redrive::BoxError;

use super::config::Config;

/// Creates the routes' main topics that do not exist yet, with `partitions` partitions and
/// the cluster's default replication. Returns the topics created.
pub(crate) async fn create_main_topics(
    config: &Config,
    partitions: i32,
) -> Result<Vec<String>, BoxError> {
    let props = config.kafka.0.clone();
    let timeout = config.worker.startup_timeout;
    let mut topics: Vec<String> = config.routes.iter().map(|r| r.topic.clone()).collect();
    topics.sort_unstable();
    topics.dedup();
    tokio::task::spawn_blocking(move || {
        let admin = redrive::client::admin_config(&props);
        let probe: BaseConsumer = admin.create()?;
        let md = probe
            .fetch_metadata(None, timeout)
            .map_err(|e| format!("cannot read the cluster's topics within {timeout:?}: {e}"))?;
        let missing: Vec<TopicSpec> = topics
            .into_iter()
            .filter(|t| {
                !md.topics()
                    .iter()
                    .any(|m| m.name() == t && m.error().is_none())
            })
            .map(|name| TopicSpec {
                name,
                partitions: partitions.max(1) as usize,
                replication: None,
            })
            .collect();
        Ok(create_topics(&admin, &missing, timeout)?)
    })
    .await?
}
