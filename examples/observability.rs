//! A worker under a steady mixed load with the Prometheus exporter: what the Grafana
//! dashboard in `grafana/` is built for, and what `scripts/dashboard-check` scrapes.
//!
//! ```text
//! cargo run --example observability --features prometheus -- [SECONDS]
//! curl -s 127.0.0.1:9464/metrics | grep redrive_
//! ```
//!
//! Runs on librdkafka's in-process mock cluster unless `KAFKA_BOOTSTRAP_SERVERS` is set;
//! `REDRIVE_METRICS_ADDR` (default `127.0.0.1:9464`) is where `/metrics` is served. About 200
//! records/s: 10 % fail once and are retried, 2 % always fail and end in the DLT, and the
//! payment gateway is down for 3 s of every 20 (from the 5th second): the route's circuit
//! breaker opens, pauses the route, probes, and closes once the gateway answers again.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redrive::policy::{CircuitBreaker, RetryPolicy};
use redrive::{BoxError, CommitPolicy, Record, Route, Unavailable, Worker};
use tower::service_fn;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(60), |s| s.parse())?;
    let addr = std::env::var("REDRIVE_METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9464".into());
    redrive::metrics::install_prometheus(addr.parse()?)?;
    println!("serving /metrics on http://{addr}/metrics for {seconds} s");

    let mut _mock = None;
    let bootstrap = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(b) if !b.is_empty() => b,
        _ => {
            let m = MockCluster::new(1)?;
            let b = m.bootstrap_servers();
            _mock = Some(m);
            b
        }
    };
    let topic = format!("observability-orders-{}", std::process::id());
    let policy = RetryPolicy::new().attempts(3).exponential(
        Duration::from_millis(500),
        2.0,
        Duration::from_secs(2),
    );
    if let Some(m) = &_mock {
        m.create_topic(&topic, 3, 1)?;
        for t in policy.topology(&topic).derived_topics() {
            m.create_topic(t, 3, 1)?;
        }
    } else {
        let admin: rdkafka::admin::AdminClient<_> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()?;
        let _ = admin
            .create_topics(
                &[rdkafka::admin::NewTopic::new(
                    &topic,
                    3,
                    rdkafka::admin::TopicReplication::Fixed(1),
                )],
                &rdkafka::admin::AdminOptions::new(),
            )
            .await?;
    }

    let handled = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handler = {
        let handled = handled.clone();
        service_fn(move |r: Record| {
            let handled = handled.clone();
            async move {
                if (5..8).contains(&(started.elapsed().as_secs() % 20)) {
                    return Err(Unavailable::new("payment gateway: connection refused").into());
                }
                let i: u64 = std::str::from_utf8(r.key().map_or(&b"0"[..], |k| &k[..]))?.parse()?;
                let attempt = redrive::headers::attempt_of(r.headers());
                tokio::time::sleep(Duration::from_micros(200 + (i % 7) * 300)).await;
                if i % 50 == 7 {
                    return Err::<(), BoxError>(format!("order {i}: card declined").into());
                }
                if i % 10 == 3 && attempt == 1 {
                    return Err(format!("order {i}: gateway timeout").into());
                }
                handled.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
    };
    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id("observability")
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_interval(Duration::from_secs(1)))
        .lag_interval(Duration::from_secs(1))
        .route(
            Route::new(&topic, handler)
                .circuit_breaker(CircuitBreaker::new())
                .retry(policy)
                .dlt_handler(service_fn(|_r: Record| async { Ok::<_, BoxError>(()) })),
        )
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run_until(redrive::shutdown_signal()));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) && !handle.is_shutting_down() {
        for _ in 0..20 {
            let key = i.to_string();
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload("{}"),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(e, _)| e)?;
            i += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if i % 1000 == 0 {
            println!(
                "progress: produced {i}, handled ok {}",
                handled.load(Ordering::Relaxed)
            );
        }
    }
    handle.shutdown();
    running.await??;
    println!(
        "summary: produced={i} handled_ok={}",
        handled.load(Ordering::Relaxed)
    );
    Ok(())
}
