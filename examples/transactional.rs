//! A transactional pipeline: `orders` -> `orders-enriched`, exactly once.
//!
//! Each batch's enriched orders, the retry copies of orders that failed, and the input offsets
//! commit in one Kafka transaction. Every 7th order fails its first attempt and is enriched
//! from the retry topic a moment later; the first commit is made to fail once (on the mock
//! cluster), so one batch is aborted and handled again, and still every order is committed
//! exactly once.
//!
//! ```text
//! cargo run --example transactional
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run --example transactional
//! ```
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;
use redrive::publish::Outgoing;
use redrive::transaction::Transactional;
use redrive::{policy::RetryPolicy, BoxError, Record, Route, Worker};
use tower::service_fn;

const ORDERS: u64 = 500;
const PARTITIONS: i32 = 2;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let run_id = std::process::id();
    let (input, output) = (
        format!("orders-{run_id}"),
        format!("orders-enriched-{run_id}"),
    );
    let policy = RetryPolicy::new()
        .attempts(3)
        .fixed(Duration::from_millis(300));
    let topics: Vec<String> = [input.clone(), output.clone()]
        .into_iter()
        .chain(policy.topology(&input).derived_topics().map(str::to_owned))
        .collect();

    let mut mock = None;
    let bootstrap = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(b) if !b.is_empty() => {
            println!("using the Kafka cluster at {b}");
            let admin: AdminClient<_> =
                ClientConfig::new().set("bootstrap.servers", &b).create()?;
            let new: Vec<NewTopic> = topics
                .iter()
                .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(-1)))
                .collect();
            admin.create_topics(&new, &AdminOptions::new()).await?;
            b
        }
        _ => {
            println!("using librdkafka's in-process mock cluster (set KAFKA_BOOTSTRAP_SERVERS for a real one)");
            let cluster = MockCluster::new(3)?;
            for t in &topics {
                cluster.create_topic(t, PARTITIONS, 1)?;
            }
            // The first commit fails (an abortable error): that batch is handled again.
            cluster.request_errors(
                RDKafkaApiKey::EndTxn,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID],
            );
            let servers = cluster.bootstrap_servers();
            mock = Some(cluster);
            servers
        }
    };

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    for i in 0..ORDERS {
        let (key, value) = (
            format!("order-{i}"),
            format!("{{\"id\":{i},\"amount\":{}}}", i * 3),
        );
        producer
            .send(
                FutureRecord::to(&input).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    println!("produced {ORDERS} orders to {input}");

    let calls = Arc::new(AtomicU64::new(0));
    let calls2 = calls.clone();
    let out_topic = output.clone();
    let enrich = service_fn(move |r: Record| {
        let (calls, out_topic) = (calls2.clone(), out_topic.clone());
        async move {
            calls.fetch_add(1, Ordering::Relaxed);
            let key = r.key().cloned().unwrap_or_default();
            let id: u64 = String::from_utf8_lossy(&key)
                .trim_start_matches("order-")
                .parse()?;
            if id % 7 == 0 && redrive::headers::attempt_of(r.headers()) == 1 {
                return Err::<Outgoing, BoxError>("pricing service busy".into());
            }
            let value = String::from_utf8_lossy(r.value().map_or(&[][..], |v| &v[..]))
                .replace('}', ",\"currency\":\"EUR\",\"enriched\":true}");
            Ok(Outgoing::to(out_topic).key(key).value(value))
        }
    });
    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(format!("enricher-{run_id}"))
        .property("session.timeout.ms", "6000")
        .transactional(Transactional::new(format!("enricher-{run_id}-0")).batch_size(100))
        .route(Route::new(&input, enrich).retry(policy))
        .build()?;
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());

    let started = Instant::now();
    let expected = ORDERS + ORDERS.div_ceil(7);
    loop {
        let stats = handle.transactions().expect("a transactional worker");
        if stats.records_committed >= expected {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("only {stats:?} after 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.shutdown();
    run.await??;
    let stats = handle.transactions().expect("a transactional worker");
    println!(
        "committed {} transactions ({} aborted and redone): {} input records ({ORDERS} orders + {} from the retry topic), handler calls {}",
        stats.committed,
        stats.aborted,
        stats.records_committed,
        stats.records_committed - ORDERS,
        calls.load(Ordering::Relaxed),
    );
    let extra = stats.records_committed - expected;
    if extra > 0 && mock.is_some() {
        println!(
            "  {extra} retry-topic records beyond the {} retried orders: copies written by the aborted batch, which the mock cluster (unlike Kafka) does not hide from read_committed readers",
            ORDERS.div_ceil(7)
        );
    }
    for ((topic, partition), position) in &stats.offsets {
        println!("  committed position {topic}/{partition} = {position}");
    }
    println!(
        "read {output} with isolation.level=read_committed to see each enriched order exactly once"
    );
    // Clients first, then the cluster they talk to.
    drop(producer);
    drop(mock);
    Ok(())
}
