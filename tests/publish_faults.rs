//! Retry publication under injected broker faults, on librdkafka's mock cluster (docs/design.md,
//! Test tiers: tier 2): a failing publish to the retry topic is retried, nothing is lost, and the source
//! offset is never committed past the record whose copy is not yet acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;
use std::sync::atomic::{AtomicU32, Ordering};

use redrive::policy::RetryPolicy;
use redrive::publish::{KafkaPublisher, Outgoing, Publish, PublishFuture};
use redrive::{BoxError, CommitPolicy, Record, Route, Worker};
use tower::service_fn;

mod support;
use support::{mock_cluster, Mock};

/// Fails its first `fail_first` publishes, then delegates.
struct Flaky {
    inner: KafkaPublisher,
    fail_first: u32,
    calls: AtomicU32,
}

impl Publish for Flaky {
    fn publish(&self, record: &Outgoing) -> PublishFuture {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail_first {
            return Box::pin(async { Err("injected publish failure".into()) });
        }
        self.inner.publish(record)
    }
}

/// This binary's metrics (one recorder per process).
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| redrive::metrics::install_prometheus_recorder().unwrap())
}

/// `redrive_publish_failures_total{group, target}`.
fn publish_failures(group: &str, target: &str) -> f64 {
    let text = metrics().render();
    text.lines()
        .filter(|l| {
            l.starts_with("redrive_publish_failures_total")
                && l.contains(&format!("target=\"{target}\""))
                && l.contains(&format!("group=\"{group}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> Option<i64> {
    support::committed(bootstrap, group, topic, 1)[&0]
}

/// A one-broker mock cluster holding `topic` (one partition) with `n` keyed records, and the
/// policy's retry and dead-letter topics.
async fn cluster_with(topic: &str, policy: &RetryPolicy, n: usize) -> Mock {
    let mock = mock_cluster(topic, 1, Some(policy));
    produce_keys(&mock.bootstrap_servers(), topic, n).await;
    mock
}

/// The topics each key was handled from, in order.
type Calls = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// A handler that records where each key was handled and fails each key's first attempt.
fn fails_first_attempt(
    calls: &Calls,
) -> impl tower::Service<
    Record,
    Response = (),
    Error = BoxError,
    Future = std::future::Ready<Result<(), BoxError>>,
> + Clone
       + Send
       + Sync
       + 'static {
    let calls = calls.clone();
    service_fn(move |r: Record| {
        let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
        let mut calls = calls.lock().unwrap();
        let seen = calls.entry(key).or_default();
        seen.push(r.topic().to_owned());
        std::future::ready(match seen.len() {
            1 => Err("first attempt fails".into()),
            _ => Ok(()),
        })
    })
}

/// Every key was handled first from `topic`, then from the first retry topic.
fn assert_retried_once(calls: &Calls, topic: &str, policy: &RetryPolicy) {
    let topology = policy.topology(topic);
    let retry_topic = &topology.retry_topics()[0];
    for (k, v) in calls.lock().unwrap().iter() {
        assert_eq!(v[0], topic, "{k}");
        assert_eq!(&v[1], retry_topic, "{k} retried from the retry topic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_on_the_retry_topic_hold_offsets_back_and_lose_nothing() {
    support::init_tracing();
    let _ = metrics();
    let (topic, group) = ("orders", "billing");
    let policy = RetryPolicy::new()
        .attempts(3)
        .fixed(Duration::from_millis(200));
    let mock = cluster_with(topic, &policy, 20).await;
    let bootstrap = mock.bootstrap_servers();

    // Every produce request fails for a while (librdkafka retries those internally), and on
    // top the publisher itself reports failure for its first attempts (redrive's own
    // publish retry loop): the retry copies cannot be published for a while.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 12],
    );

    let calls = Calls::default();
    let (publisher, handle, run) = start(
        &bootstrap,
        group,
        topic,
        fails_first_attempt(&calls),
        policy.clone(),
    );

    // While publishing fails, the first record's copy is not acknowledged: nothing is
    // committed past it.
    support::eventually(Duration::from_secs(30), "a record handled", || {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    let mut held = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c = committed(&bootstrap, group, topic);
        let first_done = calls.lock().unwrap().values().any(|v| v.len() > 1);
        if !first_done {
            assert!(
                c.unwrap_or(0) == 0,
                "committed {c:?} while the first retry copy was unpublished"
            );
            held += 1;
        }
    }
    assert!(
        held > 0,
        "the injected errors did not hold the publish back (test ineffective)"
    );

    let started = Instant::now();
    loop {
        let done = {
            let calls = calls.lock().unwrap();
            calls.len() == 20 && calls.values().all(|v| v.len() >= 2)
        };
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "records lost: {:?}",
            calls.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(committed(&bootstrap, group, topic), Some(20));
    assert!(
        publisher.calls.load(Ordering::SeqCst) >= 20 + 3,
        "failed publishes were retried"
    );
    // The metrics count the failures the publisher reported.
    let failures = publish_failures(group, "retry");
    assert!(
        failures >= 3.0,
        "redrive_publish_failures_total = {failures}"
    );
    assert_retried_once(&calls, topic, &policy);
}

/// The same faults on the dead-letter path: with one attempt every failure goes straight to
/// the DLT; its copies cannot be published for a while, the offsets wait, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_on_the_dlt_hold_offsets_back_and_lose_nothing() {
    let _ = metrics();
    let (topic, group) = ("payments", "ledger");
    let policy = RetryPolicy::new().attempts(1);
    let dlt = policy.topology(topic).dlt().unwrap().to_owned();
    let mock = mock_cluster(topic, 1, Some(&policy));
    let bootstrap = mock.bootstrap_servers();
    produce_keys(&bootstrap, topic, 10).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 12],
    );
    let calls = Arc::new(AtomicU32::new(0));
    let handler = {
        let calls = calls.clone();
        service_fn(move |_r: Record| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), BoxError>("always fails".into()) }
        })
    };
    let (_publisher, handle, run) = start(&bootstrap, group, topic, handler, policy);
    support::eventually(Duration::from_secs(30), "a record handled", || {
        calls.load(Ordering::SeqCst) > 0
    })
    .await;
    // The first dead letter's copy fails 3 times (with back-off): nothing is committed yet.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(committed(&bootstrap, group, topic).unwrap_or(0), 0);
    let started = Instant::now();
    let dlt_end = || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        c.fetch_watermarks(&dlt, 0, Duration::from_secs(5))
            .map_or(0, |w| w.1)
    };
    while dlt_end() < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "dead letters lost"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(dlt_end(), 10, "each record dead-lettered once");
    assert_eq!(committed(&bootstrap, group, topic), Some(10));
    let failures = publish_failures(group, "dlt");
    assert!(
        failures >= 3.0,
        "redrive_publish_failures_total{{target=dlt}} = {failures}"
    );
}

