//! A worker process for the crash tests (`tests/chaos.rs`): it is killed with SIGKILL at
//! random moments and restarted, and must lose nothing.
//!
//! ```text
//! cargo run --example chaos_worker -- BOOTSTRAP TOPIC GROUP OK_LOG
//! ```
//!
//! Records are keyed `key-<i>`: every 10th (i % 10 == 3) fails on its first attempt, every
//! 100th (i % 100 == 7) always fails and ends in `TOPIC-dlt`. Each successful handling appends
//! `<i>` to OK_LOG (a duplicate line is an at-least-once redelivery). `CHAOS_HANDLER_MS`
//! adds work per record.
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redrive::{policy::RetryPolicy, BoxError, CommitPolicy, Record, Route, Worker};
use tower::service_fn;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, topic, group, ok_log] = args.as_slice() else {
        return Err("usage: chaos_worker BOOTSTRAP TOPIC GROUP OK_LOG".into());
    };
    // Per-record work, so a kill lands while records are in flight.
    let work = Duration::from_millis(
        std::env::var("CHAOS_HANDLER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ok_log)?,
    ));
    let handler = service_fn(move |r: Record| {
        let log = log.clone();
        async move {
            let key = std::str::from_utf8(r.key().map_or(&b""[..], |k| &k[..]))?.to_owned();
            let i: u64 = key.trim_start_matches("key-").parse()?;
            let attempt = redrive::headers::attempt_of(r.headers());
            tokio::time::sleep(work).await;
            if i % 100 == 7 {
                return Err::<(), BoxError>(format!("{key} always fails").into());
            }
            if i % 10 == 3 && attempt == 1 {
                return Err(format!("{key} fails once").into());
            }
            // One write per line: a SIGKILL cannot leave half a line in the page cache.
            log.lock().unwrap().write_all(format!("{i}\n").as_bytes())?;
            Ok(())
        }
    });
    let policy = RetryPolicy::new()
        .attempts(3)
        .fixed(Duration::from_millis(300));
    Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(group)
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(200)))
        .route(Route::new(topic, handler).retry(policy))
        .build()?
        .run_until(redrive::shutdown_signal())
        .await?;
    Ok(())
}
