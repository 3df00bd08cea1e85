//! The poll thread: serves rebalances, errors and commits. Records are read by the partition
//! tasks from their own queues.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use super::context::is_fatal;
use super::RuntimeContext;
use crate::commit::CommitTrigger;
use crate::Error;

/// Runs until shutdown is requested or a fatal error occurs, then drains and commits.
pub(crate) fn poll_loop(consumer: Arc<BaseConsumer<RuntimeContext>>) -> Result<(), Error> {
    let ctx = consumer.context();
    let rt = ctx.rt.clone();
    let cfg = &rt.config;
    let mut fatal: Option<Error> = None;
    let mut last_warning: Option<Instant> = None;
    // Count-based policies commit soon after the count is reached.
    let timeout = match cfg.commit.trigger {
        CommitTrigger::PerRecord | CommitTrigger::EveryRecords(_) | CommitTrigger::PerBatch => {
            cfg.poll_timeout.min(Duration::from_millis(10))
        }
        CommitTrigger::Interval(d) => cfg.poll_timeout.min(d / 2).max(Duration::from_millis(1)),
    };

    while !rt.shutdown.load(std::sync::atomic::Ordering::Acquire) {
        // The state lock is not held across poll: librdkafka runs rebalance callbacks in it.
        match consumer.poll(timeout) {
            Some(Ok(msg)) => ctx.stray(&consumer, &msg),
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) if is_fatal(&e) => {
                tracing::error!(error = %e, "fatal consumer error; the worker stops");
                fatal = Some(Error::Kafka(e));
                break;
            }
            Some(Err(e)) => {
                // librdkafka repeats some errors (e.g. a topic that disappeared) at every fetch.
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(error = %e, "consumer error");
                }
            }
        }
        let mut st = ctx.state();
        ctx.housekeeping(&mut st, &consumer);
    }

    // Drain: stop every partition, wait for in-flight records, final synchronous commit.
    let drained = ctx.release(&consumer, None);
    // Records per burst says how the partition tasks were fed (small bursts: fetch-bound).
    tracing::debug!(
        records = ctx
            .rt
            .finished_records
            .load(std::sync::atomic::Ordering::Relaxed),
        bursts = ctx.rt.bursts.load(std::sync::atomic::Ordering::Relaxed),
        "stopped"
    );
    consumer.unsubscribe();
    drop(consumer);
    if let Some(e) = fatal {
        return Err(e);
    }
    drained.map_err(Error::Commit)
}
