//! The rdkafka consumer context: partition tasks, rebalance handling and commits.
//!
//! Every assigned partition gets its own librdkafka queue (`BatchQueue::split`, from the
//! `redrive-partition-queue` crate), which the poll thread reads in batches for the
//! partition's task: a slow or waiting partition stops only its own fetching (librdkafka
//! stops prefetching a partition whose queue is full), and no record is discarded and fetched
//! again. The poll thread also serves rebalances, errors and commits. Its state lock is never
//! contended: librdkafka runs the rebalance and commit callbacks from inside `poll`, on that
//! thread.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode as RdCommitMode, Consumer, ConsumerContext, Rebalance,
    RebalanceProtocol,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::chain::{spawn_restore, ChainJob};
use super::committer::Committer;
use super::fetch::{feed, Feeder};
use super::partition::PartitionStart;
use super::route::{KeyOrderRole, TopicBinding};
use super::shared::RuntimeShared;
use super::transactional::TxnState;
use crate::commit::{CommitMode, CommitTrigger};
use crate::key_order::KeyGate;
use crate::partition_state::PartitionShared;

/// One assigned partition, as the poll thread sees it.
struct Slot {
    shared: Arc<PartitionShared>,
    feeder: Feeder<RuntimeContext>,
    task: JoinHandle<()>,
    last_committed: Option<i64>,
}

/// Mutable state of the poll thread.
#[derive(Default)]
pub(crate) struct DispatchState {
    slots: HashMap<(Arc<str>, i32), Slot>,
    finished_at_commit: u64,
    bursts_at_commit: u64,
    last_commit: Option<Instant>,
    last_gauges: Option<Instant>,
}

/// The consumer context handed to rdkafka.
pub(crate) struct RuntimeContext {
    pub(crate) rt: Arc<RuntimeShared>,
    pub(crate) handle: OnceLock<Handle>,
    /// The consumer itself, to split partition queues from inside the rebalance callback.
    pub(crate) consumer: OnceLock<Weak<BaseConsumer<RuntimeContext>>>,
    /// Runs asynchronous commits and surfaces their results.
    pub(crate) committer: OnceLock<Committer>,
    /// Topic name -> how it is handled.
    pub(crate) routes: HashMap<String, TopicBinding>,
    /// Set in a transactional worker: rebalances only inform its loop.
    pub(crate) txn: Option<Arc<TxnState>>,
    state: Mutex<DispatchState>,
}

impl RuntimeContext {
    pub(crate) fn new(
        rt: Arc<RuntimeShared>,
        routes: HashMap<String, TopicBinding>,
        txn: Option<Arc<TxnState>>,
    ) -> Self {
        RuntimeContext {
            rt,
            handle: OnceLock::new(),
            consumer: OnceLock::new(),
            committer: OnceLock::new(),
            routes,
            txn,
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
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            tracing::error!("partitions assigned while the consumer is shutting down");
            return;
        };
        let mut st = self.state();
        let mut chains: Vec<ChainJob> = Vec::new();
        for e in tpl.elements() {
            let Some(binding) = self.routes.get(e.topic()) else {
                tracing::warn!(
                    topic = e.topic(),
                    "assigned a partition of a topic no route handles"
                );
                continue;
            };
            let p = e.partition();
            let KeyOrderRole::Main {
                retry_topics,
                after_dead_letter,
            } = &binding.key_order
            else {
                self.open_slot(&mut st, &consumer, binding, p, None);
                continue;
            };
            let gate = Arc::new(KeyGate::new(*after_dead_letter));
            if let Some(shared) = self.open_slot(&mut st, &consumer, binding, p, Some(gate.clone()))
            {
                chains.push(ChainJob {
                    main: binding.name.clone(),
                    partition: p,
                    retry_topics: retry_topics.clone(),
                    gate,
                    shared,
                });
            }
        }
        if !chains.is_empty() {
            self.assign_chains(&mut st, &consumer, tpl, chains);
        }
        st.update_assigned_gauge(&self.rt);
    }

