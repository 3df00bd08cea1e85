//! The retry-topic layer without a broker: an in-memory publisher records what would be
//! published; tokio's paused clock checks the back-off of in-memory retries and of failed
//! publishes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redrive::headers;
use redrive::layer::retry_topic::RetryTopicLayer;
use redrive::policy::{DltStrategy, ErrorMatcher, RetryPolicy};
use redrive::publish::{Outgoing, Publish, PublishFuture};
use redrive::{headers::Headers, BoxError, DecodeError, Record};
use tower::{service_fn, Layer, Service, ServiceExt};

#[derive(Default)]
struct Memory {
    sent: Mutex<Vec<Outgoing>>,
    /// Every record given to `publish`, sent or failed.
    tried: Mutex<Vec<Outgoing>>,
    fail_first: u32,
    calls: AtomicU32,
}

impl Publish for Memory {
    fn publish(&self, record: &Outgoing) -> PublishFuture {
        self.tried.lock().unwrap().push(record.clone());
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail_first {
            return Box::pin(async { Err("broker unavailable".into()) });
        }
        self.sent.lock().unwrap().push(record.clone());
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("card declined")]
struct Declined;

fn record(topic: &str, headers: Headers) -> Record {
    Record::new(topic, 3, 42)
        .with_key(&b"k"[..])
        .with_value(&b"v"[..])
        .with_headers(headers)
}

async fn run(
    policy: RetryPolicy,
    publisher: Arc<Memory>,
    rec: Record,
    err: fn() -> BoxError,
) -> Result<(), BoxError> {
    let layer = RetryTopicLayer::new(policy, &["orders"], publisher, "billing", "orders");
    let mut svc = layer.layer(service_fn(move |_r: Record| async move {
        Err::<(), BoxError>(err())
    }));
    svc.ready().await?.call(rec).await
}

#[tokio::test]
async fn each_attempt_goes_to_the_next_topic_then_the_dlt() {
    let policy = RetryPolicy::new().attempts(4).exponential(
        Duration::from_secs(1),
        2.0,
        Duration::from_secs(3),
    );
    let topology = policy.topology("orders");
    let mem = Arc::new(Memory::default());
    let mut rec = record("orders", Headers::new());
    let mut topics = Vec::new();
    for _ in 0..4 {
        let before = now_ms();
        run(policy.clone(), mem.clone(), rec.clone(), || "boom".into())
            .await
            .unwrap();
        let out = mem.sent.lock().unwrap().last().cloned().unwrap();
        let due = headers::due_at_ms(&out.headers).unwrap();
        let attempt = headers::attempt_of(&out.headers);
        if out.topic != "orders-dlt" {
            let nominal = policy.delay_before_retry(attempt - 1).as_millis() as i64;
            assert!(
                due >= before + nominal && due <= now_ms() + nominal,
                "due {due} for attempt {attempt}"
            );
        }
        assert_eq!(out.partition, Some(3), "same partition");
        topics.push(out.topic.clone());
        rec = record(&out.topic, out.headers.clone());
    }
    assert_eq!(
        topics,
        [
            "orders-retry-1000",
            "orders-retry-2000",
            "orders-retry-3000",
            "orders-dlt"
        ]
    );
    assert_eq!(topology.dlt(), Some("orders-dlt"));
}

/// One service (as one partition's task holds) called with records of two topics and
/// partitions in turn: each failure's copy is built from its own record, not from the one
/// the layer saw before.
#[tokio::test]
async fn a_service_switching_topics_copies_each_record_as_it_was() {
    let policy = RetryPolicy::new().attempts(3).exponential(
        Duration::from_secs(1),
        2.0,
        Duration::from_secs(2),
    );
    let mem = Arc::new(Memory::default());
    let layer = RetryTopicLayer::new(policy, &["orders"], mem.clone(), "billing", "orders");
    let mut svc = layer.layer(service_fn(|_r: Record| async {
        Err::<(), BoxError>("boom".into())
    }));
    let inputs = [
        ("orders", 1, 10, "k1"),
        ("orders", 1, 11, "k2"),
        ("orders-retry-1000", 4, 7, "k3"),
        ("orders", 2, 12, "k4"),
    ];
    for (topic, partition, offset, key) in inputs {
        let mut headers = Headers::new();
        if topic != "orders" {
            headers.push(
                headers::ATTEMPTS,
                Some(bytes::Bytes::copy_from_slice(&2i32.to_be_bytes())),
            );
        }
        let rec = Record::new(topic, partition, offset)
            .with_key(key.as_bytes().to_vec())
            .with_value(&b"v"[..])
            .with_headers(headers);
        svc.ready().await.unwrap().call(rec).await.unwrap();
    }
    let seen: Vec<String> = mem
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|o| {
            let original = headers::Original::read(&o.headers);
            format!(
                "{}/{:?} from {}@{} key {:?}",
                o.topic,
                o.partition,
                original.topic.unwrap(),
                original.offset.unwrap(),
                o.key.clone().unwrap()
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            r#"orders-retry-1000/Some(1) from orders@10 key b"k1""#,
            r#"orders-retry-1000/Some(1) from orders@11 key b"k2""#,
            r#"orders-retry-2000/Some(4) from orders-retry-1000@7 key b"k3""#,
            r#"orders-retry-1000/Some(2) from orders@12 key b"k4""#,
        ]
    );
}

#[tokio::test]
async fn excluded_and_decode_errors_skip_the_retries() {
    let policy = RetryPolicy::new()
        .attempts(5)
        .exclude(ErrorMatcher::of::<Declined>());
    let mem = Arc::new(Memory::default());
    run(
        policy.clone(),
        mem.clone(),
        record("orders", Headers::new()),
        || Box::new(Declined),
    )
    .await
    .unwrap();
    run(
        policy,
        mem.clone(),
        record("orders", Headers::new()),
        || Box::new(DecodeError::new("Order", "trailing garbage")),
    )
    .await
    .unwrap();
    let sent = mem.sent.lock().unwrap();
    assert_eq!(
        sent.iter().map(|o| o.topic.as_str()).collect::<Vec<_>>(),
        ["orders-dlt", "orders-dlt"]
    );
    let msg = String::from_utf8_lossy(
        sent[1]
            .headers
            .last_value(headers::EXCEPTION_MESSAGE)
            .unwrap(),
    )
    .into_owned();
    assert!(
        msg.contains("cannot decode the record value as Order"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_total_timeout_gives_up_early() {
    // First delivered an hour ago: the next retry would start past the 10 minute budget.
    let policy = RetryPolicy::new()
        .attempts(5)
        .timeout(Duration::from_secs(600));
    let mem = Arc::new(Memory::default());
    let mut h = Headers::new();
    h.set(
        headers::ORIGINAL_TIMESTAMP_RETRY,
        headers::encode_big_integer(now_ms() - 3_600_000),
    );
    h.set(headers::ATTEMPTS, headers::encode_int(2).to_vec());
    run(policy, mem.clone(), record("orders-retry", h), || {
        "boom".into()
    })
    .await
    .unwrap();
    assert_eq!(mem.sent.lock().unwrap()[0].topic, "orders-dlt");
}

#[tokio::test]
async fn no_dlt_drops_after_the_last_attempt() {
    let policy = RetryPolicy::new()
        .attempts(1)
        .dlt_strategy(DltStrategy::NoDlt);
    let mem = Arc::new(Memory::default());
    run(
        policy,
        mem.clone(),
        record("orders", Headers::new()),
        || "boom".into(),
    )
    .await
    .unwrap();
    assert!(mem.sent.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn failed_publishes_back_off_exponentially_and_never_give_up() {
    let mem = Arc::new(Memory {
        fail_first: 6,
        ..Default::default()
    });
    let start = tokio::time::Instant::now();
    run(
        RetryPolicy::new(),
        mem.clone(),
        record("orders", Headers::new()),
        || "boom".into(),
    )
    .await
    .unwrap();
    // 100 + 200 + 400 + 800 + 1600 + 3200 ms of back-off, on the paused clock.
    assert_eq!(start.elapsed(), Duration::from_millis(6300));
    assert_eq!(mem.calls.load(Ordering::SeqCst), 7);
    assert_eq!(mem.sent.lock().unwrap().len(), 1);
}

/// The layer does not keep a copy while its send is in flight; after a failed send it builds
/// it again, and what it sends then is what it tried first (but the new span id).
#[tokio::test(start_paused = true)]
async fn a_copy_sent_again_is_the_copy_first_tried() {
    for (policy, topic) in [
        (RetryPolicy::new(), "orders-retry"),
        (RetryPolicy::new().attempts(1), "orders-dlt"),
    ] {
        let mem = Arc::new(Memory {
            fail_first: 2,
            ..Default::default()
        });
        let mut user = Headers::new();
        user.push("x-user", Some(&b"kept"[..]));
        run(policy, mem.clone(), record("orders", user), || {
            Box::new(Declined)
        })
        .await
        .unwrap();
        let tried = mem.tried.lock().unwrap().clone();
        assert_eq!(
            tried.len(),
            3,
            "{topic}: two failed sends, then the one that worked"
        );
        let span_less = |o: &Outgoing| {
            let mut o = o.clone();
            let trace = headers::trace_id(&o.headers).unwrap().to_owned();
            o.headers.set(headers::TRACEPARENT, trace.into_bytes());
            o
        };
        assert_eq!(tried[0].topic, topic);
        assert_eq!(tried[0].headers.last_value("x-user"), Some(&b"kept"[..]));
        assert_eq!(
            tried[0].headers.last_value(headers::EXCEPTION_MESSAGE),
            Some(&b"card declined"[..])
        );
        for again in &tried[1..] {
            assert_eq!(span_less(again), span_less(&tried[0]), "{topic}");
        }
        assert_eq!(mem.sent.lock().unwrap().len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn failed_publish_back_off_is_capped_at_five_seconds() {
    let mem = Arc::new(Memory {
        fail_first: 10,
        ..Default::default()
    });
    let start = tokio::time::Instant::now();
    run(
        RetryPolicy::new(),
        mem.clone(),
        record("orders", Headers::new()),
        || "boom".into(),
    )
    .await
    .unwrap();
    // 100..3200 doubling, then 5000 x 4.
    assert_eq!(start.elapsed(), Duration::from_millis(6300 + 4 * 5000));
}

#[tokio::test(start_paused = true)]
async fn in_memory_retries_wait_their_delay_before_the_hop() {
    let policy = RetryPolicy::new().in_memory(3, Duration::from_millis(250));
    let mem = Arc::new(Memory::default());
    let calls = Arc::new(AtomicU32::new(0));
    let layer = RetryTopicLayer::new(policy, &["orders"], mem.clone(), "billing", "orders");
    let c = calls.clone();
    let mut svc = layer.layer(service_fn(move |_r: Record| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Err::<(), BoxError>("flaky".into())
        }
    }));
    let start = tokio::time::Instant::now();
    svc.ready()
        .await
        .unwrap()
        .call(record("orders", Headers::new()))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "1 call + 3 in-memory retries"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(750));
    assert_eq!(
        mem.sent.lock().unwrap()[0].topic,
        "orders-retry",
        "then the first hop"
    );
}

#[tokio::test]
async fn a_panicking_handler_is_retried_like_an_error() {
    let mem = Arc::new(Memory::default());
    let layer = RetryTopicLayer::new(
        RetryPolicy::new(),
        &["orders"],
        mem.clone(),
        "billing",
        "orders",
    );
    let mut svc = layer.layer(service_fn(|_r: Record| async move {
        if true {
            panic!("index out of bounds");
        }
        Ok::<(), BoxError>(())
    }));
    svc.ready()
        .await
        .unwrap()
        .call(record("orders", Headers::new()))
        .await
        .unwrap();
    let sent = mem.sent.lock().unwrap();
    assert_eq!(sent[0].topic, "orders-retry");
    let msg = String::from_utf8_lossy(
        sent[0]
            .headers
            .last_value(headers::EXCEPTION_MESSAGE)
            .unwrap(),
    )
    .into_owned();
    assert!(msg.contains("index out of bounds"), "{msg}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
