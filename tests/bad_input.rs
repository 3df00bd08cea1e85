//! Bad input gives clear errors or log lines, and no record is skipped silently.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redrive::{BoxError, CommitPolicy, Error, Record, Route, Worker};
use support::*;
use tower::service_fn;

fn noop(
) -> impl tower::Service<Record, Response = (), Error = BoxError, Future = impl Send + 'static>
       + Clone
       + Send
       + 'static {
    service_fn(|_r: Record| async { Ok::<_, BoxError>(()) })
}

fn setting_of(e: Error) -> String {
    match e {
        Error::Config { setting, .. } => setting,
        other => panic!("expected a config error, got {other}"),
    }
}

/// A transactional worker's loop assumes eager rebalancing and reads committed outputs only:
/// the consumer properties that would break either are refused at `build()`, not accepted
/// and left to drop records later.
#[test]
fn a_transactional_worker_refuses_incremental_rebalancing_and_other_isolation_levels() {
    let txn = |key: &str, value: &str| {
        Worker::builder()
            .bootstrap_servers("127.0.0.1:1")
            .group_id("g")
            .transactional(redrive::transaction::Transactional::new("t-0"))
            .property(key, value)
            .route(Route::new("t", noop()))
            .build()
            .err()
    };
    for (key, value) in [
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("group.protocol", "consumer"),
        ("isolation.level", "read_uncommitted"),
    ] {
        let e = txn(key, value).unwrap_or_else(|| panic!("{key}={value} was accepted"));
        assert!(e.to_string().contains(value), "{e}");
        assert_eq!(setting_of(e), key);
    }
    // The same properties are a plain worker's to choose.
    let plain = Worker::builder()
        .bootstrap_servers("127.0.0.1:1")
        .group_id("g")
        .property("partition.assignment.strategy", "cooperative-sticky")
        .route(Route::new("t", noop()))
        .build();
    assert!(plain.is_ok(), "{:?}", plain.err());
}

/// After-rollback settings that cannot work are refused at `build()`, naming the setting.
#[test]
fn impossible_rollback_settings_are_refused() {
    use redrive::transaction::Transactional;
    let build = |t: Transactional| {
        Worker::builder()
            .bootstrap_servers("127.0.0.1:1")
            .group_id("g")
            .transactional(t)
            .route(Route::new("t", noop()))
            .build()
            .err()
            .map(setting_of)
    };
    let t = || Transactional::new("t-0");
    assert_eq!(
        build(t().max_failed_transactions(0)).as_deref(),
        Some("max_failed_transactions")
    );
    let backwards = t().rollback_backoff(Duration::from_secs(2), Duration::from_secs(1));
    assert_eq!(build(backwards).as_deref(), Some("rollback_backoff"));
    let zero = t().rollback_backoff(Duration::ZERO, Duration::from_secs(1));
    assert_eq!(build(zero).as_deref(), Some("rollback_backoff"));
    assert_eq!(build(t()), None);
}

/// A zero handler timeout would fail every call: refused at `build()`, naming the route.
#[test]
fn a_zero_handler_timeout_is_refused() {
    let e = Worker::builder()
        .bootstrap_servers("127.0.0.1:1")
        .group_id("g")
        .route(Route::new("t", noop()).handler_timeout(Duration::ZERO))
        .build()
        .err()
        .expect("accepted");
    assert!(e.to_string().contains("route `t`"), "{e}");
    assert_eq!(setting_of(e), "handler_timeout");
}

/// A circuit breaker with impossible settings is refused at `build()` naming the route; a
/// transactional worker refuses a breaker at all (a paused transaction would time out).
#[test]
fn circuit_breaker_mistakes_are_refused_at_build() {
    use redrive::policy::CircuitBreaker;
    let build = |breaker: CircuitBreaker, transactional: bool| {
        let mut b = Worker::builder()
            .bootstrap_servers("127.0.0.1:1")
            .group_id("g")
            .route(Route::new("t", noop()).circuit_breaker(breaker));
        if transactional {
            b = b.transactional(redrive::transaction::Transactional::new("t-0"));
        }
        b.build().err()
    };
    let zero = build(CircuitBreaker::new().consecutive_failures(0), false).expect("accepted");
    assert!(zero.to_string().contains("route `t`"), "{zero}");
    assert!(zero.to_string().contains("consecutive_failures"), "{zero}");
    assert_eq!(setting_of(zero), "circuit_breaker");
    let txn = build(CircuitBreaker::new(), true).expect("a transactional breaker was accepted");
    assert!(txn.to_string().contains("transaction"), "{txn}");
    assert_eq!(setting_of(txn), "circuit_breaker");
    assert!(build(CircuitBreaker::new(), false).is_none());
}

