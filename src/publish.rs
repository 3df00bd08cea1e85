//! Publishing retry and dead-letter copies.
//!
//! [`Publish`] is the extension point (tests use an in-memory one); [`KafkaPublisher`] is the
//! real one: an idempotent producer with `acks=all`, and a publish completes only when the
//! broker acknowledged the copy, because the source offset may advance only then.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as RdHeader, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureRecord, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;

use crate::error::BoxError;
use crate::headers::Headers;

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

    /// The [`KafkaPublisher`] that publishes exactly as this does, if any. The retry layer
    /// then sends its copies through it and takes each acknowledgement from librdkafka's
    /// delivery report, which saves a future, a few allocations and a task wake-up per
    /// failure. A wrapper may return the publisher it delegates to only if its `publish` is
    /// that publisher's, unchanged; the default is `None` (copies go through `publish`).
    fn as_kafka(&self) -> Option<&KafkaPublisher> {
        None
    }

    /// Why the publisher can never send again (librdkafka's fatal error of an idempotent
    /// producer, e.g. one not authorized to use idempotence), if it cannot. The worker then
    /// stops with [`Error::Fatal`](crate::Error::Fatal) instead of retrying copies forever.
    fn fatal_error(&self) -> Option<String> {
        None
    }
}

/// Publishes through an rdkafka producer configured for durability.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: Arc<ThreadedProducer<PublishContext>>,
}

/// The producer context of a [`KafkaPublisher`]: hands each delivery report to whoever
/// waits for that record, on librdkafka's delivery thread.
pub(crate) struct PublishContext;

impl ClientContext for PublishContext {}

impl ProducerContext for PublishContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, report: &DeliveryResult<'_>, to: Box<Delivery>) {
        let result = match report {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        match to.0 {
            Waiter::Future(tx) => {
                let _ = tx.send(result);
            }
            Waiter::Then(then) => then(match result {
                Ok(()) => Sent::Acked,
                Err(e) => Sent::Failed(e),
            }),
        }
    }
}

/// Who learns what became of one record sent by a [`KafkaPublisher`].
pub(crate) struct Delivery(Waiter);

enum Waiter {
    /// [`Publish::publish`]'s future.
    Future(tokio::sync::oneshot::Sender<Result<(), KafkaError>>),
    /// [`KafkaPublisher::send_then`]'s callback.
    Then(Then),
}

/// What became of a record sent with [`KafkaPublisher::send_then`].
pub(crate) enum Sent {
    /// The broker acknowledged it.
    Acked,
    /// Its delivery failed (after librdkafka's own retries).
    Failed(KafkaError),
    /// librdkafka did not take it (its queue was full, or the record is invalid): nothing
    /// was sent. [`Publish::publish`] waits out a full queue; use it to send again.
    NotTaken(KafkaError),
}

/// The callback of [`KafkaPublisher::send_then`].
pub(crate) type Then = Box<dyn FnOnce(Sent) + Send + Sync>;

impl KafkaPublisher {
    /// An idempotent `acks=all` producer from `config` (any other property passes through).
    pub fn new(config: &ClientConfig) -> Result<Self, crate::Error> {
        let mut cfg = config.clone();
        for (k, v) in crate::client::DURABILITY {
            cfg.set(k, v);
        }
        let producer: ThreadedProducer<PublishContext> = cfg
            .create_with_context(PublishContext)
            .map_err(crate::Error::from_client_config)?;
        Ok(KafkaPublisher {
            producer: Arc::new(producer),
        })
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }

    /// Hands `r` to librdkafka with `to` as the one to tell what became of it; on a local
    /// failure (nothing taken) the error and `to` come back.
    fn enqueue(&self, r: &Outgoing, to: Delivery) -> Result<(), (KafkaError, Delivery)> {
        let f = future_record(r);
        let rec = BaseRecord {
            topic: f.topic,
            partition: f.partition,
            payload: f.payload,
            key: f.key,
            timestamp: f.timestamp,
            headers: f.headers,
            delivery_opaque: Box::new(to),
        };
        self.producer
            .send(rec)
            .map_err(|(e, rec)| (e, *rec.delivery_opaque))
    }

    /// Sends `r` and calls `then` with what became of it: on librdkafka's delivery thread
    /// once the broker answered, or here at once when librdkafka did not take it. Cheaper
    /// than [`Publish::publish`] for a caller that only needs to be told: no future, no
    /// channel, no wake-up of a task per record.
    pub(crate) fn send_then(&self, r: &Outgoing, then: Then) {
        // `enqueue` gives back the waiter it was given, so a refused send always reaches
        // `then`.
        if let Err((e, Delivery(Waiter::Then(then)))) =
            self.enqueue(r, Delivery(Waiter::Then(then)))
        {
            then(Sent::NotTaken(e));
        }
    }

    /// The future of `r`'s acknowledgement, once librdkafka took it.
    fn send_future(&self, r: &Outgoing) -> Result<PublishFuture, KafkaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(r, Delivery(Waiter::Future(tx)))
            .map_err(|(e, _)| e)?;
        Ok(Box::pin(async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Box::new(e) as BoxError),
                Err(_) => Err("the producer was dropped before delivery".into()),
            }
        }))
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
    FutureRecord {
        topic: &r.topic,
        partition: r.partition,
        payload: r.value.as_deref(),
        key: r.key.as_deref(),
        timestamp: None,
        headers: Some(headers),
    }
}

impl Publish for KafkaPublisher {
    /// Enqueues the record at once (so copies keep the order of the calls) and returns a
    /// future of its acknowledgement. A full local queue is waited out in the future, for up
    /// to 30 s (as rdkafka's `FutureProducer::send` with its usual timeout).
    fn publish(&self, r: &Outgoing) -> PublishFuture {
        match self.send_future(r) {
            Ok(acked) => acked,
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                let (r, this) = (r.clone(), self.clone());
                Box::pin(async move {
                    let deadline = Instant::now() + QUEUE_FULL_DEADLINE;
                    loop {
                        tokio::time::sleep(QUEUE_FULL_WAIT).await;
                        match this.send_future(&r) {
                            Ok(acked) => return acked.await,
                            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                                if Instant::now() < deadline => {}
                            Err(e) => return Err(Box::new(e) as BoxError),
                        }
                    }
                })
            }
            Err(e) => Box::pin(std::future::ready(Err(Box::new(e) as BoxError))),
        }
    }

    fn as_kafka(&self) -> Option<&KafkaPublisher> {
        Some(self)
    }

    fn fatal_error(&self) -> Option<String> {
        let (code, reason) = self.producer.client().fatal_error()?;
        Some(format!("{code}: {reason}"))
    }
}

/// How long a send waits for room in a full local queue before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(100);

/// How long a send waits for room in a full local queue in all, as rdkafka's
/// `FutureProducer::send` with its usual 30 s.
const QUEUE_FULL_DEADLINE: Duration = Duration::from_secs(30);
