#[redrive::retryable_topic(topic = "orders", backoff(delay = "1s", jitter = 1.5))]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
