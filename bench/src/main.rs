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

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use redrive::{BoxError, CommitPolicy, Record, RetryPolicy, Route, Worker, WorkerBuilder};
use tower::service_fn;

// Feature `jemalloc`: every allocation of the process, librdkafka's included, on
// jemalloc (both sides alike); the system's malloc (glibc here) otherwise, as for an
// application that does not choose one.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Whether this run allocates with jemalloc (the `ALLOCATOR` above).
const JEMALLOC: bool = cfg!(all(feature = "jemalloc", not(target_env = "msvc")));

/// The allocator of this run, as the report names it: `jemalloc`, or `system-malloc` with
/// the `GLIBC_TUNABLES` it ran under in brackets, since glibc's fast bins alone move the
/// retry and delay scenarios (BENCHMARKS.md, Tuning).
fn allocator_name() -> &'static str {
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
const MIN_WINDOW_CPU_SECONDS: f64 = 0.2;

const PARTITIONS: i32 = 6;
const VALUE_BYTES: usize = 100;
/// `fetch.queue.backoff.ms` of the raw rdkafka consumers: redrive's default, so both sides
/// fetch alike. With librdkafka's 1,000 ms the raw loop's fetcher paused for a second each
/// time its queue passed `queued.min.messages`: the baseline's rounds swung between 290k and
/// 2.1M records/s, and the raw retry loop ran at 180k (BENCHMARKS.md, Tuning).
const FETCH_QUEUE_BACKOFF_MS: &str = "20";

/// The number in environment variable `name`, or `default` when it is unset; a value that
/// is not a number stops the bench rather than being ignored.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Process CPU time (user + system, all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    proc_cpu_seconds("/proc/self/stat").expect("/proc/self/stat")
}

/// When a measured window started or ended: wall clock, this process's CPU, the broker's.
type Mark = Arc<Mutex<Option<(Instant, f64, Option<f64>)>>>;

/// The broker's process id when it runs on this machine: the one the bench started, or
/// `BENCH_BROKER_PID` with `KAFKA_BOOTSTRAP_SERVERS`.
static BROKER_PID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();

/// The local broker's CPU time, to show how much of the machine it took from the consumer.
fn broker_cpu_seconds() -> Option<f64> {
    let pid = BROKER_PID.get().copied().flatten()?;
    proc_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// A `stat` file of procfs: the command name and the numeric fields after it (the name may
/// contain spaces, so the fields start after the last ')'). Index 7 is minor faults, 11 user
/// and 12 system time in ticks of 10 ms.
fn read_stat(path: impl AsRef<std::path::Path>) -> Option<(String, Vec<u64>)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields = stat[close + 2..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect::<Vec<u64>>();
    (fields.len() > 12).then(|| (stat[open + 1..close].to_string(), fields))
}

fn proc_cpu_seconds(path: &str) -> Option<f64> {
    let (_, f) = read_stat(path)?;
    Some((f[11] + f[12]) as f64 / 100.0)
}

/// Per thread id: name, CPU ticks, system ticks, and faults (or context switches).
type ThreadTicks = HashMap<u32, (String, u64, u64, u64)>;

/// `BENCH_THREADS=switches` counts context switches where page faults are counted otherwise.
fn count_switches() -> bool {
    std::env::var("BENCH_THREADS").as_deref() == Ok("switches")
}

/// CPU ticks of each of this process's threads, by thread id, with the thread's name.
fn thread_ticks() -> ThreadTicks {
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
fn print_thread_cpu(what: &str, before: &ThreadTicks) {
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
fn peak_rss() -> u64 {
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
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

struct Line {
    scenario: &'static str,
    baseline: f64,
    redrive: f64,
    ratio: f64,
    target: String,
    pass: bool,
    extra: String,
}

impl Line {
    /// A line whose target is a bound on redrive / baseline.
    fn ratio(
        scenario: &'static str,
        baseline: f64,
        redrive: f64,
        bound: Bound,
        extra: String,
    ) -> Self {
        let ratio = redrive / baseline;
        let (target, pass) = match bound {
            Bound::AtLeast(t) => (format!(">={t:.2}"), ratio >= t),
            Bound::AtMost(t) => (format!("<={t:.2}"), ratio <= t),
        };
        Line {
            scenario,
            baseline,
            redrive,
            ratio,
            target,
            pass,
            extra,
        }
    }

    /// A line for reference: no target, always passes.
    fn report(scenario: &'static str, baseline: f64, redrive: f64, extra: String) -> Self {
        Line {
            scenario,
            baseline,
            redrive,
            ratio: redrive / baseline,
            target: "report".into(),
            pass: true,
            extra,
        }
    }

    /// A reference line on records/s whose extra gives both sides' CPU-s per million records
    /// and their ratio; `baseline` names the baseline when it is not the line's usual one.
    fn with_cpu(
        scenario: &'static str,
        baseline: &str,
        (base_rate, base_cpu): (f64, f64),
        (rate, cpu): (f64, f64),
    ) -> Self {
        let named = if baseline.is_empty() {
            String::new()
        } else {
            format!(" baseline={baseline}")
        };
        Line::report(
            scenario,
            base_rate,
            rate,
            format!(
                "unit=records/s{named} cpu_baseline={base_cpu:.3} cpu_redrive={cpu:.3} cpu_ratio={:.3}",
                cpu / base_cpu
            ),
        )
    }

    fn print(&self) {
        // Small figures (CPU-seconds per million records) with enough digits to check the ratio.
        fn figure(v: f64) -> String {
            if v.abs() < 10.0 {
                format!("{v:.3}")
            } else {
                format!("{v:.1}")
            }
        }
        println!(
            "bench {} baseline={} redrive={} ratio={:.3} target={} pass={} allocator={}{}",
            self.scenario,
            figure(self.baseline),
            figure(self.redrive),
            self.ratio,
            self.target,
            self.pass,
            allocator_name(),
            if self.extra.is_empty() {
                String::new()
            } else {
                format!(" {}", self.extra)
            }
        );
    }
    fn json(&self) -> String {
        // JSON has no NaN or infinity (a ratio of two unmeasured figures): null instead.
        fn number(v: f64) -> String {
            if v.is_finite() {
                v.to_string()
            } else {
                "null".into()
            }
        }
        format!(
            r#"{{"scenario":"{}","baseline":{},"redrive":{},"ratio":{},"target":"{}","pass":{},"allocator":"{}","details":"{}"}}"#,
            self.scenario,
            number(self.baseline),
            number(self.redrive),
            number(self.ratio),
            self.target,
            self.pass,
            allocator_name(),
            self.extra
        )
    }
}

async fn produce(bootstrap: &str, topic: &str, n: u64) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let value = [b'x'; VALUE_BYTES];
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        let key = (i % 100_000).to_string();
        let f = p.send_result(
            FutureRecord::to(topic)
                .key(&key)
                .payload(&value[..])
                .partition((i % PARTITIONS as u64) as i32),
        );
        pending.push(f.map_err(|(e, _)| e).expect("enqueue"));
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                f.await.unwrap().map_err(|(e, _)| e).expect("produce");
            }
        }
    }
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).expect("produce");
    }
}

