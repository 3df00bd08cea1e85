//! What a partition task counts, reports and traces per record.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::shared::RuntimeShared;
use crate::commit::CommitTrigger;
use crate::error::{error_chain, BoxError, Halt, Panicked};
use crate::layer::Stage;
use crate::partition_state::PartitionShared;
use crate::Record;

/// Per-partition metric handles, registered once so the hot path only bumps atomics.
pub(super) struct Meters {
    pub(super) consumed: ::metrics::Counter,
    /// None when a layer counts outcomes itself.
    pub(super) ok: Option<::metrics::Counter>,
    pub(super) error: Option<::metrics::Counter>,
    pub(super) duration: ::metrics::Histogram,
    pub(super) delay_error: ::metrics::Histogram,
}

impl Meters {
    pub(super) fn new(
        rt: &RuntimeShared,
        p: &PartitionShared,
        stage: Stage,
        count_outcomes: bool,
    ) -> Self {
        use crate::metrics::names::*;
        let g = rt.group.to_string();
        let t = p.topic.to_string();
        let r = p.route.to_string();
        let handled = |outcome: &'static str| {
            count_outcomes.then(|| ::metrics::counter!(RECORDS_HANDLED, "group" => g.clone(), "topic" => t.clone(), "route" => r.clone(), "outcome" => outcome, "attempt" => "1"))
        };
        Meters {
            consumed: ::metrics::counter!(RECORDS_CONSUMED, "group" => g.clone(), "topic" => t.clone(), "route" => r.clone(), "stage" => stage.as_str()),
            ok: handled("ok"),
            error: handled("retryable_error"),
            duration: ::metrics::histogram!(HANDLER_DURATION, "group" => g.clone(), "topic" => t.clone(), "route" => r.clone()),
            delay_error: ::metrics::histogram!(RETRY_DELAY_ERROR, "group" => g.clone(), "topic" => t.clone(), "route" => r.clone()),
        }
    }
}

/// Records a finished call; false when a layer halted the partition at this record.
/// Errors that reach the runtime were not routed anywhere by a layer, so the runtime logs
/// them with the record's coordinates; the record is then final.
pub(super) fn report(
    p: &PartitionShared,
    m: &Meters,
    offset: i64,
    took: Duration,
    res: Result<(), BoxError>,
) -> bool {
    m.duration.record(took.as_secs_f64());
    match res {
        Ok(()) => {
            if let Some(c) = &m.ok {
                c.increment(1);
            }
        }
        Err(e) if e.is::<Halt>() => {
            p.mark_halted();
            tracing::error!(
                topic = %p.topic, partition = p.partition, offset,
                error = %error_chain(&*e),
                "partition halted; the record stays uncommitted"
            );
            return false;
        }
        Err(e) if !e.is::<Panicked>() => {
            if let Some(c) = &m.error {
                c.increment(1);
            }
            tracing::error!(
                topic = %p.topic, partition = p.partition, offset,
                error = %error_chain(&*e),
                "handler failed and no retry route is configured; the record is logged and skipped"
            );
        }
        Err(panic) => {
            if let Some(c) = &m.error {
                c.increment(1);
            }
            tracing::error!(
                topic = %p.topic, partition = p.partition, offset,
                panic = %panic,
                "handler panicked; the record counts as failed and the worker keeps running"
            );
        }
    }
    true
}

/// Counts final records. The worker-wide count (which commit triggers read) is shared by
/// every task, so it is bumped once per `every` records and whenever the task is about to
/// wait, not per record: one contended atomic operation per record less.
pub(super) struct FinishedCount<'r> {
    rt: &'r RuntimeShared,
    unpublished: u64,
    every: u64,
}

impl<'r> FinishedCount<'r> {
    pub(super) fn new(rt: &'r RuntimeShared) -> Self {
        // A count trigger sees the records at most 1/16 of its count late; per record, at once.
        let every = match rt.config.commit.trigger {
            CommitTrigger::PerRecord => 1,
            CommitTrigger::EveryRecords(n) => (n / 16).clamp(1, 64),
            CommitTrigger::Interval(_) | CommitTrigger::PerBatch => 64,
        };
        FinishedCount {
            rt,
            unpublished: 0,
            every,
        }
    }

    pub(super) fn add(&mut self, shared: &PartitionShared) {
        shared.finished();
        self.unpublished += 1;
        if self.unpublished >= self.every {
            self.publish();
        }
    }

    pub(super) fn publish(&mut self) {
        if self.unpublished > 0 {
            self.rt
                .finished_records
                .fetch_add(std::mem::take(&mut self.unpublished), Ordering::Relaxed);
        }
    }
}

impl Drop for FinishedCount<'_> {
    fn drop(&mut self) {
        self.publish();
    }
}

/// The span of one record, with OpenTelemetry's messaging attributes. Attempt and trace id
/// are read from the headers only when the span is enabled.
///
/// DEBUG, as tower-http's `TraceLayer` makes its request spans: an application's usual INFO
/// filter would otherwise build a span per record, which with `tracing-subscriber`'s `fmt`
/// layer cost ~5 us of CPU per record, five times the rest of the happy path (BENCHMARKS.md,
/// Tuning). `RUST_LOG=redrive=debug` (or a tracing-opentelemetry layer's own filter)
/// turns them on.
pub(super) fn record_span(rt: &RuntimeShared, p: &PartitionShared, r: &Record) -> tracing::Span {
    let span = tracing::debug_span!(
        "redrive.record",
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation = "process",
        messaging.destination.name = %p.topic,
        messaging.kafka.partition = p.partition,
        messaging.kafka.offset = r.offset,
        messaging.kafka.consumer.group = %rt.group,
        redrive.route = %p.route,
        redrive.attempt = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("redrive.attempt", crate::headers::attempt_of(r.headers()));
        match crate::headers::trace_id(r.headers()) {
            Some(t) => span.record("trace_id", t),
            None => span.record(
                "trace_id",
                crate::headers::derived_trace_id(&p.topic, p.partition, r.offset).as_str(),
            ),
        };
    }
    span
}
