//! Delivery of a failure copy: built with the hop's headers, published until the broker
//! acknowledges it, shrunk when it is too large.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use super::shared::{RetryShared, TopicEntry};
use crate::error::{error_chain, BoxError};
use crate::headers;
use crate::publish::{Outgoing, Publish};
use crate::Record;

pub(crate) fn random_u64() -> u64 {
    // Jitter and span ids need spread, not cryptographic quality: a randomly keyed hash.
    RandomState::new().hash_one(std::time::Instant::now())
}

pub(crate) fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A failure whose first copy was not acknowledged: what it takes to send the copy again.
///
/// It holds the layer's state weakly: librdkafka holds it with the copy until the delivery
/// report, and a strong reference from there to the publisher's own producer would keep
/// that producer (its threads and connections) alive after the worker is gone, until every
/// copy in flight timed out. Once the layer is gone there is no partition to complete.
pub(crate) struct Failed {
    pub(crate) shared: std::sync::Weak<RetryShared>,
    pub(crate) entry: Arc<TopicEntry>,
    pub(crate) record: Record,
    pub(crate) err: BoxError,
    pub(crate) attempt: u32,
    pub(crate) due_ms: i64,
    /// `"retry"` or `"dlt"`, as chosen for the first copy.
    pub(crate) target: &'static str,
}

impl Failed {
    /// Builds the copy again and publishes it until acknowledged; `first` is the first
    /// send's error, or None when that send never left (it is then counted as no failure).
    pub(crate) async fn publish_again(self, first: Option<BoxError>) {
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
    let hop = Hop {
        topic,
        attempt,
        due_ms,
        group: &shared.group,
        max_text: shared.policy.max_header_text,
        keep_partition: shared.policy.partitions.is_none(),
        declared_error: shared.declared_error,
        profile: shared.policy.headers,
    };
    hop_copy(record, err, &hop)
}

/// Where a failure copy goes and what its headers say besides the record and the error.
pub(crate) struct Hop<'a> {
    pub topic: &'a str,
    /// The attempt that failed.
    pub attempt: u32,
    pub due_ms: i64,
    pub group: &'a str,
    /// Error texts are cut to this many bytes.
    pub max_text: usize,
    /// The copy keeps the record's partition.
    pub keep_partition: bool,
    /// The handler's error type, named when the error names none.
    pub declared_error: Option<&'a str>,
    /// Which headers the copy carries.
    pub profile: headers::HeaderProfile,
}

