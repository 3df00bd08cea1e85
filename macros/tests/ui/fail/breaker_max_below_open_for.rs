#[redrive::retryable_topic(topic = "orders", circuit_breaker(open_for = "2m"))]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
