#[redrive::retryable_topic(topic = "orders")]
async fn h(record: redrive::Record) -> Result<u32, std::io::Error> {
    let _ = record;
    Ok(1)
}

fn main() {}
