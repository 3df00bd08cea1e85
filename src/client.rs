//! The librdkafka configurations of the clients a worker creates, derived in one place from
//! one set of properties: the consumer's, the producer's (retry and dead-letter copies,
//! outputs) and the admin client's (topic creation, lag). Tools built on redrive (the
//! sidecar's dead-letter reader and replay) derive theirs here too, so a property means the
//! same everywhere.
//!
//! The properties are librdkafka's, as given to
//! [`WorkerBuilder::property`](crate::WorkerBuilder::property): consumer properties as they
//! are, producer properties prefixed with `producer.`, and connection and security settings
//! (`bootstrap.servers`, `security.protocol`, `sasl.*`, `ssl.*`, ...) shared by all three.
//!
//! ```
//! use std::collections::BTreeMap;
//! use redrive::client;
//!
//! let props = BTreeMap::from([
//!     ("bootstrap.servers".to_string(), "127.0.0.1:9092".to_string()),
//!     ("group.id".to_string(), "billing".to_string()),
//!     ("producer.linger.ms".to_string(), "5".to_string()),
//! ]);
//! let producer = client::producer_config(&props);
//! assert_eq!(producer.get("linger.ms"), Some("5"));
//! assert_eq!(producer.get("group.id"), None);
//! assert_eq!(client::consumer_config(&props).get("enable.auto.commit"), Some("false"));
//! ```

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;

/// The `fetch.wait.max.ms` redrive sets unless a property sets it (librdkafka's default is
/// 500). librdkafka keeps one fetch in flight per broker, and the broker holds a fetch whose
/// partitions have no new data for up to this long: with idle retry topics next to a busy
/// main topic (or partitions that caught up next to partitions with a backlog), every fetch
/// that happens to carry only the idle partitions holds back the busy ones, left out of it
/// while their queues were full, for that long. The cost of a short wait is an idle worker's
/// fetch rate: one request per broker every 25 ms.
pub const DEFAULT_FETCH_WAIT_MS: u32 = 25;

/// The `compression.type` of the worker's producer unless a `producer.` property sets it
/// (librdkafka's default is `none`). A retry copy carries 14 headers whose names and most
/// values repeat from copy to copy, so its batches compress well: against `none`, with 10 %
/// of records failing, the broker used ~20 % less CPU and the main topic ran ~7 % faster
/// (BENCHMARKS.md, Tuning). Every Kafka client reads lz4.
pub const DEFAULT_PRODUCER_COMPRESSION: &str = "lz4";

/// The `compression.type` of a worker's producer whose every copy carries the compact header
/// and which writes no output records, unless a `producer.` property sets it. One small header
/// leaves lz4 less to gain (~8 % of the compact retry path's throughput), while a consumer
/// holding pending retries keeps each fetched message set decompressed: with 100,000 retries
/// pending the compact profile peaked at 47-68 MiB uncompressed against 71-72 MiB with lz4
/// (BENCHMARKS.md, Tuning). Bounded memory is the default; lz4 is one property away.
pub const COMPACT_PRODUCER_COMPRESSION: &str = "none";

/// `queued.min.messages` of [`consumer_config`]: records librdkafka prefetches per partition
/// at most (with `queued.max.messages.kbytes=1024`, whichever is reached first).
pub const DEFAULT_PARTITION_QUEUE: usize = 100_000;

/// Properties redrive owns: the commit rule cannot hold if librdkafka commits by itself.
pub const OWNED_PROPERTIES: [&str; 2] = ["enable.auto.commit", "enable.auto.offset.store"];

/// What the producer of retry and dead-letter copies must keep: a copy counts once the broker
/// has it durably.
pub const DURABILITY: [(&str, &str); 2] = [("acks", "all"), ("enable.idempotence", "true")];

/// Properties the producer and the admin client inherit from the consumer's: connection and
/// security settings. Anything else reaches the producer through `producer.`-prefixed keys.
const SHARED_PREFIXES: [&str; 14] = [
    "bootstrap.servers",
    "security.protocol",
    "sasl.",
    "ssl.",
    "client.id",
    "broker.",
    "socket.",
    "api.version",
    "metadata.",
    "topic.metadata.",
    "reconnect.",
    "client.dns.lookup",
    "debug",
    "log_level",
];

