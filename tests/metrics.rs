//! Metrics against the real broker: a worker with the Prometheus exporter handles a known mix
//! (ok, retried, dead-lettered); the scraped counters equal the mix, and the lag gauges are
//! above 0 while a backlog exists and reach 0 once it is drained.
//!
//! Needs the `prometheus` feature (`scripts/test` runs the suite with `--all-features`).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use redrive::policy::RetryPolicy;
use redrive::{BoxError, CommitPolicy, Record, Route};
use support::*;
use tokio::sync::Semaphore;
use tower::service_fn;

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.") && body.contains(" 200 "),
        "{body}"
    );
    body
}

/// Sum of the samples of `name` whose labels contain every `key="value"` in `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(text, name, labels).iter().sum()
}

/// The samples of `name` whose labels contain every `key="value"` in `labels`.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_the_mix_and_lag_drains_to_zero() {
    init_tracing();
    let port = free_port();
    redrive::metrics::install_prometheus(([127, 0, 0, 1], port).into()).unwrap();
    let bootstrap = bootstrap();
    let topic = unique("metrics");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 2).await;
    produce_n(&bootstrap, &topic, 2, 0, 40).await;

    // Records wait at this gate until the test saw the backlog in the lag gauges.
    let gate = Arc::new(Semaphore::new(0));
    let attempts = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        u32,
    >::new()));
    let handler = {
        let (gate, attempts) = (gate.clone(), attempts.clone());
        service_fn(move |r: Record| {
            let (gate, attempts) = (gate.clone(), attempts.clone());
            async move {
                gate.acquire().await.unwrap().forget();
                let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
                let i: u64 = key.trim_start_matches("key-").parse().unwrap();
                let n = {
                    let mut a = attempts.lock().unwrap();
                    let n = a.entry(key).or_default();
                    *n += 1;
                    *n
                };
                if i % 10 == 0 {
                    // 4 always fail: dead-lettered after 2 attempts.
                    Err::<(), BoxError>("always".into())
                } else if (1..=6).contains(&i) && n == 1 {
                    // 6 fail once, then succeed.
                    Err("once".into())
                } else {
                    Ok(())
                }
            }
        })
    };
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(300));
    let retry_topic = policy.topology(&topic).retry_topics()[0].clone();
    let worker = test_worker(&bootstrap, &group)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(100)))
        .lag_interval(Duration::from_millis(200))
        .route(Route::new(&topic, handler).retry(policy))
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());

    let g = group.as_str();
    eventually(
        Duration::from_secs(60),
        "lag gauges show the backlog",
        || {
            sum(
                &scrape(port),
                "redrive_consumer_lag_records",
                &[("group", g), ("topic", &topic)],
            ) >= 40.0
        },
    )
    .await;
    // While the backlog waits at the gate: the age of the oldest unfinished record is
    // exported for the topic's partitions, above 0 (refreshed every 200 ms) ...
    let mut backlog_secs = Vec::new();
    eventually(Duration::from_secs(10), "lag in seconds above 0", || {
        backlog_secs = series(
            &scrape(port),
            "redrive_consumer_lag_seconds",
            &[("group", g), ("topic", &topic)],
        );
        !backlog_secs.is_empty() && backlog_secs.iter().any(|s| *s > 0.0)
    })
    .await;
    // ... and the lag in records of each partition is what an outside client reads: the
    // high watermark minus the group's committed offset (none yet: the low watermark, 0).
    let text = scrape(port);
    let high = high_watermarks(&bootstrap, &topic, 2);
    let committed_now = committed(&bootstrap, &group, &topic, 2);
    for p in 0..2 {
        let part = p.to_string();
        let labels = [
            ("group", g),
            ("topic", topic.as_str()),
            ("partition", &part),
        ];
        let gauge = series(&text, "redrive_consumer_lag_records", &labels);
        let outside = (high[&p] - committed_now[&p].unwrap_or(0)) as f64;
        assert_eq!(gauge, vec![outside], "partition {p}: lag in records");
    }
    gate.add_permits(1_000);

    eventually(
        Duration::from_secs(60),
        "all records final and lag drained",
        || {
            let t = scrape(port);
            let handled = sum(
                &t,
                "redrive_records_handled_total",
                &[("group", g), ("outcome", "ok")],
            );
            let dead = sum(&t, "redrive_dead_lettered_total", &[("group", g)]);
            let lag: f64 = sum(&t, "redrive_consumer_lag_records", &[("group", g)]);
            let lag_series = series(
                &t,
                "redrive_consumer_lag_records",
                &[("group", g), ("topic", &retry_topic)],
            );
            handled + dead >= 40.0 && lag == 0.0 && !lag_series.is_empty()
        },
    )
    .await;
    // Drained: no unfinished record is older than anything, on every partition.
    eventually(Duration::from_secs(10), "lag in seconds back to 0", || {
        let secs = series(
            &scrape(port),
            "redrive_consumer_lag_seconds",
            &[("group", g), ("topic", &topic)],
        );
        !secs.is_empty() && secs.iter().all(|s| *s == 0.0)
    })
    .await;
    let t = scrape(port);
    println!(
        "{}",
        t.lines()
            .filter(|l| l.contains(g))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let c = |name: &str, labels: &[(&str, &str)]| {
        let mut l = vec![("group", g)];
        l.extend_from_slice(labels);
        sum(&t, name, &l)
    };
    // The mix: i % 10 == 0 always fails (4), i in 1..=6 fails once (6), the rest (30) are ok.
    assert_eq!(
        c("redrive_records_consumed_total", &[("stage", "main")]),
        40.0
    );
    assert_eq!(
        c("redrive_records_consumed_total", &[("stage", "retry")]),
        10.0
    );
    assert_eq!(
        c(
            "redrive_records_handled_total",
            &[("outcome", "ok"), ("attempt", "1")]
        ),
        30.0
    );
    assert_eq!(
        c(
            "redrive_records_handled_total",
            &[("outcome", "ok"), ("attempt", "2")]
        ),
        6.0
    );
    assert_eq!(
        c(
            "redrive_records_handled_total",
            &[("outcome", "retryable_error"), ("attempt", "1")]
        ),
        10.0
    );
    assert_eq!(
        c(
            "redrive_records_handled_total",
            &[("outcome", "retryable_error"), ("attempt", "2")]
        ),
        4.0
    );
    assert_eq!(
        c("redrive_retries_scheduled_total", &[("attempt", "2")]),
        10.0
    );
    assert_eq!(
        c("redrive_dead_lettered_total", &[("reason", "exhausted")]),
        4.0
    );
    assert_eq!(c("redrive_publish_failures_total", &[]), 0.0);
    assert_eq!(c("redrive_retry_delay_error_seconds_count", &[]), 10.0);
    assert!(
        c("redrive_handler_duration_seconds_bucket", &[("le", "+Inf")]) >= 50.0,
        "histograms have buckets"
    );
    assert!(c("redrive_commit_duration_seconds_count", &[]) >= 1.0);
    assert!(c("redrive_partitions_assigned", &[]) >= 4.0);
    assert!(c("redrive_rebalances_total", &[]) >= 1.0);
    assert!(t.contains("redrive_build_info"));
    for line in t
        .lines()
        .filter(|l| l.starts_with("redrive_") && l.contains("partition="))
    {
        assert!(
            line.starts_with("redrive_consumer_lag_"),
            "only lag gauges carry a partition label: {line}"
        );
    }
    assert!(!t.contains("offset="), "no offsets in labels");
    handle.shutdown();
    run.await.unwrap().unwrap();
}
