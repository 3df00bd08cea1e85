//! Consumer lag per assigned partition, refreshed on an interval by a thread of its own, so
//! it is measured also while a partition is paused and never slows the poll loop.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::shared::RuntimeShared;
use crate::clock::now_ms;
use crate::metrics::names::{CONSUMER_LAG_RECORDS, CONSUMER_LAG_SECONDS};

/// Spawns the lag thread; it ends when the worker shuts down.
pub(crate) fn spawn_lag_thread(
    rt: Arc<RuntimeShared>,
    config: ClientConfig,
    interval: Duration,
) -> std::io::Result<()> {
    let client: BaseConsumer = match config.create() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the lag client; consumer lag is not exported");
            return Ok(());
        }
    };
    std::thread::Builder::new()
        .name("redrive-lag".into())
        .spawn(move || run(&rt, &client, interval))
        .map(|_| ())
}

fn run(rt: &RuntimeShared, client: &BaseConsumer, interval: Duration) {
    let group = rt.group.to_string();
    let mut gauges: HashMap<(Arc<str>, i32), (::metrics::Gauge, ::metrics::Gauge)> = HashMap::new();
    let mut next = Instant::now();
    while !rt.shutdown.load(Ordering::Acquire) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        next = Instant::now() + interval;
        let assigned: Vec<_> = rt
            .assignment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Revoked partitions stop being refreshed (an exporter's idle timeout drops them).
        gauges.retain(|(t, p), _| {
            assigned
                .iter()
                .any(|s| Arc::ptr_eq(&s.topic, t) && s.partition == *p)
        });
        for s in assigned {
            let (low, high) = match client.fetch_watermarks(
                &s.topic,
                s.partition,
                Duration::from_secs(5),
            ) {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(topic = %s.topic, partition = s.partition, error = %e, "watermarks unavailable");
                    continue;
                }
            };
            let position = s.committed().unwrap_or(low);
            let records = (high - position).max(0);
            s.set_lag_records(records);
            let seconds = match s.oldest_timestamp() {
                Some(ts) if records > 0 => (now_ms() - ts).max(0) as f64 / 1000.0,
                _ => 0.0,
            };
            let (r, sec) = gauges
                .entry((s.topic.clone(), s.partition))
                .or_insert_with(|| {
                    let labels = [
                        ("group", group.clone()),
                        ("topic", s.topic.to_string()),
                        ("route", s.route.to_string()),
                        ("partition", s.partition.to_string()),
                    ];
                    (
                        ::metrics::gauge!(CONSUMER_LAG_RECORDS, &labels),
                        ::metrics::gauge!(CONSUMER_LAG_SECONDS, &labels),
                    )
                });
            r.set(records as f64);
            sec.set(seconds);
        }
    }
}
