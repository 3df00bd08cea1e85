//! The scenarios: each runs its rounds, alternating the sides, and adds its report lines.

use std::time::Instant;

use redrive::headers::HeaderProfile;

use crate::baseline::*;
use crate::measure::*;
use crate::report::*;
use crate::sidecar::*;
use crate::support;
use crate::worker::*;
use crate::workload::*;
use crate::JEMALLOC;

/// What every scenario needs: the broker, the sizes, and which side runs.
pub(crate) struct Run {
    pub(crate) bootstrap: String,
    pub(crate) n: u64,
    pub(crate) rounds: usize,
    /// `baseline` or `redrive` when only one side runs (`BENCH_SIDE`); empty for both.
    pub(crate) side: String,
}

/// The happy scenario's medians, which the retry scenario compares with.
pub(crate) struct Happy {
    pub(crate) redrive: f64,
    pub(crate) baseline: f64,
}

/// Each side's samples over the happy rounds: records/s and CPU-s per million records.
#[derive(Default)]
struct HappySamples {
    baseline: (Vec<f64>, Vec<f64>),
    redrive: (Vec<f64>, Vec<f64>),
    reading_headers: (Vec<f64>, Vec<f64>),
    committing_as_often: (Vec<f64>, Vec<f64>),
    retryable: (Vec<f64>, Vec<f64>),
    without_headers: (Vec<f64>, Vec<f64>),
    /// Commit requests per million records: each side's plain run, and the raw loop
    /// committing as often as redrive.
    baseline_commits: Vec<f64>,
    redrive_commits: Vec<f64>,
    as_often_commits: Vec<f64>,
}

fn push(samples: &mut (Vec<f64>, Vec<f64>), run: &HappyRun) {
    samples.0.push(run.rate);
    samples.1.push(run.cpu);
}

/// The medians of a side's samples.
fn medians(samples: &mut (Vec<f64>, Vec<f64>)) -> (f64, f64) {
    (median(&mut samples.0), median(&mut samples.1))
}

/// The happy scenario: all successes, redrive against the raw loop, and the reference runs.
pub(crate) async fn happy(run: &Run, lines: &mut Vec<Line>) -> Happy {
    let topic = support::unique("bench-happy");
    support::create_topic(&run.bootstrap, &topic, PARTITIONS).await;
    let t = Instant::now();
    produce(&run.bootstrap, &topic, run.n).await;
    eprintln!("produced {} in {:.1} s", run.n, t.elapsed().as_secs_f64());
    let mut s = HappySamples::default();
    for round in 0..run.rounds {
        happy_round(run, &topic, round, &mut s).await;
    }
    happy_lines(run, s, lines)
}

/// A side that is not run reports 1.0 (`BENCH_SIDE`).
fn placeholder() -> HappyRun {
    HappyRun {
        rate: 1.0,
        cpu: 1.0,
        broker: None,
        commits: None,
    }
}

/// One round of the happy scenario: both sides, then (with both sides) the reference runs.
async fn happy_round(run: &Run, topic: &str, round: usize, s: &mut HappySamples) {
    let (bootstrap, n) = (run.bootstrap.as_str(), run.n);
    let r = match run.side.as_str() {
        "redrive" => placeholder(),
        _ => baseline(bootstrap, topic, n, false, 1000).await,
    };
    eprintln!("round {round}: baseline {}", r.note());
    push(&mut s.baseline, &r);
    s.baseline_commits.extend(r.commits);
    let r = match run.side.as_str() {
        "baseline" => placeholder(),
        _ => redrive_happy(bootstrap, topic, n, HappyRoute::Plain).await,
    };
    eprintln!("round {round}: redrive  {}", r.note());
    push(&mut s.redrive, &r);
    s.redrive_commits.extend(r.commits);
    if !run.side.is_empty() {
        return;
    }
    let r = baseline(bootstrap, topic, n, true, 1000).await;
    eprintln!("round {round}: baseline reading headers {}", r.note());
    push(&mut s.reading_headers, &r);
    // As many commits as redrive's plain route sent this round: its policy (async every
    // 1,000) is checked once per poll round, so under this load it commits every few
    // thousand records, where the raw loop commits every 1,000. (Not counted with
    // BENCH_PROMETHEUS: then this run is left out.)
    if let Some(&c) = s.redrive_commits.last() {
        let every = (1e6 / f64::max(c, 1.0)).round() as u64;
        let r = baseline(bootstrap, topic, n, false, every).await;
        eprintln!(
            "round {round}: baseline committing every {every} records {}",
            r.note()
        );
        push(&mut s.committing_as_often, &r);
        s.as_often_commits.extend(r.commits);
    }
    let r = redrive_happy(bootstrap, topic, n, HappyRoute::Retryable).await;
    eprintln!("round {round}: redrive on a retryable route {}", r.note());
    push(&mut s.retryable, &r);
    let r = redrive_happy(bootstrap, topic, n, HappyRoute::WithoutHeaders).await;
    eprintln!("round {round}: redrive without headers {}", r.note());
    push(&mut s.without_headers, &r);
}

