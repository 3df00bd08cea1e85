//! Publishing retry and dead-letter copies.
//!
//! [`Publish`] is the extension point (tests use an in-memory one); [`KafkaPublisher`] is the
//! real one: an idempotent producer with `acks=all`, and a publish completes only when the
//! broker acknowledged the copy, because the source offset may advance only then.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as RdHeader, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer, ProducerContext,
};
use rdkafka::ClientContext;

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

    /// The [`KafkaPublisher`] that publishes exactly as this does, if any. The retry layer
    /// then sends its copies through it and takes each acknowledgement from librdkafka's
    /// delivery report, which saves a future, a few allocations and a task wake-up per
    /// failure. A wrapper may return the publisher it delegates to only if its `publish` is
    /// that publisher's, unchanged; the default is `None` (copies go through `publish`).
    fn as_kafka(&self) -> Option<&KafkaPublisher> {
        None
    }
}

/// Publishes through an rdkafka producer configured for durability.
///
/// Delivery reports are served by the threads that send, right after each send, and by a
/// thread of the publisher's own (`redrive-delivery`) for those no send came to serve: every
/// 2 ms while records are in flight, woken by the next send when idle. A report so reaches
/// its waiter at most ~2 ms after librdkafka queued it, and under load most are served where
/// the copies were built: librdkafka then frees each copy (its message and one block per
/// header) on the thread that allocated it, which glibc's `malloc` serves from a per-thread
/// cache, where a delivery thread of its own (rdkafka's `ThreadedProducer`) frees every copy
/// on another thread. That cost the retry path ~15 % of its throughput (BENCHMARKS.md,
/// session 20).
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: Arc<BaseProducer<PublishContext>>,
    reports: Arc<ReportServer>,
}

/// How often the delivery thread looks for reports while records are in flight. It does not
/// wait for them in librdkafka: it would take each batch of reports as it arrives, before a
/// sender can.
const REPORT_INTERVAL: Duration = Duration::from_millis(2);

/// How long the delivery thread sleeps with nothing in flight, unless a send wakes it: it
/// still serves librdkafka's error events (logged by the context) that often.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The publisher's delivery thread; stopped and joined when the last clone of the publisher
/// drops.
struct ReportServer {
    thread: Thread,
    handle: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Set while the thread sleeps for [`IDLE_WAIT`]: the next send wakes it.
    idle: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl ReportServer {
    fn start(producer: Arc<BaseProducer<PublishContext>>) -> std::io::Result<Self> {
        let idle = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (idle2, stop2) = (idle.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("redrive-delivery".into())
            .spawn(move || serve_reports(&producer, &idle2, &stop2))?;
        Ok(ReportServer {
            thread: handle.thread().clone(),
            handle: std::sync::Mutex::new(Some(handle)),
            idle,
            stop,
        })
    }

    /// After a send: wakes the thread if it sleeps for [`IDLE_WAIT`].
    fn sent(&self) {
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            self.thread.unpark();
        }
    }
}

impl Drop for ReportServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
        let handle = self
            .handle
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // A delivery callback may hold the last clone, so this may run on the thread itself,
        // which then ends on its own after this pass.
        if let Some(h) = handle.filter(|h| h.thread().id() != std::thread::current().id()) {
            let _ = h.join();
        }
    }
}

/// The delivery thread's loop.
fn serve_reports(producer: &BaseProducer<PublishContext>, idle: &AtomicBool, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        serve_queued_reports(producer);
        if producer.in_flight_count() > 0 {
            std::thread::park_timeout(REPORT_INTERVAL);
            continue;
        }
        idle.store(true, Ordering::SeqCst);
        // A send between the count above and the flag would not wake the thread: count again.
        // (Should the count still miss it, the sleep ends after IDLE_WAIT all the same.)
        if producer.in_flight_count() == 0 && !stop.load(Ordering::SeqCst) {
            std::thread::park_timeout(IDLE_WAIT);
        }
        idle.store(false, Ordering::SeqCst);
    }
}

/// Serves the events librdkafka has queued, without waiting for more. `poll(ZERO)` serves at
/// most one event (one batch of reports), so it is called until the count stops falling.
fn serve_queued_reports(producer: &BaseProducer<PublishContext>) {
    let mut left = producer.in_flight_count();
    loop {
        producer.poll(Duration::ZERO);
        let now = producer.in_flight_count();
        if now >= left || now == 0 {
            return;
        }
        left = now;
    }
}

