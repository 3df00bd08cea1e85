//! The transactional loop: read a batch, handle it, commit outputs and offsets in one
//! transaction (see [`crate::transaction`]).
//!
//! One thread polls, handles and commits in turn. Polling happens only between transactions,
//! so a rebalance never lands inside one: records collected when a rebalance happens are
//! dropped (eager assignment resets every position to the committed offset).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaError};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tower::util::BoxService;
use tower::{Service, ServiceExt};

mod publisher;
mod rollback;
mod state;

pub(crate) use publisher::TxnPublisher;
pub(crate) use state::TxnState;

use publisher::HANDLING;
use rollback::{Blame, GiveUp, Rollbacks, Wait};
use state::Key;

use super::context::{is_fatal, RuntimeContext};
use super::shared::RuntimeShared;
use crate::clock::now_ms;
use crate::error::{error_chain, BoxError, Halt};
use crate::layer::Stage;
use crate::transaction::Transactional;
use crate::{Error, Record};

/// The transactional parts of a worker.
pub(crate) struct TxnParts {
    pub producer: FutureProducer,
    pub publisher: Arc<TxnPublisher>,
    pub settings: Transactional,
    pub state: Arc<TxnState>,
}

/// How one partition's share of a batch ended.
enum PartOutcome {
    /// Every record handled; the position after the last.
    Done(i64),
    /// Stopped at a retry record due later: handled up to `position`, wait until `due`.
    Waiting { position: i64, due: i64 },
    /// A record failed with an error nothing routed.
    Failed(Blame),
    /// A layer halted the partition (DLT strategy fail_on_error).
    Halted(String),
}

type Running = (Key, BoxService<Record, (), BoxError>);

fn txn_error(e: &KafkaError) -> Option<&RDKafkaError> {
    match e {
        KafkaError::Transaction(t) => Some(t),
        _ => None,
    }
}

