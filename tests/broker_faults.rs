//! Broker faults on librdkafka's mock cluster (docs/design.md, Test tiers: tier 2): failing OffsetCommit and
//! Fetch requests, a broker down for 10 s, a 500 ms round trip. The worker recovers without a
//! restart, loses nothing, and never commits past an unfinished record.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;
use redrive::{policy::RetryPolicy, BoxError, CommitPolicy, Record, Route, Worker, WorkerHandle};
use tower::service_fn;

mod support;

use support::{
    eventually, init_tracing, mock_cluster, produce_n, recording, test_worker, Mock, Seen,
};

const PARTITIONS: i32 = 2;

/// Committed offsets per partition; all None while the coordinator does not answer.
fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<Option<i64>> {
    support::try_committed(bootstrap, group, topic, PARTITIONS).map_or_else(
        |_| vec![None; PARTITIONS as usize],
        |m| m.into_values().collect(),
    )
}

struct Run {
    mock: Mock,
    bootstrap: String,
    topic: String,
    group: String,
    /// The key of every record handled ok (main-topic or retry copy), in order.
    seen: Arc<Mutex<Vec<String>>>,
    commit_errors: Arc<AtomicU64>,
    handle: WorkerHandle,
    run: tokio::task::JoinHandle<Result<(), redrive::Error>>,
}

/// The metrics of this test binary, from the same Prometheus recorder the library installs.
fn metrics_text() -> String {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| redrive::metrics::install_prometheus_recorder().unwrap())
        .render()
}

/// The value of `name{..group="group"..}` in the exposition text, summed over label sets.
fn metric(name: &str, group: &str) -> f64 {
    let needle = format!("group=\"{group}\"");
    metrics_text()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `start`, with a group named after the test and faults armed before the worker joins.
async fn start_with(n: i64, name: &str, before: impl FnOnce(&Mock)) -> Run {
    support::init_tracing();
    let _ = metrics_text();
    let (topic, group) = ("faults".to_owned(), format!("{name}-group"));
    let policy = RetryPolicy::new()
        .attempts(3)
        .fixed(Duration::from_millis(200));
    let mock = mock_cluster(&topic, PARTITIONS, Some(&policy));
    let bootstrap = mock.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for i in 0..n {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&format!("k{i}"))
                    .payload("v")
                    .partition((i % PARTITIONS as i64) as i32),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s2 = seen.clone();
    let main_topic = topic.clone();
    let handler = service_fn(move |r: Record| {
        let s2 = s2.clone();
        let main = r.topic() == main_topic;
        async move {
            if main && r.offset() % 10 == 4 {
                return Err::<(), BoxError>("fails once".into());
            }
            let key = String::from_utf8_lossy(r.key().map_or(&b""[..], |k| &k[..])).into_owned();
            s2.lock().unwrap().push(key);
            Ok(())
        }
    });
    before(&mock);
    let commit_errors = Arc::new(AtomicU64::new(0));
    let ce = commit_errors.clone();
    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(100)))
        .on_commit_error(move |_, _| {
            ce.fetch_add(1, Ordering::Relaxed);
        })
        .route(Route::new(&topic, handler).retry(policy))
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    Run {
        mock,
        bootstrap,
        topic,
        group,
        seen,
        commit_errors,
        handle,
        run,
    }
}

