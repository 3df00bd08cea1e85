//! Publishing retry and dead-letter copies.
//!
//! [`Publish`] is the extension point (tests use an in-memory one); [`KafkaPublisher`] is the
//! real one: an idempotent producer with `acks=all`, and a publish completes only when the
//! broker acknowledged the copy, because the source offset may advance only then.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header as RdHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::error::BoxError;
use crate::record::Headers;

/// A record to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None` lets the producer's partitioner choose by key.
    pub partition: Option<i32>,
    /// The key, byte for byte.
    pub key: Option<Bytes>,
    /// The value; `None` keeps a tombstone a tombstone.
    pub value: Option<Bytes>,
    /// The headers.
    pub headers: Headers,
}

impl Outgoing {
    /// A record for `topic` with no key, no value (a tombstone until [`value`](Self::value)
    /// sets one) and no headers; the partitioner picks the partition.
    pub fn to(topic: impl Into<String>) -> Self {
        Outgoing {
            topic: topic.into(),
            partition: None,
            key: None,
            value: None,
            headers: Headers::new(),
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value.
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Sends to this partition instead of the partitioner's choice.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Appends a header.
    pub fn header(
        mut self,
        key: impl Into<std::borrow::Cow<'static, str>>,
        value: impl Into<Bytes>,
    ) -> Self {
        self.headers.push(key, Some(value.into()));
        self
    }
}

/// What a handler may return: nothing, or records to publish before its input counts as
/// handled (in a transactional worker, in the input's transaction: consume-transform-produce).
pub trait IntoOutputs: Send + 'static {
    /// Whether this type can hold records at all (`()` cannot), so routes that never produce
    /// cost nothing.
    const MAY_PRODUCE: bool = true;
    /// The records.
    fn into_outputs(self) -> Vec<Outgoing>;
}

impl IntoOutputs for () {
    const MAY_PRODUCE: bool = false;
    fn into_outputs(self) -> Vec<Outgoing> {
        Vec::new()
    }
}

impl IntoOutputs for Outgoing {
    fn into_outputs(self) -> Vec<Outgoing> {
        vec![self]
    }
}

impl IntoOutputs for Option<Outgoing> {
    fn into_outputs(self) -> Vec<Outgoing> {
        self.into_iter().collect()
    }
}

impl IntoOutputs for Vec<Outgoing> {
    fn into_outputs(self) -> Vec<Outgoing> {
        self
    }
}

/// A boxed future, as publish returns.
pub type PublishFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// Sends a record and resolves once the destination acknowledged it.
pub trait Publish: Send + Sync + 'static {
    /// Publishes `record`. It is borrowed because a copy that must be sent again after a
    /// failure stays with the caller; an implementation that has to keep it clones it.
    fn publish(&self, record: &Outgoing) -> PublishFuture;
}

/// Publishes through an rdkafka producer configured for durability.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    timeout: Duration,
}

/// Producer settings the commit rule depends on; a user value for them is an error.
pub(crate) const DURABILITY: [(&str, &str); 2] = [("acks", "all"), ("enable.idempotence", "true")];

impl KafkaPublisher {
    /// An idempotent `acks=all` producer from `config` (any other property passes through).
    pub fn new(config: &ClientConfig) -> Result<Self, crate::Error> {
        let mut cfg = config.clone();
        for (k, v) in DURABILITY {
            cfg.set(k, v);
        }
        let producer: FutureProducer = cfg.create().map_err(crate::Error::from_client_config)?;
        Ok(KafkaPublisher {
            producer,
            timeout: Duration::from_secs(30),
        })
    }

    /// The underlying producer.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// The rdkafka record for `r`, borrowing its bytes.
pub(crate) fn future_record(r: &Outgoing) -> FutureRecord<'_, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
    for h in r.headers.iter() {
        headers = headers.insert(RdHeader {
            key: &h.key,
            value: h.value.as_deref(),
        });
    }
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic).headers(headers);
    if let Some(p) = r.partition {
        rec = rec.partition(p);
    }
    if let Some(k) = r.key.as_deref() {
        rec = rec.key(k);
    }
    if let Some(v) = r.value.as_deref() {
        rec = rec.payload(v);
    }
    rec
}

impl Publish for KafkaPublisher {
    /// Enqueues the record at once (so copies keep the order of the calls) and returns a
    /// future of its acknowledgement. A full local queue is waited out in the future.
    fn publish(&self, r: &Outgoing) -> PublishFuture {
        match self.producer.send_result(future_record(r)) {
            Ok(delivery) => Box::pin(async move {
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(Box::new(e) as BoxError),
                    Err(_) => Err("the producer was dropped before delivery".into()),
                }
            }),
            Err(_) => {
                // Queue full (or another local error): the waiting send retries it.
                let r = r.clone();
                let producer = self.producer.clone();
                let timeout = self.timeout;
                Box::pin(async move {
                    producer
                        .send(future_record(&r), timeout)
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| Box::new(e) as BoxError)
                })
            }
        }
    }
}
