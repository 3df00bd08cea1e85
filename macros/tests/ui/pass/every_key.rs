use redrive::{Json, Record, RetryContext};

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

#[derive(Debug, thiserror::Error)]
enum BillingError {
    #[error("gateway timed out")]
    Timeout,
}

#[redrive::retryable_topic(
    topic = "orders",
    group = "billing",
    attempts = 4,
    backoff(delay = "1s", multiplier = 2.0, max = "10s", jitter = 0.1),
    include = [BillingError],
    exclude = [std::num::ParseIntError],
    dlt_strategy = "fail_on_error",
    suffix = "index",
    timeout = "5m",
    concurrency = 4,
    auto_create_topics = false,
    group_scoped = true,
    partitions = 6,
    dlt_handler = orders_dlt,
)]
async fn bill(order: Json<Order>, ctx: RetryContext, record: Record) -> Result<(), BillingError> {
    let _ = (order.0.id, ctx.attempt, record.offset());
    if ctx.attempt > 10 {
        return Err(BillingError::Timeout);
    }
    Ok(())
}

#[redrive::dlt_handler]
async fn orders_dlt(record: Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {
    let p = bill::retry_policy();
    assert_eq!(p.attempts, 4);
    assert_eq!(p.backoff.max, std::time::Duration::from_secs(10));
    assert_eq!(bill::TOPIC, "orders");
    assert!(p.group_scoped);
    let topology = p.for_group("billing").topology("orders");
    assert_eq!(topology.dlt(), Some("orders-billing-dlt"));
    assert_eq!(topology.retry_topics()[0], "orders-billing-retry-0");
    let route = redrive::IntoRoute::into_route(bill);
    assert_eq!(route.topics(), ["orders"]);
}
