#[redrive::retryable_topic(topic = "orders")]
async fn h(payload: String) -> Result<(), std::io::Error> {
    let _ = payload;
    Ok(())
}

fn main() {}
