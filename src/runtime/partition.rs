//! The task that handles one partition's records.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::fetch::{Cursor, Feed};
use super::shared::RuntimeShared;
use super::tracker::{Completion, OffsetTracker};
use crate::clock::now_ms;
use crate::commit::CommitTrigger;
use crate::error::{error_chain, BoxError};
use crate::error::{Halt, Panicked};
use crate::layer::{guarded_call, Stage};
use crate::partition_state::{Completions, PartitionShared};
use crate::Record;

/// Everything a partition task needs besides its service.
pub(crate) struct PartitionStart {
    pub shared: Arc<PartitionShared>,
    /// Record batches from the poll thread.
    pub feed: Feed,
    /// Completions of records whose completion a layer deferred.
    pub deferred: Completions,
    pub acks: Option<mpsc::UnboundedReceiver<i64>>,
    pub rt: Arc<RuntimeShared>,
    pub concurrency: usize,
    pub stage: Stage,
    pub max_wait: Duration,
    pub count_outcomes: bool,
    /// See `TopicBinding::carry_state`.
    pub carry_state: bool,
}

/// Per-partition metric handles, registered once so the hot path only bumps atomics.
struct Meters {
    consumed: ::metrics::Counter,
    /// None when a layer counts outcomes itself.
    ok: Option<::metrics::Counter>,
    error: Option<::metrics::Counter>,
    duration: ::metrics::Histogram,
    delay_error: ::metrics::Histogram,
}

