use std::rc::Rc;

#[redrive::retryable_topic(topic = "orders")]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let shared = Rc::new(record);
    tokio::task::yield_now().await;
    let _ = shared;
    Ok(())
}

fn main() {}
