//! Retry topics and the dead-letter topic against the real broker (docs/design.md: Topics, Headers, Delays, The commit rule, Classification).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::{Header as RdHeader, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use redrive::headers;
use redrive::policy::{DltStrategy, RetryPolicy};
use redrive::{BoxError, CommitPolicy, DecodeError, Error, Fatal, Record, Route, Worker};
use support::*;
use tower::service_fn;

/// One handler call.
#[derive(Clone, Debug)]
struct Call {
    topic: String,
    attempt: u32,
    at_ms: i64,
    due_ms: Option<i64>,
    ok: bool,
}

/// Every call per key, shared by handlers of several workers.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<HashMap<String, Vec<Call>>>>);

impl Ledger {
    fn calls(&self, key: &str) -> Vec<Call> {
        self.0.lock().unwrap().get(key).cloned().unwrap_or_default()
    }
    fn ok_count(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .values()
            .filter(|c| c.iter().any(|c| c.ok))
            .count()
    }
    fn all(&self) -> HashMap<String, Vec<Call>> {
        self.0.lock().unwrap().clone()
    }
}

fn key_of(r: &Record) -> String {
    String::from_utf8_lossy(r.key().map_or(&b""[..], |k| &k[..])).into_owned()
}

fn index_of(key: &str) -> u64 {
    key.trim_start_matches("key-").parse().unwrap_or(u64::MAX)
}

/// A handler that logs each call in `ledger` and fails as `script(index, call number)` says.
fn scripted(
    ledger: Ledger,
    script: fn(u64, usize) -> Result<(), BoxError>,
) -> impl tower::Service<Record, Response = (), Error = BoxError, Future = impl Send> + Clone {
    service_fn(move |r: Record| {
        let ledger = ledger.clone();
        async move {
            let key = key_of(&r);
            let n = ledger.calls(&key).len() + 1;
            let res = script(index_of(&key), n);
            let call = Call {
                topic: r.topic().to_owned(),
                attempt: headers::attempt_of(r.headers()),
                at_ms: now_ms(),
                due_ms: headers::due_at_ms(r.headers()),
                ok: res.is_ok(),
            };
            ledger.0.lock().unwrap().entry(key).or_default().push(call);
            res
        }
    })
}

fn worker_with(
    bootstrap: &str,
    group: &str,
    route: Route<
        impl tower::Service<Record, Response = (), Error = BoxError, Future = impl Send + 'static>
            + Clone
            + Send
            + 'static,
    >,
) -> Worker {
    test_worker(bootstrap, group)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(200)))
        .route(route)
        .build()
        .unwrap()
}

fn no_early_starts(ledger: &Ledger) {
    for (key, calls) in ledger.all() {
        for c in calls {
            if let Some(due) = c.due_ms {
                assert!(
                    c.at_ms >= due,
                    "{key}: attempt {} on {} started {} ms before its due time",
                    c.attempt,
                    c.topic,
                    due - c.at_ms
                );
            }
        }
    }
}