    /// Adds the retry partitions of newly assigned main partitions with key ordering to the
    /// consumer's assignment (they are not subscribed), opens them, and reads their chains
    /// back (docs/design.md, Key ordering).
    fn assign_chains(
        &self,
        st: &mut DispatchState,
        consumer: &Arc<BaseConsumer<RuntimeContext>>,
        tpl: &TopicPartitionList,
        chains: Vec<ChainJob>,
    ) {
        let extras = chain_partitions(chains.iter().map(|j| (&j.retry_topics, j.partition)));
        let added = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(&extras),
            _ => {
                // An eager assignment is replaced as a whole.
                let mut all = tpl.clone();
                for e in extras.elements() {
                    all.add_partition(e.topic(), e.partition());
                }
                consumer.assign(&all)
            }
        };
        if let Err(e) = added {
            tracing::error!(error = %e, "cannot add the retry partitions of key-ordered routes to the assignment; their keys stay blocked");
        }
        for job in &chains {
            for t in &job.retry_topics {
                if let Some(binding) = self.routes.get(&**t) {
                    self.open_slot(st, consumer, binding, job.partition, Some(job.gate.clone()));
                }
            }
        }
        match self.rt.config.chain_reader.clone() {
            Some(config) => spawn_restore(config, self.rt.group.clone(), chains),
            None => tracing::error!("a route keeps key order but the worker has no chain reader"),
        }
    }

    /// Starts the task of one newly assigned partition; None when it already runs or its
    /// queue cannot be split.
    fn open_slot(
        &self,
        st: &mut DispatchState,
        consumer: &Arc<BaseConsumer<RuntimeContext>>,
        binding: &TopicBinding,
        p: i32,
        key_gate: Option<Arc<KeyGate>>,
    ) -> Option<Arc<PartitionShared>> {
        let cfg = &self.rt.config;
        let (topic, route) = (&binding.name, &binding.route);
        if st.slots.contains_key(&(topic.clone(), p)) {
            return None;
        }
        let Some(queue) = redrive_partition_queue::BatchQueue::split(consumer, topic, p) else {
            tracing::error!(topic = %topic, partition = p, "cannot split the partition's queue; it is not consumed");
            return None;
        };
        // Runs on the poll thread (inside `poll`), whose handle the wake-ups use.
        let paced = binding.stage == crate::layer::Stage::Retry;
        let (feeder, feed) = feed(queue, binding.read_headers, paced);
        let (acks, acks_rx) = if cfg.manual_ack {
            let (a, b) = mpsc::unbounded_channel();
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let (shared, deferred) =
            PartitionShared::new(topic.clone(), p, route.name().clone(), acks, key_gate);
        let shared = Arc::new(shared);
        let task = route.spawn(
            self.handle(),
            PartitionStart {
                shared: shared.clone(),
                feed,
                deferred,
                acks: acks_rx,
                rt: self.rt.clone(),
                concurrency: route.concurrency(),
                stage: binding.stage,
                max_wait: binding.max_wait,
                count_outcomes: binding.count_outcomes,
                carry_state: binding.carry_state,
            },
        );
        tracing::info!(topic = %topic, partition = p, route = %route.name(), "partition assigned");
        let slot = Slot {
            shared: shared.clone(),
            feeder,
            task,
            last_committed: None,
        };
        st.slots.insert((topic.clone(), p), slot);
        Some(shared)
    }

    /// The retry partitions read with the given main partitions (key ordering).
    fn chains_of(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let mains = tpl.elements().into_iter().filter_map(|e| {
            match &self.routes.get(e.topic())?.key_order {
                KeyOrderRole::Main { retry_topics, .. } => Some((retry_topics, e.partition())),
                _ => None,
            }
        });
        chain_partitions(mains)
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
                    let key = st
                        .slots
                        .keys()
                        .find(|(t, p)| **t == *e.topic() && *p == e.partition())
                        .cloned();
                    if let Some(slot) = key.and_then(|k| st.slots.remove(&k)) {
                        gone.push(slot);
                    }
                }
            }
            None => gone.extend(st.slots.drain().map(|(_, s)| s)),
        }
        if gone.is_empty() {
            return Ok(());
        }
        for slot in &gone {
            slot.shared.request_stop();
            // A pause would outlive the assignment: the partition's next owner, this worker
            // included, must fetch it.
            if slot.feeder.paused() {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&slot.shared.topic, slot.shared.partition);
                let _ = consumer.resume(&tpl);
            }
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
        if let Some(c) = self.committer.get() {
            c.flush();
        }
        // Every position, not only those that moved since the last commit: an asynchronous
        // commit marks its positions sent before the broker answers, and one that failed just
        // before this revoke or shutdown must not leave its partition out of the final commit.
        let res = commit_slots(consumer, gone.iter_mut(), CommitMode::Sync, true);
        for slot in &gone {
            tracing::info!(topic = %slot.shared.topic, partition = slot.shared.partition, committed = ?slot.shared.committable(), "partition released");
        }
        st.update_assigned_gauge(&self.rt);
        res
    }

    /// Releases revoked partitions, with the retry partitions read with those of them that
    /// keep key order: those leave the assignment with them (an eager revoke clears the
    /// whole assignment by itself).
    fn revoke(&self, consumer: &BaseConsumer<RuntimeContext>, tpl: &TopicPartitionList) {
        let chains = self.chains_of(tpl);
        let mut all = tpl.clone();
        for e in chains.elements() {
            all.add_partition(e.topic(), e.partition());
        }
        if let Err(e) = self.release(consumer, Some(&all)) {
            tracing::error!(error = %e, "final commit of revoked partitions failed; their records since the last commit will be delivered again");
        }
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        if chains.count() > 0 && cooperative {
            if let Err(e) = consumer.incremental_unassign(&chains) {
                tracing::error!(error = %e, "cannot remove the retry partitions of revoked key-ordered partitions from the assignment");
            }
        }
    }

    /// A record polled from the consumer's main queue: only possible for a partition whose
    /// queue was not split yet. Seeking makes librdkafka fetch it again into the partition's
    /// own queue, so it is neither lost nor handled out of order.
    /// A failed seek is fatal: the partition's position would stay past the record, and the
    /// records after it would be committed without it.
    pub(crate) fn stray(
        &self,
        consumer: &BaseConsumer<RuntimeContext>,
        msg: &BorrowedMessage<'_>,
    ) -> Result<(), crate::Error> {
        let (topic, p, offset) = (msg.topic(), msg.partition(), msg.offset());
        tracing::debug!(
            topic,
            partition = p,
            offset,
            "record on the main queue; fetching it again through the partition queue"
        );
        consumer
            .seek(topic, p, Offset::Offset(offset), Duration::from_secs(10))
            .map_err(|e| {
                tracing::error!(topic, partition = p, offset, error = %e, "seek of a stray record failed; the worker stops so that it is not skipped");
                crate::Error::Fatal(format!(
                    "cannot fetch {topic}/{p}@{offset} again ({e}); stopping rather than committing past it"
                ))
            })
    }

    /// Hands waiting records to the partition tasks with room for a batch. True when some
    /// partition may have more right away.
    pub(crate) fn fetch(
        &self,
        st: &mut DispatchState,
        consumer: &BaseConsumer<RuntimeContext>,
    ) -> Result<bool, crate::Error> {
        let max = self.rt.config.max_poll_records;
        let mut more = false;
        for slot in st.slots.values_mut() {
            more |= slot.feeder.fetch(max, &slot.shared, &self.rt.group);
            if let Some(pause) = slot.feeder.take_hold() {
                hold(consumer, slot, pause)?;
            }
        }
        Ok(more)
    }

    /// Commits when the policy says so and refreshes gauges.
    pub(crate) fn housekeeping(
        &self,
        st: &mut DispatchState,
        consumer: &BaseConsumer<RuntimeContext>,
    ) -> Result<(), crate::Error> {
        let now = Instant::now();
        let policy = self.rt.config.commit;
        let finished = self.rt.finished_records.load(Ordering::Relaxed);
        let due = match policy.trigger {
            CommitTrigger::PerRecord => finished != st.finished_at_commit,
            CommitTrigger::EveryRecords(n) => finished - st.finished_at_commit >= n,
            CommitTrigger::Interval(d) => st.last_commit.is_none_or(|t| now - t >= d),
            CommitTrigger::PerBatch => {
                let bursts = self.rt.bursts.load(Ordering::Relaxed);
                let due = bursts != st.bursts_at_commit;
                st.bursts_at_commit = bursts;
                due
            }
        };
        if due || self.rt.commit_resend.load(Ordering::Acquire) {
            st.finished_at_commit = finished;
            st.last_commit = Some(now);
            let resend = self.rt.commit_resend.swap(false, Ordering::AcqRel);
            if let Err(e) = commit_slots(consumer, st.slots.values_mut(), policy.mode, resend) {
                self.rt.commit_resend.store(true, Ordering::Release);
                tracing::warn!(error = %e, "offset commit failed; the next commit sends these offsets again");
            }
        }
        if st
            .last_gauges
            .is_none_or(|t| now - t >= Duration::from_millis(250))
        {
            st.last_gauges = Some(now);
            let in_flight: u64 = st.slots.values().map(|s| s.shared.in_flight()).sum();
            let group = self.rt.group.to_string();
            ::metrics::gauge!(crate::metrics::names::IN_FLIGHT, "group" => group.clone())
                .set(in_flight as f64);
            // Refreshed, not only set on change, so exporters with an idle timeout keep them.
            ::metrics::gauge!(crate::metrics::names::PARTITIONS_ASSIGNED, "group" => group)
                .set(st.slots.len() as f64);
            ::metrics::gauge!(crate::metrics::names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"))
                .set(1.0);
            for b in &self.rt.config.breakers {
                b.refresh_gauge();
            }
            for slot in st.slots.values_mut() {
                slot.feeder.check_reads(&slot.shared);
            }
            return dead_task(st);
        }
        Ok(())
    }
}

