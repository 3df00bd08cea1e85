#[redrive::retryable_topic(topic = "orders", backoff(delay = "5 sekunds"))]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
