//! redrive's side of each scenario: a `Worker` doing the same work as the baseline.

use crate::measure::*;
use crate::report::*;
use crate::support;
use crate::workload::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redrive::{policy::RetryPolicy, BoxError, CommitPolicy, Record, Route, Worker, WorkerBuilder};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::service_fn;

/// BENCH_PROPS="key=value,...": extra client properties for redrive's workers, to try
/// settings (`producer.<key>` for the retry producer); BENCH_MAX_POLL_RECORDS: their
/// `max_poll_records`.
pub(crate) fn with_bench_props(mut builder: WorkerBuilder) -> WorkerBuilder {
    for kv in std::env::var("BENCH_PROPS").unwrap_or_default().split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            builder = builder.property(k, v);
        }
    }
    let max_poll_records = env_number(
        "BENCH_MAX_POLL_RECORDS",
        WorkerBuilder::DEFAULT_MAX_POLL_RECORDS,
    );
    builder.max_poll_records(max_poll_records)
}

/// The route the happy scenario's redrive side runs.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum HappyRoute {
    /// `Route::new` with the no-op handler (the target's line).
    Plain,
    /// Behind a retry policy that never fires: what the retry layer costs a success.
    Retryable,
    /// `Route::without_headers`: the same work as the raw loop, which never asks for them.
    WithoutHeaders,
}

/// redrive with a no-op handler, `async:1000`.
pub(crate) async fn redrive_happy(
    bootstrap: &str,
    topic: &str,
    n: u64,
    kind: HappyRoute,
) -> HappyRun {
    let first: Mark = Arc::default();
    let f2 = first.clone();
    let ticks_at_first: Arc<Mutex<ThreadTicks>> = Arc::default();
    let t2 = ticks_at_first.clone();
    let seen = Arc::new(AtomicBool::new(false));
    let handler = service_fn(move |r: Record| {
        // Read first: a swap per record would make the two worker threads write one shared
        // cache line per record, a cost of the bench's handler, not of redrive.
        if !seen.load(Ordering::Relaxed) && !seen.swap(true, Ordering::Relaxed) {
            *f2.lock().unwrap() = Some((Instant::now(), cpu_seconds(), broker_cpu_seconds()));
            *t2.lock().unwrap() = thread_ticks();
        }
        std::hint::black_box(r.value());
        std::future::ready(Ok::<_, BoxError>(()))
    });
    let builder = Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(support::unique("bench-redrive"))
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_every(1000));
    let route = Route::new(topic, handler);
    // The environment variables apply to the plain route's side, for profiling.
    let kind = match kind {
        HappyRoute::Plain if std::env::var_os("BENCH_HAPPY_RETRYABLE").is_some() => {
            HappyRoute::Retryable
        }
        HappyRoute::Plain if std::env::var_os("BENCH_HAPPY_WITHOUT_HEADERS").is_some() => {
            HappyRoute::WithoutHeaders
        }
        k => k,
    };
    let route = match kind {
        HappyRoute::Plain => route,
        HappyRoute::Retryable => {
            route.retry(RetryPolicy::new().attempts(2).fixed(Duration::from_secs(1)))
        }
        HappyRoute::WithoutHeaders => route.without_headers(),
    };
    let builder = builder.route(route);
    let worker = with_bench_props(builder).build().unwrap();
    let h = worker.handle();
    let commits0 = REDRIVE_COMMITS.load(Ordering::Relaxed);
    let run = tokio::spawn(worker.run());
    while h.records_finished() < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = (Instant::now(), cpu_seconds(), broker_cpu_seconds());
    let commits = REDRIVE_COMMITS.load(Ordering::Relaxed) - commits0;
    print_thread_cpu("redrive", &ticks_at_first.lock().unwrap());
    h.shutdown();
    run.await.unwrap().unwrap();
    let (t0, c0, b0) = first.lock().unwrap().unwrap();
    let secs = (end.0 - t0).as_secs_f64();
    let per_million = n as f64 / 1e6;
    HappyRun {
        rate: n as f64 / secs,
        cpu: (end.1 - c0) / per_million,
        broker: end.2.zip(b0).map(|(b1, b0)| (b1 - b0) / per_million),
        commits: COUNTING_COMMITS
            .load(Ordering::Relaxed)
            .then_some(commits as f64 / per_million),
    }
}