/// Partition P of each of the given retry topics.
fn chain_partitions<'a>(
    mains: impl Iterator<Item = (&'a Vec<Arc<str>>, i32)>,
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topics, p) in mains {
        for t in topics {
            tpl.add_partition(t, p);
        }
    }
    tpl
}

/// Pauses or resumes a retry partition's fetching as its feeder says (see
/// `Feeder::take_hold`); a pause also drops what librdkafka fetched ahead. A failed pause or
/// resume is logged and asked again at the next occasion.
fn hold(
    consumer: &BaseConsumer<RuntimeContext>,
    slot: &mut Slot,
    pause: bool,
) -> Result<(), crate::Error> {
    let p = &slot.shared;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&p.topic, p.partition);
    let res = match pause {
        true => consumer.pause(&tpl),
        false => consumer.resume(&tpl),
    };
    match res {
        Ok(()) => {
            tracing::debug!(topic = %p.topic, partition = p.partition, pause, next = ?slot.feeder.next_offset(), "retry partition fetching held or released");
            if pause {
                drop_prefetched(consumer, slot)?;
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(topic = %p.topic, partition = p.partition, pause, error = %e, "cannot pause or resume the retry partition's fetching; trying again");
            slot.feeder.hold_failed();
            Ok(())
        }
    }
}

