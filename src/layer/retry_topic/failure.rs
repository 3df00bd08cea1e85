//! The routing decision: where a failed record goes (in-memory retry, the next retry topic,
//! the dead-letter topic), and who completes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tower::Service;

use super::context::{Bound, FailureCtx};
use super::delivery::{failure_copy, random_unit, Failed};
use super::ordering;
use crate::clock::now_ms;
use crate::error::{error_chain, BoxError};
use crate::headers;
use crate::layer::guarded_call;
use crate::policy::{Classification, FatalReason};
use crate::publish::Sent;
use crate::Record;

/// Where a failed record goes.
enum Destination<'a> {
    Retry { topic: &'a str, due_ms: i64 },
    Dlt { reason: &'static str },
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

/// Where a failure of `class` at `attempt` goes: the next retry topic with its due time, or
/// the dead-letter topic with the reason.
fn destination<'a>(
    bound: &'a Bound,
    record: &Record,
    attempt: u32,
    err: &(dyn std::error::Error + 'static),
    class: Classification,
    now: i64,
) -> Destination<'a> {
    let policy = &bound.shared.policy;
    if err.is::<crate::FollowedDeadLetter>() {
        return Destination::Dlt {
            reason: "key-order",
        };
    }
    let hop = match class {
        Classification::Fatal(FatalReason::Decode) => return Destination::Dlt { reason: "decode" },
        Classification::Fatal(FatalReason::Fatal) => return Destination::Dlt { reason: "fatal" },
        Classification::Retryable => match bound.entry.topology.hop(attempt) {
            Some(hop) if attempt < policy.attempts => hop,
            _ => {
                return Destination::Dlt {
                    reason: "exhausted",
                }
            }
        },
    };
    let mut delay = policy.jittered_delay(attempt, random_unit());
    if let Some(after) = crate::error::RetryAfter::find(err) {
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
    let dest = destination(&bound, &record, attempt, &*err, class, now);
    let to_retry = matches!(dest, Destination::Retry { .. });
    ordering::routed(
        &bound,
        record.key(),
        record.offset,
        record.headers(),
        to_retry,
    );
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
