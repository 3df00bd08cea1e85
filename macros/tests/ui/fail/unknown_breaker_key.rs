#[redrive::retryable_topic(topic = "orders", circuit_breaker(threshold = 5))]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
