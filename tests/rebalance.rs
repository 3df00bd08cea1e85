//! Two workers in one group split a 6-partition topic; when one stops, the other takes over
//! and every record is handled at least once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redrive::{BoxError, CommitPolicy, Record, Route};
use support::*;
use tower::service_fn;

fn start(
    bootstrap: &str,
    group: &str,
    topic: &str,
    seen: Seen,
) -> (
    redrive::WorkerHandle,
    tokio::task::JoinHandle<Result<(), redrive::Error>>,
) {
    let svc = service_fn(move |r: Record| {
        let seen = seen.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            seen.lock().unwrap().push((r.partition(), r.offset()));
            Ok::<_, BoxError>(())
        }
    });
    let w = test_worker(bootstrap, group)
        .property("heartbeat.interval.ms", "500")
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(200)))
        .route(Route::new(topic, svc))
        .build()
        .unwrap();
    let h = w.handle();
    (h, tokio::spawn(w.run()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_split_then_one_takes_over() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("rebalance");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 6).await;

    let a_seen: Seen = Default::default();
    let b_seen: Seen = Default::default();
    let (a, a_run) = start(&bootstrap, &group, &topic, a_seen.clone());
    eventually(Duration::from_secs(60), "A owns all 6 partitions", || {
        a.assignment().len() == 6
    })
    .await;
    let (b, b_run) = start(&bootstrap, &group, &topic, b_seen.clone());
    eventually(
        Duration::from_secs(90),
        "A and B split the partitions",
        || {
            let (x, y) = (a.assignment(), b.assignment());
            !x.is_empty() && !y.is_empty() && x.len() + y.len() == 6
        },
    )
    .await;
    let a_parts: BTreeSet<i32> = a.assignment().into_iter().map(|(_, p)| p).collect();
    let b_parts: BTreeSet<i32> = b.assignment().into_iter().map(|(_, p)| p).collect();
    assert!(a_parts.is_disjoint(&b_parts), "{a_parts:?} / {b_parts:?}");

    produce_n(&bootstrap, &topic, 6, 0, 300).await;
    let total = |s: &Seen| s.lock().unwrap().iter().copied().collect::<BTreeSet<_>>();
    eventually(
        Duration::from_secs(60),
        "300 records handled by A and B",
        || total(&a_seen).union(&total(&b_seen)).count() >= 300,
    )
    .await;
    for (p, _) in a_seen.lock().unwrap().iter() {
        assert!(
            a_parts.contains(p),
            "A handled partition {p} it does not own"
        );
    }
    for (p, _) in b_seen.lock().unwrap().iter() {
        assert!(
            b_parts.contains(p),
            "B handled partition {p} it does not own"
        );
    }

    // B leaves; A takes everything over, and records produced meanwhile are not lost.
    b.shutdown();
    produce_n(&bootstrap, &topic, 6, 300, 300).await;
    b_run.await.unwrap().unwrap();
    eventually(
        Duration::from_secs(90),
        "A owns all 6 partitions again",
        || a.assignment().len() == 6,
    )
    .await;
    eventually(Duration::from_secs(60), "all 600 records handled", || {
        total(&a_seen).union(&total(&b_seen)).count() >= 600
    })
    .await;
    a.shutdown();
    a_run.await.unwrap().unwrap();

    let all: BTreeSet<(i32, i64)> = total(&a_seen).union(&total(&b_seen)).copied().collect();
    let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
    for (p, _) in &all {
        *per_partition.entry(*p).or_default() += 1;
    }
    assert_eq!(
        per_partition.values().sum::<usize>(),
        600,
        "none lost: {per_partition:?}"
    );
    let ends = high_watermarks(&bootstrap, &topic, 6);
    let c = committed(&bootstrap, &group, &topic, 6);
    for p in 0..6 {
        assert_eq!(c[&p], Some(ends[&p]), "partition {p} fully committed");
    }
}

/// A second member joins while the first works through a backlog (20 ms a record): the
/// partitions it takes over are revoked from the first member cleanly (in-flight records
/// finish, then a synchronous commit), so the second starts exactly after the last record the
/// first finished. Every offset is handled exactly once, by one member or the other, and at
/// least one partition changed hands mid-stream (so the check is not vacuous).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_over_on_join_resumes_right_after_the_last_finished_record() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("handover");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 4).await;
    produce_n(&bootstrap, &topic, 4, 0, 800).await;
    let worker = |seen: Seen| {
        let w = test_worker(&bootstrap, &group)
            .property("heartbeat.interval.ms", "500")
            .commit_policy(CommitPolicy::async_interval(Duration::from_secs(60)))
            .route(Route::new(
                &topic,
                slow_recording(seen, Duration::from_millis(20)),
            ))
            .build()
            .unwrap();
        (w.handle(), tokio::spawn(w.run()))
    };
    let (a_seen, b_seen): (Seen, Seen) = Default::default();
    let (a, a_run) = worker(a_seen.clone());
    eventually(Duration::from_secs(60), "A handles records", || {
        a_seen.lock().unwrap().len() >= 20
    })
    .await;
    let (b, b_run) = worker(b_seen.clone());
    let all = |s: &Seen| s.lock().unwrap().clone();
    eventually(Duration::from_secs(120), "800 records handled", || {
        all(&a_seen).len() + all(&b_seen).len() >= 800
    })
    .await;
    a.shutdown();
    b.shutdown();
    a_run.await.unwrap().unwrap();
    b_run.await.unwrap().unwrap();

    let (a_calls, b_calls) = (all(&a_seen), all(&b_seen));
    let mut handled: BTreeMap<(i32, i64), u32> = BTreeMap::new();
    for c in a_calls.iter().chain(&b_calls) {
        *handled.entry(*c).or_default() += 1;
    }
    let twice: Vec<_> = handled.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "handled twice: {twice:?}");
    for p in 0..4 {
        let offsets: Vec<i64> = handled
            .keys()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(
            offsets,
            (0..200).collect::<Vec<_>>(),
            "partition {p}: none lost"
        );
    }
    let mut handed_over = 0;
    for p in 0..4 {
        let last_a = a_calls
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .max();
        let first_b = b_calls
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .min();
        if let (Some(last), Some(first)) = (last_a, first_b) {
            if first > last {
                assert_eq!(
                    first,
                    last + 1,
                    "partition {p}: B starts right after A's last"
                );
                handed_over += 1;
            }
        }
    }
    assert!(handed_over > 0, "no partition moved from A to B mid-stream");
}