/// The happy scenario's lines: the two targets, then the reference lines.
fn happy_lines(run: &Run, mut s: HappySamples, lines: &mut Vec<Line>) -> Happy {
    let (b, bcpu) = medians(&mut s.baseline);
    let (r, rcpu) = medians(&mut s.redrive);
    lines.push(Line::ratio(
        "happy_throughput",
        b,
        r,
        Bound::AtLeast(0.95),
        format!("unit=records/s rounds={}", run.rounds),
    ));
    lines.push(happy_cpu_line(run, &mut s, bcpu, rcpu));
    // Reference lines, no target: records/s compared, both CPU figures in the extra.
    if !s.reading_headers.0.is_empty() {
        // The raw loop doing what redrive must do per record besides handing over the
        // payload: asking librdkafka for the headers.
        let raw = medians(&mut s.reading_headers);
        lines.push(Line::with_cpu(
            "happy_vs_raw_loop_reading_headers",
            "",
            raw,
            (r, rcpu),
        ));
    }
    if !s.committing_as_often.0.is_empty() {
        like_for_like_lines(run, &mut s, (r, rcpu), lines);
    }
    if !s.retryable.0.is_empty() {
        // The same no-op handler behind a retry policy, never failing, against the plain
        // route; the retry path's figure includes this cost.
        let y = medians(&mut s.retryable);
        lines.push(Line::with_cpu(
            "happy_on_retryable_route",
            "redrive-plain-route",
            (r, rcpu),
            y,
        ));
    }
    if !s.without_headers.0.is_empty() {
        // A route that takes its records without headers (`Route::without_headers`) against
        // the raw loop, which never asks for them.
        let w = medians(&mut s.without_headers);
        lines.push(Line::with_cpu(
            "happy_without_headers",
            "raw-loop",
            (b, bcpu),
            w,
        ));
    }
    Happy {
        redrive: r,
        baseline: b,
    }
}

/// A CPU line whose window holds too few of procfs's 10 ms ticks never passes: a window of
/// a few ticks (small BENCH_RECORDS) cannot tell 1.0 from 1.1, and one of zero would make the
/// ratio 0 and "pass".
fn mark_short_window(run: &Run, line: &mut Line, bcpu: f64, rcpu: f64) {
    let window_cpu = bcpu.min(rcpu) * run.n as f64 / 1e6;
    if window_cpu < MIN_WINDOW_CPU_SECONDS {
        line.pass = false;
        line.extra.push_str(&format!(
            " too_short_to_measure=true window_cpu_seconds={window_cpu:.2}<{MIN_WINDOW_CPU_SECONDS}"
        ));
    }
}

/// Like for like: the raw loop sending as many commit requests as redrive did, both
/// targets (records/s >= 1.0, CPU <= 1.05).
fn like_for_like_lines(
    run: &Run,
    s: &mut HappySamples,
    (r, rcpu): (f64, f64),
    lines: &mut Vec<Line>,
) {
    let (raw, raw_cpu) = medians(&mut s.committing_as_often);
    let commits = median(&mut s.as_often_commits);
    lines.push(Line::ratio(
        "happy_vs_raw_loop_committing_as_often",
        raw,
        r,
        Bound::AtLeast(1.0),
        format!(
            "unit=records/s rounds={} commits_per_million_baseline={commits:.0}",
            run.rounds
        ),
    ));
    let mut cpu = Line::ratio(
        "happy_cpu_vs_raw_loop_committing_as_often",
        raw_cpu,
        rcpu,
        Bound::AtMost(1.05),
        "unit=cpu-seconds/million-records".into(),
    );
    mark_short_window(run, &mut cpu, raw_cpu, rcpu);
    lines.push(cpu);
}

