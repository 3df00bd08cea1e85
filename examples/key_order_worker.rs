//! A worker process for the key-ordering crash test (`tests/chaos.rs`): killed with SIGKILL
//! at random moments and restarted, next to a second member, it must keep each key's records
//! in order.
//!
//! ```text
//! cargo run --example key_order_worker -- BOOTSTRAP TOPIC GROUP OK_LOG
//! ```
//!
//! Records are keyed `k<n>` with the value `<seq>`, the record's place in its key's sequence.
//! About one record in ten fails on its first one to three attempts (which ones follows from
//! key and sequence), so failures spread over the whole retry chain; every record succeeds
//! in the end. Each successful handling appends `<key> <seq>` to OK_LOG. `KEY_ORDER_HANDLER_MS`
//! sets the work per record (2 ms).
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redrive::{policy::RetryPolicy, BoxError, CommitPolicy, Record, Route, Worker};
use tower::service_fn;

/// How many first attempts of the record fail: 0 for nine records in ten, else 1 to 3.
fn failures(key: &str, seq: u64) -> u32 {
    let mut h = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    h ^= h >> 29;
    if h % 10 == 0 {
        1 + (h / 10 % 3) as u32
    } else {
        0
    }
}

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
        return Err("usage: key_order_worker BOOTSTRAP TOPIC GROUP OK_LOG".into());
    };
    // Work per record, so a kill lands while records are in flight.
    let work = Duration::from_millis(
        std::env::var("KEY_ORDER_HANDLER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2),
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
            let seq: u64 = std::str::from_utf8(r.value().map_or(&b""[..], |v| &v[..]))?.parse()?;
            let attempt = redrive::headers::attempt_of(r.headers());
            tokio::time::sleep(work).await;
            if attempt <= failures(&key, seq) {
                return Err::<(), BoxError>(
                    format!("{key} {seq} fails on attempt {attempt}").into(),
                );
            }
            // One write per line: a SIGKILL cannot leave half a line in the page cache.
            log.lock()
                .unwrap()
                .write_all(format!("{key} {seq}\n").as_bytes())?;
            Ok(())
        }
    });
    let policy = RetryPolicy::new().attempts(5).exponential(
        Duration::from_millis(100),
        2.0,
        Duration::from_millis(400),
    );
    let route = Route::new(topic, handler).retry(policy).key_ordering(true);
    Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(group)
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(200)))
        .route(route)
        .build()?
        .run_until(redrive::shutdown_signal())
        .await?;
    Ok(())
}
