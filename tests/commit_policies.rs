//! Commit policies against the real broker: every policy commits what is final while the
//! worker runs; the policies differ as they say (a synchronous one commits on the poll
//! thread, an asynchronous one on the commit thread; per record, per count, per interval and
//! per batch commit as often as their trigger); a restart resumes right after the last
//! commit; out-of-order completion never commits past an unfinished record.
//!
//! Commits are observed through a `metrics` recorder of this test binary that notes, for
//! every sample of `redrive_commit_duration_seconds` (one per commit request), its group and
//! the thread that sent it.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redrive::{BoxError, CommitPolicy, Record, Route, Worker};
use support::*;
use tower::service_fn;

/// Every commit request: (group, name of the thread that sent it).
static COMMITS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// A recorder that notes commit requests and ignores every other metric.
struct CommitRecorder;

/// One group's commit-duration histogram.
struct CommitSample(String);

impl metrics::HistogramFn for CommitSample {
    fn record(&self, _: f64) {
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        COMMITS.lock().unwrap().push((self.0.clone(), thread));
    }
}

impl metrics::Recorder for CommitRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        let group = key
            .labels()
            .find(|l| l.key() == "group")
            .map(|l| l.value().to_owned());
        match group {
            Some(g) if key.name() == redrive::metrics::names::COMMIT_DURATION => {
                metrics::Histogram::from_arc(Arc::new(CommitSample(g)))
            }
            _ => metrics::Histogram::noop(),
        }
    }
}

/// The commit requests of `group` so far, by the thread that sent them.
fn commits_of(group: &str) -> Vec<String> {
    let _ = metrics::set_global_recorder(CommitRecorder);
    COMMITS
        .lock()
        .unwrap()
        .iter()
        .filter(|(g, _)| g == group)
        .map(|(_, t)| t.clone())
        .collect()
}

fn worker(
    bootstrap: &str,
    group: &str,
    topic: &str,
    policy: CommitPolicy,
    svc: impl tower::Service<Record, Response = (), Error = BoxError, Future = impl Send + 'static>
        + Clone
        + Send
        + 'static,
) -> Worker {
    test_worker(bootstrap, group)
        .commit_policy(policy)
        .route(Route::new(topic, svc))
        .build()
        .unwrap()
}

/// Runs a worker with `policy` over 40 records on 2 partitions and checks that, while it is
/// still running, the committed offsets reach the end of each partition (for a count policy
/// `every N`, at most N-1 records may still wait for the next count), and that shutdown
/// commits everything.
/// Waits until partition 0's commit reaches `offset` (the record `what`), then checks that it
/// stays there: the commit never passes a record that is not final.
async fn commit_stops_at(bootstrap: &str, group: &str, topic: &str, offset: i64, what: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("commit reaches {what} at offset {offset}"),
        || committed(bootstrap, group, topic, 1)[&0] == Some(offset),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        committed(bootstrap, group, topic, 1)[&0],
        Some(offset),
        "never past {what} at offset {offset}"
    );
}