#[test]
fn config_mistakes_name_the_setting() {
    let base = || {
        Worker::builder()
            .bootstrap_servers("127.0.0.1:1")
            .group_id("g")
    };
    let e = Worker::builder()
        .bootstrap_servers("127.0.0.1:1")
        .route(Route::new("t", noop()))
        .build()
        .err()
        .unwrap();
    assert_eq!(setting_of(e), "group.id");
    let e = Worker::builder()
        .group_id("g")
        .route(Route::new("t", noop()))
        .build()
        .err()
        .unwrap();
    assert_eq!(setting_of(e), "bootstrap.servers");
    let e = base().build().err().unwrap();
    assert_eq!(setting_of(e), "route");
    let e = base()
        .route(Route::new("t", noop()).concurrency(0))
        .build()
        .err()
        .unwrap();
    assert_eq!(setting_of(e), "concurrency");
    let e = base()
        .route(Route::new("t", noop()))
        .route(Route::new("t", noop()).name("other"))
        .build()
        .err()
        .unwrap();
    assert!(e.to_string().contains("read by two routes"), "{e}");
    let e = base()
        .route(
            Route::new("t", noop())
                .retry(redrive::policy::RetryPolicy::new())
                .without_headers(),
        )
        .build()
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("route `t` has a retry policy"),
        "{e}"
    );
    assert_eq!(setting_of(e), "without_headers");
    let e = base()
        .property("enable.auto.commit", "true")
        .route(Route::new("t", noop()))
        .build()
        .err()
        .unwrap();
    assert_eq!(setting_of(e), "enable.auto.commit");
    let e = base()
        .property("no.such.property", "1")
        .route(Route::new("t", noop()))
        .build()
        .err()
        .unwrap();
    assert_eq!(setting_of(e), "no.such.property");
    // The producer's default codec can be replaced; a codec librdkafka lacks is named.
    let e = base()
        .producer_property("compression.type", "brotli")
        .route(Route::new("t", noop()).retry(redrive::policy::RetryPolicy::new()))
        .build()
        .err()
        .unwrap();
    assert!(e.to_string().contains("brotli"), "{e}");
    assert_eq!(setting_of(e), "compression.type");
    base()
        .producer_property("compression.type", "none")
        .route(Route::new("t", noop()).retry(redrive::policy::RetryPolicy::new()))
        .build()
        .expect("an uncompressed producer is a valid choice");
    let e = base()
        .max_in_flight_records(0)
        .route(Route::new("t", noop()))
        .build()
        .err()
        .unwrap();
    assert_eq!(setting_of(e), "max_in_flight_records");
    let e = base()
        .commit_policy(CommitPolicy::async_every(0))
        .route(Route::new("t", noop()))
        .build()
        .err()
        .unwrap();
    assert_eq!(setting_of(e), "commit_policy");
    let e = "sometimes".parse::<CommitPolicy>().unwrap_err();
    assert!(
        e.to_string().contains("unknown commit policy `sometimes`"),
        "{e}"
    );
}

