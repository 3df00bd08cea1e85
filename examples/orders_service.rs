//! An annotated service: two `#[retryable_topic]` handlers and a `#[dlt_handler]` in one
//! worker, the Rust version of a Spring `@RetryableTopic` listener class.
//!
//! ```text
//! cargo run --example orders_service
//! ```
//!
//! Runs on librdkafka's in-process mock cluster unless `KAFKA_BOOTSTRAP_SERVERS` is set.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redrive::{BoxError, IntoRoute, Json, Record, RetryContext, Worker};

#[derive(Debug, serde::Deserialize)]
struct Order {
    id: u64,
    amount: i64,
}

/// Why billing failed. Only `Rejected` carries an `InvalidOrder` in its `source()` chain.
#[derive(Debug, thiserror::Error)]
enum BillingError {
    #[error("payment gateway timed out")]
    GatewayTimeout,
    #[error("order rejected")]
    Rejected(#[source] InvalidOrder),
}

#[derive(Debug, thiserror::Error)]
#[error("negative amount {0}")]
struct InvalidOrder(i64);

static BILLED: AtomicU64 = AtomicU64::new(0);
static SHIPPED: AtomicU64 = AtomicU64::new(0);
static DEAD: AtomicU64 = AtomicU64::new(0);

/// Bills an order. Every 5th order times out on its first attempt and is retried; invalid
/// orders are never retried (`exclude` matches `InvalidOrder` anywhere in the error's source
/// chain) and go straight to `orders-dlt`, as does malformed JSON (a poison pill).
#[redrive::retryable_topic(
    topic = "orders",
    group = "orders-service",
    attempts = 3,
    backoff(delay = "200ms", multiplier = 2.0, max = "1s"),
    exclude = [InvalidOrder],
    dlt_handler = orders_dlt,
)]
async fn bill(order: Json<Order>, ctx: RetryContext) -> Result<(), BillingError> {
    let Json(order) = order;
    if order.amount < 0 {
        return Err(BillingError::Rejected(InvalidOrder(order.amount)));
    }
    if order.id % 5 == 0 && ctx.is_first_attempt() {
        return Err(BillingError::GatewayTimeout);
    }
    BILLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Ships an order; shipments fail once in a while and are retried with a fixed back-off.
#[redrive::retryable_topic(
    topic = "shipments",
    group = "orders-service",
    attempts = 4,
    backoff(delay = "300ms")
)]
async fn ship(record: Record, ctx: RetryContext) -> Result<(), std::io::Error> {
    if record.offset() % 7 == 3 && ctx.attempt < 3 {
        return Err(std::io::Error::other("carrier API unavailable"));
    }
    SHIPPED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Dead letters of `orders`: logged with the original coordinates and error.
#[redrive::dlt_handler]
async fn orders_dlt(record: Record, ctx: RetryContext) -> Result<(), std::io::Error> {
    DEAD.fetch_add(1, Ordering::Relaxed);
    println!(
        "dead letter {}: from {}:{}@{} after attempt {}: {}",
        String::from_utf8_lossy(record.value().map_or(&b""[..], |v| &v[..])),
        ctx.original.topic.unwrap_or_default(),
        ctx.original.partition.unwrap_or(-1),
        ctx.original.offset.unwrap_or(-1),
        ctx.attempt - 1,
        ctx.original.exception_message.unwrap_or_default(),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let mut _mock = None;
    let bootstrap = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(b) if !b.is_empty() => b,
        _ => {
            let m = MockCluster::new(1)?;
            let b = m.bootstrap_servers();
            // The mock cluster does not serve CreateTopics: create every topic up front.
            for route in [
                bill.into_route().topics().to_vec(),
                ship.into_route().topics().to_vec(),
            ] {
                for t in route {
                    m.create_topic(&t, 2, 1)?;
                }
            }
            for (topic, policy) in [
                (bill::TOPIC, bill::retry_policy()),
                (ship::TOPIC, ship::retry_policy()),
            ] {
                for t in policy.topology(topic).derived_topics() {
                    m.create_topic(t, 2, 1)?;
                }
            }
            _mock = Some(m);
            b
        }
    };
    for (topic, policy) in [
        (bill::TOPIC, bill::retry_policy()),
        (ship::TOPIC, ship::retry_policy()),
    ] {
        print!("{}", policy.topology(topic));
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let mut orders = 0;
    for i in 0..50u64 {
        let value = match i {
            13 => "{not json".to_owned(),
            21 | 34 => format!(r#"{{"id":{i},"amount":-5}}"#),
            _ => format!(r#"{{"id":{i},"amount":{}}}"#, 10 + i),
        };
        producer
            .send(
                FutureRecord::to(bill::TOPIC)
                    .key(&i.to_string())
                    .payload(&value),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
        producer
            .send(
                FutureRecord::to(ship::TOPIC)
                    .key(&i.to_string())
                    .payload("parcel"),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
        orders += 1;
    }

    let worker = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .property("session.timeout.ms", "6000")
        .route(bill)
        .route(ship)
        .build()?;
    println!("worker in group {}", worker.group_id());
    let handle = worker.handle();
    let running = tokio::spawn(worker.run_until(redrive::shutdown_signal()));
    let started = Instant::now();
    while BILLED.load(Ordering::Relaxed) + DEAD.load(Ordering::Relaxed) < orders
        || SHIPPED.load(Ordering::Relaxed) < orders
    {
        if started.elapsed() > Duration::from_secs(120) {
            return Err("timed out".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    handle.shutdown();
    running.await??;
    println!(
        "summary: orders={orders} billed={} dead_lettered={} shipped={}",
        BILLED.load(Ordering::Relaxed),
        DEAD.load(Ordering::Relaxed),
        SHIPPED.load(Ordering::Relaxed)
    );
    Ok(())
}