/// Runs a transactional call, retrying retriable errors until `timeout`.
fn with_retries<T>(
    what: &str,
    timeout: Duration,
    mut op: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match op() {
            Err(e)
                if txn_error(&e).is_some_and(|t| t.is_retriable()) && Instant::now() < deadline =>
            {
                tracing::warn!(error = %e, "{what} failed with a retriable error; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn fatal(e: &KafkaError, id: &str) -> Option<Error> {
    let t = txn_error(e)?;
    if !t.is_fatal() {
        return None;
    }
    let why = match t.code() {
        rdkafka::types::RDKafkaErrorCode::ProducerFenced => format!(
            "the transactional producer `{id}` was fenced: another instance with the same transactional.id started, so this one must stop ({e})"
        ),
        // The coordinator bumped the epoch: most often a transaction that outlived
        // `transaction_timeout` and was aborted by the broker.
        rdkafka::types::RDKafkaErrorCode::InvalidProducerEpoch => format!(
            "the transactional producer `{id}` has an outdated epoch: a transaction took longer than transaction_timeout and the broker aborted it, or another instance took over ({e})"
        ),
        _ => format!("fatal transactional error for `{id}`: {e}"),
    };
    Some(Error::Fatal(why))
}

/// The loop. Returns when shutdown was requested (after committing the batch in hand) or on
/// a fatal error.
pub(crate) fn txn_loop(
    consumer: Arc<BaseConsumer<RuntimeContext>>,
    parts: TxnParts,
) -> Result<(), Error> {
    let mut l = TxnLoop::start(consumer, parts)?;
    while !l.rt.shutdown.load(Ordering::Acquire) {
        l.resume_due();
        let batch = l.collect()?;
        if !batch.is_empty() {
            l.transact(batch)?;
        }
    }
    Ok(())
}

/// The transactional loop's state between batches.
struct TxnLoop {
    consumer: Arc<BaseConsumer<RuntimeContext>>,
    rt: Arc<RuntimeShared>,
    handle: tokio::runtime::Handle,
    producer: FutureProducer,
    publisher: Arc<TxnPublisher>,
    settings: Transactional,
    state: Arc<TxnState>,
    committed_total: ::metrics::Counter,
    aborted_total: ::metrics::Counter,
    /// Each partition's service, kept between batches.
    services: HashMap<Key, BoxService<Record, (), BoxError>>,
    /// Topic name -> (interned name, read its headers?).
    topics: HashMap<String, (Arc<str>, bool)>,
    /// Partitions paused until their retry record is due, or their back-off after a
    /// rolled-back transaction is over.
    waiting: HashMap<Key, i64>,
    rollbacks: Rollbacks,
}

/// A batch's records by partition, with each partition's first offset.
struct Batch {
    firsts: BTreeMap<Key, i64>,
    groups: BTreeMap<Key, Vec<Record>>,
}

/// What the partitions' outcomes add up to.
#[derive(Default)]
struct Settled {
    offsets: TopicPartitionList,
    /// Partitions that stopped at a record due later: (partition, position, due).
    pause: Vec<(Key, i64, i64)>,
    /// Why the transaction must abort, and the record to blame when one can be.
    failure: Option<(Option<Blame>, String)>,
    halted: Option<String>,
}

impl TxnLoop {
    /// Initialises transactions (retrying retriable errors) and registers the counters.
    fn start(consumer: Arc<BaseConsumer<RuntimeContext>>, parts: TxnParts) -> Result<Self, Error> {
        let ctx = consumer.context();
        let rt = ctx.rt.clone();
        let handle = ctx.handle.get().expect("the runtime handle is set").clone();
        let TxnParts {
            producer,
            publisher,
            settings,
            state,
        } = parts;
        let id = &settings.id;
        with_retries("init_transactions", settings.timeout, || {
            producer.init_transactions(settings.timeout)
        })
        .map_err(|e| {
            fatal(&e, id).unwrap_or_else(|| {
                Error::Fatal(format!(
                    "cannot initialise transactions for transactional.id `{id}`: {e} (the cluster must support transactions)"
                ))
            })
        })?;
        tracing::info!(transactional_id = %id, "transactions initialised");
        let group = rt.group.to_string();
        let counter = |outcome: &'static str| ::metrics::counter!(crate::metrics::names::TRANSACTIONS, "group" => group.clone(), "outcome" => outcome);
        let (committed_total, aborted_total) = (counter("committed"), counter("aborted"));
        committed_total.increment(0);
        aborted_total.increment(0);
        Ok(TxnLoop {
            consumer,
            rt,
            handle,
            producer,
            publisher,
            settings,
            state,
            committed_total,
            aborted_total,
            services: HashMap::new(),
            topics: HashMap::new(),
            waiting: HashMap::new(),
            rollbacks: Rollbacks::default(),
        })
    }

    /// Resumes partitions whose retry record is due.
    fn resume_due(&mut self) {
        let now = now_ms();
        let due: Vec<Key> = self
            .waiting
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            tracing::trace!(topic = %k.0, partition = k.1, "partition resumed: its record is due");
            self.waiting.remove(&k);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&k.0, k.1);
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::warn!(topic = %k.0, partition = k.1, error = %e, "resume failed");
            }
        }
    }

    /// Collects a batch: up to `batch_size` records, within `max_linger` of the first.
    fn collect(&mut self) -> Result<Vec<Record>, Error> {
        let mut batch: Vec<Record> = Vec::new();
        let mut deadline = Instant::now() + self.settings.max_linger;
        loop {
            // Once a batch has begun it takes only what is already waiting: an idle moment
            // commits it rather than holding its records back.
            let wait = if batch.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(wait);
            if self.state.rebalanced.swap(false, Ordering::AcqRel) {
                // Positions restart from the committed offsets: drop what was collected (and
                // the record in hand, which may predate the rebalance).
                batch.clear();
                self.waiting.clear();
                self.services.clear();
                let assigned = self
                    .state
                    .assignment
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                self.rollbacks.keep_only(&assigned);
                continue;
            }
            match polled {
                Some(Ok(msg)) => {
                    let routes = &self.consumer.context().routes;
                    let (topic, read_headers) = intern(&mut self.topics, routes, msg.topic());
                    if !self.waiting.contains_key(&(topic.clone(), msg.partition())) {
                        if batch.is_empty() {
                            deadline = Instant::now() + self.settings.max_linger;
                        }
                        batch.push(Record::from_borrowed(&msg, topic, read_headers));
                    }
                }
                Some(Err(e)) if is_fatal(&e) => return Err(Error::Kafka(e)),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None if !batch.is_empty() => return Ok(batch),
                None => {}
            }
            let full = batch.len() >= self.settings.batch_size
                || (!batch.is_empty() && Instant::now() >= deadline);
            let due = batch.is_empty() && self.waiting.values().any(|d| *d <= now_ms());
            if full || due || self.rt.shutdown.load(Ordering::Acquire) {
                return Ok(batch);
            }
        }
    }

    /// Handles a batch inside a transaction and commits or aborts it.
    fn transact(&mut self, records: Vec<Record>) -> Result<(), Error> {
        tracing::trace!(records = records.len(), "beginning a transaction");
        let handle_start = Instant::now();
        self.producer.begin_transaction().map_err(|e| {
            fatal(&e, &self.settings.id)
                .unwrap_or_else(|| Error::Fatal(format!("begin_transaction: {e}")))
        })?;
        let mut batch = Batch {
            firsts: BTreeMap::new(),
            groups: BTreeMap::new(),
        };
        for r in records {
            let k: Key = (r.topic_arc().clone(), r.partition());
            batch.firsts.entry(k.clone()).or_insert(r.offset());
            batch.groups.entry(k).or_default().push(r);
        }
        let n_records: usize = batch.groups.values().map(Vec::len).sum();
        let outcomes = self.handle_partitions(std::mem::take(&mut batch.groups))?;
        tracing::trace!(handled_in = ?handle_start.elapsed(), "batch handled");
        let settled = self.settle(outcomes, &batch.firsts);
        let blame = settled.failure.as_ref().and_then(|(b, _)| b.clone());
        let verdict = match (settled.halted.clone(), settled.failure.clone()) {
            (Some(why), _) => Verdict::Stop(Error::Fatal(format!(
                "transactional worker stopped: a partition halted ({why})"
            ))),
            (None, Some((_, why))) => Verdict::Abort(format!(
                "a record failed and nothing routed the failure: {why}"
            )),
            (None, None) => commit(
                &self.consumer,
                &self.producer,
                &settled.offsets,
                &self.settings,
            ),
        };
        match verdict {
            Verdict::Commit => {
                tracing::debug!(records = n_records, offsets = ?settled.offsets, waiting = settled.pause.len(), "transaction committed");
                self.committed(&batch.firsts, settled)
            }
            Verdict::Stop(e) => {
                let _ = self.producer.abort_transaction(self.settings.timeout);
                let _ = self.rewind(&batch.firsts);
                Err(e)
            }
            Verdict::Abort(why) => {
                // A failed commit blames no record: the whole loop backs off.
                self.aborted(&batch.firsts, &why, n_records)?;
                self.after_rollback(blame);
                Ok(())
            }
        }
    }

    /// Backs off after a rolled-back transaction: the blamed record's partition, or the loop.
    fn after_rollback(&mut self, blame: Option<Blame>) {
        match self.rollbacks.failed(blame, &self.settings) {
            Wait::Partition(k, wait) => {
                tracing::info!(topic = %k.0, partition = k.1, ?wait, "the partition of the failed record waits before it is handled again");
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&k.0, k.1);
                let _ = self.consumer.pause(&tpl);
                self.waiting.insert(k, now_ms() + wait.as_millis() as i64);
            }
            Wait::Loop(wait) => {
                tracing::info!(?wait, "backing off before the next transaction");
                let until = Instant::now() + wait;
                while Instant::now() < until && !self.rt.shutdown.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20).min(wait));
                }
            }
        }
    }

    /// Runs each partition's records through its service, the partitions as tasks so the
    /// runtime's threads share the batch's work.
    fn handle_partitions(
        &mut self,
        groups: BTreeMap<Key, Vec<Record>>,
    ) -> Result<Vec<(Running, PartOutcome)>, Error> {
        let routes = &self.consumer.context().routes;
        let mut tasks = Vec::with_capacity(groups.len());
        for (k, records) in groups {
            let Some(binding) = routes.get(&*k.0) else {
                return Err(Error::Fatal(format!(
                    "a record of `{}` arrived but no route reads it",
                    k.0
                )));
            };
            let svc = match self.services.remove(&k) {
                Some(s) => s,
                None => binding.route.service(),
            };
            let give_up = self.rollbacks.give_up(&k).map(|g| Recovery {
                give_up: g,
                binding: binding.clone(),
                group: self.rt.group.clone(),
                publisher: self.publisher.clone(),
                given_up: self.state.clone(),
            });
            let job = handle_partition(k, svc, records, binding.stage, binding.max_wait, give_up);
            tasks.push(self.handle.spawn(job));
        }
        let mut outcomes = Vec::with_capacity(tasks.len());
        for joined in self.handle.block_on(futures_util::future::join_all(tasks)) {
            match joined {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    let _ = self.producer.abort_transaction(self.settings.timeout);
                    return Err(Error::Fatal(format!(
                        "a partition task of the transactional loop failed: {e}"
                    )));
                }
            }
        }
        Ok(outcomes)
    }

    /// Keeps the services for the next batch and adds up the partitions' outcomes.
    fn settle(
        &mut self,
        outcomes: Vec<(Running, PartOutcome)>,
        firsts: &BTreeMap<Key, i64>,
    ) -> Settled {
        let mut s = Settled::default();
        for ((k, svc), outcome) in outcomes {
            self.services.insert(k.clone(), svc);
            let position = match outcome {
                PartOutcome::Done(p) => p,
                PartOutcome::Waiting { position, due } => {
                    s.pause.push((k.clone(), position, due));
                    position
                }
                PartOutcome::Failed(blame) => {
                    let why = format!("{}/{} offset {}: {}", k.0, k.1, blame.offset, blame.why);
                    s.failure.get_or_insert((Some(blame), why));
                    continue;
                }
                PartOutcome::Halted(why) => {
                    s.halted.get_or_insert(format!("{}/{}: {why}", k.0, k.1));
                    continue;
                }
            };
            if position > firsts[&k] {
                let _ = s
                    .offsets
                    .add_partition_offset(&k.0, k.1, Offset::Offset(position));
            }
        }
        if s.failure.is_none() {
            s.failure = self.publisher.take_failure();
        }
        s
    }

    /// After a commit: the counts, and the partitions that wait for a due record.
    fn committed(&mut self, firsts: &BTreeMap<Key, i64>, settled: Settled) -> Result<(), Error> {
        self.rollbacks.committed(&settled.offsets);
        {
            let mut m = self.state.offsets.lock().unwrap_or_else(|e| e.into_inner());
            for e in settled.offsets.elements() {
                if let Offset::Offset(o) = e.offset() {
                    m.insert((e.topic().to_owned(), e.partition()), o);
                }
            }
        }
        self.state.committed.fetch_add(1, Ordering::Relaxed);
        self.committed_total.increment(1);
        let handled: i64 = settled
            .offsets
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => firsts
                    .get(&(Arc::from(e.topic()), e.partition()))
                    .map(|f| o - f),
                _ => None,
            })
            .sum();
        self.state
            .records_committed
            .fetch_add(handled as u64, Ordering::Relaxed);
        self.rt
            .finished_records
            .fetch_add(handled as u64, Ordering::Relaxed);
        for (k, position, due) in settled.pause {
            tracing::trace!(topic = %k.0, partition = k.1, position, due, "partition waits for a due record");
            // The rest of the partition waits for its due record.
            seek(&self.consumer, &k, position)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&k.0, k.1);
            let _ = self.consumer.pause(&tpl);
            self.waiting.insert(k, due);
        }
        Ok(())
    }

    /// Aborts the transaction and rewinds to the batch's first offsets, so it is handled
    /// again.
    fn aborted(
        &mut self,
        firsts: &BTreeMap<Key, i64>,
        why: &str,
        n_records: usize,
    ) -> Result<(), Error> {
        let (id, timeout) = (&self.settings.id, self.settings.timeout);
        tracing::warn!(transactional_id = %id, reason = %why, records = n_records, "aborting the transaction; the batch will be handled again");
        self.state.aborted.fetch_add(1, Ordering::Relaxed);
        self.aborted_total.increment(1);
        if let Err(e) = with_retries("abort_transaction", timeout, || {
            self.producer.abort_transaction(timeout)
        }) {
            return Err(fatal(&e, id)
                .unwrap_or_else(|| Error::Fatal(format!("abort_transaction failed: {e}"))));
        }
        self.rewind(firsts)?;
        let _ = self.publisher.take_failure();
        Ok(())
    }

    /// Back to the last committed offsets: the batch's first offsets.
    fn rewind(&self, firsts: &BTreeMap<Key, i64>) -> Result<(), Error> {
        for (k, first) in firsts {
            seek(&self.consumer, k, *first)?;
        }
        Ok(())
    }
}

