#[redrive::retryable_topic(topic = "orders", attempts = 3, attempts = 4)]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
