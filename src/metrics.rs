//! Metric names. The library only records, through the `metrics` facade; installing an
//! exporter is the application's choice.

/// The names of every metric redrive records (see DESIGN §8).
pub mod names {
    /// Records read, by `stage` (main, retry, dlt).
    pub const RECORDS_CONSUMED: &str = "redrive_records_consumed_total";
    /// Records handled, by `outcome` and `attempt`.
    pub const RECORDS_HANDLED: &str = "redrive_records_handled_total";
    /// Retries published to a retry topic, by `attempt`.
    pub const RETRIES_SCHEDULED: &str = "redrive_retries_scheduled_total";
    /// Records published to a dead-letter topic, by `reason`.
    pub const DEAD_LETTERED: &str = "redrive_dead_lettered_total";
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
    /// Always 1, labelled with the version.
    pub const BUILD_INFO: &str = "redrive_build_info";
}
