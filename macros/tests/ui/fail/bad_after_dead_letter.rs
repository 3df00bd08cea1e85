#[redrive::retryable_topic(topic = "orders", key_ordering = true, after_dead_letter = "dlt")]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
