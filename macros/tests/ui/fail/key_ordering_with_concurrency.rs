#[redrive::retryable_topic(topic = "orders", concurrency = 4, key_ordering = true)]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