/// True for a connection or security property, which every client of a worker shares.
pub fn is_shared(key: &str) -> bool {
    SHARED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The consumer's configuration: redrive's defaults, then the properties (without the
/// `producer.` ones), then the properties redrive owns ([`OWNED_PROPERTIES`] off).
pub fn consumer_config(props: &BTreeMap<String, String>) -> ClientConfig {
    consumer_config_with_queue(props, DEFAULT_PARTITION_QUEUE)
}

/// [`consumer_config`] with `queued.min.messages` set to `partition_queue`.
pub fn consumer_config_with_queue(
    props: &BTreeMap<String, String>,
    partition_queue: usize,
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("auto.offset.reset", "earliest");
    // Outputs of transactional pipelines count only once committed (librdkafka's default,
    // stated so a reader of the config sees it).
    cfg.set("isolation.level", "read_committed");
    // Each partition has its own queue: these bound the prefetch per partition. 1 MiB
    // keeps up with the poll thread; more made librdkafka's broker thread fault in fresh
    // heap for its fetches (37k page faults per million records at 4 MiB, 13k at 1 MiB),
    // for no more throughput (BENCHMARKS.md, Tuning).
    cfg.set("queued.min.messages", partition_queue.to_string());
    cfg.set("queued.max.messages.kbytes", "1024");
    // A partition whose queue reached those bounds is fetched again only after this back-
    // off (librdkafka's default is 1 s): short, so a drained queue refills without a stall.
    cfg.set("fetch.queue.backoff.ms", "20");
    cfg.set("fetch.wait.max.ms", DEFAULT_FETCH_WAIT_MS.to_string());
    for (k, v) in props {
        if !k.starts_with("producer.") {
            cfg.set(k, v);
        }
    }
    for key in OWNED_PROPERTIES {
        cfg.set(key, "false");
    }
    cfg
}

/// The producer's configuration: [`DEFAULT_PRODUCER_COMPRESSION`], the shared properties,
/// then the `producer.`-prefixed ones without their prefix.
pub fn producer_config(props: &BTreeMap<String, String>) -> ClientConfig {
    producer_config_compressing(props, DEFAULT_PRODUCER_COMPRESSION)
}

/// [`producer_config`] with `compression` as the `compression.type` unless a `producer.`
/// property sets it (or its alias `compression.codec`).
pub fn producer_config_compressing(
    props: &BTreeMap<String, String>,
    compression: &str,
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    let named = ["producer.compression.type", "producer.compression.codec"];
    if !named.iter().any(|k| props.contains_key(*k)) {
        cfg.set("compression.type", compression);
    }
    for (k, v) in props {
        if is_shared(k) {
            cfg.set(k, v);
        } else if let Some(k) = k.strip_prefix("producer.") {
            cfg.set(k, v);
        }
    }
    cfg
}

/// The admin client's configuration: the shared properties only.
pub fn admin_config(props: &BTreeMap<String, String>) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    for (k, v) in props.iter().filter(|(k, _)| is_shared(k)) {
        cfg.set(k, v);
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_consumer_config_has_redrives_defaults_the_applications_overrides_and_owned_keys() {
        let defaults = consumer_config(&BTreeMap::new());
        assert_eq!(defaults.get("fetch.wait.max.ms"), Some("25"));
        assert_eq!(defaults.get("fetch.queue.backoff.ms"), Some("20"));
        assert_eq!(defaults.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(defaults.get("queued.min.messages"), Some("100000"));

        let set = consumer_config_with_queue(
            &props(&[
                ("fetch.wait.max.ms", "500"),
                ("enable.auto.commit", "true"),
                ("producer.linger.ms", "7"),
            ]),
            7,
        );
        assert_eq!(set.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(set.get("queued.min.messages"), Some("7"));
        // Owned: the commit rule needs them off whatever the application says.
        assert_eq!(set.get("enable.auto.commit"), Some("false"));
        assert_eq!(set.get("enable.auto.offset.store"), Some("false"));
        // Producer properties are not the consumer's.
        assert_eq!(set.get("linger.ms"), None);
        assert_eq!(set.get("producer.linger.ms"), None);
    }

    #[test]
    fn the_producer_compresses_with_lz4_unless_the_application_says_otherwise() {
        let p = props(&[
            ("bootstrap.servers", "127.0.0.1:9"),
            ("group.id", "g"),
            ("session.timeout.ms", "6000"),
        ]);
        assert_eq!(producer_config(&p).get("compression.type"), Some("lz4"));
        assert_eq!(
            producer_config(&p).get("bootstrap.servers"),
            Some("127.0.0.1:9")
        );
        // Consumer settings stay the consumer's.
        assert_eq!(producer_config(&p).get("group.id"), None);
        assert_eq!(producer_config(&p).get("session.timeout.ms"), None);
        // Not the admin client's: it has no such property.
        assert_eq!(admin_config(&p).get("compression.type"), None);
        assert_eq!(
            admin_config(&p).get("bootstrap.servers"),
            Some("127.0.0.1:9")
        );
        let p = props(&[("producer.compression.type", "none")]);
        assert_eq!(producer_config(&p).get("compression.type"), Some("none"));
        // The alias replaces the default instead of racing it.
        let p = props(&[("producer.compression.codec", "gzip")]);
        let cfg = producer_config_compressing(&p, COMPACT_PRODUCER_COMPRESSION);
        assert_eq!(cfg.get("compression.type"), None);
        assert_eq!(cfg.get("compression.codec"), Some("gzip"));
        let cfg = producer_config_compressing(&props(&[]), COMPACT_PRODUCER_COMPRESSION);
        assert_eq!(cfg.get("compression.type"), Some("none"));
    }
}