/// The producer context of a [`KafkaPublisher`]: hands each delivery report to whoever
/// waits for that record, on the thread that serves the report (see [`KafkaPublisher`]).
pub struct PublishContext;

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
pub struct Delivery(Waiter);

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

/// Producer settings the commit rule depends on; a user value for them is an error.
pub(crate) const DURABILITY: [(&str, &str); 2] = [("acks", "all"), ("enable.idempotence", "true")];

impl KafkaPublisher {
    /// An idempotent `acks=all` producer from `config` (any other property passes through).
    pub fn new(config: &ClientConfig) -> Result<Self, crate::Error> {
        let mut cfg = config.clone();
        for (k, v) in DURABILITY {
            cfg.set(k, v);
        }
        let producer: BaseProducer<PublishContext> = cfg
            .create_with_context(PublishContext)
            .map_err(crate::Error::from_client_config)?;
        let producer = Arc::new(producer);
        let reports = ReportServer::start(producer.clone()).map_err(|e| {
            crate::Error::Fatal(format!("cannot start the producer's delivery thread: {e}"))
        })?;
        Ok(KafkaPublisher {
            producer,
            reports: Arc::new(reports),
        })
    }

    /// The underlying producer. Its delivery reports are served by the publisher (see
    /// [`KafkaPublisher`]); calling its `poll` as well is harmless.
    pub fn producer(&self) -> &BaseProducer<PublishContext> {
        &self.producer
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
        let sent = self
            .producer
            .send(rec)
            .map_err(|(e, rec)| (e, *rec.delivery_opaque));
        // Serve what is queued here, where the copies were built (see `KafkaPublisher`); a
        // full queue (the error above) needs it most.
        self.producer.poll(Duration::ZERO);
        self.reports.sent();
        sent
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
}

/// How long a send waits for room in a full local queue before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(100);

/// How long a send waits for room in a full local queue in all, as rdkafka's
/// `FutureProducer::send` with its usual 30 s.
const QUEUE_FULL_DEADLINE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use std::sync::Weak;

    fn publisher(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    ) -> KafkaPublisher {
        KafkaPublisher::new(ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()))
            .unwrap()
    }

    /// The producer the publisher's delivery thread holds: gone once that thread ended.
    fn producer_of(p: &KafkaPublisher) -> Weak<BaseProducer<PublishContext>> {
        Arc::downgrade(&p.producer)
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last send's report comes after the send returned, so only the publisher's own
    /// thread can serve it; that thread ends with the last clone.
    #[tokio::test]
    async fn the_last_report_is_served_and_the_thread_ends_with_the_publisher() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("copies", 1, 1).unwrap();
        let p = publisher(&mock);
        let clone = p.clone();
        for i in 0..3 {
            let sent = Outgoing::to("copies").value(format!("copy {i}"));
            tokio::time::timeout(Duration::from_secs(30), p.publish(&sent))
                .await
                .expect("the acknowledgement never came")
                .expect("the copy was not acknowledged");
            // Idle again (nothing in flight), so the next send must wake the thread.
            std::thread::sleep(Duration::from_millis(150));
        }
        let producer = producer_of(&p);
        drop(p);
        assert!(producer.upgrade().is_some(), "a clone still publishes");
        drop(clone);
        assert!(
            producer.upgrade().is_none(),
            "the delivery thread still runs after the last clone dropped"
        );
    }

    /// A delivery callback may hold the last clone: dropping it there, on the delivery thread
    /// itself, must not join that thread, and the thread still ends.
    #[test]
    fn the_last_clone_may_drop_in_a_delivery_callback() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("copies", 1, 1).unwrap();
        let p = publisher(&mock);
        let producer = producer_of(&p);
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = p.clone();
        p.send_then(
            &Outgoing::to("copies").value("copy"),
            Box::new(move |sent| {
                let acked = matches!(sent, Sent::Acked);
                drop(kept);
                let _ = tx.send((acked, std::thread::current().name().map(str::to_owned)));
            }),
        );
        drop(p);
        let (acked, thread) = rx.recv_timeout(Duration::from_secs(30)).expect("no report");
        assert!(acked, "the copy was not acknowledged");
        assert_eq!(thread.as_deref(), Some("redrive-delivery"));
        wait_until("the delivery thread ended", || producer.upgrade().is_none());
    }
}