#[tokio::test]
async fn garbage_bootstrap_fails_start_up_clearly() {
    let w = Worker::builder()
        .bootstrap_servers("no-such-host.invalid:9")
        .group_id("g")
        .startup_timeout(Duration::from_secs(2))
        .route(Route::new("t", noop()))
        .build()
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(30), w.run())
        .await
        .expect("start-up must give up")
        .unwrap_err();
    assert!(matches!(e, Error::BrokerUnreachable { .. }), "{e}");
    assert!(e.to_string().contains("no-such-host.invalid:9"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_is_named() {
    let bootstrap = bootstrap();
    let topic = unique("missing");
    let w = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(unique("g"))
        .route(Route::new(&topic, noop()))
        .build()
        .unwrap();
    let e = w.run().await.unwrap_err();
    match e {
        Error::TopicNotFound { topic: t } => assert_eq!(t, topic),
        other => panic!("expected TopicNotFound, got {other}"),
    }
}

/// A panicking handler fails its record; the worker keeps running and handles the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_does_not_stop_the_worker() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("panic");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 10).await;
    let ok = Arc::new(AtomicU64::new(0));
    let svc = {
        let ok = ok.clone();
        service_fn(move |r: Record| {
            let ok = ok.clone();
            async move {
                if r.offset() == 3 {
                    panic!("boom at offset 3");
                }
                ok.fetch_add(1, Ordering::Relaxed);
                Ok::<_, BoxError>(())
            }
        })
    };
    let w = test_worker(&bootstrap, &group)
        .commit_policy(CommitPolicy::sync_per_record())
        .route(Route::new(&topic, svc))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "9 records ok", || {
        ok.load(Ordering::Relaxed) >= 9
    })
    .await;
    eventually(Duration::from_secs(10), "all 10 final", || {
        h.records_finished() >= 10
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(committed(&bootstrap, &group, &topic, 1)[&0], Some(10));
}

/// Records bigger than the in-flight byte bound are still handled (alone), never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_larger_than_the_byte_bound_is_handled() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("big");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    let p = producer(&bootstrap);
    let big = vec![7u8; 200_000];
    for _ in 0..3 {
        p.send(
            rdkafka::producer::FutureRecord::<(), _>::to(&topic).payload(&big),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let svc = {
        let sizes = sizes.clone();
        service_fn(move |r: Record| {
            let sizes = sizes.clone();
            async move {
                sizes.lock().unwrap().push(r.value().map_or(0, |v| v.len()));
                Ok::<_, BoxError>(())
            }
        })
    };
    let w = test_worker(&bootstrap, &group)
        .max_in_flight_bytes(1000)
        .route(Route::new(&topic, svc))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "3 big records handled", || {
        sizes.lock().unwrap().len() >= 3
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(*sizes.lock().unwrap(), vec![200_000; 3]);
}

/// A record so large that its retry copy (value plus failure headers) exceeds the maximum
/// record size cannot hop; it reaches the DLT without its value, with the reason and the
/// original's coordinates, and the partition goes on. A 0-byte value is handled like any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_to_copy_reaches_the_dlt_without_its_value() {
    use rdkafka::message::Message;
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("max-size");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    let p = producer(&bootstrap);
    // librdkafka's default message.max.bytes is 1,000,000: this fits, its copy does not.
    let big = vec![b'x'; 999_800];
    for (key, value) in [
        ("small-1", &b"s"[..]),
        ("big", &big[..]),
        ("empty", &b""[..]),
        ("small-2", &b"s"[..]),
    ] {
        p.send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key(key)
                .payload(value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let svc = {
        let handled = handled.clone();
        service_fn(move |r: Record| {
            let handled = handled.clone();
            async move {
                let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
                if key == "big" {
                    return Err::<(), BoxError>("x".repeat(3000).into());
                }
                handled
                    .lock()
                    .unwrap()
                    .push((key, r.value().map(|v| v.len())));
                Ok(())
            }
        })
    };
    let policy = redrive::policy::RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(100));
    let dlt = policy.topology(&topic).dlt().unwrap().to_owned();
    let w = test_worker(&bootstrap, &group)
        .commit_policy(CommitPolicy::sync_per_record())
        .route(Route::new(&topic, svc).retry(policy))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while committed(&bootstrap, &group, &topic, 1)[&0] != Some(4) {
        assert!(
            std::time::Instant::now() < deadline,
            "committed {:?}, handled {:?}",
            committed(&bootstrap, &group, &topic, 1),
            handled.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.shutdown();
    run.await.unwrap().unwrap();
    let mut got = handled.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [
            ("empty".to_owned(), Some(0)),
            ("small-1".to_owned(), Some(1)),
            ("small-2".to_owned(), Some(1))
        ]
    );
    let dead = read_topic(&bootstrap, &dlt);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key(), Some(&b"big"[..]));
    assert_eq!(
        dead[0].payload(),
        Some(&b""[..]),
        "the value stays behind: empty, not a tombstone"
    );
    let why =
        String::from_utf8_lossy(header(&dead[0], "redrive-value-dropped").unwrap()).into_owned();
    assert!(
        why.contains("999800-byte value") && why.contains(&format!("{topic}/0@1")),
        "{why}"
    );
}

/// A record whose headers alone (999,600 bytes, a 1-byte value) make any copy too large, and
/// one with 100,000 headers. Both reach the DLT within 10 s, the first without its value (an
/// empty one, not a tombstone) and without its own headers, `redrive-headers-dropped` saying
/// how many. The records around them are handled; commits reach the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_whose_headers_alone_are_too_large_reach_the_dlt_within_10_s() {
    use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
    init_tracing();
    let bootstrap = bootstrap();
    let (topic, group) = (unique("huge-headers"), unique("g"));
    create_topic(&bootstrap, &topic, 1).await;
    let p = producer(&bootstrap);
    // Fits librdkafka's 1,000,000-byte message.max.bytes; with the failure headers it does not.
    let wide = vec![b'h'; 999_600];
    let fat = OwnedHeaders::new().insert(Header {
        key: "blob",
        value: Some(&wide[..]),
    });
    let many = (0..100_000).fold(OwnedHeaders::new_with_capacity(100_000), |h, i| {
        h.insert(Header {
            key: "n",
            value: Some(&[(i % 251) as u8][..]),
        })
    });
    for (key, headers) in [
        ("small-1", None),
        ("fat", Some(fat)),
        ("many", Some(many)),
        ("small-2", None),
    ] {
        let mut r = rdkafka::producer::FutureRecord::to(&topic)
            .key(key)
            .payload("v");
        if let Some(h) = headers {
            r = r.headers(h);
        }
        p.send(r, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let ok = Arc::new(std::sync::Mutex::new(Vec::new()));
    let svc = {
        let ok = ok.clone();
        service_fn(move |r: Record| {
            let ok = ok.clone();
            async move {
                let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
                if !key.starts_with("small") {
                    return Err::<(), BoxError>("cannot handle it".into());
                }
                ok.lock().unwrap().push(key);
                Ok(())
            }
        })
    };
    let policy = redrive::policy::RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(100));
    let dlt = policy.topology(&topic).dlt().unwrap().to_owned();
    let w = test_worker(&bootstrap, &group)
        .route(Route::new(&topic, svc).retry(policy))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(30), "the worker joined", || {
        h.has_joined()
    })
    .await;
    let t0 = std::time::Instant::now();
    eventually(Duration::from_secs(10), "both dead letters written", || {
        watermark(&bootstrap, &dlt, 0) == 2
    })
    .await;
    let took = t0.elapsed();
    eventually(Duration::from_secs(10), "commits at the end", || {
        committed(&bootstrap, &group, &topic, 1)[&0] == Some(4)
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(*ok.lock().unwrap(), ["small-1", "small-2"]);
    let dead = read_topic(&bootstrap, &dlt);
    let find = |key: &str| {
        dead.iter()
            .find(|m| m.key() == Some(key.as_bytes()))
            .unwrap()
    };
    let fat = find("fat");
    assert_eq!(fat.payload(), Some(&b""[..]), "empty, not a tombstone");
    assert!(header(fat, "redrive-value-dropped").is_some());
    let dropped = header(fat, "redrive-headers-dropped").unwrap();
    assert_eq!(dropped, b"1", "the record's own header left out");
    let names: Vec<&str> = fat
        .headers()
        .map_or(vec![], |h| h.iter().map(|x| x.key).collect());
    assert!(
        names.contains(&redrive::headers::ORIGINAL_OFFSET),
        "coordinates kept: {names:?}"
    );
    let many = find("many");
    assert_eq!(many.payload(), Some(&b"v"[..]));
    println!("both dead letters written {took:?} after the worker joined");
}

/// A service that takes `ok` records, then fails in `poll_ready` (it can take no more).
#[derive(Clone)]
struct Exhausted {
    left: Arc<AtomicU64>,
}

impl tower::Service<Record> for Exhausted {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        match self.left.load(Ordering::SeqCst) {
            0 => std::task::Poll::Ready(Err("the connection pool is closed".into())),
            _ => std::task::Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, _r: Record) -> Self::Future {
        self.left.fetch_sub(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

/// A partition task that ends on its own (here: its service fails `poll_ready`) is noticed:
/// `Worker::run` returns `Error::Fatal` naming the partition, and the record the service
/// could not take is not committed (a restart reads it again), in both task loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_task_that_dies_stops_the_worker_without_losing_its_record() {
    init_tracing();
    let bootstrap = bootstrap();
    for concurrency in [1, 4] {
        let (topic, group) = (unique("dying"), unique("g"));
        create_topic(&bootstrap, &topic, 1).await;
        produce_n(&bootstrap, &topic, 1, 0, 10).await;
        let svc = Exhausted {
            left: Arc::new(AtomicU64::new(3)),
        };
        let w = test_worker(&bootstrap, &group)
            .commit_policy(CommitPolicy::sync_per_record())
            .route(Route::new(&topic, svc).concurrency(concurrency))
            .build()
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(60), w.run())
            .await
            .expect("the worker stopped by itself");
        let err = ended.expect_err("a dead partition task ends run with an error");
        assert!(
            matches!(err, Error::Fatal(_)) && err.to_string().contains(&format!("{topic}/0")),
            "{err}"
        );
        let at = committed(&bootstrap, &group, &topic, 1)[&0].unwrap_or(0);
        assert!(
            at <= 3,
            "committed {at}: past the record the service never took (concurrency {concurrency})"
        );
    }
}

/// With the `ssl` feature a worker accepts TLS and SASL/SCRAM settings (librdkafka refuses
/// them when built without OpenSSL).
#[cfg(feature = "ssl")]
#[test]
fn the_ssl_feature_accepts_tls_and_scram_settings() {
    let built = Worker::builder()
        .bootstrap_servers("127.0.0.1:1")
        .group_id("g")
        .property("security.protocol", "sasl_ssl")
        .property("sasl.mechanisms", "SCRAM-SHA-512")
        .property("sasl.username", "billing")
        .property("sasl.password", "s3cret")
        .route(Route::new("t", noop()))
        .build();
    assert!(built.is_ok(), "{:?}", built.err());
}