/// A topic's interned name and whether its route reads headers, remembered in `topics`.
fn intern(
    topics: &mut HashMap<String, (Arc<str>, bool)>,
    routes: &HashMap<String, super::route::TopicBinding>,
    name: &str,
) -> (Arc<str>, bool) {
    if let Some(t) = topics.get(name) {
        return t.clone();
    }
    let t: Arc<str> = Arc::from(name);
    let read = routes.get(name).is_none_or(|b| b.read_headers);
    topics.insert(name.to_owned(), (t.clone(), read));
    (t, read)
}

/// What a partition task needs to give up a record instead of handling it.
struct Recovery {
    give_up: GiveUp,
    binding: super::route::TopicBinding,
    group: Arc<str>,
    publisher: Arc<TxnPublisher>,
    given_up: Arc<TxnState>,
}

impl Recovery {
    /// Writes `r` to its route's dead-letter topic inside the open transaction (without its
    /// value if the copy is too large), or skips it on a route without one.
    fn give_up(&self, r: &Record) {
        let g = &self.give_up;
        let (route, topic) = (self.binding.route.name().to_string(), r.topic().to_owned());
        let outcome = match &self.binding.dead_letter {
            Some(target) => {
                let mut copy = rollback::dead_letter_copy(r, target, &self.group, g);
                let sent = self.publisher.try_send(&copy).or_else(|e| {
                    let why = format!(
                        "the copy could not be sent ({e}); the original is {}",
                        r.coordinates()
                    );
                    copy.value = Some(bytes::Bytes::new());
                    copy.headers
                        .set(crate::headers::VALUE_DROPPED, why.into_bytes());
                    self.publisher.try_send(&copy)
                });
                match sent {
                    Ok(()) => "dead_lettered",
                    Err(e) => {
                        tracing::error!(record = %r.coordinates(), dlt = %target.topic, error = %e, "not even the value-less copy could be dead-lettered; skipping the record");
                        "skipped"
                    }
                }
            }
            None => "skipped",
        };
        tracing::error!(record = %r.coordinates(), failures = g.failures, why = %g.why, outcome, "giving the record up after its failed transactions");
        self.given_up
            .records_given_up
            .fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(crate::metrics::names::RECORDS_GIVEN_UP, "group" => self.group.to_string(), "topic" => topic, "route" => route, "outcome" => outcome)
            .increment(1);
    }
}

