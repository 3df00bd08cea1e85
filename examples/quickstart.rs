//! The quickstart: produce a few hundred orders, handle them with a worker whose failures go
//! through retry topics with exponential back-off to a dead-letter topic, print a summary.
//!
//! Every 10th order fails once and succeeds on its retry; every 25th always fails and ends in
//! `...-dlt`, where a dead-letter handler reads it back with the error in its headers.
//!
//! Runs on librdkafka's in-process mock cluster unless `KAFKA_BOOTSTRAP_SERVERS` names a
//! real cluster:
//!
//! ```text
//! cargo run --example quickstart
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run --example quickstart
//! ```
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redrive::headers::Original;
use redrive::{policy::RetryPolicy, BoxError, CommitPolicy, Record, Route, Worker};
use tower::service_fn;

const RECORDS: u64 = 300;
const PARTITIONS: i32 = 3;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
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

    // 3 attempts: the first delivery, then retries after 200 ms and 400 ms, then the DLT.
    let policy = RetryPolicy::new().attempts(3).exponential(
        Duration::from_millis(200),
        2.0,
        Duration::from_secs(1),
    );
    let topology = policy.topology(&topic);
    print!("topology:\n{topology}");

    match &mock {
        // The mock cluster does not serve CreateTopics; it has its own call. On a real cluster
        // the worker creates the retry and dead-letter topics itself.
        Some(mock) => {
            mock.create_topic(&topic, PARTITIONS, 1)?;
            for t in topology.derived_topics() {
                mock.create_topic(t, PARTITIONS, 1)?;
            }
        }
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

    // Per order: how many times the handler saw it, and whether it succeeded.
    let seen: Arc<Mutex<HashMap<u64, (u32, bool)>>> = Arc::default();
    let dead_lettered = Arc::new(AtomicU64::new(0));
    let handler = {
        let seen = seen.clone();
        service_fn(move |record: Record| {
            let seen = seen.clone();
            async move {
                let order = order_number(&record)?;
                let calls = {
                    let mut seen = seen.lock().unwrap();
                    let entry = seen.entry(order).or_default();
                    entry.0 += 1;
                    entry.0
                };
                if order % 25 == 7 {
                    return Err(
                        format!("order {order}: card declined by the payment gateway").into(),
                    );
                }
                if order % 10 == 3 && calls == 1 {
                    return Err(format!("order {order}: payment gateway timed out").into());
                }
                seen.lock().unwrap().entry(order).or_default().1 = true;
                Ok::<_, BoxError>(())
            }
        })
    };
    let dlt_handler = {
        let dead_lettered = dead_lettered.clone();
        service_fn(move |record: Record| {
            let dead_lettered = dead_lettered.clone();
            async move {
                if dead_lettered.fetch_add(1, Ordering::Relaxed) == 0 {
                    let original = Original::read(record.headers());
                    println!(
                        "first dead letter: {} from {}:{}@{} after {} attempts: {}",
                        String::from_utf8_lossy(record.key().map_or(&b""[..], |k| &k[..])),
                        original.topic.unwrap_or_default(),
                        original.partition.unwrap_or(-1),
                        original.offset.unwrap_or(-1),
                        redrive::headers::attempt_of(record.headers()) - 1,
                        original.exception_message.unwrap_or_default(),
                    );
                }
                Ok::<_, BoxError>(())
            }
        })
    };

    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_every(100))
        .route(
            Route::new(&topic, handler)
                .retry(policy)
                .dlt_handler(dlt_handler),
        )
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run_until(redrive::shutdown_signal()));

    let started = Instant::now();
    let mut last = (usize::MAX, u64::MAX);
    let done =
        |seen: &HashMap<u64, (u32, bool)>| seen.values().filter(|(_, ok)| *ok).count() as u64;
    loop {
        let (consumed, ok) = {
            let seen = seen.lock().unwrap();
            (seen.len(), done(&seen))
        };
        let dead = dead_lettered.load(Ordering::Relaxed);
        if ok + dead >= RECORDS {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!("timed out waiting for the records");
            break;
        }
        if (consumed, dead) != last {
            println!("progress: consumed {consumed}/{RECORDS}, ok {ok}, dead-lettered {dead}");
            last = (consumed, dead);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    handle.shutdown();
    running.await??;

    let seen = seen.lock().unwrap();
    let consumed = seen.len() as u64;
    let ok = done(&seen);
    let retried = seen
        .values()
        .filter(|(calls, ok)| *ok && *calls > 1)
        .count();
    let dead_lettered = dead_lettered.load(Ordering::Relaxed);
    let lost = RECORDS.saturating_sub(ok + dead_lettered);
    println!("summary: consumed={consumed} ok={ok} retried={retried} dead_lettered={dead_lettered} lost={lost}");
    if lost > 0 {
        return Err(format!("{lost} records were not handled").into());
    }
    Ok(())
}

fn order_number(record: &Record) -> Result<u64, BoxError> {
    let key = record.key().ok_or("an order without a key")?;
    let key = std::str::from_utf8(key)?;
    Ok(key.trim_start_matches("order-").parse()?)
}