async fn policy_commits_while_running(policy: &str) {
    let slack = match policy.parse::<CommitPolicy>().unwrap().trigger {
        redrive::CommitTrigger::EveryRecords(n) => n as i64 - 1,
        _ => 0,
    };
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("commit-policy");
    let group = unique("g");
    let _ = commits_of(&group);
    create_topic(&bootstrap, &topic, 2).await;
    produce_n(&bootstrap, &topic, 2, 0, 40).await;
    let seen: Seen = Default::default();
    let w = worker(
        &bootstrap,
        &group,
        &topic,
        policy.parse().unwrap(),
        recording(seen.clone()),
    );
    let handle = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "all 40 records handled", || {
        seen.lock().unwrap().len() >= 40
    })
    .await;
    let ends = high_watermarks(&bootstrap, &topic, 2);
    let (b, g, t) = (bootstrap.clone(), group.clone(), topic.clone());
    eventually(
        Duration::from_secs(20),
        &format!("{policy}: commits reach the end while running"),
        || {
            let c = committed(&b, &g, &t, 2);
            let behind: i64 = c.iter().map(|(p, o)| ends[p] - o.unwrap_or(0)).sum();
            behind <= slack
        },
    )
    .await;
    assert!(!run.is_finished(), "the worker must still be running");
    handle.shutdown();
    run.await.unwrap().unwrap();
    let c = committed(&bootstrap, &group, &topic, 2);
    assert!(
        c.iter().all(|(p, o)| *o == Some(ends[p])),
        "{policy}: shutdown commits everything: {c:?}"
    );
    let handled: BTreeSet<_> = seen.lock().unwrap().iter().copied().collect();
    assert_eq!(handled.len(), 40, "each record handled");
    // Synchronous commits are sent by the poll thread; asynchronous ones by the commit thread
    // (the final commit at shutdown is synchronous for both).
    let threads = commits_of(&group);
    let on_commit_thread = threads.iter().filter(|t| *t == "redrive-commit").count();
    match policy.parse::<CommitPolicy>().unwrap().mode {
        redrive::CommitMode::Sync => assert_eq!(on_commit_thread, 0, "{policy}: {threads:?}"),
        redrive::CommitMode::Async => assert!(on_commit_thread > 0, "{policy}: {threads:?}"),
    }
    assert!(
        threads
            .iter()
            .all(|t| t == "redrive-commit" || t == "redrive-poll"),
        "{policy}: {threads:?}"
    );
}

/// How many commit requests `policy` sends while 40 records are handled 20 ms apart on one
/// partition (the final commit at shutdown not counted).
async fn commits_while_handling(policy: &str) -> usize {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("commit-count");
    let group = unique("g");
    let _ = commits_of(&group);
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 40).await;
    let seen: Seen = Default::default();
    let slow = slow_recording(seen.clone(), Duration::from_millis(20));
    let w = worker(&bootstrap, &group, &topic, policy.parse().unwrap(), slow);
    let handle = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "all 40 records handled", || {
        seen.lock().unwrap().len() >= 40
    })
    .await;
    // Let a commit due now go out before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = commits_of(&group).len();
    handle.shutdown();
    run.await.unwrap().unwrap();
    n
}