/// One partition's share of a batch, in order, until a record fails, halts or is not due.
async fn handle_partition(
    k: Key,
    mut svc: BoxService<Record, (), BoxError>,
    records: Vec<Record>,
    stage: Stage,
    max_wait: Duration,
    recovery: Option<Recovery>,
) -> (Running, PartOutcome) {
    let mut position = records[0].offset();
    for r in records {
        if let Some(rec) = recovery
            .as_ref()
            .filter(|rec| rec.give_up.offset == r.offset())
        {
            rec.give_up(&r);
            position = r.offset() + 1;
            continue;
        }
        if matches!(stage, Stage::Retry | Stage::Dlt) {
            if let Some(due) = crate::headers::due_at_ms(r.headers()) {
                let ahead = due - now_ms();
                if ahead > 0 && ahead <= max_wait.as_millis() as i64 {
                    return ((k, svc), PartOutcome::Waiting { position, due });
                }
            }
        }
        let offset = r.offset();
        let res = match svc.ready().await {
            // Sends that fail during the call are blamed on this record.
            Ok(s) => HANDLING.scope((k.clone(), offset), s.call(r)).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => position = offset + 1,
            Err(e) if e.is::<Halt>() => return ((k, svc), PartOutcome::Halted(error_chain(&*e))),
            Err(e) => {
                let why = error_chain(&*e);
                let blame = Blame {
                    key: k.clone(),
                    offset,
                    why,
                };
                return ((k, svc), PartOutcome::Failed(blame));
            }
        }
    }
    ((k, svc), PartOutcome::Done(position))
}

