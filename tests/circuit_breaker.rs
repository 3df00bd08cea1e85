//! The circuit breaker against the real broker: a dependency down for 30 s dead-letters
//! nothing and every record completes after it; poison records still reach the DLT with the
//! breaker closed; a rebalance while it is open loses nothing. The breaker's transitions are
//! read from the Prometheus exporter.
//!
//! What these cannot show: a breaker shared between processes. Each worker has its own; a
//! new member starts probing with its first record (here, in one process, both members'
//! records show in the same metrics).

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redrive::policy::{CircuitBreaker, RetryPolicy};
use redrive::{BoxError, Record, Route, Unavailable, Worker};
use support::*;
use tower::service_fn;

/// The Prometheus recorder of this test process (each test has its own tokio runtime, so
/// the text is rendered in-process rather than served).
fn recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| redrive::metrics::install_prometheus_recorder().unwrap())
}

/// The sum of the samples of `name` whose labels include each of `labels`.
fn scraped(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = recorder().render();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let wanted = n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Keys handled successfully, and the dependency's outage window.
#[derive(Clone)]
struct Dependency {
    down_until: Arc<Mutex<Instant>>,
    ok: Arc<Mutex<BTreeSet<String>>>,
}

impl Dependency {
    fn new() -> Self {
        Dependency {
            down_until: Arc::new(Mutex::new(Instant::now())),
            ok: Arc::default(),
        }
    }

    fn down_for(&self, d: Duration) {
        *self.down_until.lock().unwrap() = Instant::now() + d;
    }

    fn ok_count(&self) -> usize {
        self.ok.lock().unwrap().len()
    }

    /// A handler that calls the dependency; keys ending in `poison` are bad records.
    fn handler(
        &self,
    ) -> impl tower::Service<Record, Response = (), Error = BoxError, Future = impl Send> + Clone
    {
        let dep = self.clone();
        service_fn(move |r: Record| {
            let dep = dep.clone();
            async move {
                let key = String::from_utf8_lossy(r.key().map_or(&[][..], |k| &k[..])).into_owned();
                if key.ends_with("00") && key != "key-0" {
                    return Err::<(), BoxError>(format!("{key} is poison").into());
                }
                if Instant::now() < *dep.down_until.lock().unwrap() {
                    return Err(Unavailable::new("connection refused").into());
                }
                dep.ok.lock().unwrap().insert(key);
                Ok(())
            }
        })
    }
}

/// Outages in a row that open the breaker.
const BREAKER_THRESHOLD: u32 = 5;

fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .attempts(3)
        .exponential(Duration::from_secs(1), 2.0, Duration::from_secs(2))
}

fn worker(bootstrap: &str, group: &str, topic: &str, dep: &Dependency) -> Worker {
    test_worker(bootstrap, group)
        .route(
            Route::new(topic, dep.handler())
                .circuit_breaker(CircuitBreaker::new().consecutive_failures(BREAKER_THRESHOLD))
                .retry(policy()),
        )
        .build()
        .unwrap()
}

/// Records in the dead-letter topic of `topic`.
fn dead_letters(bootstrap: &str, topic: &str, partitions: i32) -> i64 {
    let dlt = policy().topology(topic).dlt().unwrap().to_owned();
    // -1 while the worker has not created it yet.
    (0..partitions)
        .map(|p| watermark(bootstrap, &dlt, p).max(0))
        .sum()
}

async fn assert_committed_to_the_end(bootstrap: &str, group: &str, topic: &str, partitions: i32) {
    let ends = high_watermarks(bootstrap, topic, partitions);
    let want: std::collections::BTreeMap<i32, Option<i64>> =
        ends.iter().map(|(p, o)| (*p, Some(*o))).collect();
    let mut last = Default::default();
    for _ in 0..100 {
        last = committed(bootstrap, group, topic, partitions);
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("committed {last:?}, want the ends {want:?}");
}

async fn breaker_opened(route: &str) {
    let opened = || {
        scraped(
            "redrive_circuit_transitions_total",
            &[("route", route), ("to", "open")],
        )
    };
    eventually(Duration::from_secs(30), "the breaker opened", || {
        opened() >= 1.0
    })
    .await;
}

/// Every clean record completes, the commits reach the end, and nothing was dead-lettered.
async fn all_completed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    dep: &Dependency,
) {
    eventually(
        Duration::from_secs(90),
        "every record completed after the outage",
        || dep.ok_count() == (CLEAN - 1) as usize,
    )
    .await;
    assert_committed_to_the_end(bootstrap, group, topic, partitions).await;
    let dead = dead_letters(bootstrap, topic, partitions);
    assert_eq!(dead, 0, "nothing dead-lettered for the outage");
    // Every breaker starts probing: the first outage opens it, so not even a retry.
    let retried = scraped("redrive_retries_scheduled_total", &[("route", topic)]);
    assert_eq!(retried, 0.0, "no record went down the retry chain");
}

