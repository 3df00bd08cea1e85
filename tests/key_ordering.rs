//! Per-key ordering against the real broker (docs/design.md, Key ordering): records of a key
//! wait while an earlier one retries, the choice after a dead letter, the chain read back
//! after a restart, and the bound on parked records. The crash test with kills and a
//! rebalance is in `tests/chaos.rs`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Message;
use redrive::policy::RetryPolicy;
use redrive::{headers, AfterDeadLetter, BoxError, CommitPolicy, Record, Route};
use support::*;
use tower::service_fn;

/// What a handler did, in order: (key, value, attempt, ok).
type Log = Arc<Mutex<Vec<(String, String, u32, bool)>>>;

fn text(b: Option<&bytes::Bytes>) -> String {
    String::from_utf8_lossy(b.map_or(&b""[..], |b| &b[..])).into_owned()
}

/// A handler that logs every call and fails while `fails(key, value, attempt)` says so.
fn logging(
    log: Log,
    fails: fn(&str, &str, u32) -> bool,
) -> impl tower::Service<Record, Response = (), Error = BoxError, Future = impl Send> + Clone {
    service_fn(move |r: Record| {
        let log = log.clone();
        async move {
            let (k, v) = (text(r.key()), text(r.value()));
            let attempt = headers::attempt_of(r.headers());
            let failed = fails(&k, &v, attempt);
            log.lock()
                .unwrap()
                .push((k.clone(), v.clone(), attempt, !failed));
            match failed {
                true => Err::<(), BoxError>(format!("{k} {v} fails on attempt {attempt}").into()),
                false => Ok(()),
            }
        }
    })
}

/// Produces (key, value) pairs in order to partition 0.
async fn produce(bootstrap: &str, topic: &str, records: &[(&str, String)]) {
    let items: Vec<(&str, &str, i32)> = records.iter().map(|(k, v)| (*k, v.as_str(), 0)).collect();
    produce_items(bootstrap, topic, &items).await;
}

/// The values of `key` handled successfully, in the order handled.
fn ok_values(log: &Log, key: &str) -> Vec<String> {
    let log = log.lock().unwrap();
    log.iter()
        .filter(|(k, _, _, ok)| k == key && *ok)
        .map(|(_, v, _, _)| v.clone())
        .collect()
}

/// Position of the first successful handling of (key, value) in the log.
fn first_ok(log: &Log, key: &str, value: &str) -> Option<usize> {
    let log = log.lock().unwrap();
    log.iter()
        .position(|(k, v, _, ok)| k == key && v == value && *ok)
}

fn seq(key: &'static str, n: usize) -> Vec<(&'static str, String)> {
    (0..n).map(|i| (key, i.to_string())).collect()
}

