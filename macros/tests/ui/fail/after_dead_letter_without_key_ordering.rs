#[redrive::retryable_topic(topic = "orders", after_dead_letter = "follow")]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