/// A raw rdkafka consumer in a fresh group named after `group`, reading from the beginning,
/// committing only when told.
fn raw_consumer(bootstrap: &str, group: &str) -> StreamConsumer {
    raw_consumer_in(bootstrap, &support::unique(group))
}

/// A raw consumer in exactly this group.
fn raw_consumer_in(bootstrap: &str, group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        // redrive's default, so both sides fetch alike. With librdkafka's 500 ms whole rounds
        // of either side stalled: near a round's end a fetch carrying only partitions already
        // read to their end is held that long while the others, left out of it with full
        // queues, drain and wait (BENCHMARKS.md, Tuning).
        .set(
            "fetch.wait.max.ms",
            redrive::client::DEFAULT_FETCH_WAIT_MS.to_string(),
        )
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Raw rdkafka: `StreamConsumer::recv` one record at a time, offsets stored and committed
/// asynchronously every `commit_every` records (the scenario's policy: 1,000). With
/// `read_headers` the loop also asks each record for its headers, as a loop that hands its
/// handler the headers must (redrive does).
async fn baseline(
    bootstrap: &str,
    topic: &str,
    n: u64,
    read_headers: bool,
    commit_every: u64,
) -> HappyRun {
    let c = raw_consumer(bootstrap, "bench-raw");
    c.subscribe(&[topic]).unwrap();
    let mut positions: HashMap<i32, i64> = HashMap::new();
    let (mut count, mut commits) = (0u64, 0u64);
    let mut started = None;
    let (mut cpu0, mut broker0) = (0.0, None);
    let mut ticks0 = HashMap::new();
    while count < n {
        let m = c.recv().await.expect("recv");
        if started.is_none() {
            started = Some(Instant::now());
            cpu0 = cpu_seconds();
            broker0 = broker_cpu_seconds();
            ticks0 = thread_ticks();
        }
        // The same no-op work as redrive's handler: look at the payload.
        std::hint::black_box(m.payload());
        if read_headers {
            // librdkafka parses the record's header bytes here, even when there are none.
            use rdkafka::message::Headers as _;
            std::hint::black_box(m.headers().map_or(0, |h| h.count()));
        }
        positions.insert(m.partition(), m.offset() + 1);
        count += 1;
        if count % commit_every == 0 {
            commit_positions(&c, topic, &positions);
            commits += 1;
        }
    }
    let secs = started.unwrap().elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let broker = broker_cpu_seconds().zip(broker0).map(|(b1, b0)| b1 - b0);
    let what = match (read_headers, commit_every) {
        (true, _) => "baseline reading headers",
        (false, 1000) => "baseline",
        (false, _) => "baseline, committing as often as redrive",
    };
    print_thread_cpu(what, &ticks0);
    let per_million = n as f64 / 1e6;
    HappyRun {
        rate: n as f64 / secs,
        cpu: cpu / per_million,
        broker: broker.map(|b| b / per_million),
        commits: Some(commits as f64 / per_million),
    }
}

/// Prints one round of the retry scenario (`what`: the side) and returns its main-topic
/// records/s and the retries it completed.
fn retry_round(
    round: usize,
    what: &str,
    (r, cpu, broker, done): (f64, f64, Option<f64>, u64),
) -> (f64, u64) {
    eprintln!(
        "round {round}: {what} main topic {r:.0} rec/s, {cpu:.2} cpu-s/M (broker {}), {done} retries completed",
        broker_note(broker)
    );
    (r, done)
}

/// How a round line shows the local broker's CPU.
fn broker_note(broker: Option<f64>) -> String {
    broker.map_or("not local".into(), |b| format!("{b:.2} cpu-s/M"))
}

/// Offset commit requests redrive's committer has completed, counted by [`CommitCounter`].
static REDRIVE_COMMITS: AtomicU64 = AtomicU64::new(0);

/// A `metrics` recorder that only counts the samples of redrive's commit-duration
/// histogram, one per commit request, so the happy lines can say how many commits each side
/// sent: redrive checks its commit count once per poll round with one request in flight,
/// the raw loop sends one per 1,000 records. Every other metric gets a no-op handle, as with no
/// recorder (the runtime keeps its handles, so nothing is looked up per record).
struct CommitCounter;

struct CountCommit;

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

/// Whether [`CommitCounter`] is installed (not with `BENCH_PROMETHEUS`).
static COUNTING_COMMITS: AtomicBool = AtomicBool::new(false);

/// One side's happy round: records/s, CPU-s per million records, the local broker's CPU-s
/// per million, and the offset commit requests per million records when they were counted.
struct HappyRun {
    rate: f64,
    cpu: f64,
    broker: Option<f64>,
    commits: Option<f64>,
}

impl HappyRun {
    fn note(&self) -> String {
        let commits = self
            .commits
            .map_or(String::new(), |c| format!(", {c:.0} commits/M"));
        format!(
            "{:.0} rec/s, {:.2} cpu-s/M (broker {}){commits}",
            self.rate,
            self.cpu,
            broker_note(self.broker)
        )
    }
}

/// A commit of `positions` (next offsets by partition of `topic`), asynchronous.
fn commit_positions(c: &StreamConsumer, topic: &str, positions: &HashMap<i32, i64>) {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in positions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Async).unwrap();
}