/// Runs a worker on `topic` until `done` holds, then stops it.
async fn run_until<S>(
    bootstrap: &str,
    group: &str,
    route: Route<S>,
    what: &str,
    done: impl FnMut() -> bool,
) where
    S: tower::Service<Record, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let worker = test_worker(bootstrap, group)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(100)))
        .route(route)
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    eventually(Duration::from_secs(60), what, done).await;
    handle.shutdown();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_record_holds_back_later_records_of_its_key_only() {
    init_tracing();
    let bootstrap = bootstrap();
    let policy = RetryPolicy::new()
        .attempts(4)
        .fixed(Duration::from_millis(400));
    // a/0 fails twice; the other records of `a` come after it, `b` flows meanwhile.
    let fails = |k: &str, v: &str, attempt: u32| k == "a" && v == "0" && attempt <= 2;
    let records: Vec<(&str, String)> = [
        seq("a", 1),
        seq("b", 3),
        vec![("a", "1".into()), ("a", "2".into())],
    ]
    .concat();
    for ordered in [true, false] {
        let topic = unique("keyed");
        create_topic(&bootstrap, &topic, 1).await;
        produce(&bootstrap, &topic, &records).await;
        let log: Log = Arc::default();
        let route = Route::new(&topic, logging(log.clone(), fails))
            .retry(policy.clone())
            .key_ordering(ordered);
        let l = log.clone();
        run_until(
            &bootstrap,
            &unique("g"),
            route,
            "every record handled",
            move || ok_values(&l, "a").len() == 3 && ok_values(&l, "b").len() == 3,
        )
        .await;
        let a = ok_values(&log, "a");
        let b_done = first_ok(&log, "b", "2").unwrap();
        let a0 = first_ok(&log, "a", "0").unwrap();
        if ordered {
            assert_eq!(
                a,
                ["0", "1", "2"],
                "key a out of order: {:?}",
                log.lock().unwrap()
            );
            assert!(
                b_done < a0,
                "key b waited for key a: {:?}",
                log.lock().unwrap()
            );
        } else {
            // Without it the retry overtakes: the oracle above can fail.
            assert_eq!(a, ["1", "2", "0"], "{:?}", log.lock().unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_parked_behind_a_dead_letter_follow_it_or_continue() {
    init_tracing();
    let bootstrap = bootstrap();
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(300));
    let fails = |k: &str, v: &str, _: u32| k == "a" && v == "0";
    let records = [seq("a", 3), seq("b", 2)].concat();
    for after in [AfterDeadLetter::Follow, AfterDeadLetter::Continue] {
        let topic = unique("keyed-dlt");
        create_topic(&bootstrap, &topic, 1).await;
        produce(&bootstrap, &topic, &records).await;
        let log: Log = Arc::default();
        let route = Route::new(&topic, logging(log.clone(), fails))
            .retry(policy.clone())
            .key_ordering_after_dead_letter(after);
        let dlt = format!("{topic}-dlt");
        let (l, b) = (log.clone(), bootstrap.clone());
        let expected_dead = if after == AfterDeadLetter::Follow {
            3
        } else {
            1
        };
        run_until(
            &bootstrap,
            &unique("g"),
            route,
            "dead letters written",
            move || {
                ok_values(&l, "b").len() == 2
                    && read_topic(&b, &dlt).len() >= expected_dead
                    && (after == AfterDeadLetter::Follow || ok_values(&l, "a").len() == 2)
            },
        )
        .await;
        let dead = read_topic(&bootstrap, &format!("{topic}-dlt"));
        let dead_values: Vec<String> = dead
            .iter()
            .map(|m| String::from_utf8_lossy(m.payload().unwrap()).into_owned())
            .collect();
        match after {
            AfterDeadLetter::Follow => {
                assert_eq!(dead_values, ["0", "1", "2"]);
                let handled: Vec<_> = log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|c| c.0 == "a")
                    .map(|c| c.1.clone())
                    .collect();
                assert!(
                    handled.iter().all(|v| v == "0"),
                    "a/1 and a/2 were handled: {handled:?}"
                );
                for m in &dead[1..] {
                    let fqcn = header(m, headers::EXCEPTION_FQCN)
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    assert!(
                        fqcn.as_deref()
                            .is_some_and(|t| t.contains("FollowedDeadLetter")),
                        "{fqcn:?}"
                    );
                }
            }
            AfterDeadLetter::Continue => {
                assert_eq!(dead_values, ["0"]);
                assert_eq!(ok_values(&log, "a"), ["1", "2"]);
                // Handled only after a/0 was dead-lettered: after its last attempt.
                let last_a0 = log
                    .lock()
                    .unwrap()
                    .iter()
                    .rposition(|c| c.0 == "a" && c.1 == "0")
                    .unwrap();
                assert!(first_ok(&log, "a", "1").unwrap() > last_a0);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_keys_are_read_back_after_a_restart() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("keyed-restart");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    // a/0 fails once and is due 3 s later; a/1 is parked behind it when the worker stops.
    let policy = RetryPolicy::new().attempts(3).fixed(Duration::from_secs(3));
    let fails = |k: &str, v: &str, attempt: u32| k == "a" && v == "0" && attempt == 1;
    produce(&bootstrap, &topic, &[seq("a", 2), seq("b", 1)].concat()).await;
    let log: Log = Arc::default();
    let route = || {
        Route::new(&topic, logging(log.clone(), fails))
            .retry(policy.clone())
            .key_ordering(true)
    };
    let l = log.clone();
    run_until(
        &bootstrap,
        &group,
        route(),
        "a/0 failed and b/0 handled",
        move || {
            ok_values(&l, "b").len() == 1 && l.lock().unwrap().iter().any(|c| c.0 == "a" && !c.3)
        },
    )
    .await;
    assert!(
        ok_values(&log, "a").is_empty(),
        "a/1 ran before a/0: {:?}",
        log.lock().unwrap()
    );
    // A new worker: a/1 is read again from the main topic, a/0 from its retry topic; a/1
    // must wait for a/0 although this worker never saw a/0 fail.
    let l = log.clone();
    run_until(
        &bootstrap,
        &group,
        route(),
        "a/0 and a/1 handled",
        move || ok_values(&l, "a").len() == 2,
    )
    .await;
    assert_eq!(
        ok_values(&log, "a"),
        ["0", "1"],
        "{:?}",
        log.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_records_are_bounded_and_none_is_dropped() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("keyed-bound");
    create_topic(&bootstrap, &topic, 1).await;
    // a/0 fails once (due 2 s later), a/1 parks behind it, then 300 records of other keys.
    let policy = RetryPolicy::new().attempts(3).fixed(Duration::from_secs(2));
    let fails = |k: &str, v: &str, attempt: u32| k == "a" && v == "0" && attempt == 1;
    let others: Vec<(&str, String)> = (0..300).map(|i| ("b", i.to_string())).collect();
    produce(&bootstrap, &topic, &[seq("a", 2), others].concat()).await;
    let log: Log = Arc::default();
    let route = Route::new(&topic, logging(log.clone(), fails))
        .retry(policy)
        .key_ordering(true);
    let worker = test_worker(&bootstrap, &unique("g"))
        .max_in_flight_records(20)
        .route(route)
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    let l = log.clone();
    eventually(Duration::from_secs(60), "every record handled", move || {
        ok_values(&l, "a").len() == 2 && ok_values(&l, "b").len() == 300
    })
    .await;
    handle.shutdown();
    run.await.unwrap().unwrap();
    // While a/0 waited, the partition read at most 20 records past a/1 (the commit
    // position): the others waited in the broker, not in memory.
    let before_a0 = first_ok(&log, "a", "0").unwrap();
    let b_before = log.lock().unwrap()[..before_a0]
        .iter()
        .filter(|c| c.0 == "b")
        .count();
    assert!(
        b_before <= 20,
        "{b_before} records of b handled while a/1 was parked"
    );
    assert!(b_before > 0, "b waited for a");
    let b: Vec<String> = ok_values(&log, "b");
    assert_eq!(b, (0..300).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test]
async fn key_ordering_refuses_what_it_cannot_do() {
    let handler = service_fn(|_r: Record| async move { Ok::<_, BoxError>(()) });
    let build = |route: Route<_>, manual: bool| {
        redrive::Worker::builder()
            .bootstrap_servers("127.0.0.1:9")
            .group_id("g")
            .manual_ack(manual)
            .route(route)
            .build()
            .err()
            .map(|e| e.to_string())
    };
    let base = Route::new("t", handler)
        .retry(RetryPolicy::new())
        .key_ordering(true);
    let no_retry = Route::new("t", handler).key_ordering(true);
    assert!(build(no_retry, false).unwrap().contains("no retry policy"));
    assert!(build(base.clone().concurrency(4), false)
        .unwrap()
        .contains("concurrency 1"));
    assert!(build(base.clone(), true)
        .unwrap()
        .contains("manual acknowledgement"));
    let partitions = Route::new("t", handler)
        .retry(RetryPolicy::new().partitions(3))
        .key_ordering(true);
    assert!(build(partitions, false)
        .unwrap()
        .contains("keep its record's partition"));
    assert_eq!(build(base, false), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_under_cooperative_rebalancing_keeps_order() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("keyed-coop");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 2).await;
    // a on partition 0, b on partition 1; a/0 and b/0 retry while the second member joins.
    let items: Vec<(&str, String, i32)> = [("a", 0), ("b", 1)]
        .into_iter()
        .flat_map(|(k, part)| (0..4).map(move |v| (k, v.to_string(), part)))
        .collect();
    produce_items(&bootstrap, &topic, &items).await;
    let policy = RetryPolicy::new()
        .attempts(4)
        .fixed(Duration::from_millis(1500));
    let fails = |_: &str, v: &str, attempt: u32| v == "0" && attempt <= 2;
    let log: Log = Arc::default();
    let worker = |log: &Log| {
        test_worker(&bootstrap, &group)
            .property("partition.assignment.strategy", "cooperative-sticky")
            .route(
                Route::new(&topic, logging(log.clone(), fails))
                    .retry(policy.clone())
                    .key_ordering(true),
            )
            .build()
            .unwrap()
    };
    let first = worker(&log);
    let (h1, r1) = (first.handle(), tokio::spawn(first.run()));
    let l = log.clone();
    eventually(
        Duration::from_secs(30),
        "a/0 and b/0 failed once",
        move || l.lock().unwrap().iter().filter(|c| !c.3).count() >= 2,
    )
    .await;
    let second = worker(&log);
    let (h2, r2) = (second.handle(), tokio::spawn(second.run()));
    let l = log.clone();
    eventually(Duration::from_secs(60), "every record handled", move || {
        ok_values(&l, "a").len() >= 4 && ok_values(&l, "b").len() >= 4
    })
    .await;
    h1.shutdown();
    h2.shutdown();
    r1.await.unwrap().unwrap();
    r2.await.unwrap().unwrap();
    for key in ["a", "b"] {
        let mut firsts: Vec<String> = Vec::new();
        for v in ok_values(&log, key) {
            if !firsts.contains(&v) {
                firsts.push(v);
            }
        }
        assert_eq!(
            firsts,
            ["0", "1", "2", "3"],
            "key {key}: {:?}",
            log.lock().unwrap()
        );
    }
}