impl Meters {
    fn new(rt: &RuntimeShared, p: &PartitionShared, stage: Stage, count_outcomes: bool) -> Self {
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

/// Holds a retry-topic record until its due time (docs/design.md, Delays). False when the partition was
/// stopped first: the record stays unhandled and uncommitted.
async fn due_gate(
    shared: &PartitionShared,
    record: &Record,
    max_wait: Duration,
    delay_error: &::metrics::Histogram,
) -> bool {
    let Some(due) = crate::headers::due_at_ms(record.headers()) else {
        tracing::warn!(record = %record.coordinates(), "retry-topic record without a valid `retry_topic-backoff-timestamp`; handling it now");
        return true;
    };
    let ahead = due - now_ms();
    if ahead > max_wait.as_millis() as i64 {
        tracing::warn!(record = %record.coordinates(), due_ms = due, ahead_ms = ahead, "back-off timestamp is further ahead than any delay of the policy; handling the record now instead of waiting");
        return true;
    }
    if ahead > 0 {
        tracing::debug!(record = %record.coordinates(), wait_ms = ahead, "holding the partition until the record is due");
    }
    if ahead > 0 && !shared.hold_until(due).await {
        return false;
    }
    delay_error.record((now_ms() - due).max(0) as f64 / 1000.0);
    true
}

/// Records a finished call; false when a layer halted the partition at this record.
/// Errors that reach the runtime were not routed anywhere by a layer, so the runtime logs
/// them with the record's coordinates; the record is then final.
fn report(
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
struct FinishedCount<'r> {
    rt: &'r RuntimeShared,
    unpublished: u64,
    every: u64,
}

impl<'r> FinishedCount<'r> {
    fn new(rt: &'r RuntimeShared) -> Self {
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

    fn add(&mut self, shared: &PartitionShared) {
        shared.finished();
        self.unpublished += 1;
        if self.unpublished >= self.every {
            self.publish();
        }
    }

    fn publish(&mut self) {
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

/// A record pulled from the partition's queue, with its share of the in-flight bounds.
pub(crate) struct Pulled<'r> {
    record: Record,
    permits: InFlight<'r>,
}

/// A record's share of the worker-wide in-flight bounds, released when dropped (or kept by
/// its partition's [`Source`] for the next record, see [`Source::recycle`]). It borrows the
/// runtime state rather than holding an `Arc`: a shared reference count would be two
/// contended atomic operations per record across the worker threads.
struct InFlight<'r> {
    rt: &'r RuntimeShared,
    records: u64,
    bytes: u64,
}

impl<'r> InFlight<'r> {
    fn none(rt: &'r RuntimeShared) -> Self {
        InFlight {
            rt,
            records: 0,
            bytes: 0,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.records > 0 {
            self.rt.records_bound.give(self.records);
        }
        if self.bytes > 0 {
            self.rt.bytes_bound.give(self.bytes);
        }
    }
}

/// Takes one partition's records from the batches the poll thread hands over. Back-pressure
/// is natural: while the task does not take its batch, the poll thread leaves the partition's
/// records in librdkafka's bounded queue, which stops fetching when full.
///
/// A record is built only once its permits are taken, so nothing is held across a wait but
/// the batch itself: every wait is cancel-safe and no record is ever dropped.
pub(crate) struct Source<'r> {
    feed: Feed,
    batch: Option<Cursor>,
    shared: Arc<PartitionShared>,
    /// This partition's own copy of the topic name, so the records' reference counting does
    /// not contend with other partitions' tasks.
    topic: Arc<str>,
    rt: &'r RuntimeShared,
    /// Whether records carry the partition's state (see [`Record::defer`] and
    /// [`Record::acknowledgment`]): only where something can use it, since the reference
    /// count is two atomic operations per record.
    carry_state: bool,
    /// Permits of finished records, kept for the next one: the bounds are shared by every
    /// task, and taking and giving back per record were four contended atomic operations.
    /// Given back before any wait, so a partition never holds more than its last record's.
    spare: InFlight<'r>,
}

impl<'r> Source<'r> {
    fn new(
        feed: Feed,
        shared: Arc<PartitionShared>,
        rt: &'r RuntimeShared,
        carry_state: bool,
    ) -> Self {
        Source {
            feed,
            batch: None,
            topic: Arc::from(&*shared.topic),
            shared,
            rt,
            carry_state,
            spare: InFlight::none(rt),
        }
    }

    /// The next record, or None once the partition is stopped. Cancel-safe.
    async fn next(&mut self) -> Option<Pulled<'r>> {
        self.release_spare();
        loop {
            if self.shared.stopping() {
                return None;
            }
            let Some(want) = self.peek() else {
                tokio::select! {
                    biased;
                    // Not handed over: the uncommitted records are read again later.
                    _ = self.shared.stopped() => return None,
                    batch = self.feed.take() => self.batch = Some(batch?),
                }
                continue;
            };
            // The waiting futures (which register with `Notify`s) only when a bound is full.
            if !self.rt.records_bound.try_take(1) {
                tokio::select! {
                    biased;
                    _ = self.shared.stopped() => return None,
                    _ = self.rt.records_bound.take(1) => {}
                }
            }
            // Gives the record permit back if the wait below is cancelled.
            let mut permits = InFlight::none(self.rt);
            permits.records = 1;
            if !self.rt.bytes_bound.try_take(want) {
                tokio::select! {
                    biased;
                    _ = self.shared.stopped() => return None,
                    _ = self.rt.bytes_bound.take(want) => {}
                }
            }
            permits.bytes = want;
            return self.take(permits);
        }
    }

    /// The next record if one is waiting and the bounds have room, without awaiting
    /// anything; None otherwise (then [`Source::next`] waits). The common case, a partition
    /// with a backlog, so skips the per-record futures and `Notify` registrations.
    fn try_next(&mut self) -> Option<Pulled<'r>> {
        if self.shared.stopping() {
            return None;
        }
        let want = self.peek()?;
        let mut permits = InFlight::none(self.rt);
        if self.spare.records > 0 {
            self.spare.records -= 1;
        } else if !self.rt.records_bound.try_take(1) {
            return None;
        }
        permits.records = 1;
        if self.spare.bytes >= want {
            self.spare.bytes -= want;
        } else if self.rt.bytes_bound.try_take(want - self.spare.bytes) {
            self.spare.bytes = 0;
        } else {
            return None;
        }
        permits.bytes = want;
        self.take(permits)
    }

    /// Keeps a finished record's permits for the next record.
    fn recycle(&mut self, mut permits: InFlight<'r>) {
        self.spare.records += std::mem::take(&mut permits.records);
        self.spare.bytes += std::mem::take(&mut permits.bytes);
    }

    /// Gives the kept permits back to the worker-wide bounds.
    fn release_spare(&mut self) {
        drop(std::mem::replace(&mut self.spare, InFlight::none(self.rt)));
    }

    /// The byte permits the next record of the current batch, or of a batch already handed
    /// over, needs (at least one, so empty records count); None when none is waiting.
    fn peek(&mut self) -> Option<u64> {
        loop {
            if let Some(bytes) = self.batch.as_ref().and_then(Cursor::peek_bytes) {
                return Some((bytes as u64).max(1));
            }
            if self.batch.take().is_some() {
                // A batch is the unit of the per-batch commit policy.
                self.rt.bursts.fetch_add(1, Ordering::Relaxed);
            }
            self.batch = Some(self.feed.try_take()?);
        }
    }

    /// Takes the record [`Source::peek`] saw, its permits taken.
    fn take(&mut self, permits: InFlight<'r>) -> Option<Pulled<'r>> {
        let cursor = self.batch.as_mut()?;
        let mut record = cursor.next_record(&self.topic, self.shared.partition)?;
        if self.carry_state {
            record.partition_state = Some(self.shared.clone());
        }
        let max = self.rt.config.max_in_flight_bytes;
        if permits.bytes > max {
            tracing::warn!(record = %record.coordinates(), bytes = permits.bytes, max_in_flight_bytes = max, "record is larger than max_in_flight_bytes; it is handled, alone");
        }
        self.shared.dispatched();
        Some(Pulled { record, permits })
    }
}

/// Records a busy sequential task handles between two looks for completed deferrals.
const DEFERRED_CHECK_EVERY: u32 = 16;

/// Handles one partition's records until its queue closes or it is told to stop.
pub(crate) async fn run_partition<S>(mut svc: S, start: PartitionStart)
where
    S: Service<Record> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let PartitionStart {
        shared,
        feed,
        mut deferred,
        acks,
        rt,
        concurrency,
        stage,
        max_wait,
        count_outcomes,
        carry_state,
    } = start;
    let meters = Meters::new(&rt, &shared, stage, count_outcomes);
    let mut source = Source::new(feed, shared.clone(), &rt, carry_state);
    let gated = stage == Stage::Retry;
    let mut tracker = OffsetTracker::new();
    let mut finished = FinishedCount::new(&rt);

    // Records whose completion a layer deferred (a retry copy being acknowledged).
    let mut outstanding = 0usize;
    if concurrency == 1 && acks.is_none() {
        // The common case: one record at a time, final when the service returns.
        // When the previous call ended: the start of a record taken without waiting. One
        // clock read per record instead of two; the duration then also counts the few
        // hundred nanoseconds of bookkeeping between the calls.
        let mut ended: Option<Instant> = None;
        let mut until_check = 0u32;
        loop {
            if outstanding > 0 {
                // Looking costs a poll of the deferred set: done every few records (and
                // whenever the task would wait), not per record.
                if until_check == 0 {
                    until_check = DEFERRED_CHECK_EVERY;
                    while outstanding > 0 {
                        let Some(offset) = deferred.try_next() else {
                            break;
                        };
                        outstanding -= 1;
                        // Final only now: commit triggers count it now.
                        settle(&mut tracker, &shared, &mut finished, offset);
                    }
                } else {
                    until_check -= 1;
                }
            }
            let pulled = match source.try_next() {
                Some(p) => {
                    // Nothing above awaited: yield now and then, so a partition with a
                    // backlog does not starve the other tasks of its thread.
                    tokio::task::coop::consume_budget().await;
                    Some(p)
                }
                None => {
                    ended = None;
                    finished.publish();
                    tokio::select! {
                        biased;
                        Some(offset) = deferred.next(), if outstanding > 0 => {
                            outstanding -= 1;
                            settle(&mut tracker, &shared, &mut finished, offset);
                            continue;
                        }
                        pulled = source.next() => pulled,
                    }
                }
            };
            let Some(Pulled { record, permits }) = pulled else {
                break;
            };
            let offset = record.offset;
            meters.consumed.increment(1);
            if gated {
                ended = None;
                // Holds nothing spare while the record waits for its due time.
                source.release_spare();
                if !due_gate(&shared, &record, max_wait, &meters.delay_error).await {
                    break;
                }
            }
            tracker.dispatched(offset, record_ts(&record));
            shared.observe(tracker.committable(), tracker.oldest_timestamp());
            let started = ended.take().unwrap_or_else(Instant::now);
            // Convert at once: the service's own error type need not be Send.
            let ready = svc.ready().await.map_err(Into::into);
            let span = record_span(&rt, &shared, &record);
            let res = match ready {
                Ok(svc) => guarded_call(svc, record).instrument(span).await,
                Err(e) => Err(e),
            };
            let now = Instant::now();
            ended = Some(now);
            if !report(&shared, &meters, offset, now - started, res) {
                break;
            }
            if shared.take_deferred(offset) {
                outstanding += 1;
            } else {
                if tracker.complete(offset) == Completion::Moved {
                    shared.observe(tracker.committable(), tracker.oldest_timestamp());
                }
                finished.add(&shared);
            }
            source.recycle(permits);
        }
        source.release_spare();
        finished.publish();
        // Stopped: deferred completions still count (the drain deadline bounds the wait).
        while outstanding > 0 {
            let Some(offset) = deferred.next().await else {
                break;
            };
            outstanding -= 1;
            settle(&mut tracker, &shared, &mut finished, offset);
            finished.publish();
        }
        return;
    }

    let manual = acks.is_some();
    let mut acks = acks;
    let mut in_flight = FuturesUnordered::new();
    let mut ready = false;
    let mut open = true;
    loop {
        let can_take = open && !shared.stopping() && in_flight.len() < concurrency;
        tokio::select! {
            biased;
            // An acknowledgement is what makes the record final, so it counts for the commit
            // triggers now (a late one included).
            Some(offset) = recv_ack(&mut acks) => settle(&mut tracker, &shared, &mut finished, offset),
            Some(offset) = deferred.next(), if outstanding > 0 => {
                outstanding -= 1;
                settle(&mut tracker, &shared, &mut finished, offset);
            }
            Some((offset, done)) = in_flight.next(), if !in_flight.is_empty() => {
                let Some((started, res)): Option<(Instant, Result<(), BoxError>)> = done else {
                    // Stopped while waiting for its due time: neither handled nor final.
                    open = false;
                    continue;
                };
                let failed = res.is_err();
                if !report(&shared, &meters, offset, started.elapsed(), res) {
                    open = false;
                    continue;
                }
                // In manual mode an Ok outcome is final only once acknowledged.
                if !failed && shared.take_deferred(offset) {
                    outstanding += 1;
                } else if !manual || failed {
                    settle(&mut tracker, &shared, &mut finished, offset);
                }
            }
            res = futures_util::future::poll_fn(|cx| svc.poll_ready(cx)), if can_take && !ready => {
                match res {
                    Ok(()) => ready = true,
                    Err(e) => {
                        tracing::error!(topic = %shared.topic, partition = shared.partition, error = %error_chain(&*e.into()), "service failed; partition stops");
                        open = false;
                    }
                }
            }
            msg = source.next(), if can_take && ready => match msg {
                Some(Pulled { record, permits }) => {
                    ready = false;
                    let offset = record.offset;
                    meters.consumed.increment(1);
                    tracker.dispatched(offset, record_ts(&record));
                    shared.observe(tracker.committable(), tracker.oldest_timestamp());
                    if gated {
                        // The call starts only once due: the ready service moves into the
                        // future (tower's clone-and-swap) and is called after the gate.
                        let clone = svc.clone();
                        let mut ready_svc = std::mem::replace(&mut svc, clone);
                        let gate_shared = shared.clone();
                        let gate_rt = rt.clone();
                        let delay_error = meters.delay_error.clone();
                        in_flight.push(Either::Left(async move {
                            let _permits = permits;
                            if !due_gate(&gate_shared, &record, max_wait, &delay_error).await {
                                return (offset, None);
                            }
                            let started = Instant::now();
                            let span = record_span(&gate_rt, &gate_shared, &record);
                            let res = guarded_call(&mut ready_svc, record).instrument(span).await;
                            (offset, Some((started, res)))
                        }));
                    } else {
                        let started = Instant::now();
                        let span = record_span(&rt, &shared, &record);
                        let call = guarded_call(&mut svc, record).instrument(span);
                        in_flight.push(Either::Right(async move {
                            let _permits = permits;
                            (offset, Some((started, call.await)))
                        }));
                    }
                }
                None => open = false,
            },
            else => {}
        }
        // Records finish out of order here, and the loop waits between events.
        finished.publish();
        let draining = !open || shared.stopping();
        if draining
            && in_flight.is_empty()
            && outstanding == 0
            && (!manual || tracker.unfinished() == 0)
        {
            break;
        }
    }
}

/// Marks a record final, once: an acknowledgement may come before or after its handler
/// returned, or twice; a deferred completion comes after.
fn settle(
    tracker: &mut OffsetTracker,
    shared: &PartitionShared,
    finished: &mut FinishedCount<'_>,
    offset: i64,
) {
    match tracker.complete(offset) {
        Completion::Ignored => return,
        Completion::Held => {}
        Completion::Moved => shared.observe(tracker.committable(), tracker.oldest_timestamp()),
    }
    finished.add(shared);
}

/// The span of one record, with OpenTelemetry's messaging attributes. Attempt and trace id
/// are read from the headers only when the span is enabled.
///
/// DEBUG, as tower-http's `TraceLayer` makes its request spans: an application's usual INFO
/// filter would otherwise build a span per record, which with `tracing-subscriber`'s `fmt`
/// layer cost ~5 us of CPU per record, five times the rest of the happy path (BENCHMARKS.md,
/// Tuning). `RUST_LOG=redrive=debug` (or a tracing-opentelemetry layer's own filter)
/// turns them on.
fn record_span(rt: &RuntimeShared, p: &PartitionShared, r: &Record) -> tracing::Span {
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

/// A record's timestamp for the lag-in-seconds gauge; records without one count from now.
fn record_ts(r: &Record) -> i64 {
    r.timestamp().map_or_else(now_ms, |t| t.millis)
}

async fn recv_ack(acks: &mut Option<mpsc::UnboundedReceiver<i64>>) -> Option<i64> {
    match acks {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
