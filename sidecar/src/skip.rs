//! `redrive skip`: the operator's way past records a route cannot read (a corrupt batch, a
//! codec the client lacks): it moves the group's committed offset of one partition forward,
//! with the group stopped, and writes what it skipped to the route's dead-letter topic as a
//! marker (the records' coordinates, no value), so the skip is on record where the dead
//! letters are. Without `--execute` it prints its plan and changes nothing.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redrive::headers::{self, dlt_form};
use redrive::BoxError;

use super::config::{Config, RouteConfig};

/// Names the offset a skip moved a partition to: the first one handled again.
pub const SKIPPED_TO: &str = "redrive-skipped-to";

/// What a skip moves, and where its marker goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The consumer group.
    pub group: String,
    /// The route's main topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's position now (its committed offset, or the partition's start).
    pub from: i64,
    /// The position after the skip.
    pub to: i64,
    /// The dead-letter topic that gets the marker, if the route has one.
    pub dlt: Option<String>,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "skip {}/{} offsets {}..{} ({} records) for group {}",
            self.topic,
            self.partition,
            self.from,
            self.to - 1,
            self.to - self.from,
            self.group
        )?;
        match &self.dlt {
            Some(d) => write!(f, "; a marker naming them goes to {d}"),
            None => write!(
                f,
                "; the route has no dead-letter topic: nothing records the skip"
            ),
        }
    }
}

/// Works out the plan: the group's position on `partition` of the route's topic, moved to `to`.
pub fn plan(
    config: &Config,
    route: &RouteConfig,
    partition: i32,
    to: i64,
) -> Result<Plan, BoxError> {
    let c = consumer(config, &route.group)?;
    let topic = route.topic.clone();
    let timeout = config.worker.startup_timeout;
    let (low, high) = c
        .fetch_watermarks(&topic, partition, timeout)
        .map_err(|e| format!("{topic}/{partition}: no watermarks ({e})"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, partition);
    let committed = c.committed_offsets(tpl, timeout)?;
    let from = match committed.elements().first().map(|e| e.offset()) {
        Some(Offset::Offset(o)) => o,
        _ => low,
    };
    if to <= from || to > high {
        return Err(format!(
            "--to-offset {to} must be above the group's position {from} and at most the partition's end {high}"
        )
        .into());
    }
    let dlt = route
        .retry
        .for_group(&route.group)
        .topology(&route.topic)
        .dlt()
        .map(str::to_owned);
    Ok(Plan {
        group: route.group.clone(),
        topic,
        partition,
        from,
        to,
        dlt,
    })
}

/// Carries the plan out: refuses while the group has members, writes the marker, commits.
pub async fn execute(config: &Config, plan: &Plan) -> Result<(), BoxError> {
    let c = consumer(config, &plan.group)?;
    let groups = c.fetch_group_list(Some(&plan.group), config.worker.startup_timeout)?;
    if let Some(g) = groups.groups().iter().find(|g| !g.members().is_empty()) {
        return Err(format!(
            "group {} has {} active members: stop its workers first (a skip would race their commits)",
            plan.group,
            g.members().len()
        )
        .into());
    }
    if let Some(dlt) = &plan.dlt {
        write_marker(config, plan, dlt).await?;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&plan.topic, plan.partition, Offset::Offset(plan.to))?;
    c.commit(&tpl, CommitMode::Sync)
        .map_err(|e| format!("the marker is written, but the commit failed: {e}"))?;
    Ok(())
}

fn consumer(config: &Config, group: &str) -> Result<BaseConsumer, BoxError> {
    let mut cfg = ClientConfig::from_iter(config.kafka.0.clone());
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false");
    Ok(cfg.create()?)
}

/// The marker: no key, an empty value, the first skipped record's coordinates in Spring's
/// dead-letter headers, the reason, and where handling resumes.
async fn write_marker(config: &Config, plan: &Plan, dlt: &str) -> Result<(), BoxError> {
    let why = format!(
        "skipped by `redrive skip`: offsets {}..{} of {}/{} ({} records) were not handled; they stay in the topic until its retention",
        plan.from,
        plan.to - 1,
        plan.topic,
        plan.partition,
        plan.to - plan.from
    );
    let (partition, offset) = (
        headers::encode_int(plan.partition),
        headers::encode_long(plan.from),
    );
    let to = plan.to.to_string();
    let h = [
        (dlt_form::ORIGINAL_TOPIC, plan.topic.as_bytes()),
        (dlt_form::ORIGINAL_PARTITION, &partition[..]),
        (dlt_form::ORIGINAL_OFFSET, &offset[..]),
        (headers::ORIGINAL_CONSUMER_GROUP, plan.group.as_bytes()),
        (dlt_form::EXCEPTION_FQCN, b"OperatorSkip"),
        (dlt_form::EXCEPTION_MESSAGE, why.as_bytes()),
        (SKIPPED_TO, to.as_bytes()),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |acc, (key, value)| {
        acc.insert(Header {
            key,
            value: Some(value),
        })
    });
    let producer: FutureProducer = ClientConfig::from_iter(config.kafka.0.clone()).create()?;
    let record = FutureRecord::<(), [u8]>::to(dlt).payload(&[]).headers(h);
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| format!("cannot write the marker to {dlt}: {e}"))?;
    Ok(())
}