/// Holds its first copy's acknowledgement until released; acknowledges the others at once.
#[derive(Default)]
struct HeldFirst {
    calls: AtomicU32,
    release: Arc<tokio::sync::Notify>,
}

impl Publish for HeldFirst {
    fn publish(&self, _record: &Outgoing) -> PublishFuture {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        let release = self.release.clone();
        Box::pin(async move {
            if first {
                release.notified().await;
            }
            Ok(())
        })
    }
}

/// A `RetryTopicLayer` built by hand and added with `Route::layer` (not `Route::retry`) gets
/// what the built-in route gets: a failed record's copy is awaited off the partition's path,
/// so the records behind it are handled meanwhile, and the offset still waits for the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_built_retry_layer_does_not_block_its_partition() {
    use redrive::layer::retry_topic::RetryTopicLayer;
    let (topic, group) = ("shipments", "dispatch");
    let mock = mock_cluster(topic, 1, None);
    let bootstrap = mock.bootstrap_servers();
    produce_keys(&bootstrap, topic, 10).await;
    let publisher = Arc::new(HeldFirst::default());
    let handled = Arc::new(AtomicU32::new(0));
    let handler = {
        let handled = handled.clone();
        service_fn(move |r: Record| {
            handled.fetch_add(1, Ordering::SeqCst);
            // Only the first record fails: its copy is the held one.
            let res: Result<(), BoxError> = match r.offset() {
                0 => Err("first fails".into()),
                _ => Ok(()),
            };
            async move { res }
        })
    };
    let layer = RetryTopicLayer::new(
        RetryPolicy::new(),
        &[topic],
        publisher.clone(),
        group,
        topic,
    );
    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(group)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(50)))
        .route(Route::new(topic, handler).layer(layer))
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    // Awaited inline, the held copy would stop the partition at its first record.
    support::eventually(
        Duration::from_secs(30),
        "the records behind the held copy handled",
        || handled.load(Ordering::SeqCst) == 10,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        committed(&bootstrap, group, topic).unwrap_or(0),
        0,
        "committed past a record whose copy is unacknowledged"
    );
    publisher.release.notify_one();
    support::eventually(Duration::from_secs(30), "the offset committed", || {
        committed(&bootstrap, group, topic) == Some(10)
    })
    .await;
    handle.shutdown();
    run.await.unwrap().unwrap();
}

