#[redrive::retryable_topic(topic = "orders")]
async fn h(record: redrive::Record) -> Result<(), String> {
    let _ = record;
    Ok(())
}

fn main() {}
