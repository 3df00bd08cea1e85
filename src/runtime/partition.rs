//! The task that handles one partition's records.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::acks::{AckBook, AckStep};
use super::fetch::Feed;
use super::meters::{record_span, report, FinishedCount, Meters};
use super::parking::{Admit, Parking};
use super::shared::RuntimeShared;
use super::source::{InFlight, Pulled, Source};
use super::tracker::{Completion, OffsetTracker};
use crate::clock::now_ms;
use crate::error::{error_chain, BoxError};
use crate::layer::{guarded_call, Stage};
use crate::partition_state::{AckEvent, Completions, PartitionShared};
use crate::Record;

/// Everything a partition task needs besides its service.
pub(crate) struct PartitionStart {
    pub shared: Arc<PartitionShared>,
    /// Record batches from the poll thread.
    pub feed: Feed,
    /// Completions of records whose completion a layer deferred.
    pub deferred: Completions,
    pub acks: Option<mpsc::UnboundedReceiver<AckEvent>>,
    pub rt: Arc<RuntimeShared>,
    pub concurrency: usize,
    pub stage: Stage,
    pub max_wait: Duration,
    pub count_outcomes: bool,
    /// See `TopicBinding::carry_state`.
    pub carry_state: bool,
}

/// Holds a retry-topic record (or a dead letter its handler failed on) until its due time
/// (docs/design.md, Delays); `delay_error` records a retry's lateness. False when the
/// partition was stopped first: the record stays unhandled and uncommitted.
async fn due_gate(
    shared: &PartitionShared,
    record: &Record,
    max_wait: Duration,
    delay_error: Option<&::metrics::Histogram>,
) -> bool {
    let Some(due) = crate::headers::due_at_ms(record.headers()) else {
        // A dead letter need not have one (a plain Spring recoverer writes none).
        if delay_error.is_some() {
            tracing::warn!(record = %record.coordinates(), "retry-topic record without a valid `retry_topic-backoff-timestamp`; handling it now");
        }
        return true;
    };
    let ahead = due - now_ms();
    if ahead > max_wait.as_millis() as i64 {
        tracing::warn!(record = %record.coordinates(), due_ms = due, ahead_ms = ahead, "back-off timestamp is further ahead than any delay of the policy; handling the record now instead of waiting");
        return true;
    }
    if ahead > 0 {
        tracing::debug!(record = %record.coordinates(), wait_ms = ahead, "holding the partition until the record is due");
        if !shared.hold_until(due).await {
            return false;
        }
    }
    if let Some(h) = delay_error {
        h.record((now_ms() - due).max(0) as f64 / 1000.0);
    }
    true
}

/// Records a busy sequential task handles between two looks for completed deferrals.
const DEFERRED_CHECK_EVERY: u32 = 16;

/// Handles one partition's records until its queue closes or it is told to stop.
pub(crate) async fn run_partition<S>(svc: S, start: PartitionStart)
where
    S: Service<Record> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let PartitionStart {
        shared,
        feed,
        deferred,
        acks,
        rt,
        concurrency,
        stage,
        max_wait,
        count_outcomes,
        carry_state,
    } = start;
    let source = Source::new(feed, shared.clone(), &rt, carry_state);
    let mut task = Task {
        meters: Meters::new(&rt, &shared, stage, count_outcomes),
        shared: &shared,
        rt: &rt,
        tracker: OffsetTracker::new(),
        finished: FinishedCount::new(&rt),
        deferred,
        outstanding: 0,
        deferred_permits: HashMap::new(),
        gated: matches!(stage, Stage::Retry | Stage::Dlt),
        retry: stage == Stage::Retry,
        max_wait,
    };
    if let Some(gate) = shared.key_gate.clone() {
        // The retry chain is read back first (docs/design.md, Key ordering).
        tokio::select! {
            biased;
            _ = shared.stopped() => return,
            _ = gate.ready() => {}
        }
        if stage == Stage::Main {
            let Some(parking) = Parking::new(gate) else {
                tracing::error!(topic = %shared.topic, partition = shared.partition, "the partition's key ordering is taken by another task");
                return;
            };
            return task.run_ordered(svc, source, parking).await;
        }
    }
    if concurrency == 1 && acks.is_none() {
        // The common case: one record at a time, final when the service returns.
        task.run_sequential(svc, source).await;
    } else {
        task.run_concurrent(svc, source, acks.map(AckBook::new), concurrency)
            .await;
    }
}

