//! Keeping each key in order while a record retries: 12 accounts, 10 balance updates each;
//! some updates fail once or twice and go through the retry topics. The same records run
//! twice, without key ordering and with it, and the example prints how many updates were
//! applied before an earlier update of their account.
//!
//! Runs on librdkafka's in-process mock cluster unless `KAFKA_BOOTSTRAP_SERVERS` names a
//! real cluster:
//!
//! ```text
//! cargo run --example key_ordering
//! ```
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redrive::{policy::RetryPolicy, BoxError, Record, Route, Worker};
use tower::service_fn;

const ACCOUNTS: u32 = 12;
const UPDATES: u32 = 10;
const PARTITIONS: i32 = 2;

/// How many first attempts of an update fail: two updates in ten, once or twice.
fn failures(account: u32, update: u32) -> u32 {
    match (account * 7 + update * 3) % 10 {
        0 => 1,
        5 => 2,
        _ => 0,
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let mut mock = None;
    let bootstrap = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(b) if !b.is_empty() => b,
        _ => {
            let cluster = MockCluster::new(1)?;
            let servers = cluster.bootstrap_servers();
            mock = Some(cluster);
            servers
        }
    };
    let mut out_of_order = Vec::new();
    for ordered in [false, true] {
        let topic = format!("accounts-{}-{ordered}", std::process::id());
        let policy = RetryPolicy::new()
            .attempts(4)
            .fixed(Duration::from_millis(300));
        if let Some(mock) = &mock {
            // The mock cluster has its own call for topics; a real cluster gets them from the
            // worker (the main topic is created here by producing to it).
            mock.create_topic(&topic, PARTITIONS, 1)?;
            for t in policy.topology(&topic).derived_topics() {
                mock.create_topic(t, PARTITIONS, 1)?;
            }
        }
        produce(&bootstrap, &topic).await?;
        let n = run(&bootstrap, &topic, policy, ordered).await?;
        println!(
            "key ordering {}: {n} of {} updates applied before an earlier update of their account",
            if ordered { "on " } else { "off" },
            ACCOUNTS * UPDATES
        );
        out_of_order.push(n);
    }
    if out_of_order[1] != 0 {
        return Err("with key ordering on, an update overtook an earlier one".into());
    }
    Ok(())
}

/// Produces every account's updates in order, each account to one partition.
async fn produce(bootstrap: &str, topic: &str) -> Result<(), BoxError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    for update in 0..UPDATES {
        for account in 0..ACCOUNTS {
            let (key, value) = (format!("account-{account}"), update.to_string());
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&value)
                .partition((account % PARTITIONS as u32) as i32);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)?;
        }
    }
    Ok(())
}

/// Runs a worker until every update was applied; returns how many were applied before an
/// earlier update of their account.
async fn run(
    bootstrap: &str,
    topic: &str,
    policy: RetryPolicy,
    ordered: bool,
) -> Result<u32, BoxError> {
    // Per account: the updates in the order applied.
    let applied: Arc<Mutex<HashMap<u32, Vec<u32>>>> = Arc::default();
    let a2 = applied.clone();
    let handler = service_fn(move |r: Record| {
        let applied = a2.clone();
        async move {
            let key = String::from_utf8_lossy(r.key().map_or(&b""[..], |k| &k[..])).into_owned();
            let account: u32 = key.trim_start_matches("account-").parse()?;
            let update: u32 =
                String::from_utf8_lossy(r.value().map_or(&b""[..], |v| &v[..])).parse()?;
            if redrive::headers::attempt_of(r.headers()) <= failures(account, update) {
                return Err::<(), BoxError>(format!("{key} update {update}: ledger busy").into());
            }
            applied
                .lock()
                .unwrap()
                .entry(account)
                .or_default()
                .push(update);
            Ok(())
        }
    });
    let worker = Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(format!("{topic}-group"))
        .property("session.timeout.ms", "6000")
        .route(
            Route::new(topic, handler)
                .retry(policy)
                .key_ordering(ordered),
        )
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let started = Instant::now();
    let total = |m: &HashMap<u32, Vec<u32>>| m.values().map(Vec::len).sum::<usize>();
    while total(&applied.lock().unwrap()) < (ACCOUNTS * UPDATES) as usize {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("timed out waiting for the updates".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.shutdown();
    running.await??;
    let applied = applied.lock().unwrap();
    let early = applied
        .values()
        .map(|updates| {
            let before_earlier =
                |(i, u): &(usize, &u32)| (0..**u).any(|e| !updates[..*i].contains(&e));
            updates.iter().enumerate().filter(before_earlier).count() as u32
        })
        .sum();
    Ok(early)
}
