//! Metrics (docs/design.md, Metrics). The library only records, through the `metrics` facade; installing
//! an exporter is the application's choice: `install_prometheus` (feature `prometheus`)
//! serves `/metrics` with the buckets and idle timeout redrive's dashboard expects.
//!
//! Every metric carries `group`; per-topic ones also `topic` and `route`. Only the lag
//! gauges and the fetch-error counter carry `partition`. No offsets, keys or error texts are ever labels.
//!
//! Gauges are refreshed periodically (lag every `lag_interval`, the rest every second), so an
//! exporter with an idle timeout for gauges drops the series of revoked partitions.

use std::time::Duration;

/// The names of every metric redrive records (docs/design.md, Metrics).
pub mod names {
    /// Records read, by `stage` (main, retry, dlt).
    pub const RECORDS_CONSUMED: &str = "redrive_records_consumed_total";
    /// Transactions of a transactional worker, by `outcome` (committed, aborted).
    pub const TRANSACTIONS: &str = "redrive_transactions_total";
    /// Records handled, by `outcome` and `attempt`.
    pub const RECORDS_HANDLED: &str = "redrive_records_handled_total";
    /// Retries published to a retry topic, by `attempt`.
    pub const RETRIES_SCHEDULED: &str = "redrive_retries_scheduled_total";
    /// Records published to a dead-letter topic, by `reason`.
    pub const DEAD_LETTERED: &str = "redrive_dead_lettered_total";
    /// Retry or dead-letter copies skipped because another consumer group's flow wrote them
    /// (their `kafka_dlt-original-consumer-group` names that group).
    pub const FOREIGN_COPIES_SKIPPED: &str = "redrive_foreign_copies_skipped_total";
    /// Failed publications to retry or dead-letter topics, by `target`.
    pub const PUBLISH_FAILURES: &str = "redrive_publish_failures_total";
    /// Handler latency histogram, seconds.
    pub const HANDLER_DURATION: &str = "redrive_handler_duration_seconds";
    /// Commit latency histogram, seconds.
    pub const COMMIT_DURATION: &str = "redrive_commit_duration_seconds";
    /// Failed commits.
    pub const COMMIT_FAILURES: &str = "redrive_commit_failures_total";
    /// Consumer lag in records per partition.
    pub const CONSUMER_LAG_RECORDS: &str = "redrive_consumer_lag_records";
    /// Age of the oldest unfinished record, seconds.
    pub const CONSUMER_LAG_SECONDS: &str = "redrive_consumer_lag_seconds";
    /// How late a retry started after its due time, seconds.
    pub const RETRY_DELAY_ERROR: &str = "redrive_retry_delay_error_seconds";
    /// Records dispatched and not yet final.
    pub const IN_FLIGHT: &str = "redrive_in_flight_records";
    /// Partitions currently assigned.
    pub const PARTITIONS_ASSIGNED: &str = "redrive_partitions_assigned";
    /// Rebalance events (assign and revoke).
    pub const REBALANCES: &str = "redrive_rebalances_total";
    /// A route's circuit breaker: 0 closed, 1 open, 2 half-open (by `route`).
    pub const CIRCUIT_STATE: &str = "redrive_circuit_state";
    /// Circuit breaker transitions, by `route` and `to` (closed, open, half_open).
    pub const CIRCUIT_TRANSITIONS: &str = "redrive_circuit_transitions_total";
    /// Records a route's open breaker held back from its retry chain, by `route`.
    pub const CIRCUIT_HELD: &str = "redrive_circuit_held_records_total";
    /// Records a transactional worker gave up after `max_failed_transactions` failed
    /// transactions, by `outcome` (dead_lettered, skipped).
    pub const RECORDS_GIVEN_UP: &str = "redrive_records_given_up_total";
    /// Reads of a partition's queue that returned an error instead of a record, by `topic`
    /// and `partition` (an unsupported codec, a corrupt batch, a broker error).
    pub const FETCH_ERRORS: &str = "redrive_fetch_errors_total";
    /// Records a route with key ordering parked behind an earlier record of their key in the
    /// retry chain, by `topic` and `route`.
    pub const RECORDS_PARKED: &str = "redrive_records_parked_total";
    /// Always 1, labelled with the version.
    pub const BUILD_INFO: &str = "redrive_build_info";
}

/// Histogram buckets, seconds: handler and commit latency.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Histogram buckets, seconds: how late a retry started (the target is p99 <= 20 ms).
pub const DELAY_ERROR_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Gauges not refreshed for this long are dropped by `install_prometheus` (feature
/// `prometheus`): revoked partitions stop exporting.
pub const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs the Prometheus exporter as the global `metrics` recorder and serves
/// `GET /metrics` on `addr` (bind it to 127.0.0.1 unless Prometheus scrapes from elsewhere).
/// Histograms get explicit buckets; gauges idle for [`GAUGE_IDLE_TIMEOUT`] are dropped.
///
/// Call it once, inside or outside a Tokio runtime, before building workers.
#[cfg(feature = "prometheus")]
pub fn install_prometheus(addr: std::net::SocketAddr) -> Result<(), crate::Error> {
    prometheus_builder()?
        .with_http_listener(addr)
        .install()
        .map_err(prometheus_error)
}

/// Installs the same Prometheus recorder as [`install_prometheus`] without a listener, for
/// programs that serve `/metrics` themselves: render the text with
/// [`PrometheusHandle::render`](metrics_exporter_prometheus::PrometheusHandle::render).
/// Call it once.
#[cfg(feature = "prometheus")]
pub fn install_prometheus_recorder(
) -> Result<metrics_exporter_prometheus::PrometheusHandle, crate::Error> {
    let recorder = prometheus_builder()?.build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder)
        .map_err(|e| crate::Error::config("metrics", e.to_string()))?;
    // The exporter's upkeep (idle gauges, histogram rolls) runs on render and on this timer.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("redrive-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .map_err(|e| crate::Error::config("metrics", e.to_string()))?;
    Ok(handle)
}

#[cfg(feature = "prometheus")]
fn prometheus_error(e: metrics_exporter_prometheus::BuildError) -> crate::Error {
    crate::Error::config("metrics", e.to_string())
}

#[cfg(feature = "prometheus")]
fn prometheus_builder() -> Result<metrics_exporter_prometheus::PrometheusBuilder, crate::Error> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use metrics_util::MetricKindMask;

    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::HANDLER_DURATION.into()),
            &LATENCY_BUCKETS,
        )
        .map_err(prometheus_error)?
        .set_buckets_for_metric(
            Matcher::Full(names::COMMIT_DURATION.into()),
            &LATENCY_BUCKETS,
        )
        .map_err(prometheus_error)?
        .set_buckets_for_metric(
            Matcher::Full(names::RETRY_DELAY_ERROR.into()),
            &DELAY_ERROR_BUCKETS,
        )
        .map_err(prometheus_error)?
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT)))
}