/// The happy CPU line, with each side's commit requests per million records.
fn happy_cpu_line(run: &Run, s: &mut HappySamples, bcpu: f64, rcpu: f64) -> Line {
    let mut line = Line::ratio(
        "happy_cpu",
        bcpu,
        rcpu,
        Bound::AtMost(1.10),
        "unit=cpu-seconds/million-records".into(),
    );
    mark_short_window(run, &mut line, bcpu, rcpu);
    // How many commit requests each side sent: the same policy (async every 1,000 records),
    // but redrive checks its count once per poll round with one request in flight, where the
    // raw loop sends one per 1,000 records.
    if !s.baseline_commits.is_empty() && !s.redrive_commits.is_empty() {
        line.extra.push_str(&format!(
            " commits_per_million_baseline={:.0} commits_per_million_redrive={:.0}",
            median(&mut s.baseline_commits),
            median(&mut s.redrive_commits)
        ));
    }
    line
}

/// The retry scenario: every 10th record fails once through a 1 s retry topic; redrive's
/// main-topic throughput against its happy path, and against a raw loop doing the same.
pub(crate) async fn retry(run: &Run, happy: &Happy, lines: &mut Vec<Line>) {
    let m = env_number("BENCH_RETRY_RECORDS", run.n);
    let (mut rr, mut raw, mut compact) = (vec![], vec![], vec![]);
    let (mut keyed, mut unique_keys) = (vec![], vec![]);
    let mut completed = 0;
    for round in 0..run.rounds {
        // A fresh topic per round: its retry topics start empty.
        let topic = support::unique("bench-retry");
        support::create_topic(&run.bootstrap, &topic, PARTITIONS).await;
        produce(&run.bootstrap, &topic, m).await;
        if run.side != "redrive" {
            let measured = baseline_retry(&run.bootstrap, &topic, m).await;
            raw.push(retry_round(round, "raw retry loop", measured).0);
        }
        if run.side != "baseline" {
            let measured =
                redrive_retry(&run.bootstrap, &topic, m, HeaderProfile::Spring, false).await;
            let (r, done) = retry_round(round, "retry path", measured);
            rr.push(r);
            completed = done;
            // The compact profile on a topic of its own (another group's copies in a shared
            // retry topic would be skipped, at a cost that is not the profile's).
            let topic = support::unique("bench-retry-compact");
            support::create_topic(&run.bootstrap, &topic, PARTITIONS).await;
            produce(&run.bootstrap, &topic, m).await;
            let measured =
                redrive_retry(&run.bootstrap, &topic, m, HeaderProfile::Compact, false).await;
            compact.push(retry_round(round, "retry path, compact headers", measured).0);
            keyed.push(keyed_round(run, round, m, KEYS).await);
            unique_keys.push(keyed_round(run, round, m, m).await);
        }
    }
    // With BENCH_SIDE=baseline redrive's side is not run: 1.0, as for the happy lines.
    let r = if rr.is_empty() { 1.0 } else { median(&mut rr) };
    lines.push(Line::ratio(
        "retry_path",
        happy.redrive,
        r,
        Bound::AtLeast(0.85),
        format!(
            "unit=records/s baseline=redrive-happy-path records={m} retries_completed={completed}"
        ),
    ));
    if !compact.is_empty() {
        lines.push(Line::ratio(
            "retry_path_compact",
            happy.redrive,
            median(&mut compact),
            Bound::AtLeast(0.70),
            format!("unit=records/s baseline=redrive-happy-path records={m} headers=compact"),
        ));
    }
    if !keyed.is_empty() {
        // What keeping each key in order costs on this workload: a key recurs every 100,000
        // records, well within a retry's 1 s, so most records wait behind a retry of their
        // key, and each partition stops reading at `max_in_flight_records` (10,000) past its
        // oldest waiting record. No target: the cost is the semantics'.
        lines.push(Line::report(
            "retry_path_key_ordering",
            r,
            median(&mut keyed),
            format!("unit=records/s baseline=retry-path records={m} keys={KEYS}"),
        ));
        // Every key distinct: nothing waits, so this is the bookkeeping's own cost.
        lines.push(Line::ratio(
            "retry_path_key_ordering_unique_keys",
            r,
            median(&mut unique_keys),
            Bound::AtLeast(0.90),
            format!("unit=records/s baseline=retry-path records={m} keys={m}"),
        ));
    }
    if !raw.is_empty() {
        // Like for like: the same retry flow (the same 14 headers) hand-written on raw
        // rdkafka, in the same rounds; its own ratio to the raw happy path is in the extra.
        let raw_retry = median(&mut raw);
        lines.push(Line::ratio(
            "retry_path_vs_raw_loop",
            raw_retry,
            r,
            Bound::AtLeast(0.95),
            format!(
                "unit=records/s baseline=raw-rdkafka-retry-loop raw_retry_vs_raw_happy={:.3}",
                raw_retry / happy.baseline
            ),
        ));
    }
}

