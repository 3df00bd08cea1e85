//! The quickstart: produce a few hundred orders, handle them with a worker, print a summary.
//!
//! Runs on librdkafka's in-process mock cluster unless `KAFKA_BOOTSTRAP_SERVERS` names a
//! real cluster:
//!
//! ```text
//! cargo run --example quickstart
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run --example quickstart
//! ```
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redrive::{BoxError, CommitPolicy, Record, Route, Worker};
use tower::service_fn;

const RECORDS: u64 = 300;
const PARTITIONS: i32 = 3;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,redrive=info".into()),
        )
        .init();

    // Keep the mock cluster alive for the whole run.
    let mut mock = None;
    let bootstrap = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(b) if !b.is_empty() => {
            println!("using the Kafka cluster at {b}");
            b
        }
        _ => {
            let cluster = MockCluster::new(1)?;
            println!("using librdkafka's in-process mock cluster (set KAFKA_BOOTSTRAP_SERVERS for a real one)");
            let servers = cluster.bootstrap_servers();
            mock = Some(cluster);
            servers
        }
    };
    let run_id = std::process::id();
    let topic = format!("quickstart-orders-{run_id}");
    let group = format!("quickstart-{run_id}");

    match &mock {
        // The mock cluster does not serve CreateTopics; it has its own call.
        Some(mock) => mock.create_topic(&topic, PARTITIONS, 1)?,
        None => {
            let admin: AdminClient<_> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()?;
            for res in admin
                .create_topics(
                    &[NewTopic::new(
                        &topic,
                        PARTITIONS,
                        TopicReplication::Fixed(1),
                    )],
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                )
                .await?
            {
                res.map_err(|(t, e)| format!("cannot create topic {t}: {e}"))?;
            }
        }
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    for i in 0..RECORDS {
        let key = format!("order-{i}");
        let value = format!(r#"{{"order":{i},"amount":{}}}"#, 10 + i % 90);
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    println!("produced {RECORDS} orders to {topic} ({PARTITIONS} partitions)");

    let consumed = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let handler = {
        let (consumed, ok) = (consumed.clone(), ok.clone());
        service_fn(move |record: Record| {
            let (consumed, ok) = (consumed.clone(), ok.clone());
            async move {
                consumed.fetch_add(1, Ordering::Relaxed);
                // A real handler would bill the order here.
                let _order = record.value().ok_or("tombstone")?;
                ok.fetch_add(1, Ordering::Relaxed);
                Ok::<_, BoxError>(())
            }
        })
    };

    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_every(100))
        .route(Route::new(&topic, handler))
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run_until(redrive::shutdown_signal()));

    let started = Instant::now();
    let mut last = u64::MAX;
    while ok.load(Ordering::Relaxed) < RECORDS {
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!("timed out waiting for the records");
            break;
        }
        let n = consumed.load(Ordering::Relaxed);
        if n != last {
            println!("progress: consumed {n}/{RECORDS}");
            last = n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    handle.shutdown();
    running.await??;

    let consumed = consumed.load(Ordering::Relaxed);
    let ok = ok.load(Ordering::Relaxed);
    let lost = RECORDS.saturating_sub(ok);
    println!("summary: consumed={consumed} ok={ok} retried=0 dead_lettered=0 lost={lost}");
    if lost > 0 {
        return Err(format!("{lost} records were not handled").into());
    }
    Ok(())
}
