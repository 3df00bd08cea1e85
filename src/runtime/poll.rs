//! The poll thread: hands record batches to the partition tasks, serves rebalances, errors
//! and commits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use super::context::{is_fatal, RuntimeContext};
use crate::commit::CommitTrigger;
use crate::Error;

/// How often the poll thread asks the publisher whether it failed fatally.
const PUBLISHER_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Runs until shutdown is requested or a fatal error occurs, then drains and commits.
pub(crate) fn poll_loop(consumer: Arc<BaseConsumer<RuntimeContext>>) -> Result<(), Error> {
    let ctx = consumer.context();
    let rt = ctx.rt.clone();
    let cfg = &rt.config;
    let mut fatal: Option<Error> = None;
    let mut last_warning: Option<Instant> = None;
    let mut last_publisher_check = Instant::now();
    // Count-based policies commit soon after the count is reached.
    let timeout = match cfg.commit.trigger {
        CommitTrigger::PerRecord | CommitTrigger::EveryRecords(_) | CommitTrigger::PerBatch => {
            cfg.poll_timeout.min(Duration::from_millis(10))
        }
        CommitTrigger::Interval(d) => cfg.poll_timeout.min(d / 2).max(Duration::from_millis(1)),
    };

    // Partition queues, tasks and the main queue wake this thread (`rt.poller`, set by the
    // worker before subscribing) when it has work.
    let mut busy = false;
    while !rt.shutdown.load(Ordering::Acquire) {
        if !busy {
            std::thread::park_timeout(timeout);
        }
        // The wake-up is edge-triggered and a served rebalance looks like an empty poll: after
        // one, poll a few times and come back without sleeping.
        let events = rt.events_waiting.swap(false, Ordering::AcqRel);
        let mut served = false;
        for _ in 0..if events { 8 } else { 1 } {
            // The state lock is not held across poll: librdkafka runs rebalance callbacks in it.
            match consumer.poll(Duration::ZERO) {
                Some(Ok(msg)) => {
                    if let Err(e) = ctx.stray(&consumer, &msg) {
                        fatal = Some(e);
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                None => {
                    if !events {
                        break;
                    }
                    continue;
                }
                Some(Err(e)) if is_fatal(&e) => {
                    tracing::error!(error = %e, "fatal consumer error; the worker stops");
                    fatal = Some(Error::Kafka(e));
                    break;
                }
                Some(Err(e)) => {
                    // librdkafka repeats some errors (e.g. a topic that disappeared) at every
                    // fetch.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                        last_warning = Some(Instant::now());
                        tracing::warn!(error = %e, "consumer error");
                    }
                }
            }
            served = true;
        }
        if last_publisher_check.elapsed() >= PUBLISHER_CHECK_EVERY {
            last_publisher_check = Instant::now();
            let publisher = cfg.publisher.as_ref().and_then(std::sync::Weak::upgrade);
            if let Some(why) = publisher.and_then(|p| p.fatal_error()) {
                tracing::error!(error = %why, "the producer of copies failed fatally; the worker stops");
                fatal = Some(Error::Fatal(format!(
                    "the producer of retry and dead-letter copies failed fatally and cannot send again: {why}"
                )));
            }
        }
        if fatal.is_some() {
            break;
        }
        let mut st = ctx.state();
        busy = match ctx.fetch(&mut st, &consumer) {
            Ok(more) => more || served || events,
            Err(e) => {
                fatal = Some(e);
                break;
            }
        };
        if let Err(e) = ctx.housekeeping(&mut st, &consumer) {
            fatal = Some(e);
            break;
        }
    }

    // Drain: stop every partition, wait for in-flight records, final synchronous commit.
    let drained = ctx.release(&consumer, None);
    // Records per burst says how the partition tasks were fed (small bursts: fetch-bound).
    tracing::debug!(
        records = ctx.rt.finished_records.load(Ordering::Relaxed),
        bursts = ctx.rt.bursts.load(Ordering::Relaxed),
        "stopped"
    );
    consumer.unsubscribe();
    drop(consumer);
    if let Some(e) = fatal {
        return Err(e);
    }
    drained.map_err(Error::Commit)
}