impl Run {
    /// Every record handled ok (main-topic successes plus retried ones).
    fn handled(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    async fn wait_all(&self, n: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while (self.handled() as i64) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records handled",
                self.handled()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Commits reach the end of the main topic while the worker runs, then a clean stop.
    async fn finish(self, n: i64) {
        let per = n / PARTITIONS as i64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = committed(&self.bootstrap, &self.group, &self.topic);
            if c.iter().all(|o| *o == Some(per)) {
                break;
            }
            assert!(Instant::now() < deadline, "commits stuck at {c:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.handle.shutdown();
        self.run.await.unwrap().unwrap();
        // The oracle is the producer's own keys: every record handled ok at least once (the
        // 1 in 10 failing once, through its retry copy), none unknown.
        let seen: BTreeSet<String> = self.seen.lock().unwrap().iter().cloned().collect();
        let produced: BTreeSet<String> = (0..n).map(|i| format!("k{i}")).collect();
        let missing: Vec<_> = produced.difference(&seen).collect();
        let unknown: Vec<_> = seen.difference(&produced).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "handled ok: {} of {n}; missing {missing:?}, unknown {unknown:?}",
            seen.len()
        );
        drop(self.mock);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_offset_commits_are_reported_and_resent() {
    let n = 200;
    let r = start_with(n, "offset-commit", |_| {}).await;
    r.mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 6],
    );
    r.wait_all(n, Duration::from_secs(60)).await;
    let errors = r.commit_errors.load(Ordering::Relaxed);
    let group = r.group.clone();
    r.finish(n).await;
    assert!(
        errors >= 1,
        "the commit-error callback saw the injected failures"
    );
    let counted = metric("redrive_commit_failures_total", &group);
    assert!(
        counted >= errors as f64,
        "redrive_commit_failures_total = {counted}, callback saw {errors}"
    );
}

/// Every asynchronous commit fails (OffsetCommit answers REBALANCE_IN_PROGRESS) until the
/// worker is shut down: every partition is still committed to its end when `run` returns.
/// Two mechanisms see to it (a failed commit makes the next round resend every position, and
/// the final synchronous commit sends every position); the test fails if a failed
/// asynchronous commit counted as committed for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_commit_follows_failed_async_commits() {
    let n = 60;
    let r = start_with(n, "final-commit", |m| {
        m.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 10_000],
        );
    })
    .await;
    r.wait_all(n, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.commit_errors.load(Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline, "no failed commit reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = committed(&r.bootstrap, &r.group, &r.topic);
    assert!(before.iter().all(Option::is_none), "committed {before:?}");
    r.mock.clear_request_errors(RDKafkaApiKey::OffsetCommit);
    r.handle.shutdown();
    r.run.await.unwrap().unwrap();
    let per = n / PARTITIONS as i64;
    let after = committed(&r.bootstrap, &r.group, &r.topic);
    assert!(
        after.iter().all(|o| *o == Some(per)),
        "after the final commit: {after:?}, expected {per} per partition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_group_and_heartbeat_errors_are_recovered() {
    let n = 400;
    // The first joins fail, then (mid-run) heartbeats answer that a rebalance is under way:
    // the worker rejoins, its partitions are revoked and assigned again.
    let r = start_with(n, "join-heartbeat", |m| {
        m.request_errors(
            RDKafkaApiKey::JoinGroup,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 3],
        );
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.handled() < 50 {
        assert!(
            Instant::now() < deadline,
            "nothing handled after the join errors"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = metric("redrive_rebalances_total", &r.group);
    r.mock.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 2],
    );
    r.wait_all(n, Duration::from_secs(120)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("redrive_rebalances_total", &r.group) <= before {
        assert!(
            Instant::now() < deadline,
            "no rebalance counted after the heartbeat errors ({before})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.finish(n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_errors_are_recovered() {
    let n = 200;
    let r = start_with(n, "fetch", |_| {}).await;
    r.mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 10],
    );
    r.wait_all(n, Duration::from_secs(90)).await;
    r.finish(n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_for_ten_seconds_is_survived() {
    let n = 400;
    let r = start_with(n, "broker-down", |_| {}).await;
    // Let part of the work happen, then take the only broker away for 10 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.handled() < 50 {
        assert!(Instant::now() < deadline, "nothing handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.mock.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    r.mock.broker_up(1).unwrap();
    r.wait_all(n, Duration::from_secs(120)).await;
    r.finish(n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500ms_round_trip_slows_but_loses_nothing() {
    let n = 100;
    let r = start_with(n, "rtt", |_| {}).await;
    r.mock
        .broker_round_trip_time(1, Duration::from_millis(500))
        .unwrap();
    r.wait_all(n, Duration::from_secs(120)).await;
    r.mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
    r.finish(n).await;
}

/// Every fetch refused with TOPIC_AUTHORIZATION_FAILED for 15 s (mock cluster): the
/// partition's reads fail, `redrive_fetch_errors_total` counts them, and after 10 s the
/// handle names the partition as unreadable (the sidecar's `/readyz` turns 503 on it). Once
/// the refusals stop, every record is handled and the partition is no longer blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_cannot_be_read_is_a_defined_state() {
    init_tracing();
    let _ = metrics_text();
    let (topic, group) = ("unreadable", "readers");
    let mock = mock_cluster(topic, 1, None);
    let bootstrap = mock.bootstrap_servers();
    produce_n(&bootstrap, topic, 1, 0, 10).await;
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 100_000],
    );
    let seen = Seen::default();
    let w = test_worker(&bootstrap, group)
        .route(Route::new(topic, recording(seen.clone())))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(
        Duration::from_secs(40),
        "the partition reported unreadable",
        || {
            h.blocked_partitions()
                .iter()
                .any(|b| b.reason == redrive::BlockReason::Unreadable)
        },
    )
    .await;
    assert!(seen.lock().unwrap().is_empty());
    let text = metrics_text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("redrive_fetch_errors_total") && l.contains("partition=\"0\"")),
        "{text}"
    );
    mock.clear_request_errors(RDKafkaApiKey::Fetch);
    eventually(Duration::from_secs(30), "every record handled", || {
        seen.lock().unwrap().len() == 10
    })
    .await;
    assert!(h.blocked_partitions().is_empty());
    h.shutdown();
    run.await.unwrap().unwrap();
}