/// Produces `n` records `k0`.. with value `v` to partition 0 of `topic`.
async fn produce_keys(bootstrap: &str, topic: &str, n: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for i in 0..n {
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&format!("k{i}"))
                    .payload("v")
                    .partition(0),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
}

/// A worker whose publisher fails its first 3 publications, committing every 100 ms.
fn start<S>(
    bootstrap: &str,
    group: &str,
    topic: &str,
    handler: S,
    policy: RetryPolicy,
) -> (
    Arc<Flaky>,
    redrive::WorkerHandle,
    tokio::task::JoinHandle<Result<(), redrive::Error>>,
)
where
    S: tower::Service<Record, Response = ()> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let publisher = Arc::new(Flaky {
        inner: KafkaPublisher::new(ClientConfig::new().set("bootstrap.servers", bootstrap))
            .unwrap(),
        fail_first: 3,
        calls: AtomicU32::new(0),
    });
    let worker = Worker::builder()
        .bootstrap_servers(bootstrap)
        .publisher(publisher.clone())
        .group_id(group)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(100)))
        .route(Route::new(topic, handler).retry(policy))
        .build()
        .unwrap();
    let handle = worker.handle();
    (publisher, handle, tokio::spawn(worker.run()))
}

/// The default publisher learns of a copy's fate from librdkafka's delivery report (no
/// future per copy). A report of failure starts the retrying loop, which sends the copy
/// again, and every record is committed once its copy was acknowledged: here the broker
/// refuses the first produce requests with an error librdkafka does not retry itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_report_sends_the_copy_again() {
    support::init_tracing();
    let _ = metrics();
    let (topic, group) = ("payments", "ledger");
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(200));
    let mock = cluster_with(topic, &policy, 10).await;
    let bootstrap = mock.bootstrap_servers();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD; 3],
    );

    let calls = Calls::default();
    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(group)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(100)))
        .route(Route::new(topic, fails_first_attempt(&calls)).retry(policy.clone()))
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());

    support::eventually(Duration::from_secs(60), "every record retried once", || {
        let calls = calls.lock().unwrap();
        calls.len() == 10 && calls.values().all(|v| v.len() >= 2)
    })
    .await;
    support::eventually(Duration::from_secs(30), "everything committed", || {
        committed(&bootstrap, group, topic) == Some(10)
    })
    .await;
    handle.shutdown();
    run.await.unwrap().unwrap();
    let failures = publish_failures(group, "retry");
    assert!(
        failures >= 1.0,
        "no delivery failure reached redrive (test ineffective): redrive_publish_failures_total = {failures}"
    );
    assert_retried_once(&calls, topic, &policy);
}

