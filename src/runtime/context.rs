//! The rdkafka consumer context: dispatch state, rebalance handling and commits.
//!
//! Everything here runs on the poll thread (librdkafka calls the rebalance and commit
//! callbacks from inside `poll`), so the state lock is never contended.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode as RdCommitMode, Consumer, ConsumerContext, Rebalance,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{PartitionShared, PartitionStart, Queued, RuntimeShared, TopicBinding};
use crate::commit::{Acknowledgment, CommitMode, CommitTrigger};
use crate::record::{Header, Headers, Timestamp, TimestampType};
use crate::Record;

/// One assigned partition, as the poll thread sees it.
struct Slot {
    shared: Arc<PartitionShared>,
    tx: Option<mpsc::Sender<Queued>>,
    acks: Option<mpsc::UnboundedSender<i64>>,
    task: JoinHandle<()>,
    /// Records below this offset were handed over already (a seek may replay them).
    next_offset: i64,
    /// Paused at this offset: fetching resumes here.
    paused_at: Option<i64>,
    last_committed: Option<i64>,
    dispatched_records: u64,
    dispatched_bytes: u64,
    in_batch: bool,
}

/// Mutable state of the poll thread.
#[derive(Default)]
pub(crate) struct DispatchState {
    slots: HashMap<Arc<str>, Vec<Option<Slot>>>,
    paused: Vec<(Arc<str>, i32)>,
    batches: VecDeque<Vec<(Arc<PartitionShared>, i64)>>,
    dispatched_records: u64,
    dispatched_bytes: u64,
    abandoned_records: u64,
    abandoned_bytes: u64,
    finished_at_commit: u64,
    last_commit: Option<Instant>,
    last_gauges: Option<Instant>,
}

/// The consumer context handed to rdkafka.
pub(crate) struct RuntimeContext {
    pub(crate) rt: Arc<RuntimeShared>,
    pub(crate) handle: OnceLock<Handle>,
    /// Topic name -> how it is handled.
    pub(crate) routes: HashMap<String, TopicBinding>,
    state: Mutex<DispatchState>,
}