/// One handler call of the storm test.
#[derive(Clone, Debug)]
struct StormCall {
    key: String,
    attempt: u32,
    at_ms: i64,
    due_ms: Option<i64>,
}

/// A rebalance storm: three workers join and leave repeatedly while retries are pending (every
/// 5th record fails its first attempt and waits 1.5 s in the retry topic). Afterwards every
/// record succeeded, none was handled twice (every leave is clean), and no retry ran before
/// its due time: by the retry header, and by the ledger's own clock (1.5 s after the record's
/// first failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_storm_with_pending_retries_loses_nothing() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("storm");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 6).await;
    let n = 900u64;
    produce_n(&bootstrap, &topic, 6, 0, n).await;
    let calls: Arc<Mutex<Vec<StormCall>>> = Arc::default();
    let policy = redrive::policy::RetryPolicy::new()
        .attempts(3)
        .fixed(Duration::from_millis(1500));
    let worker = |calls: Arc<Mutex<Vec<StormCall>>>| {
        let svc = service_fn(move |r: Record| {
            let calls = calls.clone();
            async move {
                // Slow enough that the work spans the whole storm.
                tokio::time::sleep(Duration::from_millis(80)).await;
                let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
                let i: u64 = key.trim_start_matches("key-").parse().unwrap();
                let attempt = redrive::headers::attempt_of(r.headers());
                calls.lock().unwrap().push(StormCall {
                    key,
                    attempt,
                    at_ms: now_ms(),
                    due_ms: redrive::headers::due_at_ms(r.headers()),
                });
                if i % 5 == 0 && attempt == 1 {
                    return Err::<(), BoxError>("fails once".into());
                }
                Ok(())
            }
        });
        let w = test_worker(&bootstrap, &group)
            .property("heartbeat.interval.ms", "500")
            .commit_policy(CommitPolicy::async_interval(Duration::from_millis(200)))
            .route(Route::new(&topic, svc).retry(policy.clone()))
            .build()
            .unwrap();
        let h = w.handle();
        (h, tokio::spawn(w.run()))
    };
    let ok_keys = |calls: &Arc<Mutex<Vec<StormCall>>>| -> BTreeSet<String> {
        let c = calls.lock().unwrap();
        c.iter()
            .filter(|call| {
                let i: u64 = call.key.trim_start_matches("key-").parse().unwrap();
                !(i % 5 == 0 && call.attempt == 1)
            })
            .map(|call| call.key.clone())
            .collect()
    };
    // Storm: A runs throughout; B and C join and leave in turns.
    let (a, a_run) = worker(calls.clone());
    eventually(Duration::from_secs(60), "A consuming", || {
        !a.assignment().is_empty()
    })
    .await;
    let mut joins = 0;
    for round in 0..3 {
        let (b, b_run) = worker(calls.clone());
        joins += 1;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (c, c_run) = worker(calls.clone());
        joins += 1;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        b.shutdown();
        b_run.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        c.shutdown();
        c_run.await.unwrap().unwrap();
        eprintln!(
            "storm round {round}: {} keys ok so far",
            ok_keys(&calls).len()
        );
    }
    eventually(Duration::from_secs(120), "every record handled ok", || {
        ok_keys(&calls).len() as u64 == n
    })
    .await;
    a.shutdown();
    a_run.await.unwrap().unwrap();
    let all = calls.lock().unwrap().clone();
    let early: Vec<&StormCall> = all
        .iter()
        .filter(|c| c.attempt > 1 && c.due_ms.is_some_and(|d| c.at_ms < d))
        .collect();
    assert!(
        early.is_empty(),
        "retries ran before their due time: {early:?}"
    );
    // Never early, by the ledger alone (not the header the library wrote): a retry starts no
    // sooner than 1.5 s after its record's first failure.
    let mut first_failure: std::collections::HashMap<&str, i64> = Default::default();
    for c in all.iter().filter(|c| c.attempt == 1) {
        let t = first_failure.entry(c.key.as_str()).or_insert(c.at_ms);
        *t = (*t).min(c.at_ms);
    }
    for c in all.iter().filter(|c| c.attempt == 2) {
        let failed = first_failure[c.key.as_str()];
        assert!(
            c.at_ms - failed >= 1500,
            "{} retried {} ms after its first failure (delay 1.5 s)",
            c.key,
            c.at_ms - failed
        );
    }
    let retried = all.iter().filter(|c| c.attempt > 1).count();
    let duplicates = all.len() as u64 - n - n / 5;
    println!(
        "storm: {n} records, {joins} joins and leaves of B and C, {} calls, {retried} retries, {duplicates} duplicates",
        all.len(),
    );
    // Every leave is clean: the member drains its in-flight records and commits their final
    // positions synchronously before giving its partitions up, so no record is handled twice.
    assert_eq!(duplicates, 0, "a clean rebalance handles no record twice");
}
