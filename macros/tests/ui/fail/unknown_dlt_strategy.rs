#[redrive::retryable_topic(topic = "orders", dlt_strategy = "retry_forever")]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
