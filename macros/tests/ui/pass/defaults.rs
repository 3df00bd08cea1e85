#[redrive::retryable_topic(topic = "payments")]
async fn pay(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {
    // Spring's defaults: 3 attempts, 1 s fixed back-off, one `-retry` topic.
    let p = pay::retry_policy();
    assert_eq!(p, redrive::policy::RetryPolicy::default());
    assert_eq!(p.topology(pay::TOPIC).retry_topics(), ["payments-retry"]);
    let _worker = redrive::Worker::builder()
        .bootstrap_servers("127.0.0.1:1")
        .group_id("g")
        .route(pay);
}
