//! The transactional loop: read a batch, handle it, commit outputs and offsets in one
//! transaction (see [`crate::transaction`]).
//!
//! One thread polls, handles and commits in turn. Polling happens only between transactions,
//! so a rebalance never lands inside one: records collected when a rebalance happens are
//! dropped (eager assignment resets every position to the committed offset).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
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
mod state;

pub(crate) use publisher::TxnPublisher;
pub(crate) use state::TxnState;

use super::context::{is_fatal, RuntimeContext};
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
    Failed(String),
    /// A layer halted the partition (DLT strategy fail_on_error).
    Halted(String),
}

type Key = (Arc<str>, i32);
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
        rdkafka::types::RDKafkaErrorCode::ProducerFenced
        | rdkafka::types::RDKafkaErrorCode::InvalidProducerEpoch => format!(
            "the transactional producer `{id}` was fenced: another instance with the same transactional.id started, so this one must stop ({e})"
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
    let ctx = consumer.context();
    let rt = ctx.rt.clone();
    let handle = ctx.handle.get().expect("the runtime handle is set").clone();
    let TxnParts {
        producer,
        publisher,
        settings,
        state,
    } = parts;
    let id = settings.id.clone();
    with_retries("init_transactions", settings.timeout, || {
        producer.init_transactions(settings.timeout)
    })
    .map_err(|e| {
        fatal(&e, &id).unwrap_or_else(|| {
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

    let mut services: HashMap<Key, BoxService<Record, (), BoxError>> = HashMap::new();
    // Topic name -> (interned name, read its headers?).
    let mut topics: HashMap<String, (Arc<str>, bool)> = HashMap::new();
    let mut waiting: HashMap<Key, i64> = HashMap::new();
    loop {
        let stopping = rt.shutdown.load(Ordering::Acquire);
        if stopping {
            return Ok(());
        }
        // Resume partitions whose retry record is due.
        let now = now_ms();
        let due: Vec<Key> = waiting
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            tracing::trace!(topic = %k.0, partition = k.1, "partition resumed: its record is due");
            waiting.remove(&k);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&k.0, k.1);
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(topic = %k.0, partition = k.1, error = %e, "resume failed");
            }
        }

        // Collect a batch.
        let collect_start = Instant::now();
        let mut batch: Vec<Record> = Vec::new();
        let mut deadline = Instant::now() + settings.max_linger;
        loop {
            // Once a batch has begun it takes only what is already waiting: an idle moment
            // commits it rather than holding its records back.
            let wait = if batch.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            let polled = consumer.poll(wait);
            if state.rebalanced.swap(false, Ordering::AcqRel) {
                // Positions restart from the committed offsets: drop what was collected (and
                // the record in hand, which may predate the rebalance).
                batch.clear();
                waiting.clear();
                services.clear();
                continue;
            }
            match polled {
                Some(Ok(msg)) => {
                    let (topic, read_headers) = match topics.get(msg.topic()) {
                        Some(t) => t.clone(),
                        None => {
                            let t: Arc<str> = Arc::from(msg.topic());
                            let read = ctx.routes.get(msg.topic()).is_none_or(|b| b.read_headers);
                            topics.insert(msg.topic().to_owned(), (t.clone(), read));
                            (t, read)
                        }
                    };
                    if !waiting.contains_key(&(topic.clone(), msg.partition())) {
                        if batch.is_empty() {
                            deadline = Instant::now() + settings.max_linger;
                        }
                        batch.push(Record::from_borrowed(&msg, topic, read_headers));
                    }
                }
                Some(Err(e)) if is_fatal(&e) => return Err(Error::Kafka(e)),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None if !batch.is_empty() => break,
                None => {}
            }
            if batch.len() >= settings.batch_size
                || (!batch.is_empty() && Instant::now() >= deadline)
                || rt.shutdown.load(Ordering::Acquire)
            {
                break;
            }
            if batch.is_empty() && waiting.values().any(|d| *d <= now_ms()) {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }

        // Handle it inside a transaction.
        tracing::trace!(records = batch.len(), collected_in = ?collect_start.elapsed(), "beginning a transaction");
        let handle_start = Instant::now();
        producer.begin_transaction().map_err(|e| {
            fatal(&e, &id).unwrap_or_else(|| Error::Fatal(format!("begin_transaction: {e}")))
        })?;
        let mut firsts: BTreeMap<Key, i64> = BTreeMap::new();
        let mut groups: BTreeMap<Key, Vec<Record>> = BTreeMap::new();
        for r in batch {
            let k: Key = (r.topic_arc().clone(), r.partition());
            firsts.entry(k.clone()).or_insert(r.offset());
            groups.entry(k).or_default().push(r);
        }
        let n_records: usize = groups.values().map(Vec::len).sum();
        type Job = Pin<Box<dyn Future<Output = (Running, PartOutcome)> + Send>>;
        let mut jobs: Vec<Job> = Vec::new();
        let mut taken: Vec<(Key, BoxService<Record, (), BoxError>)> = Vec::new();
        for k in groups.keys() {
            let svc = match services.remove(k) {
                Some(s) => s,
                None => match ctx.routes.get(&*k.0) {
                    Some(b) => b.route.service(),
                    None => {
                        return Err(Error::Fatal(format!(
                            "a record of `{}` arrived but no route reads it",
                            k.0
                        )))
                    }
                },
            };
            taken.push((k.clone(), svc));
        }
        let mut taken_iter = taken.into_iter();
        for (k, records) in groups {
            let (_, mut svc) = taken_iter.next().expect("one service per group");
            let binding = ctx.routes.get(&*k.0).expect("checked above");
            let (stage, max_wait) = (binding.stage, binding.max_wait);
            jobs.push(Box::pin(async move {
                let mut position = records[0].offset();
                for r in records {
                    if stage == Stage::Retry {
                        if let Some(due) = crate::headers::due_at_ms(r.headers()) {
                            let ahead = due - now_ms();
                            if ahead > 0 && ahead <= max_wait.as_millis() as i64 {
                                return ((k, svc), PartOutcome::Waiting { position, due });
                            }
                        }
                    }
                    let offset = r.offset();
                    let res = match svc.ready().await {
                        Ok(s) => s.call(r).await,
                        Err(e) => Err(e),
                    };
                    match res {
                        Ok(()) => position = offset + 1,
                        Err(e) if e.is::<Halt>() => {
                            return ((k, svc), PartOutcome::Halted(error_chain(&*e)))
                        }
                        Err(e) => {
                            return (
                                (k, svc),
                                PartOutcome::Failed(format!(
                                    "offset {offset}: {}",
                                    error_chain(&*e)
                                )),
                            )
                        }
                    }
                }
                ((k, svc), PartOutcome::Done(position))
            }) as Job);
        }
        // Partitions run as tasks, so the runtime's threads share the batch's work.
        let tasks: Vec<_> = jobs.into_iter().map(|j| handle.spawn(j)).collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for joined in handle.block_on(futures_util::future::join_all(tasks)) {
            match joined {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    let _ = producer.abort_transaction(settings.timeout);
                    return Err(Error::Fatal(format!(
                        "a partition task of the transactional loop failed: {e}"
                    )));
                }
            }
        }

        tracing::trace!(handled_in = ?handle_start.elapsed(), "batch handled");
        let mut offsets = TopicPartitionList::new();
        let mut pause: Vec<(Key, i64, i64)> = Vec::new();
        let mut failure: Option<String> = None;
        let mut halted: Option<String> = None;
        for ((k, svc), outcome) in outcomes {
            services.insert(k.clone(), svc);
            let position = match outcome {
                PartOutcome::Done(p) => p,
                PartOutcome::Waiting { position, due } => {
                    pause.push((k.clone(), position, due));
                    position
                }
                PartOutcome::Failed(why) => {
                    failure.get_or_insert(format!("{}/{} {why}", k.0, k.1));
                    continue;
                }
                PartOutcome::Halted(why) => {
                    halted.get_or_insert(format!("{}/{}: {why}", k.0, k.1));
                    continue;
                }
            };
            if position > firsts[&k] {
                let _ = offsets.add_partition_offset(&k.0, k.1, Offset::Offset(position));
            }
        }
        if failure.is_none() {
            failure = publisher.take_failure();
        }

        let verdict = match (halted, failure) {
            (Some(why), _) => Verdict::Stop(Error::Fatal(format!(
                "transactional worker stopped: a partition halted ({why})"
            ))),
            (None, Some(why)) => Verdict::Abort(format!(
                "a record failed and no retry policy routed it: {why}"
            )),
            (None, None) => commit(&consumer, &producer, &offsets, &settings),
        };
        match verdict {
            Verdict::Commit => {
                tracing::debug!(records = n_records, offsets = ?offsets, waiting = pause.len(), "transaction committed");
                {
                    let mut m = state.offsets.lock().unwrap_or_else(|e| e.into_inner());
                    for e in offsets.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            m.insert((e.topic().to_owned(), e.partition()), o);
                        }
                    }
                }
                state.committed.fetch_add(1, Ordering::Relaxed);
                committed_total.increment(1);
                let handled: i64 = offsets
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => firsts
                            .get(&(Arc::from(e.topic()), e.partition()))
                            .map(|f| o - f),
                        _ => None,
                    })
                    .sum();
                state
                    .records_committed
                    .fetch_add(handled as u64, Ordering::Relaxed);
                rt.finished_records
                    .fetch_add(handled as u64, Ordering::Relaxed);
                for (k, position, due) in pause {
                    tracing::trace!(topic = %k.0, partition = k.1, position, due, "partition waits for a due record");
                    // The rest of the partition waits for its due record.
                    seek(&consumer, &k, position);
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&k.0, k.1);
                    let _ = consumer.pause(&tpl);
                    waiting.insert(k, due);
                }
            }
            Verdict::Stop(e) => {
                let _ = producer.abort_transaction(settings.timeout);
                for (k, first) in &firsts {
                    seek(&consumer, k, *first);
                }
                return Err(e);
            }
            Verdict::Abort(why) => {
                tracing::warn!(transactional_id = %id, reason = %why, records = n_records, "aborting the transaction; the batch will be handled again");
                state.aborted.fetch_add(1, Ordering::Relaxed);
                aborted_total.increment(1);
                if let Err(e) = with_retries("abort_transaction", settings.timeout, || {
                    producer.abort_transaction(settings.timeout)
                }) {
                    return Err(fatal(&e, &id).unwrap_or_else(|| {
                        Error::Fatal(format!("abort_transaction failed: {e}"))
                    }));
                }
                // Back to the last committed offsets: the batch's first offsets.
                for (k, first) in &firsts {
                    seek(&consumer, k, *first);
                }
                let _ = publisher.take_failure();
            }
        }
    }
}

enum Verdict {
    Commit,
    Abort(String),
    Stop(Error),
}

fn seek(consumer: &BaseConsumer<RuntimeContext>, k: &Key, offset: i64) {
    if let Err(e) = consumer.seek(&k.0, k.1, Offset::Offset(offset), Duration::from_secs(10)) {
        tracing::error!(topic = %k.0, partition = k.1, offset, error = %e, "seek failed");
    }
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
