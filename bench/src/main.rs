//! The benchmark harness (BENCHMARKS.md, Method): baseline and redrive alternate in one run against the
//! same broker, several rounds; the median and the ratio are reported.
//!
//! ```text
//! cargo bench -p redrive-bench                     # every scenario, 3 rounds
//! cargo bench -p redrive-bench -- happy retry      # some scenarios
//! cargo bench -p redrive-bench --features jemalloc # both sides on jemalloc
//! BENCH_RECORDS=200000 BENCH_ROUNDS=5 cargo bench -p redrive-bench
//! ```
//!
//! Starts its own nisshi broker (memory storage) unless `KAFKA_BOOTSTRAP_SERVERS` is set.
//! Prints `bench <scenario> baseline=<x> redrive=<y> ratio=<y/x> target=<t> pass=<bool>` per
//! scenario and writes the same to `target/bench/results.json`.

mod baseline;
mod measure;
mod pending;
mod report;
mod scenarios;
mod sidecar;
mod worker;
mod workload;

#[path = "../../tests/support/mod.rs"]
mod support;

use crate::measure::*;
use crate::report::*;
use crate::worker::*;
use crate::workload::*;
use scenarios::Run;
use std::sync::atomic::Ordering;

// Feature `jemalloc`: every allocation of the process, librdkafka's included, on
// jemalloc (both sides alike); the system's malloc (glibc here) otherwise, as for an
// application that does not choose one.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Whether this run allocates with jemalloc (the `ALLOCATOR` above).
pub(crate) const JEMALLOC: bool = cfg!(all(feature = "jemalloc", not(target_env = "msvc")));

fn main() {
    // BENCH_WORKERS: tokio worker threads (default 2, one per core of the reference machine).
    let workers = env_number("BENCH_WORKERS", 2);
    // BENCH_PROMETHEUS=1: redrive records its metrics into the Prometheus recorder, as a
    // service exporting them does (nothing scrapes it); by default no recorder is installed.
    if std::env::var_os("BENCH_PROMETHEUS").is_some() {
        install_prometheus();
    } else if metrics::set_global_recorder(CommitCounter).is_ok() {
        COUNTING_COMMITS.store(true, Ordering::Relaxed);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench_main());
}

fn install_prometheus() {
    redrive::metrics::install_prometheus_recorder().expect("the Prometheus recorder");
    eprintln!("metrics: Prometheus recorder installed");
}

async fn bench_main() {
    if std::env::var_os("RUST_LOG").is_some() {
        support::init_tracing();
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = Run {
        bootstrap: bootstrap(),
        n: env_number("BENCH_RECORDS", 1_000_000),
        rounds: env_number("BENCH_ROUNDS", 3),
        side: side(),
    };
    if args.first().map(String::as_str) == Some("memory-child") {
        memory_child(&run.bootstrap).await;
        return;
    }
    if args.first().map(String::as_str) == Some("pending-child") {
        let profile = match args.get(1).map(String::as_str) {
            Some("compact") => redrive::headers::HeaderProfile::Compact,
            _ => redrive::headers::HeaderProfile::Spring,
        };
        pending::pending_child(&run.bootstrap, profile).await;
        return;
    }
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let mut lines = Vec::new();
    eprintln!(
        "broker {}; {} records of {VALUE_BYTES} bytes, {PARTITIONS} partitions, {} rounds; allocator {}",
        run.bootstrap,
        run.n,
        run.rounds,
        allocator_name()
    );
    if want("happy") || want("retry") {
        let happy = scenarios::happy(&run, &mut lines).await;
        if want("retry") {
            scenarios::retry(&run, &happy, &mut lines).await;
        }
    }
    if want("delay") {
        scenarios::delay(&run, &mut lines).await;
    }
    if want("memory") {
        scenarios::memory(&run, &mut lines);
    }
    if want("pending") {
        pending::pending(&run.bootstrap, &mut lines);
    }
    if want("transactional") {
        scenarios::transactional(&run, &mut lines).await;
    }
    if want("sidecar_http") {
        scenarios::sidecar_http(&run, &mut lines).await;
    }
    scenarios::mark_one_side(&run.side, &mut lines);
    write_report(&lines);
}

/// `BENCH_SIDE=baseline|redrive` runs one side only (for a profiler); the other side's
/// figures are 1.0, so the lines that compare them are marked and never pass.
fn side() -> String {
    let side = std::env::var("BENCH_SIDE").unwrap_or_default();
    if !["", "baseline", "redrive"].contains(&side.as_str()) {
        eprintln!("BENCH_SIDE={side:?}: expected `baseline` or `redrive` (or unset for both)");
        std::process::exit(2);
    }
    side
}

/// The broker: `KAFKA_BOOTSTRAP_SERVERS` (its process `BENCH_BROKER_PID`, when local), or a
/// nisshi this run starts.
fn bootstrap() -> String {
    match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(b) if !b.is_empty() => {
            let pid = std::env::var("BENCH_BROKER_PID")
                .ok()
                .and_then(|p| p.parse().ok());
            BROKER_PID.get_or_init(|| pid);
            b
        }
        _ => {
            let (b, broker) =
                support::start_nisshi(&format!("memory://bench-{}/", std::process::id()));
            BROKER_PID.get_or_init(|| Some(broker.pid));
            b
        }
    }
}