impl RuntimeContext {
    pub(crate) fn new(rt: Arc<RuntimeShared>, routes: HashMap<String, TopicBinding>) -> Self {
        RuntimeContext {
            rt,
            handle: OnceLock::new(),
            routes,
            state: Mutex::new(DispatchState::default()),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, DispatchState> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping would, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self) -> &Handle {
        self.handle
            .get()
            .expect("the runtime handle is set before subscribing")
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        let cfg = &self.rt.config;
        let mut st = self.state();
        for e in tpl.elements() {
            let Some(binding) = self.routes.get(e.topic()) else {
                tracing::warn!(
                    topic = e.topic(),
                    "assigned a partition of a topic no route handles"
                );
                continue;
            };
            let (topic, route) = (&binding.name, &binding.route);
            let p = e.partition();
            let parts = st.slots.entry(topic.clone()).or_default();
            let idx = p as usize;
            if parts.len() <= idx {
                parts.resize_with(idx + 1, || None);
            }
            if parts[idx].is_some() {
                continue;
            }
            let shared = Arc::new(PartitionShared::new(topic.clone(), p, route.name().clone()));
            let (tx, rx) = mpsc::channel(cfg.partition_queue);
            let (acks, acks_rx) = if cfg.manual_ack {
                let (a, b) = mpsc::unbounded_channel();
                (Some(a), Some(b))
            } else {
                (None, None)
            };
            let task = route.spawn(
                self.handle(),
                PartitionStart {
                    shared: shared.clone(),
                    rx,
                    acks: acks_rx,
                    rt: self.rt.clone(),
                    concurrency: route.concurrency(),
                    stage: binding.stage,
                    max_wait: binding.max_wait,
                    count_outcomes: binding.count_outcomes,
                },
            );
            tracing::info!(topic = %topic, partition = p, route = %route.name(), "partition assigned");
            parts[idx] = Some(Slot {
                shared,
                tx: Some(tx),
                acks,
                task,
                next_offset: i64::MIN,
                paused_at: None,
                last_committed: None,
                dispatched_records: 0,
                dispatched_bytes: 0,
                in_batch: false,
            });
        }
        st.update_assigned_gauge(&self.rt);
    }

    /// Stops the given partitions' tasks (all when `tpl` is None), waits for their in-flight
    /// records up to the drain deadline, and commits their final positions synchronously.
    pub(crate) fn release(
        &self,
        consumer: &BaseConsumer<RuntimeContext>,
        tpl: Option<&TopicPartitionList>,
    ) -> KafkaResult<()> {
        let mut st = self.state();
        let mut gone: Vec<Slot> = Vec::new();
        match tpl {
            Some(tpl) => {
                for e in tpl.elements() {
                    if let Some(slot) = st.take(e.topic(), e.partition()) {
                        gone.push(slot);
                    }
                }
            }
            None => {
                for parts in st.slots.values_mut() {
                    gone.extend(parts.iter_mut().filter_map(Option::take));
                }
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        for slot in &mut gone {
            slot.shared.request_stop();
            slot.tx = None; // an idle task sees its queue close and exits
            slot.acks = None;
        }
        let deadline = tokio::time::Instant::now() + self.rt.config.drain_timeout;
        for slot in &mut gone {
            let task = &mut slot.task;
            let done = self
                .handle()
                .block_on(async { tokio::time::timeout_at(deadline, task).await.is_ok() });
            if !done {
                tracing::warn!(
                    topic = %slot.shared.topic, partition = slot.shared.partition,
                    "in-flight records did not finish within the drain timeout; abandoning them (they will be delivered again)"
                );
                slot.task.abort();
            }
        }
        let res = commit_slots(consumer, gone.iter_mut(), CommitMode::Sync, false);
        for slot in &gone {
            let fr = slot
                .shared
                .finished_records
                .load(std::sync::atomic::Ordering::Relaxed);
            let fb = slot
                .shared
                .finished_bytes
                .load(std::sync::atomic::Ordering::Relaxed);
            st.abandoned_records += slot.dispatched_records.saturating_sub(fr);
            st.abandoned_bytes += slot.dispatched_bytes.saturating_sub(fb);
            st.paused
                .retain(|(t, p)| !(**t == *slot.shared.topic && *p == slot.shared.partition));
            tracing::info!(topic = %slot.shared.topic, partition = slot.shared.partition, committed = ?slot.shared.committable(), "partition released");
        }
        st.update_assigned_gauge(&self.rt);
        res
    }

    /// Hands one polled record to its partition's task, or pauses the partition.
    pub(crate) fn dispatch(
        &self,
        st: &mut DispatchState,
        consumer: &BaseConsumer<RuntimeContext>,
        msg: &BorrowedMessage<'_>,
    ) {
        let over = st.over_limits(&self.rt, false);
        let (topic, p, offset) = (msg.topic(), msg.partition(), msg.offset());
        let Some(slot) = st.slot_mut(topic, p) else {
            tracing::warn!(topic, partition = p, offset, "record for a partition that is not assigned; it will be fetched again by its owner");
            return;
        };
        if offset < slot.next_offset || slot.paused_at.is_some() {
            return;
        }
        if over || slot.shared.holding() {
            let key = pause(consumer, slot, offset);
            st.paused.push(key);
            return;
        }
        let record = to_record(msg, &slot.shared.topic, slot.acks.as_ref());
        let bytes = record.byte_len();
        if bytes as u64 > self.rt.config.max_in_flight_bytes {
            tracing::warn!(
                topic,
                partition = p,
                offset,
                bytes,
                max_in_flight_bytes = self.rt.config.max_in_flight_bytes,
                "record is larger than max_in_flight_bytes; it is handled, alone"
            );
        }
        let tx = slot.tx.as_ref().expect("an assigned slot has a queue");
        match tx.try_send((record, bytes)) {
            Ok(()) => {
                slot.next_offset = offset + 1;
                slot.dispatched_records += 1;
                slot.dispatched_bytes += bytes as u64;
                slot.in_batch = true;
                st.dispatched_records += 1;
                st.dispatched_bytes += bytes as u64;
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let key = pause(consumer, slot, offset);
                st.paused.push(key);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!(
                    topic,
                    partition = p,
                    offset,
                    "partition task ended unexpectedly; pausing the partition"
                );
                let key = pause(consumer, slot, offset);
                st.paused.push(key);
            }
        }
    }

    /// Resumes paused partitions that have room again and commits when the policy says so.
    pub(crate) fn housekeeping(
        &self,
        st: &mut DispatchState,
        consumer: &BaseConsumer<RuntimeContext>,
        batch_end: bool,
    ) {
        let now = Instant::now();
        if !st.paused.is_empty() && !st.over_limits(&self.rt, true) {
            st.resume_ready(consumer, self.rt.config.partition_queue);
        }
        if batch_end {
            st.end_batch();
        }
        let policy = self.rt.config.commit;
        let finished = self
            .rt
            .finished_records
            .load(std::sync::atomic::Ordering::Relaxed);
        let due = match policy.trigger {
            CommitTrigger::PerRecord => true,
            CommitTrigger::EveryRecords(n) => finished - st.finished_at_commit >= n,
            CommitTrigger::Interval(d) => st.last_commit.is_none_or(|t| now - t >= d),
            CommitTrigger::PerBatch => st.batch_done(),
        };
        if due {
            st.finished_at_commit = finished;
            st.last_commit = Some(now);
            let resend = self
                .rt
                .commit_resend
                .swap(false, std::sync::atomic::Ordering::AcqRel);
            let slots = st.slots.values_mut().flatten().flatten();
            if let Err(e) = commit_slots(consumer, slots, policy.mode, resend) {
                self.rt
                    .commit_resend
                    .store(true, std::sync::atomic::Ordering::Release);
                tracing::warn!(error = %e, "offset commit failed; the next commit sends these offsets again");
            }
        }
        if st
            .last_gauges
            .is_none_or(|t| now - t >= Duration::from_millis(250))
        {
            st.last_gauges = Some(now);
            let in_flight = st.in_flight(&self.rt).0;
            let group = self.rt.group.to_string();
            ::metrics::gauge!(crate::metrics::names::IN_FLIGHT, "group" => group.clone())
                .set(in_flight as f64);
            // Refreshed, not only set on change, so exporters with an idle timeout keep them.
            let assigned = st.slots.values().flatten().flatten().count();
            ::metrics::gauge!(crate::metrics::names::PARTITIONS_ASSIGNED, "group" => group)
                .set(assigned as f64);
            ::metrics::gauge!(crate::metrics::names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"))
                .set(1.0);
        }
    }

    pub(crate) fn has_paused(&self, st: &DispatchState) -> bool {
        !st.paused.is_empty()
    }
}

impl DispatchState {
    fn slot_mut(&mut self, topic: &str, p: i32) -> Option<&mut Slot> {
        self.slots
            .get_mut(topic)?
            .get_mut(usize::try_from(p).ok()?)?
            .as_mut()
    }

    fn take(&mut self, topic: &str, p: i32) -> Option<Slot> {
        self.slots
            .get_mut(topic)?
            .get_mut(usize::try_from(p).ok()?)?
            .take()
    }

    fn in_flight(&self, rt: &RuntimeShared) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let records = self.dispatched_records
            - self.abandoned_records
            - rt.finished_records
                .load(Relaxed)
                .min(self.dispatched_records - self.abandoned_records);
        let bytes = self.dispatched_bytes
            - self.abandoned_bytes
            - rt.finished_bytes
                .load(Relaxed)
                .min(self.dispatched_bytes - self.abandoned_bytes);
        (records, bytes)
    }

    /// Over the in-flight bounds; `resume` applies the lower (3/4) mark so pause and resume
    /// do not flap.
    fn over_limits(&self, rt: &RuntimeShared, resume: bool) -> bool {
        let (records, bytes) = self.in_flight(rt);
        let cfg = &rt.config;
        let (max_r, max_b) = if resume {
            (
                cfg.max_in_flight_records * 3 / 4,
                cfg.max_in_flight_bytes * 3 / 4,
            )
        } else {
            (cfg.max_in_flight_records, cfg.max_in_flight_bytes)
        };
        records >= max_r || (records > 0 && bytes >= max_b)
    }

    fn resume_ready(&mut self, consumer: &BaseConsumer<RuntimeContext>, queue: usize) {
        let mut paused = std::mem::take(&mut self.paused);
        paused.retain(|(topic, p)| {
            let Some(slot) = self.slot_mut(topic, *p) else {
                return false;
            };
            let room = slot.tx.as_ref().is_some_and(|tx| tx.capacity() * 2 >= queue);
            if slot.shared.holding() || !room {
                return true;
            }
            let at = slot.paused_at.take().expect("a paused slot has a position");
            let mut tpl = TopicPartitionList::new();
            if let Err(e) = tpl.add_partition_offset(topic, *p, Offset::Offset(at)) {
                tracing::error!(topic = %topic, partition = p, error = %e, "cannot build seek request");
            }
            // The seek makes fetching restart at the first record not handed over.
            if let Err(e) = consumer.seek_partitions(tpl.clone(), Duration::from_secs(10)) {
                tracing::warn!(topic = %topic, partition = p, offset = at, error = %e, "seek before resume failed; retrying later");
                slot.paused_at = Some(at);
                return true;
            }
            tracing::debug!(topic = %topic, partition = p, offset = at, "partition resumed");
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(topic = %topic, partition = p, error = %e, "resume failed; retrying later");
                slot.paused_at = Some(at);
                return true;
            }
            false
        });
        self.paused = paused;
    }

    fn end_batch(&mut self) {
        let mut marks = Vec::new();
        for slot in self.slots.values_mut().flatten().flatten() {
            if std::mem::take(&mut slot.in_batch) {
                marks.push((slot.shared.clone(), slot.next_offset));
            }
        }
        if !marks.is_empty() {
            self.batches.push_back(marks);
        }
    }

    /// Pops every fully final batch; true when at least one was.
    fn batch_done(&mut self) -> bool {
        let mut any = false;
        while let Some(front) = self.batches.front() {
            let done = front
                .iter()
                .all(|(s, end)| s.stopping() || s.committable().is_some_and(|c| c >= *end));
            if !done {
                break;
            }
            self.batches.pop_front();
            any = true;
        }
        any
    }

    fn update_assigned_gauge(&self, rt: &RuntimeShared) {
        let mut list: Vec<Arc<PartitionShared>> = self
            .slots
            .values()
            .flatten()
            .flatten()
            .map(|s| s.shared.clone())
            .collect();
        list.sort_by(|a, b| (&*a.topic, a.partition).cmp(&(&*b.topic, b.partition)));
        let n = list.len();
        *rt.assignment.lock().unwrap_or_else(|e| e.into_inner()) = list;
        ::metrics::gauge!(crate::metrics::names::PARTITIONS_ASSIGNED, "group" => rt.group.to_string())
            .set(n as f64);
    }
}

fn pause(consumer: &BaseConsumer<RuntimeContext>, slot: &mut Slot, offset: i64) -> (Arc<str>, i32) {
    let (topic, p) = (&slot.shared.topic, slot.shared.partition);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    if let Err(e) = consumer.pause(&tpl) {
        // Not fatal: records that arrive anyway are dropped and fetched again after the seek.
        tracing::warn!(topic = %topic, partition = p, error = %e, "pause failed");
    }
    slot.paused_at = Some(offset);
    tracing::debug!(topic = %topic, partition = p, offset, "partition paused");
    (topic.clone(), p)
}

/// Commits the positions of `slots` that moved (all of them with `resend`).
fn commit_slots<'a>(
    consumer: &BaseConsumer<RuntimeContext>,
    slots: impl Iterator<Item = &'a mut Slot>,
    mode: CommitMode,
    resend: bool,
) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    let mut moved: Vec<(&'a mut Slot, i64)> = Vec::new();
    for slot in slots {
        if let Some(pos) = slot.shared.committable() {
            if resend || slot.last_committed != Some(pos) {
                tpl.add_partition_offset(
                    &slot.shared.topic,
                    slot.shared.partition,
                    Offset::Offset(pos),
                )?;
                moved.push((slot, pos));
            }
        }
    }
    if moved.is_empty() {
        return Ok(());
    }
    let rt = &consumer.context().rt;
    let started = Instant::now();
    let res = consumer.commit(
        &tpl,
        match mode {
            CommitMode::Sync => RdCommitMode::Sync,
            CommitMode::Async => RdCommitMode::Async,
        },
    );
    ::metrics::histogram!(crate::metrics::names::COMMIT_DURATION, "group" => rt.group.to_string())
        .record(started.elapsed().as_secs_f64());
    match res {
        Ok(()) => {
            for (slot, pos) in moved {
                slot.last_committed = Some(pos);
                slot.shared.set_committed(pos);
            }
            Ok(())
        }
        Err(e) => {
            ::metrics::counter!(crate::metrics::names::COMMIT_FAILURES, "group" => rt.group.to_string())
                .increment(1);
            Err(e)
        }
    }
}

fn to_record(
    msg: &BorrowedMessage<'_>,
    topic: &Arc<str>,
    acks: Option<&mpsc::UnboundedSender<i64>>,
) -> Record {
    let headers = match msg.headers() {
        Some(h) => h
            .iter()
            .map(|h| Header {
                key: h.key.to_owned(),
                value: h.value.map(Bytes::copy_from_slice),
            })
            .collect(),
        None => Headers::new(),
    };
    let timestamp = match msg.timestamp() {
        rdkafka::Timestamp::CreateTime(t) => Some(Timestamp {
            millis: t,
            kind: TimestampType::CreateTime,
        }),
        rdkafka::Timestamp::LogAppendTime(t) => Some(Timestamp {
            millis: t,
            kind: TimestampType::LogAppendTime,
        }),
        rdkafka::Timestamp::NotAvailable => None,
    };
    Record {
        topic: topic.clone(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp,
        key: msg.key().map(Bytes::copy_from_slice),
        value: msg.payload().map(Bytes::copy_from_slice),
        headers,
        ack: acks.map(|tx| Acknowledgment {
            offset: msg.offset(),
            tx: tx.clone(),
        }),
    }
}

impl ClientContext for RuntimeContext {}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                ::metrics::counter!(crate::metrics::names::REBALANCES, "group" => self.rt.group.to_string())
                    .increment(1);
                if let Err(e) = self.release(consumer, Some(tpl)) {
                    tracing::error!(error = %e, "final commit of revoked partitions failed; their records since the last commit will be delivered again");
                }
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            ::metrics::counter!(crate::metrics::names::REBALANCES, "group" => self.rt.group.to_string())
                .increment(1);
            // librdkafka keeps a partition's pause flag across a revoke and a new assignment;
            // a partition paused for a due time before the rebalance would never fetch again.
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(error = %e, "resuming newly assigned partitions failed");
            }
            self.assign(tpl);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.rt
                .commit_resend
                .store(true, std::sync::atomic::Ordering::Release);
            let list: Vec<(String, i32, i64)> = offsets
                .elements()
                .iter()
                .map(|e| {
                    (
                        e.topic().to_owned(),
                        e.partition(),
                        e.offset().to_raw().unwrap_or(-1),
                    )
                })
                .collect();
            tracing::warn!(error = %e, offsets = ?list, "asynchronous offset commit failed; the next commit sends these offsets again");
            if let Some(cb) = &self.rt.config.on_commit_error {
                cb(&e, &list);
            }
        }
    }
}

/// Maps errors that make continuing pointless.
pub(crate) fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::MessageConsumptionFatal(_))
}
