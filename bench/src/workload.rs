//! The records both sides read: the topic, its partitions and its values.

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) const PARTITIONS: i32 = 6;

pub(crate) const VALUE_BYTES: usize = 100;

/// `fetch.queue.backoff.ms` of the raw rdkafka consumers: redrive's default, so both sides
/// fetch alike. With librdkafka's 1,000 ms the raw loop's fetcher paused for a second each
/// time its queue passed `queued.min.messages`: the baseline's rounds swung between 290k and
/// 2.1M records/s, and the raw retry loop ran at 180k (BENCHMARKS.md, Tuning).
pub(crate) const FETCH_QUEUE_BACKOFF_MS: &str = "20";

/// Keys of the records [`produce`] writes: record i has key `i % KEYS`.
pub(crate) const KEYS: u64 = 100_000;

pub(crate) async fn produce(bootstrap: &str, topic: &str, n: u64) {
    produce_keyed(bootstrap, topic, n, KEYS).await
}

/// [`produce`] with `keys` distinct keys (record i has key `i % keys`).
pub(crate) async fn produce_keyed(bootstrap: &str, topic: &str, n: u64, keys: u64) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let value = [b'x'; VALUE_BYTES];
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        let key = (i % keys).to_string();
        let f = p.send_result(
            FutureRecord::to(topic)
                .key(&key)
                .payload(&value[..])
                .partition((i % PARTITIONS as u64) as i32),
        );
        pending.push(f.map_err(|(e, _)| e).expect("enqueue"));
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                f.await.unwrap().map_err(|(e, _)| e).expect("produce");
            }
        }
    }
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).expect("produce");
    }
}

/// How many of `n` records `produce` writes to partition `p` (round robin).
pub(crate) fn records_of_partition(n: u64, p: i32) -> u64 {
    n / PARTITIONS as u64 + u64::from((p as u64) < n % PARTITIONS as u64)
}

/// Records of `n` that fail once in the retry scenarios: every 10th offset of each partition.
pub(crate) fn expected_retries(n: u64) -> u64 {
    (0..PARTITIONS)
        .map(|p| records_of_partition(n, p).div_ceil(10))
        .sum()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Counters per partition, each on its own cache line: a partition's records are counted
/// by its own task, so counting costs no contended write.
#[derive(Default)]
pub(crate) struct PerPartition([Padded; PARTITIONS as usize]);

#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Padded(AtomicU64);

impl PerPartition {
    /// Counts one record of partition `p`; returns that partition's count.
    pub(crate) fn add(&self, p: i32) -> u64 {
        self.0[p as usize].0.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn sum(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}
