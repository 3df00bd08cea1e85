//! Reads the retry chains of newly assigned main partitions back (docs/design.md, Key
//! ordering): every copy in partition P of a route's retry topics, from the group's committed
//! offset to the end, whose original record came from main partition P, blocks its key. The
//! partition tasks of P and of its retry partitions handle nothing until this is done.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::headers::{self, Original};
use crate::key_order::{Chain, KeyGate};
use crate::partition_state::PartitionShared;
use crate::Record;

/// One main partition whose chain is read back.
pub(super) struct ChainJob {
    pub main: Arc<str>,
    pub partition: i32,
    pub retry_topics: Vec<Arc<str>>,
    pub gate: Arc<KeyGate>,
    /// The main partition's state: a job whose partition was revoked meanwhile is dropped.
    pub shared: Arc<PartitionShared>,
}

/// How long the reader waits for a record before it takes the partition's end as reached
/// (records it cannot read: an open transaction of another producer, control records).
const QUIET: Duration = Duration::from_secs(10);

/// Reads the chains on a thread of their own (the calls block), again after a failure, until
/// done or every job's partition was revoked.
pub(super) fn spawn_restore(config: ClientConfig, group: Arc<str>, mut jobs: Vec<ChainJob>) {
    let spawned = std::thread::Builder::new()
        .name("redrive-chain".into())
        .spawn(move || {
            let mut wait = Duration::from_millis(200);
            loop {
                jobs.retain(|j| !j.shared.stopping());
                if jobs.is_empty() {
                    return;
                }
                match read_chains(&config, &group, &jobs) {
                    Ok(chains) => return restore(jobs, chains),
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot read the retry chains of newly assigned partitions back; trying again");
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the thread that reads retry chains back; the partitions stay paused");
    }
}

fn restore(jobs: Vec<ChainJob>, mut chains: HashMap<usize, Chain>) {
    for (i, job) in jobs.into_iter().enumerate() {
        let chain = chains.remove(&i).unwrap_or_default();
        tracing::info!(topic = %job.main, partition = job.partition, blocked_keys = chain.len(), "retry chain read back; key ordering starts");
        job.gate.restore(chain);
    }
}

/// The blocked keys of every job, by its index.
fn read_chains(
    config: &ClientConfig,
    group: &str,
    jobs: &[ChainJob],
) -> Result<HashMap<usize, Chain>, KafkaError> {
    let consumer: BaseConsumer = config.create()?;
    let timeout = Duration::from_secs(10);
    let mut wanted = TopicPartitionList::new();
    for j in jobs {
        for t in &j.retry_topics {
            wanted.add_partition(t, j.partition);
        }
    }
    let committed = consumer.committed_offsets(wanted, timeout)?;
    // (topic, partition) -> the end to read up to; the start is the committed offset.
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let mut assign = TopicPartitionList::new();
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let start = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        if start < high {
            ends.insert((e.topic().to_owned(), e.partition()), high);
            assign.add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))?;
        }
    }
    drop(committed);
    let mut chains: HashMap<usize, Chain> = HashMap::new();
    if !ends.is_empty() {
        consumer.assign(&assign)?;
        read_until(&consumer, &mut ends, group, jobs, &mut chains)?;
        consumer.unassign()?;
    }
    drop(assign);
    Ok(chains)
}

/// Reads the assigned partitions until each reached its end (or stayed quiet).
fn read_until(
    consumer: &BaseConsumer,
    ends: &mut HashMap<(String, i32), i64>,
    group: &str,
    jobs: &[ChainJob],
    chains: &mut HashMap<usize, Chain>,
) -> Result<(), KafkaError> {
    let mut last_record = Instant::now();
    while !ends.is_empty() {
        if jobs.iter().all(|j| j.shared.stopping()) {
            return Ok(());
        }
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            if last_record.elapsed() >= QUIET {
                tracing::warn!(left = ?ends, "retry partitions returned nothing for 10 s before their end; reading them back stops there");
                return Ok(());
            }
            continue;
        };
        let msg = msg?;
        last_record = Instant::now();
        let key = (msg.topic().to_owned(), msg.partition());
        if ends.get(&key).is_some_and(|end| msg.offset() + 1 >= *end) {
            ends.remove(&key);
        }
        let record = Record::from_message(&msg);
        drop(msg);
        if let Some((job, main_offset, k)) = blocking(&record, group, jobs) {
            chains
                .entry(job)
                .or_default()
                .entry(k)
                .or_default()
                .insert(main_offset);
        }
    }
    Ok(())
}

/// The job, main-topic offset and key a chain record blocks: a copy of this group's flow of
/// a record from its job's main partition, with a key.
fn blocking(record: &Record, group: &str, jobs: &[ChainJob]) -> Option<(usize, i64, Bytes)> {
    // A copy: the record's key shares its buffer with the value.
    let key = Bytes::copy_from_slice(record.key()?);
    if headers::original_group(record.headers()).is_some_and(|g| g != group.as_bytes()) {
        return None;
    }
    let (p, topic) = (record.partition(), record.topic());
    let job = jobs
        .iter()
        .position(|j| j.partition == p && j.retry_topics.iter().any(|t| &**t == topic))?;
    let original = Original::read(record.headers());
    let from_main =
        original.topic.as_deref() == Some(&*jobs[job].main) && original.partition == Some(p);
    Some((job, original.offset?, key)).filter(|_| from_main)
}