/// The 14 headers redrive's retry layer writes on a first hop for this scenario's failure (a
/// `&str` error), built by hand: the same names in the same order and values of the same
/// sizes, so the raw loop produces, stores and reads back as many bytes as redrive. The due
/// time is an 8-byte long here (redrive writes Java's `BigInteger` bytes, 6 for today's ms).
fn spring_headers(m: &impl Message, group: &str, now: i64) -> rdkafka::message::OwnedHeaders {
    use redrive::headers as h;
    let ts = m.timestamp().to_millis().unwrap_or(-1);
    let (ts, due, off) = (
        ts.to_be_bytes(),
        (now + 1000).to_be_bytes(),
        m.offset().to_be_bytes(),
    );
    let partition = m.partition().to_be_bytes();
    // 16 random bytes as 32 hex digits, 8 as 16: the size of a derived `traceparent`.
    let traceparent = format!(
        "00-{:032x}-{:016x}-01",
        u128::from(now as u64) << 64 | m.offset() as u128,
        now as u64
    );
    let values: [(&str, &[u8]); 14] = [
        (h::ORIGINAL_TIMESTAMP_RETRY, &ts[2..]),
        (h::ATTEMPTS, &2i32.to_be_bytes()),
        (h::BACKOFF_TIMESTAMP, &due),
        (h::ORIGINAL_TOPIC, m.topic().as_bytes()),
        (h::ORIGINAL_PARTITION, &partition),
        (h::ORIGINAL_OFFSET, &off),
        (h::ORIGINAL_TIMESTAMP, &ts),
        (h::ORIGINAL_TIMESTAMP_TYPE, b"CreateTime"),
        (h::ORIGINAL_CONSUMER_GROUP, group.as_bytes()),
        (h::EXCEPTION_FQCN, b"error"),
        (h::EXCEPTION_CAUSE_FQCN, b"error"),
        (h::EXCEPTION_MESSAGE, b"fails once"),
        (h::EXCEPTION_STACKTRACE, b"error: fails once\n"),
        (h::TRACEPARENT, traceparent.as_bytes()),
    ];
    let mut headers = rdkafka::message::OwnedHeaders::new_with_capacity(14);
    for (key, value) in values {
        headers = headers.insert(rdkafka::message::Header {
            key,
            value: Some(value),
        });
    }
    headers
}