/// 1,000 records: 10 % fail twice then succeed, 2 % always fail, 1 % fail fatally.
fn thousand_script(i: u64, n: usize) -> Result<(), BoxError> {
    if i % 10 == 1 && n <= 2 {
        return Err(format!("transient failure {n} of key-{i}").into());
    }
    if i % 50 == 2 {
        return Err(format!("key-{i} always fails").into());
    }
    if i % 100 == 3 {
        return Err(Fatal::new(format!("key-{i} is invalid")).into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_records_retry_and_dead_letter_with_nothing_lost() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("orders");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 4).await;
    produce_n(&bootstrap, &topic, 4, 0, 500).await;

    let policy = RetryPolicy::new().attempts(4).exponential(
        Duration::from_secs(1),
        2.0,
        Duration::from_secs(4),
    );
    let topology = policy.topology(&topic);
    println!("{topology}");
    let ledger = Ledger::default();
    let dead = Ledger::default();
    let w = worker_with(
        &bootstrap,
        &group,
        Route::new(&topic, scripted(ledger.clone(), thousand_script))
            .retry(policy)
            .dlt_handler(scripted(dead.clone(), |_, _| Ok(()))),
    );
    let handle = w.handle();
    let run = tokio::spawn(w.run());

    // Once the first half is through and its retries wait in the retry topics, the second
    // half must flow through the main topic at full speed.
    eventually(Duration::from_secs(90), "first 500 seen", || {
        ledger.all().len() >= 500
    })
    .await;
    let pending_since = Instant::now();
    let main_done = |l: &Ledger, n: usize| {
        l.all()
            .values()
            .filter(|c| c.iter().any(|c| c.attempt == 1))
            .count()
            >= n
    };
    produce_n(&bootstrap, &topic, 4, 500, 500).await;
    eventually(Duration::from_secs(60), "second 500 seen", || {
        main_done(&ledger, 1000)
    })
    .await;
    let second_half = pending_since.elapsed();
    // Records whose retries were still pending when the second half was through.
    let waiting = ledger
        .all()
        .iter()
        .filter(|(k, c)| {
            let i = index_of(k);
            (i % 10 == 1 && !c.iter().any(|c| c.ok)) || (i % 50 == 2 && c.len() < 4)
        })
        .count();
    println!("second half of the main topic handled in {second_half:?} while retries waited");

    eventually(
        Duration::from_secs(90),
        "every record ok or dead-lettered",
        || ledger.ok_count() + dead.all().len() >= 1000,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.shutdown();
    run.await.unwrap().unwrap();

    // Outcomes.
    let calls = ledger.all();
    let dlt = read_topic(&bootstrap, topology.dlt().unwrap());
    let mut ok = 0;
    for i in 0..1000u64 {
        let key = format!("key-{i}");
        let c = calls
            .get(&key)
            .unwrap_or_else(|| panic!("{key} never handled: lost"));
        let oks = c.iter().filter(|c| c.ok).count();
        let in_dlt = with_key(&dlt, &key).count();
        assert!(
            oks + in_dlt == 1,
            "{key}: handled ok {oks} times and in the DLT {in_dlt} times; calls {c:?}"
        );
        if i % 10 == 1 {
            assert_eq!(c.len(), 3, "{key} succeeds on its third attempt");
            assert_eq!(c[2].attempt, 3);
            assert_eq!(c[1].topic, topology.hops()[0].topic);
            assert_eq!(c[2].topic, topology.hops()[1].topic);
        } else if i % 50 == 2 {
            assert_eq!(c.len(), 4, "{key}: all four attempts");
            let m = with_key(&dlt, &key).next().unwrap();
            assert_eq!(
                header(m, headers::EXCEPTION_MESSAGE),
                Some(format!("{key} always fails").as_bytes())
            );
            assert_eq!(
                headers::decode_int(header(m, headers::ATTEMPTS).unwrap()),
                Some(5)
            );
        } else if i % 100 == 3 {
            assert_eq!(c.len(), 1, "{key}: fatal errors are not retried");
            let m = with_key(&dlt, &key).next().unwrap();
            assert_eq!(
                header(m, headers::EXCEPTION_MESSAGE),
                Some(format!("{key} is invalid").as_bytes())
            );
        } else {
            assert_eq!(c.len(), 1, "{key}");
        }
        ok += oks;
        if in_dlt == 1 {
            let m = with_key(&dlt, &key).next().unwrap();
            assert_eq!(header(m, headers::ORIGINAL_TOPIC), Some(topic.as_bytes()));
            let p = headers::decode_int(header(m, headers::ORIGINAL_PARTITION).unwrap()).unwrap();
            assert_eq!(p, (i % 4) as i32, "original partition");
            assert_eq!(m.partition(), p, "copies keep their partition");
            assert_eq!(
                header(m, headers::ORIGINAL_CONSUMER_GROUP),
                Some(group.as_bytes())
            );
            assert_eq!(m.payload(), Some(format!("value-{i}").as_bytes()));
        }
    }
    assert_eq!(ok, 1000 - 20 - 10);
    assert_eq!(dlt.len(), 30);
    assert_eq!(
        dead.all().len(),
        30,
        "the DLT handler saw every dead letter once"
    );
    no_early_starts(&ledger);
    assert!(
        waiting > 0,
        "retries were pending while the second half ran"
    );
    // Blocked by the back-off, the second half would take at least the pending 2 s and 4 s
    // delays.
    assert!(
        second_half < Duration::from_secs(2),
        "main-topic records waited for the back-off: {second_half:?}"
    );
    let ends = high_watermarks(&bootstrap, &topic, 4);
    let c = committed(&bootstrap, &group, &topic, 4);
    assert!(
        c.iter().all(|(p, o)| *o == Some(ends[p])),
        "main topic fully committed: {c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joining_during_back_off_loses_no_retry() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("rebalance-retry");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 4).await;
    produce_n(&bootstrap, &topic, 4, 0, 80).await;
    let policy = RetryPolicy::new().attempts(3).fixed(Duration::from_secs(4));
    let ledger = Ledger::default();
    let route = || {
        Route::new(
            &topic,
            scripted(ledger.clone(), |_, n| {
                if n == 1 {
                    Err("first try fails".into())
                } else {
                    Ok(())
                }
            }),
        )
        .retry(policy.clone())
    };
    let a = worker_with(&bootstrap, &group, route());
    let ha = a.handle();
    let run_a = tokio::spawn(a.run());
    eventually(Duration::from_secs(60), "first attempts done", || {
        ledger.all().len() >= 80
    })
    .await;
    // Every retry is now pending for ~4 s; a second member joins and takes half.
    let b = worker_with(&bootstrap, &group, route());
    let hb = b.handle();
    let run_b = tokio::spawn(b.run());
    eventually(Duration::from_secs(60), "b gets partitions", || {
        !hb.assignment().is_empty()
    })
    .await;
    eventually(Duration::from_secs(60), "all retries succeed", || {
        ledger.ok_count() >= 80
    })
    .await;
    ha.shutdown();
    hb.shutdown();
    run_a.await.unwrap().unwrap();
    run_b.await.unwrap().unwrap();
    no_early_starts(&ledger);
    for (key, calls) in ledger.all() {
        assert_eq!(calls.iter().filter(|c| c.ok).count(), 1, "{key}: {calls:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_pill_goes_to_the_dlt_once_with_the_decode_error() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("poison");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    let p = producer(&bootstrap);
    for v in [
        &br#"{"amount": 5}"#[..],
        b"\xff\xfe not json",
        br#"{"amount": 7}"#,
    ] {
        p.send(
            FutureRecord::to(&topic).key("k").payload(v),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let calls = Arc::new(Mutex::new(0u32));
    let handler = {
        let calls = calls.clone();
        service_fn(move |r: Record| {
            let calls = calls.clone();
            async move {
                *calls.lock().unwrap() += 1;
                let v: serde_json::Value =
                    serde_json::from_slice(r.value().map_or(&b""[..], |v| &v[..]))
                        .map_err(|e| DecodeError::new("Order", e))?;
                let _ = v;
                Ok::<_, BoxError>(())
            }
        })
    };
    let policy = RetryPolicy::new()
        .attempts(3)
        .fixed(Duration::from_millis(200));
    let dlt_topic = policy.topology(&topic).dlt().unwrap().to_owned();
    let w = worker_with(
        &bootstrap,
        &group,
        Route::new(&topic, handler).retry(policy),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "dead letter published", || {
        watermark(&bootstrap, &dlt_topic, 0) >= 1
    })
    .await;
    eventually(Duration::from_secs(20), "all three handled", || {
        *calls.lock().unwrap() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    h.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(*calls.lock().unwrap(), 3, "the poison pill was not retried");
    let dlt = read_topic(&bootstrap, &dlt_topic);
    assert_eq!(dlt.len(), 1);
    let msg =
        String::from_utf8_lossy(header(&dlt[0], headers::EXCEPTION_MESSAGE).unwrap()).into_owned();
    assert!(
        msg.contains("cannot decode the record value as Order"),
        "{msg}"
    );
    assert_eq!(
        dlt[0].payload(),
        Some(&b"\xff\xfe not json"[..]),
        "payload kept byte for byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_tombstones_and_user_headers_survive_every_hop() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("hops");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 2).await;
    let key: &[u8] = b"\x00\x01binary-key\xff";
    let user = OwnedHeaders::new()
        .insert(RdHeader {
            key: "traceparent",
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        })
        .insert(RdHeader {
            key: "bin",
            value: Some(&b"\x00\xff\x10"[..]),
        })
        .insert(RdHeader::<&[u8]> {
            key: "null",
            value: None,
        })
        .insert(RdHeader {
            key: "bin",
            value: Some("second"),
        });
    producer(&bootstrap)
        .send(
            FutureRecord::<[u8], [u8]>::to(&topic)
                .key(key)
                .partition(1)
                .headers(user),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let ledger = Ledger::default();
    let seen: Arc<Mutex<Vec<Record>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        service_fn(move |r: Record| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(r);
                Err::<(), BoxError>("always".into())
            }
        })
    };
    let policy = RetryPolicy::new().attempts(3).exponential(
        Duration::from_millis(200),
        2.0,
        Duration::from_secs(1),
    );
    let topology = policy.topology(&topic);
    let w = worker_with(
        &bootstrap,
        &group,
        Route::new(&topic, handler).retry(policy),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    let dlt_topic = topology.dlt().unwrap().to_owned();
    eventually(Duration::from_secs(60), "dead-lettered", || {
        watermark(&bootstrap, &dlt_topic, 1) >= 1
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    let _ = ledger;

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    let user_headers = |r: &Record| -> Vec<(String, Option<Vec<u8>>)> {
        r.headers()
            .iter()
            .filter(|h| !h.key.starts_with("retry_topic-") && !h.key.starts_with("kafka_"))
            .map(|h| (h.key.to_string(), h.value.as_ref().map(|v| v.to_vec())))
            .collect()
    };
    for r in seen.iter() {
        assert_eq!(r.key().map(|k| &k[..]), Some(key), "key on {}", r.topic());
        assert_eq!(r.value(), None, "tombstone on {}", r.topic());
        assert_eq!(r.partition(), 1);
        assert_eq!(
            user_headers(r),
            user_headers(&seen[0]),
            "user headers on {}",
            r.topic()
        );
    }
    assert_eq!(user_headers(&seen[0]).len(), 4);
    let dlt = read_topic(&bootstrap, &dlt_topic);
    assert_eq!(dlt.len(), 1);
    assert_eq!(dlt[0].key(), Some(key));
    assert_eq!(
        dlt[0].payload(),
        None,
        "a tombstone stays a tombstone in the DLT"
    );
    let names: Vec<String> = dlt[0]
        .headers()
        .unwrap()
        .iter()
        .map(|h| h.key.to_owned())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "bin").count(), 2, "{names:?}");
    assert_eq!(
        names.iter().filter(|n| *n == headers::ATTEMPTS).count(),
        1,
        "{names:?}"
    );
}

/// `Route::without_headers` is per route: the same record, with headers, reaches a route that
/// skips them with everything else intact, and a route next to it with its headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_headers_gets_everything_else() {
    init_tracing();
    let bootstrap = bootstrap();
    let (bare, full) = (unique("bare"), unique("full"));
    let group = unique("g");
    create_topic(&bootstrap, &bare, 1).await;
    create_topic(&bootstrap, &full, 1).await;
    for topic in [&bare, &full] {
        producer(&bootstrap)
            .send(
                FutureRecord::to(topic)
                    .key("k")
                    .payload("v")
                    .timestamp(1_700_000_000_000)
                    .headers(OwnedHeaders::new().insert(RdHeader {
                        key: "traceparent",
                        value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                    })),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let seen: Arc<Mutex<Vec<Record>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        service_fn(move |r: Record| {
            seen.lock().unwrap().push(r);
            std::future::ready(Ok::<_, BoxError>(()))
        })
    };
    let w = test_worker(&bootstrap, &group)
        .route(Route::new(&bare, handler.clone()).without_headers())
        .route(Route::new(&full, handler))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "both records handled", || {
        seen.lock().unwrap().len() == 2
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();

    let seen = seen.lock().unwrap();
    let of = |t: &str| seen.iter().find(|r| r.topic() == t).unwrap();
    let (b, f) = (of(&bare), of(&full));
    assert!(b.headers().is_empty(), "{:?}", b.headers());
    assert_eq!(f.headers().len(), 1, "the other route keeps its headers");
    for r in [b, f] {
        assert_eq!(r.key().map(|k| &k[..]), Some(&b"k"[..]));
        assert_eq!(r.value().map(|v| &v[..]), Some(&b"v"[..]));
        assert_eq!(r.timestamp().map(|t| t.millis), Some(1_700_000_000_000));
        assert_eq!((r.partition(), r.offset()), (0, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_retry_headers_are_attempt_one_not_a_crash_loop() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("garbage");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(300));
    let retry_topic = policy.topology(&topic).retry_topics()[0].clone();
    create_topic(&bootstrap, &retry_topic, 1).await;
    let p = producer(&bootstrap);
    let far_future = headers::encode_big_integer(now_ms() + 365 * 24 * 3600 * 1000);
    let cases: Vec<(&str, OwnedHeaders)> = vec![
        (
            "wrong-length",
            OwnedHeaders::new().insert(RdHeader {
                key: headers::ATTEMPTS,
                value: Some(&[0u8, 1, 2][..]),
            }),
        ),
        (
            "negative",
            OwnedHeaders::new().insert(RdHeader {
                key: headers::ATTEMPTS,
                value: Some(&headers::encode_int(-3)[..]),
            }),
        ),
        (
            "far-future",
            OwnedHeaders::new().insert(RdHeader {
                key: headers::BACKOFF_TIMESTAMP,
                value: Some(&far_future[..]),
            }),
        ),
        (
            "garbage-due",
            OwnedHeaders::new().insert(RdHeader {
                key: headers::BACKOFF_TIMESTAMP,
                value: Some(&[1u8; 20][..]),
            }),
        ),
        (
            "duplicated",
            OwnedHeaders::new()
                .insert(RdHeader {
                    key: headers::ATTEMPTS,
                    value: Some(&headers::encode_int(2)[..]),
                })
                .insert(RdHeader {
                    key: headers::ATTEMPTS,
                    value: Some(&headers::encode_int(2)[..]),
                }),
        ),
    ];
    for (k, h) in cases {
        p.send(
            FutureRecord::to(&retry_topic)
                .key(k)
                .payload("v")
                .headers(h),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let ledger = Ledger::default();
    let w = worker_with(
        &bootstrap,
        &group,
        Route::new(&topic, scripted(ledger.clone(), |_, _| Ok(()))).retry(policy),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(
        Duration::from_secs(60),
        "all garbage records handled",
        || ledger.all().len() >= 5,
    )
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    let all = ledger.all();
    assert_eq!(all["wrong-length"][0].attempt, 1);
    assert_eq!(all["negative"][0].attempt, 1);
    assert_eq!(all["duplicated"][0].attempt, 2);
    for (k, calls) in all {
        assert_eq!(calls.len(), 1, "{k} handled once");
    }
}

/// A dead letter produced back onto a retry topic as is (attempts beyond the policy, due
/// long ago, exception headers from its last failure): handled at once, exactly once; if it
/// fails again it returns to the DLT as exhausted, it never loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_onto_a_retry_topic_is_handled_once() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("replayed");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(300));
    let topology = policy.topology(&topic);
    let (retry_topic, dlt) = (
        topology.retry_topics()[0].clone(),
        topology.dlt().unwrap().to_owned(),
    );
    create_topic(&bootstrap, &retry_topic, 1).await;
    let p = producer(&bootstrap);
    let long_ago = headers::encode_big_integer(now_ms() - 30 * 24 * 3600 * 1000);
    // Keys key-1 (fails again) and key-2 (succeeds now).
    for key in ["key-1", "key-2"] {
        let h = OwnedHeaders::new()
            .insert(RdHeader {
                key: headers::ATTEMPTS,
                value: Some(&headers::encode_int(7)[..]),
            })
            .insert(RdHeader {
                key: headers::BACKOFF_TIMESTAMP,
                value: Some(&long_ago[..]),
            })
            .insert(RdHeader {
                key: headers::ORIGINAL_TOPIC,
                value: Some(topic.as_bytes()),
            })
            .insert(RdHeader {
                key: headers::EXCEPTION_MESSAGE,
                value: Some(&b"the failure that dead-lettered it"[..]),
            });
        p.send(
            FutureRecord::to(&retry_topic)
                .key(key)
                .payload("v")
                .headers(h),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let ledger = Ledger::default();
    let w = worker_with(
        &bootstrap,
        &group,
        Route::new(
            &topic,
            scripted(ledger.clone(), |index, _| {
                if index == 1 {
                    Err("still failing".into())
                } else {
                    Ok(())
                }
            }),
        )
        .retry(policy),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(
        Duration::from_secs(60),
        "the failing one back in the DLT",
        || watermark(&bootstrap, &dlt, 0) >= 1 && ledger.all().len() >= 2,
    )
    .await;
    // Give a wrong loop the time to show itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.shutdown();
    run.await.unwrap().unwrap();
    let all = ledger.all();
    assert_eq!(all["key-2"].len(), 1);
    assert_eq!(all["key-1"].len(), 1);
    assert_eq!(all["key-1"][0].attempt, 7);
    let dead = read_topic(&bootstrap, &dlt);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], headers::ATTEMPTS),
        Some(&8i32.to_be_bytes()[..])
    );
    let msg =
        String::from_utf8_lossy(header(&dead[0], headers::EXCEPTION_MESSAGE).unwrap()).into_owned();
    assert!(msg.contains("still failing"), "{msg}");
    assert_eq!(
        watermark(&bootstrap, &retry_topic, 0),
        2,
        "nothing went back to the retry topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_retry_topic_with_too_few_partitions_is_named() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("narrow");
    create_topic(&bootstrap, &topic, 3).await;
    let policy = RetryPolicy::new();
    let retry_topic = policy.topology(&topic).retry_topics()[0].clone();
    create_topic(&bootstrap, &retry_topic, 1).await;
    let w = worker_with(
        &bootstrap,
        &unique("g"),
        Route::new(&topic, scripted(Ledger::default(), |_, _| Ok(()))).retry(policy),
    );
    match w.run().await {
        Err(Error::TooFewPartitions {
            topic: t,
            actual: 1,
            required: 3,
        }) => assert_eq!(t, retry_topic),
        other => panic!("expected TooFewPartitions for {retry_topic}, got {other:?}"),
    }
    let policy = RetryPolicy::new().auto_create_topics(false);
    let other = unique("nocreate");
    create_topic(&bootstrap, &other, 1).await;
    let w = worker_with(
        &bootstrap,
        &unique("g"),
        Route::new(&other, scripted(Ledger::default(), |_, _| Ok(()))).retry(policy),
    );
    match w.run().await {
        Err(Error::TopicNotFound { topic: t }) => assert_eq!(t, format!("{other}-retry")),
        res => panic!("expected TopicNotFound, got {res:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_retries_run_before_the_first_hop() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("inmem");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 10).await;
    let policy = RetryPolicy::new().in_memory(2, Duration::from_millis(20));
    let retry_topic = policy.topology(&topic).retry_topics()[0].clone();
    let ledger = Ledger::default();
    // Fails twice in memory, succeeds on the third call: no hop at all.
    let w = worker_with(
        &bootstrap,
        &group,
        Route::new(
            &topic,
            scripted(ledger.clone(), |_, n| {
                if n <= 2 {
                    Err("flaky".into())
                } else {
                    Ok(())
                }
            }),
        )
        .retry(policy),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "all ok", || {
        ledger.ok_count() >= 10
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    for (k, calls) in ledger.all() {
        assert_eq!(calls.len(), 3, "{k}");
        assert!(
            calls.iter().all(|c| c.topic == topic),
            "{k} never left the main topic"
        );
    }
    assert_eq!(
        high_watermarks(&bootstrap, &retry_topic, 1)[&0],
        0,
        "nothing published to {retry_topic}"
    );
}

fn billing_fails_every_third(i: u64, n: usize) -> Result<(), BoxError> {
    if i % 3 == 0 && n == 1 {
        Err("billing declined".into())
    } else {
        Ok(())
    }
}

fn shipping_fails_every_fifth(i: u64, n: usize) -> Result<(), BoxError> {
    if i % 5 == 0 && n == 1 {
        Err("no courier".into())
    } else {
        Ok(())
    }
}

/// Two consumer groups with retry policies on one topic, each failing its own records once.
/// With Spring's shared names both read `<topic>-retry`; with `group_scoped` each has its own.
/// Either way each group handles exactly its own retries: a copy the other group's flow wrote
/// is skipped, never handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_on_one_topic_each_handle_exactly_their_own_failures() {
    init_tracing();
    let bootstrap = bootstrap();
    for scoped in [false, true] {
        let topic = unique("shared-orders");
        create_topic(&bootstrap, &topic, 2).await;
        produce_n(&bootstrap, &topic, 2, 0, 60).await;
        let policy = RetryPolicy::new()
            .attempts(2)
            .fixed(Duration::from_millis(300))
            .group_scoped(scoped);
        let (billing, shipping) = (unique("billing"), unique("shipping"));
        let (bl, sl) = (Ledger::default(), Ledger::default());
        let route = |ledger: &Ledger, script: fn(u64, usize) -> Result<(), BoxError>| {
            Route::new(&topic, scripted(ledger.clone(), script)).retry(policy.clone())
        };
        let b = worker_with(&bootstrap, &billing, route(&bl, billing_fails_every_third));
        let s = worker_with(
            &bootstrap,
            &shipping,
            route(&sl, shipping_fails_every_fifth),
        );
        let (bh, sh) = (b.handle(), s.handle());
        let (br, sr) = (tokio::spawn(b.run()), tokio::spawn(s.run()));
        eventually(
            Duration::from_secs(90),
            "both groups handled every record",
            || bl.ok_count() == 60 && sl.ok_count() == 60,
        )
        .await;
        // Time for a copy of the other group to arrive, were it handled.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        bh.shutdown();
        sh.shutdown();
        br.await.unwrap().unwrap();
        sr.await.unwrap().unwrap();
        let retried = |ledger: &Ledger| -> BTreeSet<u64> {
            let all = ledger.all();
            let on_retry = |calls: &Vec<Call>| calls.iter().any(|c| c.topic != topic);
            all.iter()
                .filter(|(_, calls)| on_retry(calls))
                .map(|(k, _)| index_of(k))
                .collect()
        };
        let own = |m: u64| (0..60).filter(|i| i % m == 0).collect::<BTreeSet<u64>>();
        assert_eq!(
            retried(&bl),
            own(3),
            "billing retried exactly its own (scoped={scoped})"
        );
        assert_eq!(
            retried(&sl),
            own(5),
            "shipping retried exactly its own (scoped={scoped})"
        );
        if scoped {
            for (group, m) in [(&billing, 3), (&shipping, 5)] {
                let retry = format!("{topic}-{group}-retry");
                let copies: i64 = high_watermarks(&bootstrap, &retry, 2).values().sum();
                assert_eq!(
                    copies,
                    own(m).len() as i64,
                    "{retry} holds its group's copies"
                );
            }
        }
    }
}

/// always_retry_on_error with a dead-letter handler that always fails: the record goes back
/// to the DLT and is tried again at the policy's pace (a fixed 300 ms here), not in a hot
/// loop; each try starts no earlier than that after the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlt_handler_that_always_fails_retries_at_the_policys_pace() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("dlt-pace");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 1).await;
    let policy = RetryPolicy::new()
        .attempts(1)
        .fixed(Duration::from_millis(300));
    let dlt_topic = policy.topology(&topic).dlt().unwrap().to_owned();
    let dead = Ledger::default();
    let w = worker_with(
        &bootstrap,
        &group,
        Route::new(
            &topic,
            scripted(Ledger::default(), |_, _| Err("fail".into())),
        )
        .retry(policy)
        .dlt_handler(scripted(
            dead.clone(),
            |_, _| Err("dlt handler down".into()),
        )),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "dlt handler called", || {
        !dead.calls("key-0").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    h.shutdown();
    run.await.unwrap().unwrap();
    let calls = dead.calls("key-0");
    // 3 s at one try per 300 ms: about 10; a hot loop makes hundreds.
    assert!(
        (4..=14).contains(&calls.len()),
        "{} tries of the dead letter in ~3 s",
        calls.len()
    );
    for pair in calls.windows(2) {
        let gap = pair[1].at_ms - pair[0].at_ms;
        assert!(gap >= 290, "a try {gap} ms after the one before: {calls:?}");
    }
    let copies = read_topic(&bootstrap, &dlt_topic);
    let failures: Vec<Option<&[u8]>> = copies
        .iter()
        .map(|m| header(m, headers::DLT_HANDLER_FAILURES))
        .collect();
    assert_eq!(
        failures[0], None,
        "the first dead letter has no failures yet"
    );
    assert_eq!(failures[1], Some(&[0, 0, 0, 1][..]), "{failures:?}");
    assert_eq!(failures[2], Some(&[0, 0, 0, 2][..]), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlt_strategies_retry_or_stop() {
    init_tracing();
    let bootstrap = bootstrap();
    // always_retry_on_error: a failing DLT handler sends the record back to the DLT.
    let topic = unique("dlt-retry");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 1).await;
    let policy = RetryPolicy::new().attempts(1);
    let dlt_topic = policy.topology(&topic).dlt().unwrap().to_owned();
    let dead = Ledger::default();
    let w = worker_with(
        &bootstrap,
        &group,
        Route::new(
            &topic,
            scripted(Ledger::default(), |_, _| Err("fail".into())),
        )
        .retry(policy)
        .dlt_handler(scripted(dead.clone(), |_, n| {
            if n == 1 {
                Err("dlt handler hiccup".into())
            } else {
                Ok(())
            }
        })),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "dlt handled twice", || {
        dead.calls("key-0").len() >= 2
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    let dlt = read_topic(&bootstrap, &dlt_topic);
    assert_eq!(dlt.len(), 2, "the failed dead letter was republished once");
    assert_eq!(
        header(&dlt[1], headers::EXCEPTION_MESSAGE),
        Some(&b"dlt handler hiccup"[..])
    );

    // fail_on_error: the DLT partition stops at the failing record, uncommitted.
    let topic = unique("dlt-stop");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 3).await;
    let policy = RetryPolicy::new()
        .attempts(1)
        .dlt_strategy(DltStrategy::FailOnError);
    let dlt_topic = policy.topology(&topic).dlt().unwrap().to_owned();
    let dead = Ledger::default();
    let main = Ledger::default();
    let w = worker_with(
        &bootstrap,
        &group,
        Route::new(
            &topic,
            scripted(main.clone(), |i, _| {
                if i == 1 {
                    Err("fail".into())
                } else {
                    Ok(())
                }
            }),
        )
        .retry(policy)
        .dlt_handler(scripted(dead.clone(), |_, _| {
            Err("dlt handler broken".into())
        })),
    );
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "dlt handler called", || {
        !dead.all().is_empty()
    })
    .await;
    eventually(Duration::from_secs(20), "main topic keeps flowing", || {
        main.all().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!run.is_finished(), "the worker keeps running");
    h.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(
        dead.calls("key-1").len(),
        1,
        "the DLT partition stopped at the record"
    );
    let c = committed(&bootstrap, &group, &dlt_topic, 1)[&0];
    assert!(
        c.unwrap_or(0) == 0,
        "the failing dead letter is not committed past: {c:?}"
    );
    assert_eq!(committed(&bootstrap, &group, &topic, 1)[&0], Some(3));
}

/// A handler call over the route's `handler_timeout` fails with "request timed out": the
/// record goes down its retry chain (and succeeds there) while the records behind it on its
/// partition are handled at once, not after the slow call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_the_handler_timeout_goes_down_the_retry_chain() {
    init_tracing();
    let bootstrap = bootstrap();
    let (topic, group) = (unique("slow"), unique("g"));
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 5).await;
    let seen: Arc<Mutex<Vec<(String, u32, std::time::Instant)>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        tower::service_fn(move |r: Record| {
            let seen = seen.clone();
            async move {
                let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
                let attempt = redrive::headers::attempt_of(r.headers());
                if key == "key-1" && attempt == 1 {
                    // Far beyond the limit: the call is dropped at 300 ms.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                seen.lock()
                    .unwrap()
                    .push((key, attempt, std::time::Instant::now()));
                Ok::<_, BoxError>(())
            }
        })
    };
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(300));
    let dlt = policy.topology(&topic).dlt().unwrap().to_owned();
    let w = test_worker(&bootstrap, &group)
        .route(
            Route::new(&topic, handler)
                .handler_timeout(Duration::from_millis(300))
                .retry(policy),
        )
        .build()
        .unwrap();
    let (h, t0) = (w.handle(), std::time::Instant::now());
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(30), "every record handled", || {
        seen.lock().unwrap().len() == 5
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    let slow: Vec<_> = seen.iter().filter(|(k, _, _)| k == "key-1").collect();
    assert_eq!(slow.len(), 1, "{seen:?}");
    assert_eq!(
        slow[0].1, 2,
        "handled on its second attempt, from the retry topic"
    );
    let behind = seen.iter().find(|(k, _, _)| k == "key-4").unwrap();
    assert!(
        behind.2 < slow[0].2,
        "the records behind it did not wait for its retry"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "no 30 s wait");
    assert_eq!(
        watermark(&bootstrap, &dlt, 0).max(0),
        0,
        "nothing dead-lettered"
    );
}

/// `headers = compact`: the retry flow runs on one `redrive-compact` header. Every 3rd record
/// fails every attempt (to the DLT), every other record fails once; attempts, due times and
/// the original coordinates read back from the compact header alone (no Spring retry-flow
/// header on any copy), nothing runs early, every record ends handled or dead-lettered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compact_profile_carries_the_whole_flow_in_one_header() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("compact");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 2).await;
    produce_n(&bootstrap, &topic, 2, 0, 30).await;
    let ledger = Ledger::default();
    fn script(i: u64, call: usize) -> Result<(), BoxError> {
        match (i % 3, call) {
            (0, _) | (_, 1) => Err(format!("record {i} failed call {call}").into()),
            _ => Ok(()),
        }
    }
    let policy = RetryPolicy::new()
        .attempts(3)
        .fixed(Duration::from_millis(300))
        .header_profile(headers::HeaderProfile::Compact);
    let route = Route::new(&topic, scripted(ledger.clone(), script)).retry(policy);
    let w = worker_with(&bootstrap, &group, route);
    let h = w.handle();
    let run = tokio::spawn(w.run());
    let dlt = format!("{topic}-dlt");
    eventually(
        Duration::from_secs(60),
        "20 handled and 10 dead letters",
        || {
            ledger.ok_count() == 20
                && high_watermarks(&bootstrap, &dlt, 2).values().sum::<i64>() == 10
        },
    )
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    no_early_starts(&ledger);
    for (key, calls) in ledger.all() {
        let attempts: Vec<u32> = calls.iter().map(|c| c.attempt).collect();
        let want: &[u32] = if index_of(&key) % 3 == 0 {
            &[1, 2, 3]
        } else {
            &[1, 2]
        };
        assert_eq!(attempts, want, "{key}");
    }
    let spring_flow = |m: &rdkafka::message::OwnedMessage| {
        use rdkafka::message::{Headers as _, Message as _};
        m.headers().is_some_and(|h| {
            h.iter()
                .any(|x| x.key.starts_with("retry_topic-") || x.key.starts_with("kafka_"))
        })
    };
    // A fixed back-off has one retry topic, as in Spring.
    let copies: Vec<_> = read_topic(&bootstrap, &format!("{topic}-retry"))
        .into_iter()
        .chain(read_topic(&bootstrap, &dlt))
        .collect();
    assert_eq!(
        copies.len(),
        30 + 10 + 10,
        "first and second retries, dead letters"
    );
    for m in &copies {
        assert!(!spring_flow(m), "a Spring header on {m:?}");
        let c = headers::Compact::decode(header(m, headers::COMPACT).expect("compact header"))
            .expect("a readable compact header");
        let i = index_of(&String::from_utf8_lossy(
            rdkafka::message::Message::key(m).unwrap(),
        ));
        assert_eq!((c.topic, c.group), (topic.as_str(), group.as_str()));
        assert_eq!(
            c.partition,
            (i % 2) as i32,
            "record {i}'s original partition"
        );
        assert!(
            c.message.starts_with(&format!("record {i} failed")),
            "{}",
            c.message
        );
    }
}

/// Copies due 4 s ahead, handed over 3 at a time: a retry partition whose hand-over is full
/// and due more than a second ahead stops fetching, drops what librdkafka fetched ahead (a
/// seek back to its next record) and fetches again once its task took every batch
/// (`Feeder::take_hold`). Records produced in two waves 1.5 s apart all come back once, none
/// early, each within 500 ms of its due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_due_far_ahead_stop_fetching_and_none_is_late_or_lost() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("paced");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 2).await;
    let ledger = Ledger::default();
    fn once(_: u64, call: usize) -> Result<(), BoxError> {
        match call {
            1 => Err("first attempt fails".into()),
            _ => Ok(()),
        }
    }
    let policy = RetryPolicy::new().attempts(2).fixed(Duration::from_secs(4));
    let w = test_worker(&bootstrap, &group)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(200)))
        .max_poll_records(3)
        .route(Route::new(&topic, scripted(ledger.clone(), once)).retry(policy))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    produce_n(&bootstrap, &topic, 2, 0, 20).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    produce_n(&bootstrap, &topic, 2, 20, 20).await;
    eventually(Duration::from_secs(60), "40 retried", || {
        ledger.ok_count() == 40
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    no_early_starts(&ledger);
    for (key, calls) in ledger.all() {
        assert_eq!(calls.len(), 2, "{key}: {calls:?}");
        let retry = &calls[1];
        let late = retry.at_ms - retry.due_ms.expect("a due time");
        assert!(late < 500, "{key} started {late} ms after its due time");
    }
}
