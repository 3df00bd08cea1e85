//! `#[retryable_topic]` handlers against the real broker: the topology and the headers they
//! produce equal those of the same policy built by hand.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Headers as _, Message};
use redrive::policy::{ErrorMatcher, RetryPolicy, TopicSuffix};
use redrive::{BoxError, Json, Record, RetryContext, Route, Worker};
use support::*;
use tower::service_fn;

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("payment gateway timed out for order {0}")]
struct GatewayTimeout(u64);

static SEEN: Mutex<Vec<(u64, u32)>> = Mutex::new(Vec::new());
static DEAD: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());

// The topic is fixed at compile time; the test binary gets its own broker, so it is fresh.
#[redrive::retryable_topic(
    topic = "macro-orders",
    group = "macro-billing",
    attempts = 3,
    backoff(delay = "300ms", multiplier = 2.0, max = "1s"),
    include = [GatewayTimeout],
    suffix = "delay",
    concurrency = 2,
    dlt_handler = orders_dlt,
)]
async fn bill(order: Json<Order>, ctx: RetryContext) -> Result<(), GatewayTimeout> {
    SEEN.lock().unwrap().push((order.0.id, ctx.attempt));
    Err(GatewayTimeout(order.0.id))
}

#[redrive::dlt_handler]
async fn orders_dlt(record: Record, ctx: RetryContext) -> Result<(), std::io::Error> {
    let key = String::from_utf8_lossy(record.key().map_or(&b""[..], |k| &k[..])).into_owned();
    DEAD.lock()
        .unwrap()
        .push((key, ctx.original.exception_message));
    Ok(())
}

fn by_hand() -> RetryPolicy {
    RetryPolicy::new()
        .attempts(3)
        .exponential(Duration::from_millis(300), 2.0, Duration::from_secs(1))
        .include(ErrorMatcher::of::<GatewayTimeout>())
        .suffix(TopicSuffix::Delay)
}

#[redrive::retryable_topic(
    topic = "macro-paused",
    circuit_breaker(consecutive_failures = 3, open_for = "500ms", max_open_for = "30s")
)]
async fn paused(_record: Record) -> Result<(), redrive::Unavailable> {
    Err(redrive::Unavailable::new("connection refused"))
}

#[redrive::retryable_topic(
    topic = "macro-paused-defaults",
    handler_timeout = "250ms",
    circuit_breaker
)]
async fn paused_by_default(_record: Record) -> Result<(), std::io::Error> {
    Ok(())
}

#[redrive::retryable_topic(topic = "macro-compact", headers = "compact")]
async fn compact(_record: Record) -> Result<(), std::io::Error> {
    Ok(())
}

#[redrive::retryable_topic(topic = "macro-keyed", key_ordering = true)]
async fn keyed(_record: Record) -> Result<(), std::io::Error> {
    Ok(())
}

#[redrive::retryable_topic(
    topic = "macro-keyed-follow",
    key_ordering = true,
    after_dead_letter = "follow"
)]
async fn keyed_follow(_record: Record) -> Result<(), std::io::Error> {
    Ok(())
}

#[test]
fn the_macro_key_ordering_is_the_hand_built_one() {
    use redrive::{AfterDeadLetter, IntoRoute};
    assert_eq!(
        keyed.into_route().key_order(),
        Some(AfterDeadLetter::Continue)
    );
    assert_eq!(
        keyed_follow.into_route().key_order(),
        Some(AfterDeadLetter::Follow)
    );
    assert_eq!(compact.into_route().key_order(), None);
}

#[test]
fn the_macro_header_profile_is_the_hand_built_one() {
    let want = RetryPolicy::new().header_profile(redrive::headers::HeaderProfile::Compact);
    assert_eq!(compact::retry_policy(), want);
    assert_eq!(
        bill::retry_policy().headers,
        redrive::headers::HeaderProfile::Spring
    );
}

#[test]
fn the_macro_circuit_breaker_is_the_hand_built_one() {
    use redrive::IntoRoute;
    let want = redrive::policy::CircuitBreaker::new()
        .consecutive_failures(3)
        .open_for(Duration::from_millis(500), Duration::from_secs(30));
    assert_eq!(paused.into_route().circuit_breaker_settings(), Some(&want));
    let defaults = redrive::policy::CircuitBreaker::new();
    let route = paused_by_default.into_route();
    assert_eq!(route.circuit_breaker_settings(), Some(&defaults));
    assert_eq!(bill.into_route().circuit_breaker_settings(), None);
}

#[test]
fn the_macro_policy_is_the_hand_built_policy() {
    assert_eq!(bill::retry_policy(), by_hand());
    assert_eq!(bill::retry_policy().topology("x"), by_hand().topology("x"));
    assert_eq!(
        bill::retry_policy().topology(bill::TOPIC).retry_topics(),
        ["macro-orders-retry-300", "macro-orders-retry-600"]
    );
}

