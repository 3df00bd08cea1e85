//! The record a replay sends for a dead letter.

use bytes::Bytes;
use redrive::headers::{self, Headers, Original, REPLAY_COUNT};
use redrive::publish::Outgoing;
use redrive::Record;

/// The record a replay sends for dead letter `r`, or why it cannot.
pub fn replay_copy(r: &Record, to: Option<&str>) -> Result<Outgoing, String> {
    let o = Original::read(r.headers());
    let (topic, partition) = match (to, o.topic) {
        (Some(t), orig) => {
            // Back to its own topic it keeps its partition; elsewhere the key decides.
            let p = (orig.as_deref() == Some(t)).then_some(o.partition).flatten();
            (t.to_owned(), p)
        }
        (None, Some(orig)) => (orig, o.partition),
        (None, None) => {
            return Err(
                "no kafka_original-topic / kafka_dlt-original-topic header: name a destination with --to"
                    .into(),
            )
        }
    };
    let previous = r
        .headers()
        .last_value(REPLAY_COUNT)
        .and_then(headers::decode_int)
        .unwrap_or(0);
    let mut h = Headers::new();
    for x in r.headers().iter() {
        let k = &*x.key;
        let bookkeeping = k.starts_with("retry_topic-")
            || k.starts_with("kafka_original-")
            || k.starts_with("kafka_exception-")
            || k.starts_with("kafka_dlt-")
            || k == REPLAY_COUNT;
        if !bookkeeping {
            h.push(x.key.clone(), x.value.clone());
        }
    }
    h.push(
        REPLAY_COUNT,
        Some(Bytes::copy_from_slice(&headers::encode_int(
            previous.saturating_add(1),
        ))),
    );
    Ok(Outgoing {
        topic,
        partition,
        key: r.key().cloned(),
        value: r.value().cloned(),
        headers: h,
    })
}
