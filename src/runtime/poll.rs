//! The poll thread: reads records, dispatches them, commits.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use super::context::is_fatal;
use super::RuntimeContext;
use crate::Error;

/// Runs until shutdown is requested or a fatal error occurs, then drains and commits.
pub(crate) fn poll_loop(consumer: BaseConsumer<RuntimeContext>) -> Result<(), Error> {
    let ctx = consumer.context();
    let rt = ctx.rt.clone();
    let cfg = &rt.config;
    let mut batch_len = 0usize;
    let mut fatal: Option<Error> = None;
    let mut last_warning: Option<Instant> = None;
    let short = Duration::from_millis(5).min(cfg.poll_timeout);

    while !rt.shutdown.load(std::sync::atomic::Ordering::Acquire) {
        let timeout = if ctx.has_paused(&ctx.state()) {
            short
        } else {
            cfg.poll_timeout
        };
        // The state lock is not held across poll: librdkafka runs rebalance callbacks in it.
        let polled = consumer.poll(timeout);
        let mut st = ctx.state();
        let batch_end;
        match polled {
            Some(Ok(msg)) => {
                ctx.dispatch(&mut st, &consumer, &msg);
                batch_len += 1;
                batch_end = batch_len >= cfg.max_poll_records;
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => batch_end = true,
            Some(Err(e)) if is_fatal(&e) => {
                tracing::error!(error = %e, "fatal consumer error; the worker stops");
                fatal = Some(Error::Kafka(e));
                break;
            }
            Some(Err(e)) => {
                batch_end = true;
                // librdkafka repeats some errors (e.g. a topic that disappeared) at every fetch.
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(error = %e, "consumer error");
                }
            }
        }
        if batch_end {
            ctx.housekeeping(&mut st, &consumer, batch_len > 0);
            batch_len = 0;
        } else {
            ctx.housekeeping(&mut st, &consumer, false);
        }
    }

    // Drain: stop every partition, wait for in-flight records, final synchronous commit.
    let drained = ctx.release(&consumer, None);
    consumer.unsubscribe();
    drop(consumer);
    if let Some(e) = fatal {
        return Err(e);
    }
    drained.map_err(Error::Commit)
}
