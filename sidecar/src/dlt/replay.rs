//! The record a replay sends for a dead letter.

use bytes::Bytes;
use redrive::headers::{self, Headers, Original, REPLAY_COUNT};
use redrive::publish::Outgoing;
use redrive::Record;

/// The retry flow a dead-letter topic belongs to: its route's main topic and group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The route's main topic: where its dead letters go back to.
    pub topic: String,
    /// The route's consumer group.
    pub group: String,
}

/// The record a replay sends for dead letter `r`, or why it cannot.
///
/// The destination is `to`, or else the main topic of `flow`, the route the DLT was named by.
/// It never comes from the record's headers alone, which any producer to the DLT could
/// forge: a dead letter whose `kafka_original-topic` names another topic, or whose
/// `kafka_dlt-original-consumer-group` names another group, is not replayed without `--to`.
pub fn replay_copy(r: &Record, to: Option<&str>, flow: Option<&Flow>) -> Result<Outgoing, String> {
    let o = Original::read(r.headers());
    let (topic, partition) = match (to, flow) {
        (Some(t), _) => {
            // Back to its own topic it keeps its partition; elsewhere the key decides.
            let p = (o.topic.as_deref() == Some(t)).then_some(o.partition).flatten();
            (t.to_owned(), p)
        }
        (None, Some(f)) => {
            from_flow(&o, f)?;
            (f.topic.clone(), o.partition)
        }
        (None, None) => {
            return Err(
                "the DLT was named with --topic, so no route vouches for a destination: name one with --to (or use --route)"
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
            || k == REPLAY_COUNT
            || k == headers::COMPACT;
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

/// Whether the dead letter's headers say it came from `flow`.
fn from_flow(o: &Original, flow: &Flow) -> Result<(), String> {
    match o.topic.as_deref() {
        Some(t) if t == flow.topic => {}
        Some(t) => {
            return Err(format!(
                "its kafka_original-topic names `{t}`, not the route's topic `{}`; replay it with --to if that is meant",
                flow.topic
            ))
        }
        None => {
            return Err(
                "no kafka_original-topic / kafka_dlt-original-topic header: name a destination with --to"
                    .into(),
            )
        }
    }
    match o.consumer_group.as_deref() {
        Some(g) if g != flow.group => Err(format!(
            "it was dead-lettered by group `{g}`, not the route's group `{}`; replay it with --to if that is meant",
            flow.group
        )),
        _ => Ok(()),
    }
}