/// Header names of a DLT record, with the values that do not depend on coordinates or time.
fn header_shape(m: &rdkafka::message::OwnedMessage) -> BTreeMap<String, Option<Vec<u8>>> {
    let stable = [
        redrive::headers::ATTEMPTS,
        redrive::headers::EXCEPTION_FQCN,
        redrive::headers::ORIGINAL_TIMESTAMP_TYPE,
        redrive::headers::ORIGINAL_CONSUMER_GROUP,
        redrive::headers::ORIGINAL_PARTITION,
    ];
    m.headers()
        .unwrap()
        .iter()
        .map(|h| {
            let v = stable
                .contains(&h.key)
                .then(|| h.value.unwrap_or_default().to_vec());
            (h.key.to_owned(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_and_hand_built_routes_produce_the_same_topics_and_headers() {
    init_tracing();
    let bootstrap = bootstrap();
    create_topic(&bootstrap, bill::TOPIC, 2).await;
    let hand_topic = unique("hand-orders");
    create_topic(&bootstrap, &hand_topic, 2).await;
    let p = producer(&bootstrap);
    for t in [bill::TOPIC, hand_topic.as_str()] {
        for i in 0..4u64 {
            p.send(
                rdkafka::producer::FutureRecord::to(t)
                    .key(&format!("key-{i}"))
                    .payload(&format!(r#"{{"id": {i}}}"#))
                    .partition((i % 2) as i32),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        }
    }

    // The annotated route; its group comes from the attribute.
    let annotated = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .property("session.timeout.ms", SESSION_TIMEOUT_MS)
        .route(bill)
        .build()
        .unwrap();
    assert_eq!(annotated.group_id(), "macro-billing");
    // The same policy by hand, in the same group name (a different topic).
    let hand_dead: Arc<Mutex<usize>> = Arc::default();
    let hd = hand_dead.clone();
    let hand = test_worker(&bootstrap, "macro-billing-hand")
        .route(
            Route::new(
                &hand_topic,
                service_fn(|r: Record| async move {
                    let v: serde_json::Value = serde_json::from_slice(r.value().unwrap())?;
                    Err::<(), BoxError>(Box::new(GatewayTimeout(v["id"].as_u64().unwrap())))
                }),
            )
            .retry(by_hand())
            .dlt_handler(service_fn(move |_r: Record| {
                let hd = hd.clone();
                async move {
                    *hd.lock().unwrap() += 1;
                    Ok::<_, BoxError>(())
                }
            })),
        )
        .build()
        .unwrap();
    let (ha, hh) = (annotated.handle(), hand.handle());
    let (ra, rh) = (tokio::spawn(annotated.run()), tokio::spawn(hand.run()));
    eventually(
        Duration::from_secs(90),
        "both DLT handlers saw 4 dead letters",
        || DEAD.lock().unwrap().len() >= 4 && *hand_dead.lock().unwrap() >= 4,
    )
    .await;
    ha.shutdown();
    hh.shutdown();
    ra.await.unwrap().unwrap();
    rh.await.unwrap().unwrap();

    let seen = SEEN.lock().unwrap().clone();
    for i in 0..4 {
        let attempts: Vec<u32> = seen
            .iter()
            .filter(|(id, _)| *id == i)
            .map(|(_, a)| *a)
            .collect();
        assert_eq!(attempts, [1, 2, 3], "order {i}");
    }
    for (key, msg) in DEAD.lock().unwrap().iter() {
        let i = key.trim_start_matches("key-");
        assert_eq!(
            msg.as_deref(),
            Some(format!("payment gateway timed out for order {i}").as_str())
        );
    }
    // Same topics, created with the main topic's partitions.
    for (a, h) in bill::retry_policy()
        .topology(bill::TOPIC)
        .derived_topics()
        .zip(by_hand().topology(&hand_topic).derived_topics())
    {
        assert_eq!(
            a.strip_prefix(bill::TOPIC),
            h.strip_prefix(hand_topic.as_str())
        );
        assert_eq!(high_watermarks(&bootstrap, a, 2).len(), 2);
        let ha: Vec<_> = read_topic(&bootstrap, a).iter().map(header_shape).collect();
        let hh: Vec<_> = read_topic(&bootstrap, h).iter().map(header_shape).collect();
        assert_eq!(ha.len(), 4, "{a}");
        assert_eq!(ha.len(), hh.len(), "{a} vs {h}");
        // Same header names and stable values, record by record (order by partition/offset).
        let mut ha = ha;
        let mut hh = hh;
        ha.sort();
        hh.sort();
        for (x, y) in ha.iter().zip(&hh) {
            let mut y = y.clone();
            y.insert(
                redrive::headers::ORIGINAL_CONSUMER_GROUP.into(),
                x[redrive::headers::ORIGINAL_CONSUMER_GROUP].clone(),
            );
            assert_eq!(x, &y, "{a} vs {h}");
        }
    }
}
