//! Ten times the pending retries: 100,000 retries waiting at once across 12 partitions, how
//! late each starts, and the peak RSS of the same process. Runs in a child process (this
//! binary, `pending-child`), so its peak RSS is the scenario's own.
//!
//! Records are produced at 10,000 a second for 10 s, each fails once and waits 10 s in the
//! retry topic: at the 10th second all 100,000 wait, and they fall due at the rate they came,
//! so the lateness measures the delay machinery rather than a burst's queueing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redrive::headers::HeaderProfile;
use redrive::{policy::RetryPolicy, BoxError, Record, Route, Worker};
use tower::service_fn;

use crate::measure::*;
use crate::report::*;
use crate::support;
use crate::workload::*;

const PENDING: u64 = 100_000;
const PENDING_PARTITIONS: i32 = 12;
const RATE_PER_SEC: u64 = 10_000;
const DELAY: Duration = Duration::from_secs(10);

/// The child: runs the scenario with the header `profile` and prints
/// `LATENESS=<p50>,<p99>,<max>,<min>,<count>` (ms) and `PEAK_RSS=<bytes>`.
pub(crate) async fn pending_child(bootstrap: &str, profile: HeaderProfile) {
    let topic = support::unique("bench-pending");
    support::create_topic(bootstrap, &topic, PENDING_PARTITIONS).await;
    let lateness = Arc::new(Mutex::new(Vec::with_capacity(PENDING as usize)));
    let retried = Arc::new(AtomicU64::new(0));
    let (l2, r2, main) = (
        lateness.clone(),
        retried.clone(),
        Arc::<str>::from(topic.as_str()),
    );
    let handler = service_fn(move |r: Record| {
        let res: Result<(), BoxError> = if *r.topic() == *main {
            Err("fails once".into())
        } else {
            if let Some(due) = redrive::headers::due_at_ms(r.headers()) {
                l2.lock().unwrap().push(now_ms() as f64 - due as f64);
            }
            r2.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        std::future::ready(res)
    });
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(DELAY)
        .header_profile(profile);
    let builder = Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(support::unique("bench-pending"))
        .property("session.timeout.ms", "6000")
        .route(Route::new(&topic, handler).retry(policy));
    let worker = crate::worker::with_bench_props(builder).build().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    // Produced once the worker holds the partitions: records read in a burst after a slow
    // group join would fall due in a burst too, and the lateness would measure its queueing.
    let joined_by = Instant::now() + Duration::from_secs(60);
    while h.assignment().iter().filter(|(t, _)| *t == topic).count() < PENDING_PARTITIONS as usize {
        assert!(
            Instant::now() < joined_by,
            "the worker got no partitions in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    produce_paced(bootstrap, &topic).await;
    let deadline = Instant::now() + DELAY * 4;
    while retried.load(Ordering::Relaxed) < PENDING {
        assert!(
            Instant::now() < deadline,
            "the pending retries did not complete"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.shutdown();
    run.await.unwrap().unwrap();
    let mut v = std::mem::take(&mut *lateness.lock().unwrap());
    v.sort_by(f64::total_cmp);
    let q = |x| quantile(&v, x);
    println!(
        "LATENESS={:.1},{:.1},{:.1},{:.1},{}",
        q(0.5),
        q(0.99),
        v[v.len() - 1],
        v[0],
        v.len()
    );
    println!("PEAK_RSS={}", peak_rss());
}

/// `PENDING` records over `PENDING_PARTITIONS` partitions at `RATE_PER_SEC`.
async fn produce_paced(bootstrap: &str, topic: &str) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let value = [b'p'; VALUE_BYTES];
    let tick = Duration::from_millis(100);
    let per_tick = RATE_PER_SEC / 10;
    let start = tokio::time::Instant::now();
    for t in 0..PENDING / per_tick {
        let mut sends = Vec::with_capacity(per_tick as usize);
        for i in t * per_tick..(t + 1) * per_tick {
            let key = i.to_string();
            let partition = (i % PENDING_PARTITIONS as u64) as i32;
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&value[..])
                .partition(partition);
            sends.push(p.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
        }
        for f in sends {
            f.await.unwrap().map_err(|(e, _)| e).expect("produce");
        }
        tokio::time::sleep_until(start + tick * (t as u32 + 1)).await;
    }
}

/// One child run: its stdout, or a panic with its stderr.
fn child(bootstrap: &str, profile: &str) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["pending-child", profile])
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .output()
        .expect("pending child");
    if !out.status.success() {
        panic!(
            "pending child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `NAME=value` from a child's output.
fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in the pending child's output: {text}"))
        .to_owned()
}

/// The parent: the Spring-profile child's lateness and peak RSS as two lines, and the compact
/// profile's peak RSS as a third (its lateness in the extra).
pub(crate) fn pending(bootstrap: &str, lines: &mut Vec<Line>) {
    let text = child(bootstrap, "spring");
    let compact = child(bootstrap, "compact");
    let (p50, p99, max, min, count) = lateness(&text);
    let setup =
        format!("retries={count:.0} partitions={PENDING_PARTITIONS} pending_at_once={PENDING}");
    lines.push(Line {
        scenario: "delay_precision_100k",
        baseline: 10.0,
        redrive: p99,
        ratio: p99 / 10.0,
        target: "p99<=10ms,none_early".into(),
        pass: p99 <= 10.0 && min >= 0.0,
        extra: format!("unit=ms p50={p50:.1} p99={p99:.1} max={max:.1} min={min:.1} {setup}"),
    });
    lines.push(rss_line(
        "memory_peak_rss_100k",
        peak_mib(&text),
        format!("same_process_as=delay_precision_100k headers=spring {setup}"),
    ));
    let (_, c99, cmax, cmin, ccount) = lateness(&compact);
    lines.push(rss_line(
        "memory_peak_rss_100k_compact",
        peak_mib(&compact),
        format!("headers=compact delay_p99_ms={c99:.1} delay_max_ms={cmax:.1} delay_min_ms={cmin:.1} retries={ccount:.0}"),
    ));
}

/// A child's handler lateness: p50, p99, max, min (ms) and the retries measured.
fn lateness(text: &str) -> (f64, f64, f64, f64, f64) {
    let late: Vec<f64> = field(text, "LATENESS=")
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    (late[0], late[1], late[2], late[3], late[4])
}

/// A child's peak RSS in MiB.
fn peak_mib(text: &str) -> f64 {
    field(text, "PEAK_RSS=").parse::<f64>().unwrap() / (1024.0 * 1024.0)
}

/// A peak-RSS line against the 64 MiB target.
fn rss_line(scenario: &'static str, mib: f64, extra: String) -> Line {
    Line {
        scenario,
        baseline: 64.0,
        redrive: mib,
        ratio: mib / 64.0,
        target: "<=64MiB".into(),
        pass: mib <= 64.0,
        extra: format!("unit=MiB {extra}"),
    }
}
