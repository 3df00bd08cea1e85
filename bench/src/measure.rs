//! What the bench measures with: CPU time from procfs, peak RSS, medians, the commit
//! counting recorder.

use crate::JEMALLOC;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The allocator of this run, as the report names it: `jemalloc`, or `system-malloc` with
/// the `GLIBC_TUNABLES` it ran under in brackets, since glibc's fast bins alone move the
/// retry and delay scenarios (BENCHMARKS.md, Tuning).
pub(crate) fn allocator_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        if JEMALLOC {
            return "jemalloc".into();
        }
        // Tunables are `name=value` pairs joined by `:`; anything else is left out, so the
        // report line stays one token and the JSON stays valid.
        let tunables: String = std::env::var("GLIBC_TUNABLES")
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._=:-".contains(*c))
            .collect();
        if tunables.is_empty() {
            "system-malloc".into()
        } else {
            format!("system-malloc({tunables})")
        }
    })
}

/// The least CPU time a side's measured window must take for the happy CPU line to count:
/// 20 ticks of procfs's 10 ms, so one tick is at most 5 % of it.
pub(crate) const MIN_WINDOW_CPU_SECONDS: f64 = 0.2;

/// The number in environment variable `name`, or `default` when it is unset; a value that
/// is not a number stops the bench rather than being ignored.
pub(crate) fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Process CPU time (user + system, all threads), from /proc/self/stat.
pub(crate) fn cpu_seconds() -> f64 {
    proc_cpu_seconds("/proc/self/stat").expect("/proc/self/stat")
}

/// When a measured window started or ended: wall clock, this process's CPU, the broker's.
pub(crate) type Mark = Arc<Mutex<Option<(Instant, f64, Option<f64>)>>>;

/// The broker's process id when it runs on this machine: the one the bench started, or
/// `BENCH_BROKER_PID` with `KAFKA_BOOTSTRAP_SERVERS`.
pub(crate) static BROKER_PID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();

/// The local broker's CPU time, to show how much of the machine it took from the consumer.
pub(crate) fn broker_cpu_seconds() -> Option<f64> {
    let pid = BROKER_PID.get().copied().flatten()?;
    proc_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// A `stat` file of procfs: the command name and the numeric fields after it (the name may
/// contain spaces, so the fields start after the last ')'). Index 7 is minor faults, 11 user
/// and 12 system time in ticks of 10 ms.
pub(crate) fn read_stat(path: impl AsRef<std::path::Path>) -> Option<(String, Vec<u64>)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields = stat[close + 2..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect::<Vec<u64>>();
    (fields.len() > 12).then(|| (stat[open + 1..close].to_string(), fields))
}

pub(crate) fn proc_cpu_seconds(path: &str) -> Option<f64> {
    let (_, f) = read_stat(path)?;
    Some((f[11] + f[12]) as f64 / 100.0)
}

/// Per thread id: name, CPU ticks, system ticks, and faults (or context switches).
pub(crate) type ThreadTicks = HashMap<u32, (String, u64, u64, u64)>;

/// `BENCH_THREADS=switches` counts context switches where page faults are counted otherwise.
pub(crate) fn count_switches() -> bool {
    std::env::var("BENCH_THREADS").as_deref() == Ok("switches")
}

/// CPU ticks of each of this process's threads, by thread id, with the thread's name.
pub(crate) fn thread_ticks() -> ThreadTicks {
    let mut out = HashMap::new();
    for e in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let (Some((name, f)), Ok(tid)) = (
            read_stat(e.path().join("stat")),
            e.file_name().to_string_lossy().parse(),
        ) else {
            continue;
        };
        let events = if count_switches() {
            std::fs::read_to_string(e.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        } else {
            f[7]
        };
        out.insert(tid, (name, f[11] + f[12], f[12], events));
    }
    out
}

/// With `BENCH_THREADS=1`: the CPU each thread used since `before`, largest first.
pub(crate) fn print_thread_cpu(what: &str, before: &ThreadTicks) {
    if std::env::var_os("BENCH_THREADS").is_none() {
        return;
    }
    let mut used: Vec<(u64, u64, u64, String)> = thread_ticks()
        .into_iter()
        .map(|(tid, (name, t, sys, events))| {
            let b = before.get(&tid);
            (
                t - b.map_or(0, |b| b.1),
                sys - b.map_or(0, |b| b.2),
                events - b.map_or(0, |b| b.3),
                name,
            )
        })
        .filter(|(d, ..)| *d > 0)
        .collect();
    used.sort_by(|a, b| b.cmp(a));
    let unit = if count_switches() {
        "switches"
    } else {
        "faults"
    };
    let list: Vec<String> = used
        .iter()
        .map(|(d, sys, n_events, n)| {
            format!("{n}={}ms(sys {}ms, {n_events} {unit})", d * 10, sys * 10)
        })
        .collect();
    eprintln!("  {what} threads: {}", list.join(" "));
}

/// Peak resident set size of this process, bytes.
pub(crate) fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// The median; with an even count (`BENCH_ROUNDS=2`), the mean of the middle two rather
/// than the upper one, which would favour whichever side had the better outlier.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Offset commit requests redrive's committer has completed, counted by [`CommitCounter`].
pub(crate) static REDRIVE_COMMITS: AtomicU64 = AtomicU64::new(0);

/// A `metrics` recorder that only counts the samples of redrive's commit-duration
/// histogram, one per commit request, so the happy lines can say how many commits each side
/// sent: redrive checks its commit count once per poll round with one request in flight,
/// the raw loop sends one per 1,000 records. Every other metric gets a no-op handle, as with no
/// recorder (the runtime keeps its handles, so nothing is looked up per record).
pub(crate) struct CommitCounter;

pub(crate) struct CountCommit;

/// Whether [`CommitCounter`] is installed (not with `BENCH_PROMETHEUS`).
pub(crate) static COUNTING_COMMITS: AtomicBool = AtomicBool::new(false);

impl metrics::HistogramFn for CountCommit {
    fn record(&self, _: f64) {
        REDRIVE_COMMITS.fetch_add(1, Ordering::Relaxed);
    }
}

impl metrics::Recorder for CommitCounter {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        if key.name() == redrive::metrics::names::COMMIT_DURATION {
            metrics::Histogram::from_arc(Arc::new(CountCommit))
        } else {
            metrics::Histogram::noop()
        }
    }
}
