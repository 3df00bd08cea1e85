//! The retry-topic router: a handler failure becomes a copy in the next retry topic, or in
//! the dead-letter topic, and the record counts as handled only once the broker acknowledged
//! that copy (DESIGN §5).
//!
//! ```text
//! orders --fail--> orders-retry-1000 --fail--> orders-retry-2000 --fail--> orders-dlt
//! ```
//!
//! Each copy keeps key, value (a tombstone stays one), and user headers byte for byte, and
//! carries Spring Kafka's retry headers (see [`crate::headers`]). Publishing is retried with
//! back-off until it succeeds; meanwhile the record is not final, so its offset is never
//! committed past.

mod future;
mod layer;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;

pub use future::ResponseFuture;
pub use layer::RetryTopicLayer;

use super::{guarded_call, Stage};
use crate::clock::now_ms;
use crate::error::Panicked;
use crate::error::{error_chain, BoxError};
use crate::headers::{self, AttemptsHeader};
use crate::partition_state::PartitionShared;
use crate::policy::{Classification, FatalReason, RetryPolicy, Topology};
use crate::publish::{Outgoing, Publish, Sent};
use crate::Record;

pub(crate) struct RetryShared {
    pub(crate) policy: RetryPolicy,
    pub(crate) by_topic: HashMap<String, Arc<TopicEntry>>,
    pub(crate) publisher: Arc<dyn Publish>,
    group: Arc<str>,
}

