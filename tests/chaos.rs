//! Reliability under breakage (docs/design.md, Test tiers: tier 4): a worker process killed with SIGKILL at
//! random moments, and a broker restarted mid-run; afterwards every input record is
//! accounted for (handled ok at least once, or in the DLT), zero lost. With key ordering,
//! two members killed in turn keep every key's records in order.
//!
//! Default sizes keep the suite quick; `REDRIVE_CHAOS_LONG=1` runs the long variants
//! (100,000 records, 20 kills; key ordering: 50,000 records, 10 kills). Figures go to stdout (`--nocapture`) and RELIABILITY.md.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redrive::{policy::RetryPolicy, BoxError, CommitPolicy, Record, Route};
use support::*;
use tower::service_fn;

fn long() -> bool {
    std::env::var("REDRIVE_CHAOS_LONG").is_ok_and(|v| v == "1")
}

/// The retry topics of `topic` the chaos worker's policy created.
fn retry_topics(bootstrap: &str, topic: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = client_config(bootstrap).create().unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let prefix = format!("{topic}-retry");
    let found: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(!found.is_empty(), "no retry topic of {topic}");
    found
}

/// A small xorshift: kill moments must vary, not be reproducible to the nanosecond.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn spawn(bin: &Path, bootstrap: &str, topic: &str, group: &str, log: &Path) -> Child {
    Command::new(bin)
        .env("CHAOS_HANDLER_MS", if long() { "1" } else { "5" })
        .args([bootstrap, topic, group, log.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the chaos worker")
}

fn ok_lines(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// SIGTERM: a graceful stop drains, commits and exits 0.
fn stop_gracefully(child: &mut Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
}

/// How many times each key appears in the dead-letter topic.
fn dlt_key_counts(bootstrap: &str, dlt_topic: &str) -> HashMap<String, usize> {
    use rdkafka::Message;
    let mut keys: HashMap<String, usize> = HashMap::new();
    for m in read_topic(bootstrap, dlt_topic) {
        *keys
            .entry(String::from_utf8_lossy(m.key().unwrap()).into_owned())
            .or_default() += 1;
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_loses_nothing() {
    init_tracing();
    let (records, kills) = if long() {
        (100_000u64, 20u32)
    } else {
        (6_000, 5)
    };
    let bin = example("chaos_worker");
    let bootstrap = bootstrap();
    let topic = unique("chaos");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 3).await;
    produce_n(&bootstrap, &topic, 3, 0, records).await;
    let dir = std::env::temp_dir().join(unique("chaos-log"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("ok.log");

    let mut rng = Rng(std::process::id() as u64 * 2_654_435_761 + 1);
    let started = Instant::now();
    let mut child = spawn(&bin, &bootstrap, &topic, &group, &log);
    for k in 0..kills {
        // Wait until this incarnation handles records (or 20 s), let it work a random while,
        // then kill it without warning: the kill lands mid-run.
        let before = ok_lines(&log).len();
        let waiting = Instant::now();
        while ok_lines(&log).len() == before && waiting.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            ok_lines(&log).len() > before,
            "kill {}: the incarnation handled nothing in 60 s",
            k + 1
        );
        tokio::time::sleep(Duration::from_millis(rng.next(1_500))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        let done: BTreeSet<u64> = ok_lines(&log).into_iter().collect();
        assert!(
            (done.len() as u64) < records - records / 100,
            "kill {} landed after every record was handled: it tested nothing",
            k + 1
        );
        println!("kill {}: {} ok lines so far", k + 1, ok_lines(&log).len());
        child = spawn(&bin, &bootstrap, &topic, &group, &log);
    }
    let dlt_topic = format!("{topic}-dlt");
    let always: BTreeSet<u64> = (0..records).filter(|i| i % 100 == 7).collect();
    let deadline = Instant::now() + Duration::from_secs(if long() { 1_800 } else { 300 });
    loop {
        let ok: BTreeSet<u64> = ok_lines(&log).into_iter().collect();
        let missing = (0..records)
            .filter(|i| !always.contains(i) && !ok.contains(i))
            .count();
        // Distinct keys: after a kill a dead letter may be written twice, so a count of DLT
        // records can reach the goal while one always-failing record is still in its chain.
        let dead = if missing == 0 {
            dlt_key_counts(&bootstrap, &dlt_topic).len()
        } else {
            0
        };
        if missing == 0 && dead >= always.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} records never handled, {dead} dead letters of {}",
            always.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_gracefully(&mut child);

    let lines = ok_lines(&log);
    let ok: BTreeSet<u64> = lines.iter().copied().collect();
    let dlt_keys = dlt_key_counts(&bootstrap, &dlt_topic);
    let mut lost = 0;
    for i in 0..records {
        let key = format!("key-{i}");
        if always.contains(&i) {
            assert!(!ok.contains(&i), "{key} cannot succeed");
            if !dlt_keys.contains_key(&key) {
                lost += 1;
            }
        } else if !ok.contains(&i) {
            lost += 1;
        }
    }
    let duplicates = lines.len() - ok.len();
    let dlt_duplicates: usize = dlt_keys.values().map(|n| n - 1).sum();
    // Committed to the end of the main topic and of every retry topic: nothing left behind.
    for t in std::iter::once(topic.clone()).chain(retry_topics(&bootstrap, &topic)) {
        let ends = high_watermarks(&bootstrap, &t, 3);
        let at = committed(&bootstrap, &group, &t, 3);
        for (p, end) in ends {
            assert_eq!(
                at[&p].unwrap_or(0),
                end,
                "{t}/{p}: committed short of the end"
            );
        }
    }
    println!(
        "chaos: records={records} kills={kills} ok={} dead_lettered={} lost={lost} duplicates={duplicates} dlt_duplicates={dlt_duplicates} elapsed={:?}",
        ok.len(),
        dlt_keys.len(),
        started.elapsed()
    );
    assert_eq!(lost, 0, "records lost");
    // A SIGKILL redelivers what was handled since the last commit: the commit interval
    // (200 ms) plus a commit in flight, at most two intervals of one record per handler time
    // per partition. The bound is that per kill; runs stay far below it.
    let per_kill = 3 * 2 * 200 / if long() { 1 } else { 5 };
    assert!(
        duplicates <= kills as usize * per_kill,
        "{duplicates} duplicates over {kills} kills exceed {per_kill} a kill"
    );
    assert_eq!(
        dlt_keys.len(),
        always.len(),
        "exactly the always-failing records are dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run_loses_nothing() {
    init_tracing();
    // This test restarts a broker it owns: it always runs on a private nisshi (sqlite
    // storage, so data survives the restart), never on a REDRIVE_TEST_BOOTSTRAP cluster.
    let records = if long() { 50_000u64 } else { 2_000 };
    // nisshi reads the sqlite path relative to its working directory (the crate root).
    let dir = PathBuf::from("target").join(unique("nisshi-sqlite"));
    std::fs::create_dir_all(&dir).unwrap();
    let storage = format!("sqlite://{}", dir.join("broker.db").display());
    let (bootstrap, broker) = start_nisshi(&storage);
    let topic = unique("restart");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 2).await;
    produce_n(&bootstrap, &topic, 2, 0, records).await;

    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let s2 = seen.clone();
    let handler = service_fn(move |r: Record| {
        let s2 = s2.clone();
        async move {
            let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
            let i: u64 = key.trim_start_matches("key-").parse()?;
            // Slow enough that the restart lands mid-run.
            tokio::time::sleep(Duration::from_millis(2)).await;
            if i % 20 == 5 && redrive::headers::attempt_of(r.headers()) == 1 {
                return Err::<(), BoxError>("fails once".into());
            }
            s2.lock().unwrap().push(i);
            Ok(())
        }
    });
    let worker = test_worker(&bootstrap, &group)
        .commit_policy(CommitPolicy::async_interval(Duration::from_millis(200)))
        .route(
            Route::new(&topic, handler).retry(
                RetryPolicy::new()
                    .attempts(3)
                    .fixed(Duration::from_millis(300)),
            ),
        )
        .build()
        .unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    eventually(Duration::from_secs(60), "a third handled", || {
        seen.lock().unwrap().len() as u64 >= records / 3
    })
    .await;
    broker.crash();
    let down_at = seen.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_b, _broker2) = start_nisshi_on(&storage, broker.port);
    println!("broker restarted after {down_at} records handled");
    eventually(
        Duration::from_secs(120),
        "every record handled after the restart",
        || {
            let s: BTreeSet<u64> = seen.lock().unwrap().iter().copied().collect();
            s.len() as u64 == records
        },
    )
    .await;
    // The worker rejoined by itself: its commits reach the end of the topic while it runs
    // (records handled while the broker was down are handled again: at-least-once).
    let ends = high_watermarks(&bootstrap, &topic, 2);
    let (b, g, t) = (bootstrap.clone(), group.clone(), topic.clone());
    eventually(
        Duration::from_secs(120),
        "commits reach the end after the restart",
        || {
            committed(&b, &g, &t, 2)
                .iter()
                .all(|(p, o)| *o == Some(ends[p]))
        },
    )
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    let all = seen.lock().unwrap().clone();
    let unique_n = all.iter().copied().collect::<BTreeSet<_>>().len();
    println!(
        "broker restart: records={records} handled={} unique={unique_n} duplicates={} lost=0",
        all.len(),
        all.len() - unique_n
    );
    let c = committed(&bootstrap, &group, &topic, 2);
    assert!(
        c.iter().all(|(p, o)| *o == Some(ends[p])),
        "committed to the end after the restart: {c:?} vs {ends:?}"
    );
}

/// `key_order_worker`'s successes: (key, seq) in the order written.
fn keyed_lines(log: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, s) = l.split_once(' ')?;
            Some((k.to_owned(), s.parse().ok()?))
        })
        .collect()
}

/// Records whose first success came before an earlier record of their key had succeeded:
/// (key, seq, the seq it overtook).
fn order_violations(lines: &[(String, u64)]) -> Vec<(String, u64, u64)> {
    let mut done: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    let mut out = Vec::new();
    for (k, s) in lines {
        let seen = done.entry(k).or_default();
        if seen.contains(s) {
            continue;
        }
        if let Some(missing) = (0..*s).find(|p| !seen.contains(p)) {
            out.push((k.clone(), *s, missing));
        }
        seen.insert(*s);
    }
    out
}

/// Produces `seqs` records for each of `keys` keys, `k<n>` to partition n % partitions, in
/// sequence order.
async fn produce_keyed(bootstrap: &str, topic: &str, partitions: u64, keys: u64, seqs: u64) {
    let items: Vec<(String, String, i32)> = (0..seqs)
        .flat_map(|s| {
            (0..keys).map(move |k| (format!("k{k}"), s.to_string(), (k % partitions) as i32))
        })
        .collect();
    produce_items(bootstrap, topic, &items).await;
}

fn spawn_keyed(bin: &Path, bootstrap: &str, topic: &str, group: &str, log: &Path) -> Child {
    Command::new(bin)
        .env("KEY_ORDER_HANDLER_MS", "3")
        .args([bootstrap, topic, group, log.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the key order worker")
}

/// Waits until the log grew by `more` lines (or panics after 60 s).
async fn progress(log: &Path, more: usize, what: &str) {
    let target = keyed_lines(log).len() + more;
    let waiting = Instant::now();
    while keyed_lines(log).len() < target {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "{what}: no progress in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_holds_through_kills_and_a_rebalance() {
    init_tracing();
    let (keys, partitions) = (50u64, 3u64);
    let (seqs, rounds) = if long() { (1_000u64, 10) } else { (100, 4) };
    let bin = example("key_order_worker");
    let bootstrap = bootstrap();
    let topic = unique("chaos-keyed");
    let group = unique("g");
    create_topic(&bootstrap, &topic, partitions as i32).await;
    produce_keyed(&bootstrap, &topic, partitions, keys, seqs).await;
    let dir = std::env::temp_dir().join(unique("chaos-keyed-log"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("ok.log");
    let total = (keys * seqs) as usize;
    let started = Instant::now();

    let mut rng = Rng(std::process::id() as u64 * 2_654_435_761 + 7);
    let mut a = spawn_keyed(&bin, &bootstrap, &topic, &group, &log);
    progress(&log, 200, "first member").await;
    // A second member joins: the partitions (and their retry chains) are split.
    let mut b = spawn_keyed(&bin, &bootstrap, &topic, &group, &log);
    progress(&log, 300, "after the second member joined").await;
    let mut kills = 0;
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(rng.next(800))).await;
        let victim = if round % 2 == 0 { &mut a } else { &mut b };
        victim.kill().expect("SIGKILL");
        victim.wait().unwrap();
        kills += 1;
        let done: BTreeSet<(String, u64)> = keyed_lines(&log).into_iter().collect();
        assert!(
            done.len() < total,
            "kill {kills} landed after the last record: it tested nothing"
        );
        println!(
            "key order kill {kills}: {} distinct records handled",
            done.len()
        );
        *victim = spawn_keyed(&bin, &bootstrap, &topic, &group, &log);
        progress(&log, 150, "after a restart").await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done: BTreeSet<(String, u64)> = keyed_lines(&log).into_iter().collect();
        if done.len() == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {total} records handled",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for child in [&mut a, &mut b] {
        stop_gracefully(child);
    }
    let lines = keyed_lines(&log);
    let violations = order_violations(&lines);
    // Every hop of the chain was used, and nothing was dead-lettered.
    let retried: Vec<usize> = retry_topics(&bootstrap, &topic)
        .iter()
        .map(|t| read_topic(&bootstrap, t).len())
        .collect();
    let dead = read_topic(&bootstrap, &format!("{topic}-dlt")).len();
    println!(
        "key order chaos: keys={keys} records={total} kills={kills} handled={} duplicates={} retry copies per topic={retried:?} dead={dead} violations={} elapsed={:?}",
        lines.len(),
        lines.len() - total,
        violations.len(),
        started.elapsed()
    );
    assert!(
        violations.is_empty(),
        "records handled before an earlier record of their key: {:?}",
        &violations[..violations.len().min(10)]
    );
    assert_eq!(retried.len(), 3, "retry topics: {retried:?}");
    assert!(
        retried.iter().all(|n| *n > 0),
        "a hop of the chain was never used: {retried:?}"
    );
    assert_eq!(dead, 0, "every record succeeds in the end");
}
