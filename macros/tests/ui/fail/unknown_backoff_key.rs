#[redrive::retryable_topic(topic = "orders", backoff(initial = "1s"))]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