/// Empties a paused retry partition's librdkafka queue: a seek to the offset after the last
/// record read from it, then a read that frees what the seek outdated. Those records were
/// fetched long before they are due (decompressed, several times their fetched size) and
/// are fetched again once fetching resumes. The poll thread reads nothing of the partition
/// between that offset and the seek. A failed seek leaves them queued, in order.
fn drop_prefetched(
    consumer: &BaseConsumer<RuntimeContext>,
    slot: &mut Slot,
) -> Result<(), crate::Error> {
    let Some(next) = slot.feeder.next_offset() else {
        return Ok(());
    };
    let (topic, partition) = (slot.shared.topic.clone(), slot.shared.partition);
    let seek = || {
        consumer.seek(
            &topic,
            partition,
            Offset::Offset(next),
            Duration::from_secs(10),
        )
    };
    if let Err(e) = seek() {
        tracing::debug!(%topic, partition, error = %e, "cannot drop the paused retry partition's prefetched records; they stay queued");
        return Ok(());
    }
    // A paused partition fetches nothing of the new position, so the read finds none; if it
    // did, that record was not handed over and must be fetched again.
    if slot.feeder.drop_queued() > 0 {
        seek().map_err(|e| {
            tracing::error!(%topic, partition, offset = next, error = %e, "cannot move the retry partition back to a record it read but did not hand over; the worker stops so that it is not skipped");
            crate::Error::Fatal(format!(
                "cannot fetch {topic}/{partition}@{next} again ({e}); stopping rather than committing past it"
            ))
        })?;
    }
    Ok(())
}