enum Verdict {
    Commit,
    Abort(String),
    Stop(Error),
}

/// Moves the partition's position back to `offset`. A failed seek stops the worker: the
/// position would stay past records that are not committed, and the next transaction would
/// commit past them; a restart reads them again from the committed offset.
fn seek(consumer: &BaseConsumer<RuntimeContext>, k: &Key, offset: i64) -> Result<(), Error> {
    consumer
        .seek(&k.0, k.1, Offset::Offset(offset), Duration::from_secs(10))
        .map_err(|e| {
            tracing::error!(topic = %k.0, partition = k.1, offset, error = %e, "seek failed; the worker stops so that no record is skipped");
            Error::Fatal(format!(
                "cannot move {}/{} back to offset {offset} ({e}); stopping rather than committing past records not handled",
                k.0, k.1
            ))
        })
}

/// Adds the offsets to the transaction and commits it.
fn commit(
    consumer: &BaseConsumer<RuntimeContext>,
    producer: &FutureProducer,
    offsets: &TopicPartitionList,
    settings: &Transactional,
) -> Verdict {
    let failed = |e: KafkaError| match fatal(&e, &settings.id) {
        Some(f) => Verdict::Stop(f),
        None => Verdict::Abort(format!("commit failed: {e}")),
    };
    let t0 = Instant::now();
    if offsets.count() > 0 {
        // Present once the consumer joined its group, which it has when it holds records.
        let Some(meta) = consumer.group_metadata() else {
            return Verdict::Abort("the consumer has no group metadata yet".into());
        };
        if let Err(e) = with_retries("send_offsets_to_transaction", settings.timeout, || {
            producer.send_offsets_to_transaction(offsets, &meta, settings.timeout)
        }) {
            return failed(e);
        }
    }
    // rdkafka's commit_transaction flushes by polling in 100 ms steps, and the producer's own
    // polling thread takes the events it waits for: every commit would cost 100 ms. Waiting
    // for the queue to drain first makes that flush return at once.
    let deadline = Instant::now() + settings.timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        // A zero-timeout flush wakes the broker threads to send without lingering.
        let _ = producer.flush(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(200));
    }
    let t1 = Instant::now();
    let res = with_retries("commit_transaction", settings.timeout, || {
        producer.commit_transaction(settings.timeout)
    });
    tracing::trace!(send_offsets = ?(t1 - t0), commit = ?t1.elapsed(), "transaction timings");
    match res {
        Ok(()) => Verdict::Commit,
        Err(e) => failed(e),
    }
}