/// The four triggers tell apart by how often they commit over the same slow stream (~0.8 s):
/// per record about once per record, every 10 records 4 times, every 300 ms 2 to 5 times,
/// per batch once per hand-over of the poll thread (the 40 records arrive in one or two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_triggers_commit_as_often_as_they_say() {
    let per_record = commits_while_handling("sync:record").await;
    let every_ten = commits_while_handling("sync:10").await;
    let interval = commits_while_handling("sync:300ms").await;
    let batch = commits_while_handling("sync:batch").await;
    let counts = format!("record {per_record}, 10 {every_ten}, 300ms {interval}, batch {batch}");
    assert!(per_record >= 30, "{counts}");
    assert!((3..=5).contains(&every_ten), "{counts}");
    assert!((2..=5).contains(&interval), "{counts}");
    assert!((1..=4).contains(&batch), "{counts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_per_record() {
    policy_commits_while_running("sync:record").await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_per_record() {
    policy_commits_while_running("async:record").await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_every_ten() {
    policy_commits_while_running("sync:10").await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_every_ten() {
    policy_commits_while_running("async:10").await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_interval() {
    policy_commits_while_running("sync:200ms").await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_interval() {
    policy_commits_while_running("async:200ms").await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_per_batch() {
    policy_commits_while_running("sync:batch").await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_per_batch() {
    policy_commits_while_running("async:batch").await;
}

/// A count policy does not commit before the count is reached, commits everything final once it
/// is, and shutdown commits the remainder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_policy_waits_for_the_count_and_shutdown_commits_the_rest() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("commit-count");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 5).await;
    let seen: Seen = Default::default();
    let w = worker(
        &bootstrap,
        &group,
        &topic,
        CommitPolicy::sync_every(10),
        recording(seen.clone()),
    );
    let handle = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "5 handled", || {
        seen.lock().unwrap().len() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        committed(&bootstrap, &group, &topic, 1)[&0],
        None,
        "5 < 10 records: nothing committed yet"
    );
    produce_n(&bootstrap, &topic, 1, 5, 20).await;
    eventually(Duration::from_secs(60), "25 handled", || {
        seen.lock().unwrap().len() >= 25
    })
    .await;
    let (b, g, t) = (bootstrap.clone(), group.clone(), topic.clone());
    eventually(
        Duration::from_secs(20),
        "the count triggers a commit",
        || committed(&b, &g, &t, 1)[&0].is_some_and(|o| o >= 10),
    )
    .await;
    handle.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(
        committed(&bootstrap, &group, &topic, 1)[&0],
        Some(25),
        "shutdown commits the rest"
    );
}

/// A restarted worker resumes exactly after the last committed record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_after_last_commit() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("commit-restart");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 2).await;
    produce_n(&bootstrap, &topic, 2, 0, 20).await;

    let first: Seen = Default::default();
    let w = worker(
        &bootstrap,
        &group,
        &topic,
        CommitPolicy::sync_per_record(),
        recording(first.clone()),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "first 20 handled", || {
        first.lock().unwrap().len() >= 20
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(
        committed(&bootstrap, &group, &topic, 2)
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![Some(10), Some(10)]
    );

    produce_n(&bootstrap, &topic, 2, 20, 10).await;
    let second: Seen = Default::default();
    let w = worker(
        &bootstrap,
        &group,
        &topic,
        CommitPolicy::sync_per_record(),
        recording(second.clone()),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "10 new handled", || {
        second.lock().unwrap().len() >= 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.shutdown();
    run.await.unwrap().unwrap();
    let got: BTreeSet<_> = second.lock().unwrap().iter().copied().collect();
    let want: BTreeSet<_> = (0..2).flat_map(|p| (10..15).map(move |o| (p, o))).collect();
    assert_eq!(
        got, want,
        "the restarted worker sees exactly the records after the last commit"
    );
    assert_eq!(second.lock().unwrap().len(), 10, "no record twice");
}

/// With concurrency 4 on one partition, a slow record holds the commit back while later
/// records finish; abandoning it (drain timeout, as a crash would) leaves it uncommitted, so
/// the next worker handles it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_completion_never_commits_past_an_unfinished_record() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("commit-ooo");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 20).await;

    let done: Seen = Default::default();
    let slow = {
        let done = done.clone();
        service_fn(move |r: Record| {
            let done = done.clone();
            async move {
                if r.offset() == 5 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                done.lock().unwrap().push((r.partition(), r.offset()));
                Ok::<_, BoxError>(())
            }
        })
    };
    let w = test_worker(&bootstrap, &group)
        .commit_policy(CommitPolicy::async_per_record())
        .drain_timeout(Duration::from_millis(300))
        .route(Route::new(&topic, slow).concurrency(4))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(
        Duration::from_secs(60),
        "the 19 fast records finish",
        || done.lock().unwrap().len() >= 19,
    )
    .await;
    commit_stops_at(&bootstrap, &group, &topic, 5, "the slow record").await;
    h.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(
        committed(&bootstrap, &group, &topic, 1)[&0],
        Some(5),
        "abandoned record stays uncommitted"
    );

    let again: Seen = Default::default();
    let w = worker(
        &bootstrap,
        &group,
        &topic,
        CommitPolicy::sync_per_record(),
        recording(again.clone()),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(
        Duration::from_secs(60),
        "the slow record is handled again",
        || again.lock().unwrap().contains(&(0, 5)),
    )
    .await;
    eventually(Duration::from_secs(20), "and the rest after it", || {
        again.lock().unwrap().len() >= 15
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(committed(&bootstrap, &group, &topic, 1)[&0], Some(20));
}

/// Manual acknowledgement: a record the handler has not acknowledged holds the commit back,
/// even after its handler returned; acknowledging it later (from anywhere) releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_ack_commits_only_what_was_acknowledged() {
    init_tracing();
    assert!(
        Record::new("t", 0, 0).acknowledgment().is_none(),
        "no handle outside a manual-ack worker"
    );
    let bootstrap = bootstrap();
    let topic = unique("commit-manual");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 10).await;

    let held: Arc<Mutex<Option<redrive::Acknowledgment>>> = Default::default();
    let handled: Seen = Default::default();
    let svc = {
        let (held, handled) = (held.clone(), handled.clone());
        service_fn(move |r: Record| {
            let ack = r
                .acknowledgment()
                .expect("a manual-ack worker gives every record a handle");
            assert_eq!(ack.offset(), r.offset());
            if r.offset() == 3 {
                *held.lock().unwrap() = Some(ack);
            } else {
                ack.acknowledge();
            }
            handled.lock().unwrap().push((r.partition(), r.offset()));
            std::future::ready(Ok::<_, BoxError>(()))
        })
    };
    let w = test_worker(&bootstrap, &group)
        .commit_policy(CommitPolicy::async_per_record())
        .manual_ack(true)
        .route(Route::new(&topic, svc))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "all 10 records handled", || {
        handled.lock().unwrap().len() >= 10
    })
    .await;
    // Though 4-9 were acknowledged.
    commit_stops_at(&bootstrap, &group, &topic, 3, "the unacknowledged record").await;

    held.lock().unwrap().take().unwrap().acknowledge();
    eventually(
        Duration::from_secs(10),
        "acknowledging offset 3 late releases the rest",
        || committed(&bootstrap, &group, &topic, 1)[&0] == Some(10),
    )
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(committed(&bootstrap, &group, &topic, 1)[&0], Some(10));
}

/// Manual acknowledgement: a record whose handler returned `Ok` and dropped its handle
/// without acknowledging (offset 4), or never took one (offset 7, on a second run), stops the
/// worker with `Error::Fatal` naming it instead of stalling the partition silently; the commit
/// never passes it, and the next run gets it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_ack_a_dropped_handle_stops_the_worker() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("commit-dropped-ack");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 10).await;

    let run = |forgotten: i64, concurrency: usize| {
        let handled: Seen = Default::default();
        let svc = {
            let handled = handled.clone();
            service_fn(move |r: Record| {
                handled.lock().unwrap().push((r.partition(), r.offset()));
                match r.offset() {
                    4 if forgotten == 4 => drop(r.acknowledgment()),
                    o if o == forgotten => {}
                    _ => r.acknowledgment().unwrap().acknowledge(),
                }
                std::future::ready(Ok::<_, BoxError>(()))
            })
        };
        let w = test_worker(&bootstrap, &group)
            .commit_policy(CommitPolicy::async_per_record())
            .manual_ack(true)
            .route(Route::new(&topic, svc).concurrency(concurrency))
            .build()
            .unwrap();
        (handled, tokio::spawn(w.run()))
    };

    for (forgotten, concurrency, first) in [(4, 1, 0), (7, 3, 4)] {
        let (handled, task) = run(forgotten, concurrency);
        let res = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the worker stops by itself")
            .unwrap();
        let err = res.expect_err("a record that can never be final stops the worker");
        assert!(
            matches!(err, redrive::Error::Fatal(_))
                && err.to_string().contains(&format!("{topic}/0@{forgotten}"))
                && err.to_string().contains("never acknowledged"),
            "{err}"
        );
        let offsets: Vec<i64> = handled.lock().unwrap().iter().map(|&(_, o)| o).collect();
        assert_eq!(
            offsets.first(),
            Some(&first),
            "resumes at the unacknowledged record"
        );
        assert!(offsets.contains(&forgotten));
        commit_stops_at(
            &bootstrap,
            &group,
            &topic,
            forgotten,
            "the abandoned record",
        )
        .await;
    }
}