/// A partition task's state while it runs.
struct Task<'r> {
    shared: &'r Arc<PartitionShared>,
    rt: &'r Arc<RuntimeShared>,
    meters: Meters,
    tracker: OffsetTracker,
    finished: FinishedCount<'r>,
    /// Completions of records whose completion a layer deferred (a retry copy being
    /// acknowledged), and how many are outstanding.
    deferred: Completions,
    outstanding: usize,
    /// The in-flight permits of deferred records, given back when they are final.
    deferred_permits: HashMap<i64, InFlight<'r>>,
    /// Records wait for their due time (a retry topic, or a DLT whose handler's failures are
    /// retried later).
    gated: bool,
    /// A retry topic: the records' lateness is measured.
    retry: bool,
    max_wait: Duration,
}

impl<'r> Task<'r> {
    /// One record at a time, each final when the service returns (or its deferral completes).
    async fn run_sequential<S>(&mut self, mut svc: S, mut source: Source<'r>)
    where
        S: Service<Record> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        // When the previous call ended: the start of a record taken without waiting. One
        // clock read per record instead of two; the duration then also counts the few
        // hundred nanoseconds of bookkeeping between the calls.
        let mut ended: Option<Instant> = None;
        let mut until_check = 0u32;
        loop {
            if self.outstanding > 0 && (self.copies_failing() || self.span_full()) {
                // A failure copy the broker refuses, or one unacknowledged while the records
                // behind it finished up to the bound: take no new record until one settles.
                ended = None;
                self.finished.publish();
                match self.deferred.next().await {
                    Some(offset) => {
                        self.settle_deferred(offset);
                        continue;
                    }
                    None => break,
                }
            }
            self.check_deferrals(&mut until_check);
            let pulled = match source.try_next() {
                Some(p) => {
                    // Nothing above awaited: yield now and then, so a partition with a
                    // backlog does not starve the other tasks of its thread.
                    tokio::task::coop::consume_budget().await;
                    Some(p)
                }
                None => {
                    ended = None;
                    self.finished.publish();
                    tokio::select! {
                        biased;
                        Some(offset) = self.deferred.next(), if self.outstanding > 0 => {
                            self.settle_deferred(offset);
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
            self.meters.consumed.increment(1);
            if self.gated {
                ended = None;
                // Holds nothing spare while the record waits for its due time.
                source.release_spare();
                let delay_error = self.retry.then_some(&self.meters.delay_error);
                if !due_gate(self.shared, &record, self.max_wait, delay_error).await {
                    break;
                }
            }
            self.dispatched(&record);
            let started = ended.take().unwrap_or_else(Instant::now);
            // Convert at once: the service's own error type need not be Send.
            let ready = svc.ready().await.map_err(Into::into);
            let span = record_span(self.rt, self.shared, &record);
            let res = match ready {
                Ok(svc) => guarded_call(svc, record).instrument(span).await,
                Err(e) => {
                    // The record was not handled: it stays unfinished, and the poll thread
                    // notices the ended task.
                    tracing::error!(topic = %self.shared.topic, partition = self.shared.partition, offset, error = %error_chain(&*e), "service failed; partition stops");
                    break;
                }
            };
            let now = Instant::now();
            ended = Some(now);
            if !report(self.shared, &self.meters, offset, now - started, res) {
                break;
            }
            if self.shared.take_deferred(offset) {
                self.defer(offset, permits);
            } else {
                if self.tracker.complete(offset) == Completion::Moved {
                    self.observe();
                }
                self.finished.add(self.shared);
                source.recycle(permits);
            }
        }
        source.release_spare();
        self.drain_deferrals().await;
    }

    /// One record at a time, for a main partition with key ordering: a record whose key has a
    /// record in the retry chain is parked (unfinished, so the commit stops before it) and
    /// handled once that record left the chain. The partition takes no new record while the
    /// records from its commit position reach `max_in_flight_records`, or its parked records
    /// `max_in_flight_bytes`.
    async fn run_ordered<S>(&mut self, mut svc: S, mut source: Source<'r>, mut parking: Parking)
    where
        S: Service<Record> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let parked = ::metrics::counter!(crate::metrics::names::RECORDS_PARKED,
            "group" => self.rt.group.to_string(),
            "topic" => self.shared.topic.to_string(),
            "route" => self.shared.route.to_string());
        let mut until_check = 0u32;
        // As in `run_sequential`: one clock read per record taken without waiting.
        let mut ended: Option<Instant> = None;
        loop {
            self.check_deferrals(&mut until_check);
            let full = self.span_full()
                || parking.bytes() >= self.rt.config.max_in_flight_bytes
                || (self.outstanding > 0 && self.copies_failing());
            let (record, permits) = if let Some(record) = parking.next_runnable() {
                // Counted and marked dispatched when it was parked.
                (record, InFlight::none(self.rt))
            } else if let Some(Pulled { record, permits }) =
                (!full).then(|| source.try_next()).flatten()
            {
                // Nothing awaited: yield now and then (see `run_sequential`).
                tokio::task::coop::consume_budget().await;
                match self.admit(&mut parking, record, &parked) {
                    Some(record) => (record, permits),
                    None => continue,
                }
            } else {
                ended = None;
                self.finished.publish();
                let pulled = tokio::select! {
                    biased;
                    Some(offset) = self.deferred.next(), if self.outstanding > 0 => {
                        self.settle_deferred(offset);
                        continue;
                    }
                    _ = parking.event() => continue,
                    pulled = source.next(), if !full => pulled,
                };
                let Some(Pulled { record, permits }) = pulled else {
                    break;
                };
                match self.admit(&mut parking, record, &parked) {
                    Some(record) => (record, permits),
                    None => continue,
                }
            };
            match self
                .handle_ordered(&mut svc, record, permits, &mut ended)
                .await
            {
                Some(permits) => source.recycle(permits),
                None => break,
            }
        }
        source.release_spare();
        self.drain_deferrals().await;
    }

    /// A record read from a partition with key ordering: handled now (returned), parked, or
    /// final at once because its own copy is already in the retry chain. A parked record
    /// gives its in-flight permits back: a partition's parked records must not take the
    /// permits its retry partitions need to release them.
    fn admit(
        &mut self,
        parking: &mut Parking,
        record: Record,
        parked: &::metrics::Counter,
    ) -> Option<Record> {
        let offset = record.offset;
        self.meters.consumed.increment(1);
        self.dispatched(&record);
        match parking.admit(record) {
            Admit::Go(record) => Some(record),
            Admit::Parked => {
                parked.increment(1);
                None
            }
            Admit::InChain => {
                tracing::debug!(topic = %self.shared.topic, partition = self.shared.partition, offset, "record read again while its copy is in the retry chain; not handled again");
                self.settle(offset);
                None
            }
        }
    }

    /// Handles one record of a partition with key ordering: its permits back when it is final
    /// (for the next record), None when the partition stops. `ended`: when the previous call
    /// ended, if nothing was awaited since (set to when this one ends).
    async fn handle_ordered<S>(
        &mut self,
        svc: &mut S,
        record: Record,
        permits: InFlight<'r>,
        ended: &mut Option<Instant>,
    ) -> Option<InFlight<'r>>
    where
        S: Service<Record> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let offset = record.offset;
        let started = ended.take().unwrap_or_else(Instant::now);
        let span = record_span(self.rt, self.shared, &record);
        let res = match svc.ready().await.map_err(Into::into) {
            Ok(svc) => guarded_call(svc, record).instrument(span).await,
            Err(e) => {
                tracing::error!(topic = %self.shared.topic, partition = self.shared.partition, offset, error = %error_chain(&*e), "service failed; partition stops");
                return None;
            }
        };
        let now = Instant::now();
        *ended = Some(now);
        if !report(self.shared, &self.meters, offset, now - started, res) {
            return None;
        }
        if self.shared.take_deferred(offset) {
            self.defer(offset, permits);
            return Some(InFlight::none(self.rt));
        }
        self.settle(offset);
        Some(permits)
    }

    /// Up to `concurrency` records at once (finishing out of order), or with manual
    /// acknowledgement: a record is final once acknowledged.
    async fn run_concurrent<S>(
        &mut self,
        mut svc: S,
        mut source: Source<'r>,
        mut acks: Option<AckBook>,
        concurrency: usize,
    ) where
        S: Service<Record> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let manual = acks.is_some();
        let mut in_flight = FuturesUnordered::new();
        let mut ready = false;
        let mut open = true;
        loop {
            let can_take = open
                && !self.shared.stopping()
                && in_flight.len() < concurrency
                && !(self.outstanding > 0 && self.copies_failing())
                && !self.span_full();
            tokio::select! {
                biased;
                // An acknowledgement is what makes the record final, so it counts for the
                // commit triggers now (a late one included).
                ev = recv_ack(&mut acks) => {
                    let step = acks.as_mut().map_or(AckStep::Wait, |b| b.event(ev));
                    if !self.ack_step(step) {
                        return;
                    }
                }
                Some(offset) = self.deferred.next(), if self.outstanding > 0 => {
                    self.settle_deferred(offset);
                }
                Some((offset, done, permits)) = in_flight.next(), if !in_flight.is_empty() => {
                    let (more, step) = self.finish_call(offset, done, permits, acks.as_mut());
                    open &= more;
                    if !self.ack_step(step) {
                        return;
                    }
                }
                res = futures_util::future::poll_fn(|cx| svc.poll_ready(cx)), if can_take && !ready => {
                    match res {
                        Ok(()) => ready = true,
                        Err(e) => {
                            tracing::error!(topic = %self.shared.topic, partition = self.shared.partition, error = %error_chain(&*e.into()), "service failed; partition stops");
                            open = false;
                        }
                    }
                }
                msg = source.next(), if can_take && ready => match msg {
                    Some(pulled) => {
                        ready = false;
                        in_flight.push(self.start_call(&mut svc, pulled));
                    }
                    None => open = false,
                },
                else => {}
            }
            // Records finish out of order here, and the loop waits between events.
            self.finished.publish();
            let draining = !open || self.shared.stopping();
            if draining
                && in_flight.is_empty()
                && self.outstanding == 0
                && (!manual || self.tracker.unfinished() == 0)
            {
                break;
            }
        }
    }

    /// Dispatches a record to a ready service; the future resolves to its offset and, unless
    /// the partition stopped while it waited for its due time, its start and outcome.
    fn start_call<S>(
        &mut self,
        svc: &mut S,
        pulled: Pulled<'r>,
    ) -> Either<
        impl Future<Output = CallOutcome<'r>> + 'r,
        impl Future<Output = CallOutcome<'r>> + 'r,
    >
    where
        S: Service<Record> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let Pulled { record, permits } = pulled;
        let offset = record.offset;
        self.meters.consumed.increment(1);
        self.dispatched(&record);
        if !self.gated {
            let started = Instant::now();
            let span = record_span(self.rt, self.shared, &record);
            let call = guarded_call(svc, record).instrument(span);
            return Either::Right(async move { (offset, Some((started, call.await)), permits) });
        }
        // The call starts only once due: the ready service moves into the future (tower's
        // clone-and-swap) and is called after the gate.
        let clone = svc.clone();
        let mut ready_svc = std::mem::replace(svc, clone);
        let (shared, rt) = (self.shared.clone(), self.rt.clone());
        let delay_error = self.retry.then(|| self.meters.delay_error.clone());
        let max_wait = self.max_wait;
        Either::Left(async move {
            if !due_gate(&shared, &record, max_wait, delay_error.as_ref()).await {
                return (offset, None, permits);
            }
            let started = Instant::now();
            let span = record_span(&rt, &shared, &record);
            let res = guarded_call(&mut ready_svc, record).instrument(span).await;
            (offset, Some((started, res)), permits)
        })
    }

    /// Accounts a finished call: false when the partition must stop taking records, and
    /// what manual acknowledgement makes of it.
    fn finish_call(
        &mut self,
        offset: i64,
        done: Option<Called>,
        permits: InFlight<'r>,
        acks: Option<&mut AckBook>,
    ) -> (bool, AckStep) {
        let Some((started, res)) = done else {
            // Stopped while waiting for its due time: neither handled nor final.
            return (false, AckStep::Wait);
        };
        let (failed, manual) = (res.is_err(), acks.is_some());
        if !report(self.shared, &self.meters, offset, started.elapsed(), res) {
            return (false, AckStep::Wait);
        }
        let deferred = !failed && self.shared.take_deferred(offset);
        if deferred {
            self.defer(offset, permits);
        }
        // In manual mode an Ok outcome is final only once acknowledged.
        let step = match acks {
            Some(book) if !failed && !deferred && !self.tracker.is_final(offset) => {
                book.returned_ok(offset)
            }
            Some(book) => {
                book.forget(offset);
                AckStep::Wait
            }
            None => AckStep::Wait,
        };
        if failed || !(manual || deferred) {
            self.settle(offset);
        }
        (true, step)
    }

    /// Applies an acknowledgement step; false when the task must end.
    fn ack_step(&mut self, step: AckStep) -> bool {
        match step {
            AckStep::Wait => true,
            AckStep::Settle(offset) => {
                self.settle(offset);
                true
            }
            AckStep::Abandoned(offset) => {
                let (topic, p) = (&self.shared.topic, self.shared.partition);
                tracing::error!(%topic, partition = p, offset, "the record's handler returned Ok, but every Acknowledgment of it was dropped without acknowledge(): it can never be committed; the worker stops and the record is delivered again after a restart");
                self.shared.set_failure(format!(
                    "{topic}/{p}@{offset} was never acknowledged: its handler returned Ok and dropped every Acknowledgment of it"
                ));
                false
            }
        }
    }

    /// The records between the commit position and the newest one reached
    /// `max_in_flight_records`: an unfinished record holds the position while those behind it
    /// finished, and the partition takes no more until it is final, so the tracker stays
    /// bounded.
    fn span_full(&self) -> bool {
        self.tracker.span() as u64 >= self.rt.config.max_in_flight_records
    }

    /// A failure copy of this partition is being sent again after the broker refused it.
    fn copies_failing(&self) -> bool {
        self.shared.copies_failing_since().is_some()
    }

    /// Marks a record handed to the service.
    fn dispatched(&mut self, record: &Record) {
        self.tracker.dispatched(record.offset, record_ts(record));
        self.observe();
    }

    /// Publishes the tracker's position to the partition's shared state.
    fn observe(&self) {
        self.shared
            .observe(self.tracker.committable(), self.tracker.oldest_timestamp());
    }

    /// Marks a record final, once: an acknowledgement may come before or after its handler
    /// returned, or twice; a deferred completion comes after.
    fn settle(&mut self, offset: i64) {
        match self.tracker.complete(offset) {
            Completion::Ignored => return,
            Completion::Held => {}
            Completion::Moved => self.observe(),
        }
        self.finished.add(self.shared);
    }

    /// A layer took over the record's completion (its copy is being sent): the record keeps
    /// its share of the in-flight bounds until then, since its copy keeps its bytes alive.
    fn defer(&mut self, offset: i64, permits: InFlight<'r>) {
        self.outstanding += 1;
        self.deferred_permits.insert(offset, permits);
    }

    /// A deferred record is final: its permits go back to the worker-wide bounds.
    fn settle_deferred(&mut self, offset: i64) {
        self.outstanding -= 1;
        self.deferred_permits.remove(&offset);
        self.settle(offset);
    }

    /// Settles the deferred records whose completion is ready now, without waiting.
    fn settle_ready_deferrals(&mut self) {
        while self.outstanding > 0 {
            let Some(offset) = self.deferred.try_next() else {
                break;
            };
            // Final only now: commit triggers count it now.
            self.settle_deferred(offset);
        }
    }

    /// Settles the ready deferrals every few records: looking costs a poll of the deferred
    /// set, so it is done every [`DEFERRED_CHECK_EVERY`] records (and whenever the task
    /// would wait), not per record.
    fn check_deferrals(&mut self, until_check: &mut u32) {
        if self.outstanding == 0 {
            return;
        }
        if *until_check == 0 {
            *until_check = DEFERRED_CHECK_EVERY;
            self.settle_ready_deferrals();
        } else {
            *until_check -= 1;
        }
    }

    /// Once stopped: deferred completions still count (the drain deadline bounds the wait).
    async fn drain_deferrals(&mut self) {
        self.finished.publish();
        while self.outstanding > 0 {
            let Some(offset) = self.deferred.next().await else {
                break;
            };
            self.settle_deferred(offset);
            self.finished.publish();
        }
    }
}

/// A finished call: when it started and its outcome.
type Called = (Instant, Result<(), BoxError>);

/// A record's call in the concurrent loop: its offset, and `None` when the partition stopped
/// before the record was due.
type CallOutcome<'r> = (i64, Option<Called>, InFlight<'r>);

/// A record's timestamp for the lag-in-seconds gauge; records without one count from now.
fn record_ts(r: &Record) -> i64 {
    r.timestamp().map_or_else(now_ms, |t| t.millis)
}

async fn recv_ack(acks: &mut Option<AckBook>) -> AckEvent {
    match acks {
        Some(book) => book.recv().await,
        None => std::future::pending().await,
    }
}
