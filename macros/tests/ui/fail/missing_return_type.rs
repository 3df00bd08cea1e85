#[redrive::retryable_topic(topic = "orders")]
async fn h(record: redrive::Record) {
    let _ = record;
}

fn main() {}