/// The copy of `record` for `hop.topic`, with Spring's failure headers for `err`.
pub(crate) fn hop_copy(
    record: &Record,
    err: &(dyn std::error::Error + 'static),
    hop: &Hop<'_>,
) -> Outgoing {
    let headers = headers::failure_headers(
        record.headers(),
        &headers::Failure {
            topic: record.topic(),
            partition: record.partition(),
            offset: record.offset(),
            timestamp: record.timestamp().map(|t| (t.millis, t.kind)),
            group: hop.group,
            attempt: hop.attempt,
            due_ms: hop.due_ms,
            error: err,
            max_text: hop.max_text,
            declared_type: hop.declared_error,
            profile: hop.profile,
        },
        random_u64(),
    );
    Outgoing {
        topic: hop.topic.to_owned(),
        partition: hop.keep_partition.then_some(record.partition()),
        key: record.key().cloned(),
        value: record.value().cloned(),
        headers,
    }
}

/// How a refused copy fails: `transient` (the broker or network may recover by itself),
/// `permanent` (a setting, ACL or topic must change first) or `fatal` (the producer itself
/// is unusable).
pub(crate) fn publish_error_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as C;
    let code = match e.downcast_ref::<KafkaError>() {
        Some(KafkaError::MessageProduction(c)) => *c,
        Some(other) => match other.rdkafka_error_code() {
            Some(c) => c,
            None => return "transient",
        },
        None => return "transient",
    };
    match code {
        C::Fatal => "fatal",
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::InvalidTopic
        | C::InvalidConfig
        | C::InvalidRecord
        | C::PolicyViolation
        | C::UnsupportedVersion
        | C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidRequiredAcks => "permanent",
        _ => "transient",
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

/// Publishes until the broker acknowledges, backing off between failures. Never gives up on a
/// transient failure: the record is not final until its copy is durable; a revoke or shutdown
/// that cannot wait abandons it uncommitted, to be read again.
///
/// A copy the broker can never take because it exceeds the maximum record size is shrunk in
/// defined steps instead of being sent again as is ([`shrink`]): its error texts go, then it
/// goes to the dead-letter topic with an empty value (never a tombstone, which a compacted
/// DLT would treat as a delete) and a [`VALUE_DROPPED`](crate::headers::VALUE_DROPPED) header
/// saying where the original is, then without the record's own headers, then without its key.
/// A copy still too large after that is logged and skipped. No partition waits forever on it.
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
    let mut step = 0u8;
    // While the copy fails, its partition takes no new record (docs/design.md, Faults).
    let mut failing = None;
    loop {
        let attempt = first.take().unwrap_or_else(|| publisher.publish(&out));
        let e = match attempt.await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(record = %record.coordinates(), topic = %out.topic, failures, "published after failures");
                }
                return;
            }
            Err(e) => e,
        };
        failures += 1;
        let kind = publish_error_kind(&*e);
        let failed = entry.counter(
            crate::metrics::names::PUBLISH_FAILURES,
            &[("target", target.into()), ("kind", kind.into())],
        );
        failed.increment(1);
        if failing.is_none() {
            failing = record.partition_state.as_ref().map(|p| p.copy_failing());
        }
        if too_large(&*e) {
            step += 1;
            match shrink(&mut out, step, entry, record, &*e) {
                Some(true) => target = "dlt",
                Some(false) => {}
                None => return,
            }
            continue;
        }
        // Once at first, then every tenth failure: the copy is retried every few seconds.
        let loud = failures == 1 || failures % 10 == 0;
        match kind {
            _ if !loud => {
                tracing::debug!(record = %record.coordinates(), topic = %out.topic, kind, failures, error = %error_chain(&*e), "the failure copy is refused again")
            }
            "transient" => {
                tracing::warn!(record = %record.coordinates(), topic = %out.topic, failures, error = %error_chain(&*e), retry_in = ?backoff, "publishing the failure copy failed; the offset is held back and the publish retried")
            }
            _ => {
                tracing::error!(record = %record.coordinates(), topic = %out.topic, kind, failures, error = %error_chain(&*e), retry_in = ?backoff, "the broker refuses the failure copy ({kind}); its partition takes no new record until the copy is sent (fix the cause, e.g. grant the ACL or create the topic: it resumes by itself)")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Makes the `step`-th smaller form of a copy the broker refused as too large; true when it
/// now goes to the dead-letter topic, `None` once nothing is left to drop (the record is then
/// skipped, with an error log).
fn shrink(
    out: &mut Outgoing,
    step: u8,
    entry: &TopicEntry,
    record: &Record,
    e: &(dyn std::error::Error + 'static),
) -> Option<bool> {
    let at = record.coordinates();
    let err = error_chain(e);
    match step {
        1 => {
            tracing::warn!(record = %at, topic = %out.topic, error = %err, "the copy exceeds the maximum record size; sending it without the error texts");
            out.headers.remove(headers::EXCEPTION_STACKTRACE);
            out.headers.remove(headers::EXCEPTION_MESSAGE);
            Some(false)
        }
        2 => {
            let Some(dlt) = entry.topology.dlt() else {
                tracing::error!(record = %at, error = %err, "the copy exceeds the maximum record size and the policy has no DLT (no_dlt): dropped");
                return None;
            };
            let size = out.value.as_ref().map_or(0, |v| v.len());
            let why = format!(
                "the {size}-byte value made the copy exceed the maximum record size; the original is {}/{}@{}",
                record.topic(),
                record.partition(),
                record.offset()
            );
            tracing::error!(record = %at, dlt, "{why}: dead-lettering it without its value");
            // Empty, not null: a null value is a tombstone on a compacted topic.
            out.value = Some(bytes::Bytes::new());
            out.topic = dlt.to_owned();
            out.headers.set(headers::VALUE_DROPPED, why.into_bytes());
            Some(true)
        }
        3 => {
            let before = out.headers.len();
            out.headers = bookkeeping_only(&out.headers);
            let dropped = before - out.headers.len();
            tracing::error!(record = %at, dropped, "the dead letter is still too large without its value; sending it without the record's own headers");
            out.headers
                .set(headers::HEADERS_DROPPED, dropped.to_string().into_bytes());
            Some(true)
        }
        4 => {
            tracing::error!(record = %at, "the dead letter is still too large without its value and headers; sending it without its key");
            out.key = None;
            Some(true)
        }
        _ => {
            tracing::error!(record = %at, topic = %out.topic, error = %err, "not even a dead letter without value, headers and key fits the maximum record size; the record is skipped (it stays in its source topic)");
            None
        }
    }
}

/// Only the headers redrive and Spring write (retry bookkeeping, original coordinates, error
/// type, the trace context, redrive's markers).
fn bookkeeping_only(h: &headers::Headers) -> headers::Headers {
    let mut out = headers::Headers::default();
    for x in h.iter() {
        let k = &*x.key;
        let ours = k.starts_with("kafka_")
            || k.starts_with("retry_topic-")
            || k.starts_with("redrive-")
            || k == headers::TRACEPARENT;
        if ours {
            out.push(x.key.clone(), x.value.clone());
        }
    }
    out
}
