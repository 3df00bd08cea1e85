#[redrive::retryable_topic(topic = "orders", backoff(delay = "2s", max = "1s"))]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
