#[redrive::dlt_handler(topic = "orders-dlt")]
async fn h(record: redrive::Record) -> Result<(), std::io::Error> {
    let _ = record;
    Ok(())
}

fn main() {}