/// One round of the retry scenario with key ordering on, over `keys` distinct keys, on a
/// topic of its own; its main-topic records/s.
async fn keyed_round(run: &Run, round: usize, m: u64, keys: u64) -> f64 {
    let topic = support::unique("bench-retry-keyed");
    support::create_topic(&run.bootstrap, &topic, PARTITIONS).await;
    produce_keyed(&run.bootstrap, &topic, m, keys).await;
    eprintln!("round {round}: produced {m} records over {keys} keys");
    let measured = redrive_retry(&run.bootstrap, &topic, m, HeaderProfile::Spring, true).await;
    retry_round(
        round,
        &format!("retry path, key ordering over {keys} keys"),
        measured,
    )
    .0
}

/// The delay scenario: how late 10,000 retries start after their due time.
pub(crate) async fn delay(run: &Run, lines: &mut Vec<Line>) {
    let v = delay_precision(&run.bootstrap, 10_000).await;
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

/// The memory scenario: the peak RSS of a child process (this binary, so this run's
/// allocator) with 10,000 retries pending; for reference the same with glibc's malloc held to
/// two arenas (BENCHMARKS.md, Tuning).
pub(crate) fn memory(run: &Run, lines: &mut Vec<Line>) {
    let mib = peak_mib(&run.bootstrap, None);
    // glibc's setting only: jemalloc ignores it.
    let arenas = if JEMALLOC {
        String::new()
    } else {
        let two = peak_mib(&run.bootstrap, Some("2"));
        format!(" with_malloc_arena_max_2={two:.1}")
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

/// The peak RSS of the memory child, in MiB, with `MALLOC_ARENA_MAX` set to `arenas`.
fn peak_mib(bootstrap: &str, arenas: Option<&str>) -> f64 {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .arg("memory-child")
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap);
    if let Some(n) = arenas {
        child.env("MALLOC_ARENA_MAX", n);
    }
    let out = child.output().expect("memory child");
    let text = String::from_utf8_lossy(&out.stdout);
    let rss: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("PEAK_RSS="))
        .unwrap_or_else(|| {
            let stderr = String::from_utf8_lossy(&out.stderr);
            panic!("memory child failed: {stderr}")
        })
        .parse()
        .unwrap();
    rss / (1024.0 * 1024.0)
}

/// The transactional scenario, on the mock cluster: a transactional worker against an
/// at-least-once one with the same handler.
pub(crate) async fn transactional(run: &Run, lines: &mut Vec<Line>) {
    let m: u64 = env_number("BENCH_TXN_RECORDS", 150_000);
    let (mut aa, mut tt) = (vec![], vec![]);
    for round in 0..run.rounds {
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
        format!(
            "unit=records/s baseline=at-least-once broker=librdkafka-mock records={m} batch=5000"
        ),
    ));
}

/// The sidecar scenario: forwarding over HTTP against a no-op in-process handler.
pub(crate) async fn sidecar_http(run: &Run, lines: &mut Vec<Line>) {
    let m = (run.n / 5).max(10_000);
    let times = Arrivals::default();
    let url = noop_http_server(times.clone()).await;
    let (mut irs, mut ils, mut srs, mut sls) = (vec![], vec![], vec![], vec![]);
    for round in 0..run.rounds {
        let (ir, il) = sidecar_side(&run.bootstrap, m, false, &url, &times).await;
        let (sr, sl) = sidecar_side(&run.bootstrap, m, true, &url, &times).await;
        eprintln!("round {round}: sidecar in-process {ir:.0} rec/s p99 {il:.1} ms; http {sr:.0} rec/s p99 {sl:.1} ms");
        irs.push(ir);
        ils.push(il);
        srs.push(sr);
        sls.push(sl);
    }
    let (ir, il) = (median(&mut irs), median(&mut ils));
    let (sr, sl) = (median(&mut srs), median(&mut sls));
    let rounds = run.rounds;
    lines.push(Line::report(
        "sidecar_http_throughput",
        ir,
        sr,
        format!("unit=records/s baseline=in-process-no-op-handler records={m} concurrency=64 rounds={rounds}"),
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

/// With one side only, the lines that compare with the side not run say so and do not pass;
/// the retry line compares with the happy scenario's redrive side.
pub(crate) fn mark_one_side(side: &str, lines: &mut [Line]) {
    if side.is_empty() {
        return;
    }
    let unmeasured =
        |s: &str| s.starts_with("happy") || (side == "baseline" && s.starts_with("retry_path"));
    for l in lines.iter_mut().filter(|l| unmeasured(l.scenario)) {
        l.pass = false;
        l.extra
            .push_str(&format!(" one_side_only={side} compared=false"));
    }
}