/// A copy still in flight when the worker stops (the broker keeps refusing it) must not keep
/// the publisher's producer alive: librdkafka holds what the delivery report needs until the
/// copy times out, and that must not reach back to the producer itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_in_flight_at_shutdown_does_not_keep_the_publisher_alive() {
    support::init_tracing();
    let (topic, group) = ("invoices", "mailer");
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(200));
    let mock = cluster_with(topic, &policy, 1).await;
    let bootstrap = mock.bootstrap_servers();
    // librdkafka retries these itself, for up to `message.timeout.ms` (5 minutes).
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 10_000],
    );
    let failed = Arc::new(AtomicU32::new(0));
    let handler = {
        let failed = failed.clone();
        service_fn(move |_r: Record| {
            failed.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), BoxError>("always fails".into()) }
        })
    };
    let publisher = Arc::new(
        KafkaPublisher::new(ClientConfig::new().set("bootstrap.servers", &bootstrap)).unwrap(),
    );
    let released = Arc::downgrade(&publisher);
    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(group)
        .publisher(publisher)
        .drain_timeout(Duration::from_millis(500))
        .route(Route::new(topic, handler).retry(policy))
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    support::eventually(Duration::from_secs(30), "the record failed", || {
        failed.load(Ordering::SeqCst) > 0
    })
    .await;
    // Its copy is now in librdkafka's queue, refused by the broker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.shutdown();
    run.await.unwrap().unwrap();
    support::eventually(Duration::from_secs(10), "the publisher released", || {
        released.upgrade().is_none()
    })
    .await;
    // Position 0 (or nothing): the record whose copy was never acknowledged is read again.
    assert_eq!(
        committed(&bootstrap, group, topic).unwrap_or(0),
        0,
        "the unacknowledged copy's record was committed"
    );
}

/// Every produce request is refused with TOPIC_AUTHORIZATION_FAILED while 10 % of 15,000
/// records fail their first attempt: each partition stops taking records soon after its
/// first refused copy (the count stays flat), the refusals are counted as permanent, the
/// handle names the blocked partitions, and the process's resident memory (worker and mock
/// cluster together) does not grow while the backlog waits; once the fault clears every
/// record completes and the commits reach the end, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_retry_topic_halts_its_partitions_then_recovers() {
    support::init_tracing();
    let _ = metrics();
    let (topic, group, n) = ("payments", "ledger", 15_000u64);
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(200));
    let mock = mock_cluster(topic, 3, Some(&policy));
    let bootstrap = mock.bootstrap_servers();
    support::produce_n(&bootstrap, topic, 3, 0, n).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10_000],
    );
    let main_calls = Arc::new(AtomicU32::new(0));
    let ok: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let handler = {
        let (main_calls, ok) = (main_calls.clone(), ok.clone());
        service_fn(move |r: Record| {
            let (main_calls, ok, topic) = (main_calls.clone(), ok.clone(), r.topic().to_owned());
            async move {
                let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
                let i: u64 = key.trim_start_matches("key-").parse().unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
                if topic == "payments" {
                    main_calls.fetch_add(1, Ordering::SeqCst);
                    if i % 10 == 0 {
                        return Err::<(), BoxError>("declined, try again".into());
                    }
                }
                ok.lock().unwrap().insert(key);
                Ok(())
            }
        })
    };
    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(group)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(100)))
        .route(Route::new(topic, handler).retry(policy))
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    support::eventually(Duration::from_secs(30), "every partition blocked", || {
        handle.blocked_partitions().len() == 3
    })
    .await;
    // A record already in hand when its partition's copy was refused still finishes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let halted_at = main_calls.load(Ordering::SeqCst);
    let rss_halted = support::rss_bytes();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = main_calls.load(Ordering::SeqCst);
    let rss_later = support::rss_bytes();
    assert!(
        rss_later < rss_halted + (8 << 20) && rss_later < 256 << 20,
        "resident memory while halted: {} MiB, then {} MiB",
        rss_halted >> 20,
        rss_later >> 20
    );
    assert_eq!(
        later, halted_at,
        "no record taken while the copies are refused"
    );
    assert!(
        later < 300,
        "halted within a bounded number of records: {later} of {n}"
    );
    let blocked = handle.blocked_partitions();
    assert!(
        blocked.iter().all(|b| b.since >= Duration::from_secs(2)
            && b.reason == redrive::BlockReason::CopiesRefused),
        "{blocked:?}"
    );
    let text = metrics().render();
    let permanent = text.lines().any(|l| {
        l.starts_with("redrive_publish_failures_total")
            && l.contains("kind=\"permanent\"")
            && l.contains(&format!("group=\"{group}\""))
    });
    assert!(permanent, "refusals counted as permanent:\n{text}");

    mock.clear_request_errors(RDKafkaApiKey::Produce);
    support::eventually(Duration::from_secs(60), "every record completed", || {
        ok.lock().unwrap().len() as u64 == n
    })
    .await;
    support::eventually(Duration::from_secs(30), "commits at the end", || {
        support::committed(&bootstrap, group, topic, 3)
            .values()
            .all(|o| *o == Some(5_000))
    })
    .await;
    assert!(handle.blocked_partitions().is_empty());
    handle.shutdown();
    run.await.unwrap().unwrap();
    println!(
        "halted after {halted_at} of {n} main-topic records; resident {} MiB, 3 s later {} MiB",
        rss_halted >> 20,
        rss_later >> 20
    );
}