/// No `00` keys among 0..n but key-0: the outage tests have no poison.
const CLEAN: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_down_for_30_s_dead_letters_nothing_and_every_record_completes() {
    init_tracing();
    recorder();
    let bootstrap = bootstrap();
    let (topic, group) = (unique("breaker-outage"), unique("g"));
    create_topic(&bootstrap, &topic, 3).await;
    produce_n(&bootstrap, &topic, 3, 1, CLEAN - 1).await;
    let dep = Dependency::new();
    dep.down_for(Duration::from_secs(30));
    let w = worker(&bootstrap, &group, &topic, &dep);
    let handle = w.handle();
    let run = tokio::spawn(w.run());
    breaker_opened(&topic).await;
    assert_eq!(scraped("redrive_circuit_state", &[("route", &topic)]), 1.0);
    all_completed(&bootstrap, &group, &topic, 3, &dep).await;
    handle.shutdown();
    run.await.unwrap().unwrap();
    let closed = scraped(
        "redrive_circuit_transitions_total",
        &[("route", &topic), ("to", "closed")],
    );
    assert!(
        closed >= 1.0,
        "the breaker closed again ({closed} transitions)"
    );
    assert_eq!(scraped("redrive_circuit_state", &[("route", &topic)]), 0.0);
    assert!(scraped("redrive_circuit_held_records_total", &[("route", &topic)]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_still_reach_the_dlt_and_the_breaker_stays_closed() {
    init_tracing();
    recorder();
    let bootstrap = bootstrap();
    let (topic, group) = (unique("breaker-poison"), unique("g"));
    create_topic(&bootstrap, &topic, 3).await;
    // Keys 100, 200 and 300 are poison: 1 % of the stream.
    produce_n(&bootstrap, &topic, 3, 1, 300).await;
    let dep = Dependency::new();
    let w = worker(&bootstrap, &group, &topic, &dep);
    let handle = w.handle();
    let run = tokio::spawn(w.run());
    eventually(
        Duration::from_secs(60),
        "the poison records were dead-lettered",
        || dead_letters(&bootstrap, &topic, 3) == 3,
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "every good record completed",
        || dep.ok_count() == 297,
    )
    .await;
    assert_committed_to_the_end(&bootstrap, &group, &topic, 3).await;
    handle.shutdown();
    run.await.unwrap().unwrap();
    let opened = scraped(
        "redrive_circuit_transitions_total",
        &[("route", &topic), ("to", "open")],
    );
    assert_eq!(opened, 0.0, "the breaker never opened");
    assert_eq!(scraped("redrive_circuit_state", &[("route", &topic)]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_open_loses_nothing() {
    init_tracing();
    recorder();
    let bootstrap = bootstrap();
    let (topic, group) = (unique("breaker-rebalance"), unique("g"));
    create_topic(&bootstrap, &topic, 4).await;
    produce_n(&bootstrap, &topic, 4, 1, CLEAN - 1).await;
    let dep = Dependency::new();
    dep.down_for(Duration::from_secs(3600));
    let first = worker(&bootstrap, &group, &topic, &dep);
    let h1 = first.handle();
    let r1 = tokio::spawn(first.run());
    breaker_opened(&topic).await;
    // A second member joins while the first one's breaker is open: partitions move with
    // records held on them.
    let second = worker(&bootstrap, &group, &topic, &dep);
    let h2 = second.handle();
    let r2 = tokio::spawn(second.run());
    eventually(
        Duration::from_secs(30),
        "the second member has partitions",
        || !h2.assignment().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    dep.down_for(Duration::ZERO);
    all_completed(&bootstrap, &group, &topic, 4, &dep).await;
    h1.shutdown();
    h2.shutdown();
    r1.await.unwrap().unwrap();
    r2.await.unwrap().unwrap();
}