/// A partition task that ended on its own (a panic outside the handler, a service whose
/// `poll_ready` failed) while its partition was neither stopped nor halted on purpose: the
/// partition would make no progress, silently. The worker stops instead; a restart reads the
/// partition again from its committed offset.
fn dead_task(st: &DispatchState) -> Result<(), crate::Error> {
    for slot in st.slots.values() {
        let p = &slot.shared;
        if slot.task.is_finished() && !p.stopping() && !p.halted() {
            if let Some(why) = p.failure() {
                return Err(crate::Error::Fatal(why));
            }
            tracing::error!(topic = %p.topic, partition = p.partition, "the partition's task ended unexpectedly; the worker stops");
            return Err(crate::Error::Fatal(format!(
                "the task of {}/{} ended unexpectedly (a panic outside the handler, or a service that can no longer take records); see the log",
                p.topic, p.partition
            )));
        }
    }
    Ok(())
}

impl DispatchState {
    fn update_assigned_gauge(&self, rt: &RuntimeShared) {
        let mut list: Vec<Arc<PartitionShared>> =
            self.slots.values().map(|s| s.shared.clone()).collect();
        list.sort_by(|a, b| (&*a.topic, a.partition).cmp(&(&*b.topic, b.partition)));
        let n = list.len();
        *rt.assignment.lock().unwrap_or_else(|e| e.into_inner()) = list;
        ::metrics::gauge!(crate::metrics::names::PARTITIONS_ASSIGNED, "group" => rt.group.to_string())
            .set(n as f64);
    }
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
    if let (CommitMode::Async, Some(committer)) = (mode, consumer.context().committer.get()) {
        // Confirmed (`set_committed`) by the committer thread when the broker accepted it.
        let positions = moved
            .into_iter()
            .map(|(slot, pos)| {
                slot.last_committed = Some(pos);
                (slot.shared.clone(), pos)
            })
            .collect();
        committer.commit(positions);
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

impl ClientContext for RuntimeContext {}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Some(txn) = &self.txn {
            // Between transactions (the loop polls only then): nothing to drain or commit.
            if let Rebalance::Revoke(_) = rebalance {
                ::metrics::counter!(crate::metrics::names::REBALANCES, "group" => self.rt.group.to_string())
                    .increment(1);
                txn.rebalanced.store(true, Ordering::Release);
                txn.assignment
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            }
            return;
        }
        match rebalance {
            Rebalance::Revoke(tpl) => {
                ::metrics::counter!(crate::metrics::names::REBALANCES, "group" => self.rt.group.to_string())
                    .increment(1);
                self.revoke(consumer, tpl);
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            ::metrics::counter!(crate::metrics::names::REBALANCES, "group" => self.rt.group.to_string())
                .increment(1);
            // A member, even with no partition to read.
            self.rt.joined.store(true, Ordering::Release);
            // A pause flag set by an application before a rebalance survives it in
            // librdkafka; a newly assigned partition must fetch.
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(error = %e, "resuming newly assigned partitions failed");
            }
            if let Some(txn) = &self.txn {
                txn.rebalanced.store(true, Ordering::Release);
                let mut a: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                a.sort();
                *txn.assignment.lock().unwrap_or_else(|e| e.into_inner()) = a;
                return;
            }
            self.assign(tpl);
        }
    }
    // No commit_callback: asynchronous commits run on the commit thread, which sees their
    // results (rdkafka does not hand the results of its own async commits to the context).
}

/// Maps errors that make continuing pointless.
pub(crate) fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::MessageConsumptionFatal(_))
}