/// The retry path hand-written on raw rdkafka, as a reference for what the retry scenario
/// costs without redrive: the main loop of [`baseline`] sends every 10th record to a retry
/// topic (an `acks=all` idempotent producer compressing with lz4, as redrive's by default)
/// without waiting for the acknowledgement, and a second `StreamConsumer` reads the retry
/// topic, sleeping until each record is due. Each copy carries the headers redrive writes
/// for this scenario (docs/design.md, Headers: the 14 Spring headers and a `traceparent`, same names, same
/// value sizes), since a retry path that shares topics with Spring must carry them;
/// `BENCH_RAW_RETRY_HEADERS=due` sends only the due time instead, to measure what the
/// headers cost. It never holds a commit back for an unacknowledged copy (redrive does), so
/// it is an upper bound for a hand-written loop.
/// Returns the main topic's records/s, CPU s per million, the broker's CPU s per million,
/// retries completed.
async fn baseline_retry(bootstrap: &str, topic: &str, n: u64) -> (f64, f64, Option<f64>, u64) {
    let retry_topic = format!("{topic}-raw-retry");
    support::create_topic(bootstrap, &retry_topic, PARTITIONS).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "compression.type",
            redrive::client::DEFAULT_PRODUCER_COMPRESSION,
        )
        .create()
        .unwrap();
    let expected = expected_retries(n);
    let retried = Arc::new(AtomicU64::new(0));
    let retry_consumer = raw_consumer(bootstrap, "bench-raw-retry-r");
    retry_consumer.subscribe(&[&retry_topic]).unwrap();
    let (done, rt) = (retried.clone(), retry_topic.clone());
    let retry_loop = tokio::spawn(async move {
        use rdkafka::message::Headers as _;
        let mut positions: HashMap<i32, i64> = HashMap::new();
        let mut count = 0u64;
        while count < expected {
            let m = retry_consumer.recv().await.expect("recv");
            let due = m
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == redrive::headers::BACKOFF_TIMESTAMP)
                })
                .and_then(|h| h.value)
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(i64::from_be_bytes)
                .expect("due header");
            let ahead = due - now_ms();
            if ahead > 0 {
                tokio::time::sleep(Duration::from_millis(ahead as u64)).await;
            }
            std::hint::black_box(m.payload());
            positions.insert(m.partition(), m.offset() + 1);
            count += 1;
            done.store(count, Ordering::Relaxed);
            if count % 1000 == 0 {
                commit_positions(&retry_consumer, &rt, &positions);
            }
        }
    });

    let group = support::unique("bench-raw-retry");
    let c = raw_consumer_in(bootstrap, &group);
    c.subscribe(&[topic]).unwrap();
    let only_due = std::env::var("BENCH_RAW_RETRY_HEADERS").is_ok_and(|v| v == "due");
    let mut positions: HashMap<i32, i64> = HashMap::new();
    let mut count = 0u64;
    let mut first = None;
    let mut ticks0 = HashMap::new();
    let mut deliveries = Vec::new();
    while count < n {
        let m = c.recv().await.expect("recv");
        if first.is_none() {
            first = Some((Instant::now(), cpu_seconds(), broker_cpu_seconds()));
            ticks0 = thread_ticks();
        }
        std::hint::black_box(m.payload());
        if m.offset() % 10 == 0 {
            let now = now_ms();
            let headers = if only_due {
                rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                    key: redrive::headers::BACKOFF_TIMESTAMP,
                    value: Some(&(now + 1000).to_be_bytes()[..]),
                })
            } else {
                spring_headers(&m, &group, now)
            };
            let mut copy: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&retry_topic)
                .partition(m.partition())
                .headers(headers);
            if let Some(k) = m.key() {
                copy = copy.key(k);
            }
            if let Some(v) = m.payload() {
                copy = copy.payload(v);
            }
            deliveries.push(
                producer
                    .send_result(copy)
                    .map_err(|(e, _)| e)
                    .expect("enqueue"),
            );
        }
        positions.insert(m.partition(), m.offset() + 1);
        count += 1;
        if count % 1000 == 0 {
            commit_positions(&c, topic, &positions);
            // Acknowledgements are collected, not waited for: the loop never stops for them.
            deliveries.retain_mut(|d| {
                use futures_util::FutureExt;
                d.now_or_never().is_none()
            });
        }
    }
    let (t1, c1, b1) = (Instant::now(), cpu_seconds(), broker_cpu_seconds());
    print_thread_cpu("raw retry", &ticks0);
    for d in deliveries {
        d.await.unwrap().map_err(|(e, _)| e).expect("produce");
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while retried.load(Ordering::Relaxed) < expected {
        assert!(
            Instant::now() < deadline,
            "raw retry scenario did not complete"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    retry_loop.await.unwrap();
    let (t0, c0, b0) = first.unwrap();
    let per_million = n as f64 / 1e6;
    (
        n as f64 / (t1 - t0).as_secs_f64(),
        (c1 - c0) / per_million,
        b1.zip(b0).map(|(b1, b0)| (b1 - b0) / per_million),
        retried.load(Ordering::Relaxed),
    )
}

/// How many of `n` records `produce` writes to partition `p` (round robin).
fn records_of_partition(n: u64, p: i32) -> u64 {
    n / PARTITIONS as u64 + u64::from((p as u64) < n % PARTITIONS as u64)
}

/// Records of `n` that fail once in the retry scenarios: every 10th offset of each partition.
fn expected_retries(n: u64) -> u64 {
    (0..PARTITIONS)
        .map(|p| records_of_partition(n, p).div_ceil(10))
        .sum()
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Counters per partition, each on its own cache line: a partition's records are counted
/// by its own task, so counting costs no contended write.
#[derive(Default)]
struct PerPartition([Padded; PARTITIONS as usize]);

#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl PerPartition {
    /// Counts one record of partition `p`; returns that partition's count.
    fn add(&self, p: i32) -> u64 {
        self.0[p as usize].0.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

/// BENCH_PROPS="key=value,...": extra client properties for redrive's workers, to try
/// settings (`producer.<key>` for the retry producer); BENCH_MAX_POLL_RECORDS: their
/// `max_poll_records`.
fn with_bench_props(mut builder: WorkerBuilder) -> WorkerBuilder {
    for kv in std::env::var("BENCH_PROPS").unwrap_or_default().split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            builder = builder.property(k, v);
        }
    }
    let max_poll_records = env_number(
        "BENCH_MAX_POLL_RECORDS",
        WorkerBuilder::DEFAULT_MAX_POLL_RECORDS,
    );
    builder.max_poll_records(max_poll_records)
}

/// The route the happy scenario's redrive side runs.
#[derive(Clone, Copy, PartialEq)]
enum HappyRoute {
    /// `Route::new` with the no-op handler (the target's line).
    Plain,
    /// Behind a retry policy that never fires: what the retry layer costs a success.
    Retryable,
    /// `Route::without_headers`: the same work as the raw loop, which never asks for them.
    WithoutHeaders,
}

/// redrive with a no-op handler, `async:1000`.
async fn redrive_happy(bootstrap: &str, topic: &str, n: u64, kind: HappyRoute) -> HappyRun {
    let first: Mark = Arc::default();
    let f2 = first.clone();
    let ticks_at_first: Arc<Mutex<ThreadTicks>> = Arc::default();
    let t2 = ticks_at_first.clone();
    let seen = Arc::new(AtomicBool::new(false));
    let handler = service_fn(move |r: Record| {
        // Read first: a swap per record would make the two worker threads write one shared
        // cache line per record, a cost of the bench's handler, not of redrive.
        if !seen.load(Ordering::Relaxed) && !seen.swap(true, Ordering::Relaxed) {
            *f2.lock().unwrap() = Some((Instant::now(), cpu_seconds(), broker_cpu_seconds()));
            *t2.lock().unwrap() = thread_ticks();
        }
        std::hint::black_box(r.value());
        std::future::ready(Ok::<_, BoxError>(()))
    });
    let builder = Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(support::unique("bench-redrive"))
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_every(1000));
    let route = Route::new(topic, handler);
    // The environment variables apply to the plain route's side, for profiling.
    let kind = match kind {
        HappyRoute::Plain if std::env::var_os("BENCH_HAPPY_RETRYABLE").is_some() => {
            HappyRoute::Retryable
        }
        HappyRoute::Plain if std::env::var_os("BENCH_HAPPY_WITHOUT_HEADERS").is_some() => {
            HappyRoute::WithoutHeaders
        }
        k => k,
    };
    let route = match kind {
        HappyRoute::Plain => route,
        HappyRoute::Retryable => {
            route.retry(RetryPolicy::new().attempts(2).fixed(Duration::from_secs(1)))
        }
        HappyRoute::WithoutHeaders => route.without_headers(),
    };
    let builder = builder.route(route);
    let worker = with_bench_props(builder).build().unwrap();
    let h = worker.handle();
    let commits0 = REDRIVE_COMMITS.load(Ordering::Relaxed);
    let run = tokio::spawn(worker.run());
    while h.records_finished() < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = (Instant::now(), cpu_seconds(), broker_cpu_seconds());
    let commits = REDRIVE_COMMITS.load(Ordering::Relaxed) - commits0;
    print_thread_cpu("redrive", &ticks_at_first.lock().unwrap());
    h.shutdown();
    run.await.unwrap().unwrap();
    let (t0, c0, b0) = first.lock().unwrap().unwrap();
    let secs = (end.0 - t0).as_secs_f64();
    let per_million = n as f64 / 1e6;
    HappyRun {
        rate: n as f64 / secs,
        cpu: (end.1 - c0) / per_million,
        broker: end.2.zip(b0).map(|(b1, b0)| (b1 - b0) / per_million),
        commits: COUNTING_COMMITS
            .load(Ordering::Relaxed)
            .then_some(commits as f64 / per_million),
    }
}

/// Main-topic throughput with 10 % of records failing once through a 1 s retry topic; waits
/// until every retried record completed.
async fn redrive_retry(bootstrap: &str, topic: &str, n: u64) -> (f64, f64, Option<f64>, u64) {
    let main_done = Arc::new(PerPartition::default());
    let partitions_done = Arc::new(AtomicU64::new(0));
    let retried_ok = Arc::new(PerPartition::default());
    let first: Mark = Arc::default();
    let last_main: Mark = Arc::default();
    let per_partition = move |p: i32| records_of_partition(n, p);
    let pd = partitions_done.clone();
    let (md, ro, f2, lm) = (
        main_done.clone(),
        retried_ok.clone(),
        first.clone(),
        last_main.clone(),
    );
    let main_topic: Arc<str> = Arc::from(topic);
    let seen = Arc::new(AtomicBool::new(false));
    let ticks_at_first: Arc<Mutex<ThreadTicks>> = Arc::default();
    let t2 = ticks_at_first.clone();
    let handler = service_fn(move |r: Record| {
        let main = *r.topic() == *main_topic;
        let res: Result<(), BoxError> = if main {
            // The happy path's handler's work (a flag read), plus a count per partition,
            // so the two worker threads do not write one shared cache line per record.
            if !seen.load(Ordering::Relaxed) && !seen.swap(true, Ordering::Relaxed) {
                *f2.lock().unwrap() = Some((Instant::now(), cpu_seconds(), broker_cpu_seconds()));
                *t2.lock().unwrap() = thread_ticks();
            }
            if md.add(r.partition()) == per_partition(r.partition())
                && pd.fetch_add(1, Ordering::Relaxed) + 1 == PARTITIONS as u64
            {
                *lm.lock().unwrap() = Some((Instant::now(), cpu_seconds(), broker_cpu_seconds()));
            }
            if r.offset() % 10 == 0 {
                Err("fails once".into())
            } else {
                Ok(())
            }
        } else {
            ro.add(r.partition());
            Ok(())
        };
        std::future::ready(res)
    });
    // A 1 s delay, as the scenario's target states; another delay (`BENCH_RETRY_DELAY_MS`) for profiling only.
    let delay_ms = env_number("BENCH_RETRY_DELAY_MS", 1000);
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(delay_ms));
    let worker = Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(support::unique("bench-retry"))
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_every(1000))
        .route(Route::new(topic, handler).retry(policy));
    let worker = with_bench_props(worker).build().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    let expected_retries = expected_retries(n);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut printed = false;
    while retried_ok.sum() < expected_retries || last_main.lock().unwrap().is_none() {
        assert!(Instant::now() < deadline, "retry scenario did not complete");
        if !printed && last_main.lock().unwrap().is_some() {
            printed = true;
            print_thread_cpu("retry", &ticks_at_first.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.shutdown();
    run.await.unwrap().unwrap();
    let ((t1, c1, b1), (t0, c0, b0)) = (
        last_main.lock().unwrap().unwrap(),
        first.lock().unwrap().unwrap(),
    );
    let secs = (t1 - t0).as_secs_f64();
    let per_million = n as f64 / 1e6;
    (
        n as f64 / secs,
        (c1 - c0) / per_million,
        b1.zip(b0).map(|(b1, b0)| (b1 - b0) / per_million),
        retried_ok.sum(),
    )
}

/// 10,000 retries pending across 6 partitions with delays of 1-5 s: five routes (2,000
/// records each) whose retry topics wait 1, 2, 3, 4 and 5 s. Returns the lateness of each
/// retry's start against its due time, in ms, sorted.
async fn delay_precision(bootstrap: &str, n: u64) -> Vec<f64> {
    // Room for every figure up front: growing the shared vector inside the handlers (a
    // reallocation under the lock both workers take) was a cost of the bench, not of redrive.
    let lateness = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let mut builder = Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(support::unique("bench-delay"))
        .property("session.timeout.ms", "6000");
    for secs in 1..=5u64 {
        let topic = support::unique(&format!("bench-delay-{secs}s"));
        support::create_topic(bootstrap, &topic, PARTITIONS).await;
        produce(bootstrap, &topic, n / 5).await;
        let l2 = lateness.clone();
        let handler = service_fn(move |r: Record| {
            let res: Result<(), BoxError> = match redrive::headers::due_at_ms(r.headers()) {
                None => Err("first attempt fails".into()),
                Some(due) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs_f64()
                        * 1000.0;
                    l2.lock().unwrap().push(now - due as f64);
                    Ok(())
                }
            };
            std::future::ready(res)
        });
        let policy = RetryPolicy::new()
            .attempts(2)
            .fixed(Duration::from_secs(secs));
        builder = builder.route(Route::new(&topic, handler).retry(policy));
    }
    let worker = with_bench_props(builder).build().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    let deadline = Instant::now() + Duration::from_secs(300);
    while (lateness.lock().unwrap().len() as u64) < n {
        assert!(Instant::now() < deadline, "delay scenario did not complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.shutdown();
    run.await.unwrap().unwrap();
    let mut v = lateness.lock().unwrap().clone();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// Run in a child process so the peak RSS is this scenario's alone: 10,000 pending retries
/// plus a 1 MB/s stream of 10 KB payloads for 15 s.
async fn memory_child(bootstrap: &str) {
    let topic = support::unique("bench-mem");
    support::create_topic(bootstrap, &topic, PARTITIONS).await;
    produce(bootstrap, &topic, 10_000).await;
    let retried = Arc::new(AtomicU64::new(0));
    let r2 = retried.clone();
    let main_topic: Arc<str> = Arc::from(topic.as_str());
    let handler = service_fn(move |r: Record| {
        let res: Result<(), BoxError> = if *r.topic() == *main_topic
            && r.offset() < 10_000 / PARTITIONS as i64 + 1
            && r.value().is_some_and(|v| v.len() == VALUE_BYTES)
        {
            Err("pending retry".into())
        } else {
            if *r.topic() != *main_topic {
                r2.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        };
        std::future::ready(res)
    });
    // Long enough that all 10,000 stay pending during the stream.
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_secs(30));
    let builder = Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(support::unique("bench-mem"))
        .property("session.timeout.ms", "6000")
        .route(Route::new(&topic, handler).retry(policy));
    let worker = with_bench_props(builder).build().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let payload = vec![b'm'; 10_000];
    for _ in 0..150 {
        for _ in 0..10 {
            p.send(
                FutureRecord::<(), _>::to(&topic).payload(&payload[..]),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.shutdown();
    run.await.unwrap().unwrap();
    println!("PEAK_RSS={}", peak_rss());
}

/// Consume-transform-produce on librdkafka's mock cluster (nisshi refuses transactional
/// producers): every input becomes one output record. At least once (outputs acknowledged
/// before the input is final, 256 records in flight per partition so acks overlap) or
/// transactional (batches of 500). Returns records/s.
async fn transform(n: u64, transactional: bool) -> f64 {
    use rdkafka::mocking::MockCluster;
    use redrive::publish::Outgoing;
    let mock = MockCluster::new(3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let (input, output) = ("bench-in".to_owned(), "bench-out".to_owned());
    mock.create_topic(&input, PARTITIONS, 1).unwrap();
    mock.create_topic(&output, PARTITIONS, 1).unwrap();
    produce(&bootstrap, &input, n).await;
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let f2 = first.clone();
    let out = output.clone();
    let handler = service_fn(move |r: Record| {
        f2.lock().unwrap().get_or_insert_with(Instant::now);
        let o = Outgoing::to(out.clone())
            .partition(r.partition())
            .value(r.value().cloned().unwrap_or_default());
        std::future::ready(Ok::<_, BoxError>(o))
    });
    let mut b = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(support::unique("bench-transform"))
        .property("session.timeout.ms", "6000")
        .commit_policy(CommitPolicy::async_every(1000));
    let route = Route::new(&input, handler);
    b = if transactional {
        b.transactional(
            redrive::transaction::Transactional::new(support::unique("bench-txn"))
                .batch_size(env_number("BENCH_TXN_BATCH", 5000)),
        )
        .route(route)
    } else {
        b.route(route.concurrency(256))
    };
    let worker = b.build().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    while h.records_finished() < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = Instant::now();
    h.shutdown();
    run.await.unwrap().unwrap();
    let t0 = first.lock().unwrap().unwrap();
    drop(mock);
    n as f64 / (end - t0).as_secs_f64()
}

/// When each record reached the handler (or the HTTP server) and its Kafka timestamp.
type Arrivals = Arc<Mutex<Vec<(Instant, i64)>>>;

/// A no-op HTTP/1.1 server on 127.0.0.1 that logs each request's arrival in `times`; its URL.
async fn noop_http_server(times: Arrivals) -> String {
    use std::convert::Infallible;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let log = times.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let ts: i64 = req
                            .headers()
                            .get("redrive-timestamp")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        log.lock().unwrap().push((Instant::now(), ts));
                        async move {
                            use http_body_util::BodyExt;
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    url
}

/// One side of one round of the sidecar scenario: the sidecar forwarding to the no-op HTTP
/// server at `url` (`via_http`), or an in-process no-op handler with the same per-partition
/// concurrency. Returns (records/s over a backlog of `n`, p99 ms of handler start - record
/// timestamp on a stream of 2,000 records/s for 5 s).
async fn sidecar_side(
    bootstrap: &str,
    n: u64,
    via_http: bool,
    url: &str,
    times: &Arrivals,
) -> (f64, f64) {
    let topic = support::unique("bench-sidecar");
    support::create_topic(bootstrap, &topic, PARTITIONS).await;
    produce(bootstrap, &topic, n).await;
    times.lock().unwrap().clear();
    let group = support::unique("bench-sidecar-group");
    let workers = if via_http {
        let text = format!(
            "[kafka]\n\"bootstrap.servers\" = \"{bootstrap}\"\n\"session.timeout.ms\" = 6000\n[ops]\nenabled = false\n[[routes]]\ntopic = \"{topic}\"\ngroup = \"{group}\"\nurl = \"{url}\"\nconcurrency = 64\npartition_concurrency = 16\ncommit_policy = \"async:1000\"\n"
        );
        let config =
            redrive_sidecar::Config::parse(&text, "bench.toml", std::iter::empty()).unwrap();
        redrive_sidecar::build_workers(&config).unwrap()
    } else {
        let log = times.clone();
        let handler = service_fn(move |r: Record| {
            log.lock()
                .unwrap()
                .push((Instant::now(), r.timestamp().map_or(0, |t| t.millis)));
            std::future::ready(Ok::<_, BoxError>(()))
        });
        vec![(
            group.clone(),
            Worker::builder()
                .bootstrap_servers(bootstrap)
                .group_id(&group)
                .property("session.timeout.ms", "6000")
                .commit_policy(CommitPolicy::async_every(1000))
                .route(Route::new(&topic, handler).concurrency(16))
                .build()
                .unwrap(),
        )]
    };
    let (_, worker) = workers.into_iter().next().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    while h.records_finished() < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = {
        let t = times.lock().unwrap();
        n as f64 / (t[t.len() - 1].0 - t[0].0).as_secs_f64()
    };
    // Latency on a paced stream: 2,000 records/s for 5 s. With `linger.ms=0` every record
    // was a produce request of its own, and how fast the broker took 2,000 of them a second
    // beside the HTTP traffic decided the tail (p99 from 40 to 560 ms between rounds, the
    // lateness growing through the stream); batching for librdkafka's default 5 ms costs both
    // sides the same few milliseconds and leaves the consumer's part.
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let value = [b'x'; VALUE_BYTES];
    // One record first, delivered and handled: a new producer's first sends wait for its
    // connection and metadata, and records stamped meanwhile would measure that instead.
    p.send(
        FutureRecord::<str, [u8]>::to(&topic)
            .payload(&value[..])
            .partition(0),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
    let n = n + 1;
    while h.records_finished() < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    times.lock().unwrap().clear();
    let mut tick = tokio::time::interval(Duration::from_micros(500));
    for i in 0..10_000u64 {
        tick.tick().await;
        let _ = p.send_result(
            FutureRecord::<str, [u8]>::to(&topic)
                .payload(&value[..])
                .partition((i % PARTITIONS as u64) as i32),
        );
    }
    let _ = rdkafka::producer::Producer::flush(&p, Duration::from_secs(10));
    while h.records_finished() < n + 10_000 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let now_ms = support::now_ms();
    let mut lat: Vec<f64> = {
        let t = times.lock().unwrap();
        t.iter()
            .map(|(at, ts)| (now_ms - at.elapsed().as_millis() as i64 - ts) as f64)
            .collect()
    };
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    h.shutdown();
    run.await.unwrap().unwrap();
    (rate, quantile(&lat, 0.99))
}

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
    // BENCH_SIDE=baseline|redrive runs one side only (for a profiler); the other side's
    // figures are 1.0, so the lines that compare them are marked and never pass.
    let side = std::env::var("BENCH_SIDE").unwrap_or_default();
    if !["", "baseline", "redrive"].contains(&side.as_str()) {
        eprintln!("BENCH_SIDE={side:?}: expected `baseline` or `redrive` (or unset for both)");
        std::process::exit(2);
    }
    let bootstrap = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
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
    };
    if args.first().map(String::as_str) == Some("memory-child") {
        memory_child(&bootstrap).await;
        return;
    }
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let n: u64 = env_number("BENCH_RECORDS", 1_000_000);
    let rounds: usize = env_number("BENCH_ROUNDS", 3);
    let mut lines = Vec::new();
    eprintln!("broker {bootstrap}; {n} records of {VALUE_BYTES} bytes, {PARTITIONS} partitions, {rounds} rounds; allocator {}", allocator_name());

    let (mut happy_redrive, mut happy_baseline) = (None, None);
    if want("happy") || want("retry") {
        let topic = support::unique("bench-happy");
        support::create_topic(&bootstrap, &topic, PARTITIONS).await;
        let t = Instant::now();
        produce(&bootstrap, &topic, n).await;
        eprintln!("produced {n} in {:.1} s", t.elapsed().as_secs_f64());
        let (mut br, mut bc, mut rr, mut rc) = (vec![], vec![], vec![], vec![]);
        let (mut hr, mut hc) = (vec![], vec![]);
        let (mut cr, mut cc, mut ccommits) = (vec![], vec![], vec![]);
        let (mut yr, mut yc) = (vec![], vec![]);
        let (mut wr, mut wc) = (vec![], vec![]);
        // Commit requests per million records of each side's plain run, for the CPU line.
        let (mut bcommits, mut rcommits) = (vec![], vec![]);
        let placeholder = || HappyRun {
            rate: 1.0,
            cpu: 1.0,
            broker: None,
            commits: None,
        };
        for round in 0..rounds {
            let run = if side == "redrive" {
                placeholder()
            } else {
                baseline(&bootstrap, &topic, n, false, 1000).await
            };
            eprintln!("round {round}: baseline {}", run.note());
            br.push(run.rate);
            bc.push(run.cpu);
            bcommits.extend(run.commits);
            let run = if side == "baseline" {
                placeholder()
            } else {
                redrive_happy(&bootstrap, &topic, n, HappyRoute::Plain).await
            };
            eprintln!("round {round}: redrive  {}", run.note());
            rr.push(run.rate);
            rc.push(run.cpu);
            rcommits.extend(run.commits);
            if side.is_empty() {
                let run = baseline(&bootstrap, &topic, n, true, 1000).await;
                eprintln!("round {round}: baseline reading headers {}", run.note());
                hr.push(run.rate);
                hc.push(run.cpu);
                // As many commits as redrive's plain route sent this round: its policy
                // (async every 1,000) is checked once per poll round, so under this load it
                // commits every few thousand records, where the raw loop commits every 1,000.
                // (Not counted with BENCH_PROMETHEUS: then this run is left out.)
                if let Some(&c) = rcommits.last() {
                    let every = (1e6 / f64::max(c, 1.0)).round() as u64;
                    let run = baseline(&bootstrap, &topic, n, false, every).await;
                    eprintln!(
                        "round {round}: baseline committing every {every} records {}",
                        run.note()
                    );
                    cr.push(run.rate);
                    cc.push(run.cpu);
                    ccommits.extend(run.commits);
                }
                let run = redrive_happy(&bootstrap, &topic, n, HappyRoute::Retryable).await;
                eprintln!("round {round}: redrive on a retryable route {}", run.note());
                yr.push(run.rate);
                yc.push(run.cpu);
                let run = redrive_happy(&bootstrap, &topic, n, HappyRoute::WithoutHeaders).await;
                eprintln!("round {round}: redrive without headers {}", run.note());
                wr.push(run.rate);
                wc.push(run.cpu);
            }
        }
        let (b, r) = (median(&mut br), median(&mut rr));
        let (bcpu, rcpu) = (median(&mut bc), median(&mut rc));
        happy_redrive = Some(r);
        happy_baseline = Some(b);
        lines.push(Line::ratio(
            "happy_throughput",
            b,
            r,
            Bound::AtLeast(0.95),
            format!("unit=records/s rounds={rounds}"),
        ));
        let mut cpu_line = Line::ratio(
            "happy_cpu",
            bcpu,
            rcpu,
            Bound::AtMost(1.10),
            "unit=cpu-seconds/million-records".into(),
        );
        // procfs counts CPU in 10 ms ticks: a window of a few ticks (small BENCH_RECORDS)
        // cannot tell 1.0 from 1.1, and one of zero made the ratio 0 and "pass".
        let window_cpu = bcpu.min(rcpu) * n as f64 / 1e6;
        if window_cpu < MIN_WINDOW_CPU_SECONDS {
            cpu_line.pass = false;
            cpu_line.extra.push_str(&format!(
                " too_short_to_measure=true window_cpu_seconds={window_cpu:.2}<{MIN_WINDOW_CPU_SECONDS}"
            ));
        }
        // How many commit requests each side sent: the same policy (async every 1,000
        // records), but redrive checks its count once per poll round with one request in
        // flight, where the raw loop sends one per 1,000 records.
        if !bcommits.is_empty() && !rcommits.is_empty() {
            cpu_line.extra.push_str(&format!(
                " commits_per_million_baseline={:.0} commits_per_million_redrive={:.0}",
                median(&mut bcommits),
                median(&mut rcommits)
            ));
        }
        lines.push(cpu_line);
        // Reference lines, no target: records/s compared, both CPU figures in the extra.
        if !hr.is_empty() {
            // The raw loop doing what redrive must do per record besides handing over the
            // payload: asking librdkafka for the headers.
            lines.push(Line::with_cpu(
                "happy_vs_raw_loop_reading_headers",
                "",
                (median(&mut hr), median(&mut hc)),
                (r, rcpu),
            ));
        }
        if !cr.is_empty() {
            // The raw loop sending as many commit requests as redrive did.
            let mut line = Line::with_cpu(
                "happy_vs_raw_loop_committing_as_often",
                "",
                (median(&mut cr), median(&mut cc)),
                (r, rcpu),
            );
            line.extra.push_str(&format!(
                " commits_per_million_baseline={:.0}",
                median(&mut ccommits)
            ));
            lines.push(line);
        }
        if !yr.is_empty() {
            // The same no-op handler behind a retry policy, never failing, against the plain
            // route; the retry path's figure includes this cost.
            lines.push(Line::with_cpu(
                "happy_on_retryable_route",
                "redrive-plain-route",
                (r, rcpu),
                (median(&mut yr), median(&mut yc)),
            ));
        }
        if !wr.is_empty() {
            // A route that takes its records without headers (`Route::without_headers`)
            // against the raw loop, which never asks for them.
            lines.push(Line::with_cpu(
                "happy_without_headers",
                "raw-loop",
                (b, bcpu),
                (median(&mut wr), median(&mut wc)),
            ));
        }
    }
    if want("retry") {
        let m = env_number("BENCH_RETRY_RECORDS", n);
        let (mut rr, mut raw) = (vec![], vec![]);
        let mut completed = 0;
        for round in 0..rounds {
            // A fresh topic per round: its retry topics start empty.
            let topic = support::unique("bench-retry");
            support::create_topic(&bootstrap, &topic, PARTITIONS).await;
            produce(&bootstrap, &topic, m).await;
            if side != "redrive" {
                let measured = baseline_retry(&bootstrap, &topic, m).await;
                raw.push(retry_round(round, "raw retry loop", measured).0);
            }
            if side != "baseline" {
                let measured = redrive_retry(&bootstrap, &topic, m).await;
                let (r, done) = retry_round(round, "retry path", measured);
                rr.push(r);
                completed = done;
            }
        }
        // With BENCH_SIDE=baseline redrive's side is not run: 1.0, as for the happy lines.
        let r = if rr.is_empty() { 1.0 } else { median(&mut rr) };
        let happy = happy_redrive.unwrap();
        lines.push(Line::ratio(
            "retry_path",
            happy,
            r,
            Bound::AtLeast(0.85),
            format!("unit=records/s baseline=redrive-happy-path records={m} retries_completed={completed}"),
        ));
        if !raw.is_empty() {
            // For reference: the same retry flow hand-written on raw rdkafka, against which
            // no target is set; its own ratio to the raw happy path is in the extra.
            let raw_retry = median(&mut raw);
            lines.push(Line::report(
                "retry_path_vs_raw_loop",
                raw_retry,
                r,
                format!(
                    "unit=records/s baseline=raw-rdkafka-retry-loop raw_retry_vs_raw_happy={:.3}",
                    raw_retry / happy_baseline.unwrap()
                ),
            ));
        }
    }
    if want("delay") {
        let v = delay_precision(&bootstrap, 10_000).await;
        let (p50, p99, max, min) = (quantile(&v, 0.5), quantile(&v, 0.99), v[v.len() - 1], v[0]);
        lines.push(Line {
            scenario: "delay_precision",
            baseline: 20.0,
            redrive: p99,
            ratio: p99 / 20.0,
            target: "p99<=20ms,none_early".into(),
            pass: p99 <= 20.0 && min >= 0.0,
            extra: format!(
                "unit=ms p50={p50:.1} p99={p99:.1} max={max:.1} min={min:.1} retries={}",
                v.len()
            ),
        });
    }
    if want("memory") {
        // The peak of a child process with default settings; then, for reference, the same
        // with glibc's malloc held to two arenas (BENCHMARKS.md, Tuning). The child is
        // this binary, so it has this run's allocator.
        let peak_mib = |arenas: Option<&str>| {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap());
            child
                .arg("memory-child")
                .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap);
            if let Some(n) = arenas {
                child.env("MALLOC_ARENA_MAX", n);
            }
            let out = child.output().expect("memory child");
            let text = String::from_utf8_lossy(&out.stdout);
            let rss: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("PEAK_RSS="))
                .unwrap_or_else(|| {
                    panic!(
                        "memory child failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })
                .parse()
                .unwrap();
            rss / (1024.0 * 1024.0)
        };
        let mib = peak_mib(None);
        // glibc's setting only: jemalloc ignores it.
        let arenas = if JEMALLOC {
            String::new()
        } else {
            format!(" with_malloc_arena_max_2={:.1}", peak_mib(Some("2")))
        };
        lines.push(Line {
            scenario: "memory_peak_rss",
            baseline: 64.0,
            redrive: mib,
            ratio: mib / 64.0,
            target: "<=64MiB".into(),
            pass: mib <= 64.0,
            extra: format!("unit=MiB pending_retries=10000 stream=1MB/s for 15s{arenas}"),
        });
    }
    if want("transactional") {
        let m: u64 = env_number("BENCH_TXN_RECORDS", 150_000);
        let (mut aa, mut tt) = (vec![], vec![]);
        for round in 0..rounds {
            let a = transform(m, false).await;
            let t = transform(m, true).await;
            eprintln!("round {round}: at-least-once {a:.0} rec/s, transactional {t:.0} rec/s");
            aa.push(a);
            tt.push(t);
        }
        let (a, t) = (median(&mut aa), median(&mut tt));
        lines.push(Line::ratio(
            "transactional",
            a,
            t,
            Bound::AtLeast(0.7),
            format!("unit=records/s baseline=at-least-once broker=librdkafka-mock records={m} batch=5000"),
        ));
    }
    if want("sidecar_http") {
        {
            let m = (n / 5).max(10_000);
            let times = Arrivals::default();
            let url = noop_http_server(times.clone()).await;
            let (mut irs, mut ils, mut srs, mut sls) = (vec![], vec![], vec![], vec![]);
            for round in 0..rounds {
                let (ir, il) = sidecar_side(&bootstrap, m, false, &url, &times).await;
                let (sr, sl) = sidecar_side(&bootstrap, m, true, &url, &times).await;
                eprintln!("round {round}: sidecar in-process {ir:.0} rec/s p99 {il:.1} ms; http {sr:.0} rec/s p99 {sl:.1} ms");
                irs.push(ir);
                ils.push(il);
                srs.push(sr);
                sls.push(sl);
            }
            let (ir, il) = (median(&mut irs), median(&mut ils));
            let (sr, sl) = (median(&mut srs), median(&mut sls));
            lines.push(Line::report(
                "sidecar_http_throughput",
                ir,
                sr,
                format!(
                    "unit=records/s baseline=in-process-no-op-handler records={m} concurrency=64 rounds={rounds}"
                ),
            ));
            lines.push(Line {
                scenario: "sidecar_http_p99_latency",
                baseline: il,
                redrive: sl,
                ratio: sl / il.max(0.001),
                target: "report".into(),
                pass: true,
                extra: format!(
                    "unit=ms added_p99_ms={:.1} stream=2000/s-for-5s rounds={rounds}",
                    sl - il
                ),
            });
        }
    }
    if !side.is_empty() {
        // The lines that compare with the side not run say so and do not pass; the retry
        // line compares with the happy scenario's redrive side.
        let unmeasured =
            |s: &str| s.starts_with("happy") || (side == "baseline" && s.starts_with("retry_path"));
        for l in lines.iter_mut().filter(|l| unmeasured(l.scenario)) {
            l.pass = false;
            l.extra
                .push_str(&format!(" one_side_only={side} compared=false"));
        }
    }
    for l in &lines {
        l.print();
    }
    std::fs::create_dir_all("target/bench").unwrap();
    let json = format!(
        "[\n{}\n]\n",
        lines.iter().map(Line::json).collect::<Vec<_>>().join(",\n")
    );
    std::fs::write("target/bench/results.json", json).unwrap();
}