/// What the layer knows about one topic it reads.
pub(crate) struct TopicEntry {
    topology: Arc<Topology>,
    pub(crate) stage: Stage,
    /// The policy's attempts, which bound the `attempt` label (see [`attempt_label`]).
    attempts: u32,
    /// `records_handled_total` by outcome and `retries_scheduled_total`, by attempt.
    ok: ByAttempt,
    retryable: ByAttempt,
    fatal: ByAttempt,
    scheduled: ByAttempt,
    /// `records_dead_lettered_total` by [`DLT_REASONS`].
    dead: Vec<::metrics::Counter>,
    labels: [(&'static str, String); 3],
}

/// Why a record goes to the dead-letter topic (the `reason` label).
const DLT_REASONS: [&str; 4] = ["decode", "fatal", "timeout", "exhausted"];

/// Most attempt labels registered up front; beyond, counters are looked up when counted.
const CACHED_ATTEMPTS: u32 = 64;

/// One counter per `attempt` label, registered once, so counting an outcome bumps an atomic
/// instead of building a label set and looking it up in the recorder.
struct ByAttempt {
    name: &'static str,
    outcome: Option<&'static str>,
    /// Labels the attempt after the counted one (`retries_scheduled_total`).
    next: bool,
    cached: Vec<::metrics::Counter>,
}

impl ByAttempt {
    fn new(
        base: &[(&'static str, String)],
        attempts: u32,
        name: &'static str,
        outcome: Option<&'static str>,
        next: bool,
    ) -> Self {
        let mut c = ByAttempt {
            name,
            outcome,
            next,
            cached: Vec::new(),
        };
        // Attempts 1..=attempts, and one more for every attempt beyond (they share a label).
        c.cached = (1..=attempts.saturating_add(1).min(CACHED_ATTEMPTS))
            .map(|a| c.lookup(base, attempts, a))
            .collect();
        c
    }

    fn lookup(
        &self,
        base: &[(&'static str, String)],
        attempts: u32,
        attempt: u32,
    ) -> ::metrics::Counter {
        let mut l: Vec<(&'static str, String)> = base.to_vec();
        if let Some(o) = self.outcome {
            l.push(("outcome", o.into()));
        }
        let labelled = attempt.saturating_add(u32::from(self.next));
        l.push(("attempt", attempt_label(labelled, attempts)));
        ::metrics::counter!(self.name, &l)
    }

    fn increment(&self, base: &[(&'static str, String)], attempts: u32, attempt: u32) {
        let i = attempt.clamp(1, attempts.saturating_add(1)) as usize - 1;
        match self.cached.get(i) {
            Some(c) => c.increment(1),
            None => self.lookup(base, attempts, attempt).increment(1),
        }
    }
}

impl TopicEntry {
    fn new(
        topology: Arc<Topology>,
        stage: Stage,
        policy: &RetryPolicy,
        group: &str,
        route: &str,
        topic: &str,
    ) -> Self {
        use crate::metrics::names::{DEAD_LETTERED, RECORDS_HANDLED, RETRIES_SCHEDULED};
        let labels = [
            ("group", group.to_owned()),
            ("topic", topic.to_owned()),
            ("route", route.to_owned()),
        ];
        let attempts = policy.attempts;
        let handled =
            |outcome| ByAttempt::new(&labels, attempts, RECORDS_HANDLED, Some(outcome), false);
        let dead = DLT_REASONS
            .iter()
            .map(|r| {
                let mut l: Vec<(&'static str, String)> = labels.to_vec();
                l.push(("reason", (*r).into()));
                ::metrics::counter!(DEAD_LETTERED, &l)
            })
            .collect();
        let entry = TopicEntry {
            topology,
            stage,
            attempts,
            ok: handled("ok"),
            retryable: handled("retryable_error"),
            fatal: handled("fatal_error"),
            scheduled: ByAttempt::new(&labels, attempts, RETRIES_SCHEDULED, None, true),
            dead,
            labels,
        };
        // Failure counters exist from the start (at 0), so dashboards show 0, not "no data".
        for target in ["retry", "dlt"] {
            entry
                .counter(
                    crate::metrics::names::PUBLISH_FAILURES,
                    &[("target", target.into())],
                )
                .increment(0);
        }
        entry
    }

    pub(crate) fn count_ok(&self, attempt: u32) {
        self.ok.increment(&self.labels, self.attempts, attempt);
    }

    /// `records_handled_total` for a failure of `attempt`.
    pub(crate) fn count_failure(&self, fatal: bool, attempt: u32) {
        let c = if fatal { &self.fatal } else { &self.retryable };
        c.increment(&self.labels, self.attempts, attempt);
    }

    /// `retries_scheduled_total` for the retry after a failure of `attempt`.
    fn count_scheduled(&self, attempt: u32) {
        self.scheduled
            .increment(&self.labels, self.attempts, attempt);
    }

    fn count_dead(&self, reason: &'static str) {
        match DLT_REASONS.iter().position(|r| *r == reason) {
            Some(i) => self.dead[i].increment(1),
            None => self
                .counter(
                    crate::metrics::names::DEAD_LETTERED,
                    &[("reason", reason.into())],
                )
                .increment(1),
        }
    }

    pub(crate) fn counter(
        &self,
        name: &'static str,
        extra: &[(&'static str, String)],
    ) -> ::metrics::Counter {
        let mut l: Vec<(&'static str, String)> = self.labels.to_vec();
        l.extend_from_slice(extra);
        ::metrics::counter!(name, &l)
    }
}

/// The service [`RetryTopicLayer`] produces. See the [module docs](self).
pub struct RetryTopic<S> {
    inner: S,
    shared: Arc<RetryShared>,
    // Records of one partition share one interned topic name and one partition state: a
    // pointer check skips the map.
    last: Option<Arc<Bound>>,
}

/// The layer's state and one topic's entry behind a pointer of this service's own: each
/// partition's task calls its own clone of the service, so the count every record's future
/// bumps is one only that task writes. (Bumping the shared counts of [`RetryShared`] and
/// [`TopicEntry`] per record made the worker threads pass their cache lines back and forth.)
///
/// It also holds the topic name and partition state the partition's records carry, so the
/// failure path's copy of each record ([`Kept`]) counts no references to them.
pub(crate) struct Bound {
    shared: Arc<RetryShared>,
    entry: Arc<TopicEntry>,
    topic: Arc<str>,
    state: Option<Arc<PartitionShared>>,
}

impl Bound {
    /// Whether `r` came from this binding's partition (the same interned name and state).
    fn binds(&self, r: &Record) -> bool {
        Arc::ptr_eq(&self.topic, &r.topic)
            && self.state.as_ref().map(Arc::as_ptr) == r.partition_state.as_ref().map(Arc::as_ptr)
    }
}

impl<S: Clone> Clone for RetryTopic<S> {
    fn clone(&self) -> Self {
        RetryTopic {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            // Each clone (a partition's) binds its own: see [`Bound`].
            last: None,
        }
    }
}

impl<S> RetryTopic<S> {
    pub(crate) fn new(inner: S, shared: Arc<RetryShared>) -> Self {
        RetryTopic {
            inner,
            shared,
            last: None,
        }
    }

    fn bound(&mut self, r: &Record) -> Option<Arc<Bound>> {
        if let Some(b) = &self.last {
            if b.binds(r) {
                return Some(b.clone());
            }
        }
        let b = Arc::new(Bound {
            shared: self.shared.clone(),
            entry: self.shared.by_topic.get(r.topic())?.clone(),
            topic: r.topic.clone(),
            state: r.partition_state.clone(),
        });
        self.last = Some(b.clone());
        Some(b)
    }
}

/// The parts of a record its failure path needs besides those its [`Bound`] holds: kept for
/// every call, so a success counts references to the key and value (and headers, if any) but
/// not to the topic name and partition state.
struct Kept {
    partition: i32,
    offset: i64,
    timestamp: Option<crate::Timestamp>,
    key: Option<bytes::Bytes>,
    value: Option<bytes::Bytes>,
    headers: crate::Headers,
}

impl Kept {
    fn of(r: &Record) -> Self {
        Kept {
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        }
    }

    /// The record again, as the handler received it.
    fn into_record(self, b: &Bound) -> Record {
        Record {
            topic: b.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key,
            value: self.value,
            headers: self.headers,
            partition_state: b.state.clone(),
        }
    }
}

/// Everything the failure path needs; built per record, used only when it fails.
pub(crate) struct FailureCtx<S> {
    bound: Arc<Bound>,
    kept: Kept,
    attempt: u32,
    inner: Option<S>,
}

impl<S> FailureCtx<S> {
    pub(crate) fn count_ok(&self) {
        self.bound.entry.count_ok(self.attempt);
    }
}

impl<S> Service<Record> for RetryTopic<S>
where
    S: Service<Record> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, record: Record) -> Self::Future {
        let Some(bound) = self.bound(&record) else {
            // Not one of the layer's topics: no retry route, errors pass through.
            return ResponseFuture::passthrough(self.inner.call(record));
        };
        let attempt = match bound.entry.stage {
            Stage::Main => 1,
            _ => match headers::read_attempts(record.headers()) {
                AttemptsHeader::Valid(n) => n,
                AttemptsHeader::Absent => {
                    tracing::warn!(record = %record.coordinates(), "retry-topic record without a `retry_topic-attempts` header; treating it as attempt 1");
                    1
                }
                AttemptsHeader::Malformed => {
                    tracing::warn!(record = %record.coordinates(), "malformed `retry_topic-attempts` header; treating it as attempt 1");
                    1
                }
            },
        };
        let inner =
            (attempt == 1 && self.shared.policy.in_memory.attempts > 0).then(|| self.inner.clone());
        let ctx = FailureCtx {
            bound,
            kept: Kept::of(&record),
            attempt,
            inner,
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(record))) {
            Ok(fut) => ResponseFuture::new(fut, ctx),
            Err(p) => ResponseFuture::failed(ctx, Box::new(Panicked::from_payload(&*p))),
        }
    }
}

/// The `attempt` metric label: a header written by another producer may claim any attempt,
/// so values beyond the policy's last attempt share one label, bounding the label's values.
fn attempt_label(attempt: u32, attempts: u32) -> String {
    if attempt > attempts {
        format!("{}+", attempts.saturating_add(1))
    } else {
        attempt.to_string()
    }
}

/// Where a failed record goes.
enum Destination<'a> {
    Retry { topic: &'a str, due_ms: i64 },
    Dlt { reason: &'static str },
}

fn random_u64() -> u64 {
    // Jitter and span ids need spread, not cryptographic quality: a randomly keyed hash.
    RandomState::new().hash_one(std::time::Instant::now())
}

fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The failure path's work left to await: a copy's acknowledgement the runtime could not
/// take over, or in-memory retries.
pub(crate) type Failing = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// Runs the failure path. Without in-memory retries it is synchronous ([`route_failure`]):
/// a failed record allocates no future of its own unless the runtime cannot defer it.
pub(crate) fn on_failure<S>(ctx: FailureCtx<S>, err: BoxError) -> Option<Failing>
where
    S: Service<Record> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    match ctx.inner {
        Some(_) => Some(Box::pin(retry_in_memory(ctx, err))),
        None => {
            let record = ctx.kept.into_record(&ctx.bound);
            route_failure(ctx.bound, record, ctx.attempt, err)
        }
    }
}

/// In-memory retries first (`policy.in_memory`), then [`route_failure`].
async fn retry_in_memory<S>(ctx: FailureCtx<S>, mut err: BoxError) -> Result<(), BoxError>
where
    S: Service<Record> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let FailureCtx {
        bound,
        kept,
        attempt,
        inner,
    } = ctx;
    let record = kept.into_record(&bound);
    if let Some(mut inner) = inner {
        let (policy, entry) = (&bound.shared.policy, &bound.entry);
        for _ in 0..policy.in_memory.attempts {
            if policy.classify(&*err) != Classification::Retryable {
                break;
            }
            tracing::debug!(record = %record.coordinates(), error = %error_chain(&*err), "in-memory retry");
            tokio::time::sleep(policy.in_memory.delay).await;
            let ready: Result<(), BoxError> =
                futures_util::future::poll_fn(|cx| inner.poll_ready(cx).map_err(Into::into)).await;
            let res = match ready {
                Ok(()) => guarded_call(&mut inner, record.clone()).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => {
                    entry.count_ok(attempt);
                    return Ok(());
                }
                Err(e) => err = e,
            }
        }
    }
    if let Some(rest) = route_failure(bound, record, attempt, err) {
        rest.await?;
    }
    Ok(())
}

/// Classifies the failure, counts it and sends the copy to the next retry topic or the
/// dead-letter topic. The send is issued now, in record order; its acknowledgement is awaited
/// off the partition's path when the runtime lets this layer defer the record's completion
/// (the next records run meanwhile, and the offset still never passes an unacknowledged
/// copy): then nothing is left to await. Otherwise the returned future awaits it.
fn route_failure(
    bound: Arc<Bound>,
    record: Record,
    attempt: u32,
    err: BoxError,
) -> Option<Failing> {
    let (shared, entry) = (&bound.shared, &bound.entry);
    let policy = &shared.policy;
    let class = policy.classify(&*err);
    entry.count_failure(matches!(class, Classification::Fatal(_)), attempt);

    let now = now_ms();
    let topology = &entry.topology;
    let dest = match class {
        Classification::Fatal(FatalReason::Decode) => Destination::Dlt { reason: "decode" },
        Classification::Fatal(FatalReason::Fatal) => Destination::Dlt { reason: "fatal" },
        Classification::Retryable => match topology.hop(attempt) {
            Some(hop) if attempt < policy.attempts => {
                let mut delay = policy.jittered_delay(attempt, random_unit());
                if let Some(after) = crate::error::RetryAfter::find(&*err) {
                    // Never earlier than the failure asked; never longer than a retry topic holds.
                    delay = delay.max(after.min(policy.max_hold()));
                }
                let due_ms = now + delay.as_millis() as i64;
                let first = headers::original_timestamp(record.headers())
                    .or(record.timestamp().map(|t| t.millis))
                    .unwrap_or(now);
                match policy.timeout {
                    Some(t) if due_ms > first.saturating_add(t.as_millis() as i64) => {
                        Destination::Dlt { reason: "timeout" }
                    }
                    _ => Destination::Retry {
                        topic: &hop.topic,
                        due_ms,
                    },
                }
            }
            _ => Destination::Dlt {
                reason: "exhausted",
            },
        },
    };

    let (topic, due_ms, target) = match dest {
        Destination::Retry { topic, due_ms } => (topic, due_ms, "retry"),
        Destination::Dlt { reason } => match topology.dlt() {
            Some(dlt) => {
                entry.count_dead(reason);
                tracing::warn!(record = %record.coordinates(), attempt, reason, dlt, error = %error_chain(&*err), "sending the record to the dead-letter topic");
                (dlt, now, "dlt")
            }
            None => {
                tracing::error!(record = %record.coordinates(), attempt, reason, error = %error_chain(&*err), "record failed for good and the policy has no DLT (no_dlt): dropped");
                return None;
            }
        },
    };
    if target == "retry" {
        entry.count_scheduled(attempt);
        tracing::debug!(record = %record.coordinates(), attempt, topic, due_ms, error = %error_chain(&*err), "scheduling a retry");
    }
    let out = failure_copy(shared, &record, &*err, attempt, topic, due_ms);
    let deferral = record.defer();
    let failed = Failed {
        shared: Arc::downgrade(&bound.shared),
        entry: bound.entry.clone(),
        record,
        err,
        attempt,
        due_ms,
        target,
    };
    let kafka = shared.publisher.as_kafka();
    match (deferral, kafka) {
        // The common case: librdkafka's delivery report completes the record directly, with
        // no future, channel or task wake-up per copy; only a failed send starts the
        // retrying loop, which the partition task then runs.
        (Some(deferral), Some(kafka)) => {
            kafka.send_then(
                &out,
                Box::new(move |sent| match sent {
                    Sent::Acked => deferral.complete(),
                    Sent::Failed(e) => deferral.complete_after(Box::pin(
                        failed.publish_again(Some(Box::new(e) as BoxError)),
                    )),
                    Sent::NotTaken(e) => {
                        // A full local queue, which the waiting send waits out; or a copy
                        // the broker would refuse, which the retrying loop shrinks.
                        tracing::debug!(record = %failed.record.coordinates(), error = %e, "librdkafka did not take the copy; sending it again");
                        deferral.complete_after(Box::pin(failed.publish_again(None)))
                    }
                }),
            );
            None
        }
        (deferral, _) => {
            let first = shared.publisher.publish(&out);
            // The copy is not kept for a send that fails: it is built again from the record
            // then. Freed at once by the thread that built it, it costs less than held until
            // the acknowledgement, and a pending failure holds only the record.
            drop(out);
            // Small on purpose: the common case only awaits the first send; the retrying
            // loop (with its back-off timer) is allocated only after that send failed.
            let acked = async move {
                if let Err(e) = first.await {
                    Box::pin(failed.publish_again(Some(e))).await;
                }
            };
            match deferral {
                Some(deferral) => {
                    deferral.complete_after(Box::pin(acked));
                    None
                }
                None => Some(Box::pin(async move {
                    acked.await;
                    Ok(())
                })),
            }
        }
    }
}

/// A failure whose first copy was not acknowledged: what it takes to send the copy again.
///
/// It holds the layer's state weakly: librdkafka holds it with the copy until the delivery
/// report, and a strong reference from there to the publisher's own producer would keep
/// that producer (its threads and connections) alive after the worker is gone, until every
/// copy in flight timed out. Once the layer is gone there is no partition to complete.
struct Failed {
    shared: std::sync::Weak<RetryShared>,
    entry: Arc<TopicEntry>,
    record: Record,
    err: BoxError,
    attempt: u32,
    due_ms: i64,
    /// `"retry"` or `"dlt"`, as chosen for the first copy.
    target: &'static str,
}

impl Failed {
    /// Builds the copy again and publishes it until acknowledged; `first` is the first
    /// send's error, or None when that send never left (it is then counted as no failure).
    async fn publish_again(self, first: Option<BoxError>) {
        let Failed {
            shared,
            entry,
            record,
            err,
            attempt,
            due_ms,
            target,
        } = self;
        let Some(shared) = shared.upgrade() else {
            tracing::debug!(record = %record.coordinates(), "the retry layer is gone; the record stays uncommitted, to be read again");
            return;
        };
        let shared = &*shared;
        // The topic chosen above: the topology does not change.
        let topology = &entry.topology;
        let topic = match target {
            "dlt" => topology.dlt(),
            _ => topology.hop(attempt).map(|h| h.topic.as_str()),
        };
        let Some(topic) = topic else {
            // Unreachable: the same topology gave the topic above. Not silent if it is.
            tracing::error!(record = %record.coordinates(), "the failure copy's topic is gone from the topology; the copy was not sent");
            return;
        };
        let out = failure_copy(shared, &record, &*err, attempt, topic, due_ms);
        let first =
            first.map(|e| Box::pin(std::future::ready(Err(e))) as crate::publish::PublishFuture);
        publish_until_acked(&*shared.publisher, out, first, &entry, target, &record).await;
    }
}

/// The copy of `record` for `topic`, with the headers of a failure hop.
pub(crate) fn failure_copy(
    shared: &RetryShared,
    record: &Record,
    err: &(dyn std::error::Error + 'static),
    attempt: u32,
    topic: &str,
    due_ms: i64,
) -> Outgoing {
    let headers = headers::failure_headers(
        record.headers(),
        &headers::Failure {
            topic: record.topic(),
            partition: record.partition(),
            offset: record.offset(),
            timestamp: record.timestamp().map(|t| (t.millis, t.kind)),
            group: &shared.group,
            attempt,
            due_ms,
            error: err,
            max_text: shared.policy.max_header_text,
        },
        random_u64(),
    );
    Outgoing {
        topic: topic.to_owned(),
        partition: shared
            .policy
            .partitions
            .is_none()
            .then_some(record.partition()),
        key: record.key().cloned(),
        value: record.value().cloned(),
        headers,
    }
}

fn too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;
    matches!(
        e.downcast_ref::<KafkaError>(),
        Some(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize
        ))
    )
}

/// Publishes until the broker acknowledges, backing off between failures. Never gives up: the
/// record is not final until its copy is durable; a revoke or shutdown that cannot wait
/// abandons it uncommitted, to be read again.
///
/// A copy the broker can never take because it exceeds the maximum record size (the failure
/// headers pushed a record near the limit over it) is not retried as is: first the error
/// texts are dropped; if it is still too large, the dead-letter topic gets the record's key,
/// headers and coordinates without its value, with a [`VALUE_DROPPED`](crate::headers::VALUE_DROPPED) header saying why and
/// where the original is (still in its source topic). No partition waits forever on it.
pub(crate) async fn publish_until_acked(
    publisher: &dyn Publish,
    mut out: Outgoing,
    mut first: Option<crate::publish::PublishFuture>,
    entry: &TopicEntry,
    mut target: &'static str,
    record: &Record,
) {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    let mut shrunk = 0u8;
    loop {
        let attempt = first.take().unwrap_or_else(|| publisher.publish(&out));
        match attempt.await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(record = %record.coordinates(), topic = %out.topic, failures, "published after failures");
                }
                return;
            }
            Err(e) if too_large(&*e) && shrunk < 2 => {
                failures += 1;
                shrunk += 1;
                entry
                    .counter(
                        crate::metrics::names::PUBLISH_FAILURES,
                        &[("target", target.into())],
                    )
                    .increment(1);
                if shrunk == 1 {
                    tracing::warn!(record = %record.coordinates(), topic = %out.topic, error = %error_chain(&*e), "the copy exceeds the maximum record size; sending it without the error texts");
                    out.headers.remove(headers::EXCEPTION_STACKTRACE);
                    out.headers.remove(headers::EXCEPTION_MESSAGE);
                    continue;
                }
                let Some(dlt) = entry.topology.dlt() else {
                    tracing::error!(record = %record.coordinates(), error = %error_chain(&*e), "the copy exceeds the maximum record size and the policy has no DLT (no_dlt): dropped");
                    return;
                };
                let size = out.value.as_ref().map_or(0, |v| v.len());
                let why = format!(
                    "the {size}-byte value made the copy exceed the maximum record size; the original is {}/{}@{}",
                    record.topic(),
                    record.partition(),
                    record.offset()
                );
                tracing::error!(record = %record.coordinates(), dlt, "{why}: dead-lettering it without its value");
                out.value = None;
                out.topic = dlt.to_owned();
                out.headers.set(headers::VALUE_DROPPED, why.into_bytes());
                target = "dlt";
                continue;
            }
            Err(e) => {
                failures += 1;
                entry
                    .counter(
                        crate::metrics::names::PUBLISH_FAILURES,
                        &[("target", target.into())],
                    )
                    .increment(1);
                tracing::warn!(record = %record.coordinates(), topic = %out.topic, failures, error = %error_chain(&*e), retry_in = ?backoff, "publishing the failure copy failed; the offset is held back and the publish retried");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