/// The broker refuses the idempotent producer's id (CLUSTER_AUTHORIZATION_FAILED on
/// InitProducerId): librdkafka raises a fatal error, and the worker stops with
/// `Error::Fatal` instead of retrying copies forever; nothing is committed past the records
/// whose copies were never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_stops_the_worker_with_an_error() {
    support::init_tracing();
    let (topic, group) = ("refunds", "accounting");
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(200));
    let mock = cluster_with(topic, &policy, 5).await;
    let bootstrap = mock.bootstrap_servers();
    mock.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED; 10],
    );
    let handler = service_fn(|_r: Record| async { Err::<(), BoxError>("always fails".into()) });
    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(group)
        .drain_timeout(Duration::from_secs(2))
        .route(Route::new(topic, handler).retry(policy))
        .build()
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(60), worker.run())
        .await
        .expect("the worker stopped by itself");
    let err = ended.expect_err("a fatal producer error ends run with an error");
    assert!(
        matches!(err, redrive::Error::Fatal(_)) && err.to_string().contains("fatally"),
        "{err}"
    );
    assert!(
        committed(&bootstrap, group, topic).unwrap_or(0) == 0,
        "nothing committed past records whose copies were never sent"
    );
}

/// Holds every copy's acknowledgement until released.
struct HeldAll {
    held: AtomicU32,
    release: Arc<tokio::sync::Semaphore>,
}

