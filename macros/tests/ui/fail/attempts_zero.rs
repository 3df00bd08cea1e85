#[redrive::retryable_topic(topic = "orders", attempts = 0)]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
