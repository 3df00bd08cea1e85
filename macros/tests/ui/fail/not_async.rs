#[redrive::retryable_topic(topic = "orders")]
fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