impl Default for HeldAll {
    fn default() -> Self {
        HeldAll {
            held: AtomicU32::new(0),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

impl Publish for HeldAll {
    fn publish(&self, _record: &Outgoing) -> PublishFuture {
        self.held.fetch_add(1, Ordering::SeqCst);
        let release = self.release.clone();
        Box::pin(async move {
            release.acquire().await.unwrap().forget();
            Ok(())
        })
    }
}

/// A failed record whose copy is not yet acknowledged keeps its share of
/// `max_in_flight_bytes` (its copy keeps its bytes alive): with 1 KB values, a 10 KB bound and
/// a publisher holding every copy, at most 10 records are handled until copies are
/// acknowledged; then every record completes. Without it the whole topic would be read into
/// copies waiting for the broker, unbounded by the byte bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_copies_count_against_max_in_flight_bytes() {
    use redrive::layer::retry_topic::RetryTopicLayer;
    let (topic, group) = ("payloads", "bounded");
    let mock = mock_cluster(topic, 1, None);
    let bootstrap = mock.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let value = vec![b'x'; 1000];
    for _ in 0..60 {
        let record = FutureRecord::to(topic)
            .key("k")
            .payload(&value)
            .partition(0);
        producer.send(record, Duration::from_secs(5)).await.unwrap();
    }
    let publisher = Arc::new(HeldAll::default());
    let handled = Arc::new(AtomicU32::new(0));
    let handler = {
        let handled = handled.clone();
        service_fn(move |_: Record| {
            handled.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err::<(), BoxError>("every record fails".into()))
        })
    };
    let policy = RetryPolicy::new();
    let layer = RetryTopicLayer::new(policy, &[topic], publisher.clone(), group, topic);
    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(group)
        .max_in_flight_bytes(10_000)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(50)))
        .route(Route::new(topic, handler).concurrency(4).layer(layer))
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    support::eventually(Duration::from_secs(30), "records handled", || {
        handled.load(Ordering::SeqCst) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let while_held = handled.load(Ordering::SeqCst);
    assert!(
        (5..=10).contains(&while_held),
        "{while_held} records handled while every copy is unacknowledged (bound: 10 of 1 KB)"
    );
    assert_eq!(publisher.held.load(Ordering::SeqCst), while_held);
    publisher.release.add_permits(1_000);
    support::eventually(Duration::from_secs(30), "every record completed", || {
        committed(&bootstrap, group, topic) == Some(60)
    })
    .await;
    assert_eq!(handled.load(Ordering::SeqCst), 60);
    handle.shutdown();
    run.await.unwrap().unwrap();
}

/// Keeps every copy it is given and acknowledges it.
#[derive(Default)]
struct Capture(Mutex<Vec<Outgoing>>);

impl Publish for Capture {
    fn publish(&self, record: &Outgoing) -> PublishFuture {
        self.0.lock().unwrap().push(record.clone());
        Box::pin(async { Ok(()) })
    }
}

/// An error whose `Debug` form starts with no type name.
struct Opaque;

impl std::fmt::Debug for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<opaque>")
    }
}

impl std::fmt::Display for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("opaque failure")
    }
}

impl std::error::Error for Opaque {}

/// What a dead letter's `kafka_exception-fqcn` names: the handler's declared error type when
/// the error's `Debug` form names none; the route's `error_type_name` for an error built from
/// a string; an `ErrorType` in the chain over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_name_the_error_type() {
    let policy = RetryPolicy::new().attempts(1);
    let (declared, named) = ("typed-orders", "named-orders");
    let mock = mock_cluster(declared, 1, Some(&policy));
    for t in policy.topology(named).derived_topics().chain([named]) {
        mock.create_topic(t, 1, 1).unwrap();
    }
    let bootstrap = mock.bootstrap_servers();
    produce_keys(&bootstrap, declared, 1).await;
    produce_keys(&bootstrap, named, 2).await;
    let capture = Arc::new(Capture::default());
    let typed = service_fn(|_: Record| async { Err::<(), Opaque>(Opaque) });
    let untyped = service_fn(|r: Record| async move {
        Err::<(), BoxError>(match r.offset() {
            0 => "declined by the bank".into(),
            _ => redrive::ErrorType::new("http-503", Opaque).into(),
        })
    });
    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id("naming")
        .publisher(capture.clone())
        .route(Route::new(declared, typed).retry(policy.clone()))
        .route(
            Route::new(named, untyped)
                .retry(policy)
                .error_type_name("billing.Declined"),
        )
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    support::eventually(Duration::from_secs(30), "3 dead letters", || {
        capture.0.lock().unwrap().len() == 3
    })
    .await;
    handle.shutdown();
    run.await.unwrap().unwrap();
    let mut names: Vec<(String, String)> = capture
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|o| {
            let fqcn = o
                .headers
                .last_value(redrive::headers::EXCEPTION_FQCN)
                .unwrap();
            (o.topic.clone(), String::from_utf8_lossy(fqcn).into_owned())
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("named-orders-dlt".to_owned(), "billing.Declined".to_owned()),
            ("named-orders-dlt".to_owned(), "http-503".to_owned()),
            (
                "typed-orders-dlt".to_owned(),
                "publish_faults::Opaque".to_owned()
            ),
        ]
    );
}
