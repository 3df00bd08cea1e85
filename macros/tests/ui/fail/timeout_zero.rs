#[redrive::retryable_topic(topic = "orders", timeout = "0s")]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