/// Main-topic throughput with 10 % of records failing once through a 1 s retry topic; waits
/// until every retried record completed.
pub(crate) async fn redrive_retry(
    bootstrap: &str,
    topic: &str,
    n: u64,
    profile: redrive::headers::HeaderProfile,
    key_ordering: bool,
) -> (f64, f64, Option<f64>, u64) {
    let main_done = Arc::new(PerPartition::default());
    let partitions_done = Arc::new(AtomicU64::new(0));
    let retried_ok = Arc::new(PerPartition::default());
    let first: Mark = Arc::default();
    let last_main: Mark = Arc::default();
    let per_partition = move |p: i32| records_of_partition(n, p);
    let pd = partitions_done.clone();
    let (md, ro, f2, lm) = (
        main_done.clone(),
        retried_ok.clone(),
        first.clone(),
        last_main.clone(),
    );
    let main_topic: Arc<str> = Arc::from(topic);
    let seen = Arc::new(AtomicBool::new(false));
    let ticks_at_first: Arc<Mutex<ThreadTicks>> = Arc::default();
    let t2 = ticks_at_first.clone();
    let handler = service_fn(move |r: Record| {
        let main = *r.topic() == *main_topic;
        let res: Result<(), BoxError> = if main {
            // The happy path's handler's work (a flag read), plus a count per partition,
            // so the two worker threads do not write one shared cache line per record.
            if !seen.load(Ordering::Relaxed) && !seen.swap(true, Ordering::Relaxed) {
                *f2.lock().unwrap() = Some((Instant::now(), cpu_seconds(), broker_cpu_seconds()));
                *t2.lock().unwrap() = thread_ticks();
            }
            if md.add(r.partition()) == per_partition(r.partition())
                && pd.fetch_add(1, Ordering::Relaxed) + 1 == PARTITIONS as u64
            {
                *lm.lock().unwrap() = Some((Instant::now(), cpu_seconds(), broker_cpu_seconds()));
            }
            if r.offset() % 10 == 0 {
                Err("fails once".into())
            } else {
                Ok(())
            }
        } else {
            ro.add(r.partition());
            Ok(())
        };
        std::future::ready(res)
    });
    // A 1 s delay, as the scenario's target states; another delay (`BENCH_RETRY_DELAY_MS`) for profiling only.
    let delay_ms = env_number("BENCH_RETRY_DELAY_MS", 1000);
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(delay_ms))
        .header_profile(profile);
    let worker = Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(support::unique("bench-retry"))
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_every(1000))
        .route(
            Route::new(topic, handler)
                .retry(policy)
                .key_ordering(key_ordering),
        );
    let worker = with_bench_props(worker).build().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    let expected_retries = expected_retries(n);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut printed = false;
    while retried_ok.sum() < expected_retries || last_main.lock().unwrap().is_none() {
        assert!(Instant::now() < deadline, "retry scenario did not complete");
        if !printed && last_main.lock().unwrap().is_some() {
            printed = true;
            print_thread_cpu("retry", &ticks_at_first.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.shutdown();
    run.await.unwrap().unwrap();
    let ((t1, c1, b1), (t0, c0, b0)) = (
        last_main.lock().unwrap().unwrap(),
        first.lock().unwrap().unwrap(),
    );
    let secs = (t1 - t0).as_secs_f64();
    let per_million = n as f64 / 1e6;
    (
        n as f64 / secs,
        (c1 - c0) / per_million,
        b1.zip(b0).map(|(b1, b0)| (b1 - b0) / per_million),
        retried_ok.sum(),
    )
}

/// 10,000 retries pending across 6 partitions with delays of 1-5 s: five routes (2,000
/// records each) whose retry topics wait 1, 2, 3, 4 and 5 s. Returns the lateness of each
/// retry's start against its due time, in ms, sorted.
pub(crate) async fn delay_precision(bootstrap: &str, n: u64) -> Vec<f64> {
    // Room for every figure up front: growing the shared vector inside the handlers (a
    // reallocation under the lock both workers take) was a cost of the bench, not of redrive.
    let lateness = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let mut builder = Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(support::unique("bench-delay"))
        .property("session.timeout.ms", "6000");
    for secs in 1..=5u64 {
        let topic = support::unique(&format!("bench-delay-{secs}s"));
        support::create_topic(bootstrap, &topic, PARTITIONS).await;
        produce(bootstrap, &topic, n / 5).await;
        let l2 = lateness.clone();
        let handler = service_fn(move |r: Record| {
            let res: Result<(), BoxError> = match redrive::headers::due_at_ms(r.headers()) {
                None => Err("first attempt fails".into()),
                Some(due) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs_f64()
                        * 1000.0;
                    l2.lock().unwrap().push(now - due as f64);
                    Ok(())
                }
            };
            std::future::ready(res)
        });
        let policy = RetryPolicy::new()
            .attempts(2)
            .fixed(Duration::from_secs(secs));
        builder = builder.route(Route::new(&topic, handler).retry(policy));
    }
    let worker = with_bench_props(builder).build().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    let deadline = Instant::now() + Duration::from_secs(300);
    while (lateness.lock().unwrap().len() as u64) < n {
        assert!(Instant::now() < deadline, "delay scenario did not complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.shutdown();
    run.await.unwrap().unwrap();
    let mut v = lateness.lock().unwrap().clone();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// Run in a child process so the peak RSS is this scenario's alone: 10,000 pending retries
/// plus a 1 MB/s stream of 10 KB payloads for 15 s.
pub(crate) async fn memory_child(bootstrap: &str) {
    let topic = support::unique("bench-mem");
    support::create_topic(bootstrap, &topic, PARTITIONS).await;
    produce(bootstrap, &topic, 10_000).await;
    let retried = Arc::new(AtomicU64::new(0));
    let r2 = retried.clone();
    let main_topic: Arc<str> = Arc::from(topic.as_str());
    let handler = service_fn(move |r: Record| {
        let res: Result<(), BoxError> = if *r.topic() == *main_topic
            && r.offset() < 10_000 / PARTITIONS as i64 + 1
            && r.value().is_some_and(|v| v.len() == VALUE_BYTES)
        {
            Err("pending retry".into())
        } else {
            if *r.topic() != *main_topic {
                r2.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        };
        std::future::ready(res)
    });
    // Long enough that all 10,000 stay pending during the stream.
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_secs(30));
    let builder = Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(support::unique("bench-mem"))
        .property("session.timeout.ms", "6000")
        .route(Route::new(&topic, handler).retry(policy));
    let worker = with_bench_props(builder).build().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let payload = vec![b'm'; 10_000];
    for _ in 0..150 {
        for _ in 0..10 {
            p.send(
                FutureRecord::<(), _>::to(&topic).payload(&payload[..]),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.shutdown();
    run.await.unwrap().unwrap();
    println!("PEAK_RSS={}", peak_rss());
}

/// Consume-transform-produce on librdkafka's mock cluster (nisshi refuses transactional
/// producers): every input becomes one output record. At least once (outputs acknowledged
/// before the input is final, 256 records in flight per partition so acks overlap) or
/// transactional (batches of 500). Returns records/s.
pub(crate) async fn transform(n: u64, transactional: bool) -> f64 {
    use rdkafka::mocking::MockCluster;
    use redrive::publish::Outgoing;
    let mock = MockCluster::new(3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let (input, output) = ("bench-in".to_owned(), "bench-out".to_owned());
    mock.create_topic(&input, PARTITIONS, 1).unwrap();
    mock.create_topic(&output, PARTITIONS, 1).unwrap();
    produce(&bootstrap, &input, n).await;
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let f2 = first.clone();
    let out = output.clone();
    let handler = service_fn(move |r: Record| {
        f2.lock().unwrap().get_or_insert_with(Instant::now);
        let o = Outgoing::to(out.clone())
            .partition(r.partition())
            .value(r.value().cloned().unwrap_or_default());
        std::future::ready(Ok::<_, BoxError>(o))
    });
    let mut b = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(support::unique("bench-transform"))
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_every(1000));
    let route = Route::new(&input, handler);
    b = if transactional {
        b.transactional(
            redrive::transaction::Transactional::new(support::unique("bench-txn"))
                .batch_size(env_number("BENCH_TXN_BATCH", 5000)),
        )
        .route(route)
    } else {
        b.route(route.concurrency(256))
    };
    let worker = b.build().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    while h.records_finished() < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = Instant::now();
    h.shutdown();
    run.await.unwrap().unwrap();
    let t0 = first.lock().unwrap().unwrap();
    drop(mock);
    n as f64 / (end - t0).as_secs_f64()
}
