//! Test support: a real broker per test binary, a mock-cluster fixture, unique names, a test
//! worker builder, a recording handler, produce and offset helpers.
//!
//! The broker is nisshi (an Apache-Kafka-compatible broker) started on a free 127.0.0.1 port
//! and stopped when the test process exits. `REDRIVE_TEST_BOOTSTRAP=host:port` uses an
//! external cluster instead.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redrive::policy::RetryPolicy;
use redrive::{BoxError, Record, Worker, WorkerBuilder};
use std::sync::{Arc, Mutex};

pub const INSTALL_HINT: &str = "the test broker `nisshi` is not on PATH. Install it with \
`cargo +nightly install nisshi --version 0.8.1 --locked` (scripts/test does this), or point \
the tests at a running Kafka with REDRIVE_TEST_BOOTSTRAP=host:port";

/// Client settings every test client uses: nisshi joins groups slowly with the default
/// session timeout.
pub const SESSION_TIMEOUT_MS: &str = "6000";

static BROKER: OnceLock<String> = OnceLock::new();

/// The bootstrap address of the test broker, starting it on first use.
pub fn bootstrap() -> String {
    BROKER
        .get_or_init(|| match std::env::var("REDRIVE_TEST_BOOTSTRAP") {
            Ok(b) if !b.is_empty() => b,
            _ => start_nisshi(&format!("memory://nisshi-{}/", std::process::id())).0,
        })
        .clone()
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A broker process; a watchdog shell stops it when the test process exits.
pub struct Broker {
    pub bootstrap: String,
    pub pid: u32,
    pub port: u16,
}

impl Broker {
    pub fn kill(&self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }

    /// Kills the broker with SIGKILL and waits until its port is free.
    pub fn crash(&self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&self.bootstrap).is_ok() {
            assert!(Instant::now() < deadline, "broker {} did not die", self.pid);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts nisshi with the given storage engine URL; panics with the install command when the
/// binary is missing.
pub fn start_nisshi(storage: &str) -> (String, Broker) {
    start_nisshi_on(storage, free_port())
}

pub fn start_nisshi_on(storage: &str, port: u16) -> (String, Broker) {
    let bin = find_on_path("nisshi").unwrap_or_else(|| panic!("{}", INSTALL_HINT));
    let log = std::env::temp_dir().join(format!("nisshi-{}-{port}.log", std::process::id()));
    let listener = format!("tcp://127.0.0.1:{port}");
    // `$$` of the inner shell's parent is this test process; the loop ends the broker when
    // the test process is gone, so no broker outlives its tests.
    let script = r#"
        "$0" broker --listener-url "$1" --advertised-listener-url "$1" --storage-engine "$2" >"$3" 2>&1 &
        b=$!
        echo $b
        while kill -0 "$4" 2>/dev/null && kill -0 $b 2>/dev/null; do sleep 0.2; done
        kill $b 2>/dev/null
    "#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&bin)
        .arg(&listener)
        .arg(storage)
        .arg(&log)
        .arg(std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sh for nisshi");
    let mut pid_line = String::new();
    {
        use std::io::BufRead;
        let out = child.stdout.take().unwrap();
        std::io::BufReader::new(out)
            .read_line(&mut pid_line)
            .unwrap();
    }
    let pid: u32 = pid_line.trim().parse().expect("nisshi pid");
    let bootstrap = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&bootstrap).is_err() {
        assert!(
            Instant::now() < deadline,
            "nisshi did not listen on {bootstrap} within 20 s; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::mem::forget(child);
    (
        bootstrap.clone(),
        Broker {
            bootstrap,
            pid,
            port,
        },
    )
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create().unwrap();
    let res = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    wait_for_topic(bootstrap, topic, partitions as usize);
}

fn wait_for_topic(bootstrap: &str, topic: &str, partitions: usize) {
    let c: BaseConsumer = client_config(bootstrap).create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if md.topics().iter().any(|t| {
                t.name() == topic && t.error().is_none() && t.partitions().len() == partitions
            }) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "topic {topic} did not appear");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn producer(bootstrap: &str) -> FutureProducer {
    client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces `n` records `key-i` / `value-i` to explicit partitions (i % partitions).
pub async fn produce_n(bootstrap: &str, topic: &str, partitions: i32, from: u64, n: u64) {
    let items: Vec<(String, String, i32)> = (from..from + n)
        .map(|i| {
            (
                format!("key-{i}"),
                format!("value-{i}"),
                (i % partitions as u64) as i32,
            )
        })
        .collect();
    produce_items(bootstrap, topic, &items).await;
}

/// Produces (key, value, partition) records; the idempotent producer keeps each partition's
/// records in the order given.
pub async fn produce_items<K: AsRef<str>, V: AsRef<str>>(
    bootstrap: &str,
    topic: &str,
    items: &[(K, V, i32)],
) {
    let p = producer(bootstrap);
    let sends = items.iter().map(|(k, v, part)| {
        p.send(
            FutureRecord::to(topic)
                .key(k.as_ref())
                .payload(v.as_ref())
                .partition(*part),
            Duration::from_secs(30),
        )
    });
    for r in futures_util::future::join_all(sends).await {
        r.map_err(|(e, _)| e).expect("produce");
    }
}

/// Builds an example with cargo and returns the path of its binary.
pub fn example(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--example", name])
        .current_dir(&root)
        .status()
        .unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
    assert!(status.success(), "building the {name} example failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug/examples").join(name)
}

/// The group's committed offsets for every partition of `topic` (None = nothing committed).
pub fn committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, Option<i64>> {
    try_committed(bootstrap, group, topic, partitions).expect("committed_offsets")
}

/// [`committed`], or the error when the coordinator does not answer within 10 s (tests that
/// inject coordinator faults poll through those).
pub fn try_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> rdkafka::error::KafkaResult<BTreeMap<i32, Option<i64>>> {
    let c: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(got
        .elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), o)
        })
        .collect())
}

/// High watermarks of every partition.
pub fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = client_config(bootstrap).create().unwrap();
    (0..partitions)
        .map(|p| {
            (
                p,
                c.fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1,
            )
        })
        .collect()
}

/// The high watermark of one partition, or -1 while the topic does not exist yet.
pub fn watermark(bootstrap: &str, topic: &str, partition: i32) -> i64 {
    let c: BaseConsumer = client_config(bootstrap).create().unwrap();
    c.fetch_watermarks(topic, partition, Duration::from_secs(5))
        .map_or(-1, |w| w.1)
}

/// Polls `cond` every 50 ms until it holds, panicking with `what` after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Every record of `topic` (all partitions, from the beginning up to the current high
/// watermarks), read without a consumer group.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::Message;
    let c: BaseConsumer = client_config(bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts = md.topics()[0].partitions().len() as i32;
    let ends = high_watermarks(bootstrap, topic, parts);
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut pos: BTreeMap<i32, i64> = (0..parts).map(|p| (p, 0)).collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pos.iter().any(|(p, o)| *o < ends[p]) {
        assert!(
            Instant::now() < deadline,
            "reading {topic} timed out at {pos:?} of {ends:?}"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("read");
            pos.insert(m.partition(), m.offset() + 1);
            out.push(m.detach());
        }
    }
    out
}

/// Records with the given key in `msgs`.
pub fn with_key<'a>(
    msgs: &'a [rdkafka::message::OwnedMessage],
    key: &'a str,
) -> impl Iterator<Item = &'a rdkafka::message::OwnedMessage> + 'a {
    use rdkafka::Message;
    msgs.iter().filter(move |m| m.key() == Some(key.as_bytes()))
}

/// The value of the last header `name` of a message.
pub fn header<'a>(m: &'a rdkafka::message::OwnedMessage, name: &str) -> Option<&'a [u8]> {
    use rdkafka::message::{Headers, Message};
    m.headers()?
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A worker builder for `group` on `bootstrap`, with the session timeout nisshi joins
/// quickly with.
pub fn test_worker(bootstrap: &str, group: &str) -> WorkerBuilder {
    Worker::builder()
        .bootstrap_servers(bootstrap)
        .group_id(group)
        .property("session.timeout.ms", SESSION_TIMEOUT_MS)
}

/// What a [`recording`] handler saw: (partition, offset) in the order handled.
pub type Seen = Arc<Mutex<Vec<(i32, i64)>>>;

/// A handler that succeeds and appends each record's (partition, offset) to `seen`.
pub fn recording(
    seen: Seen,
) -> impl tower::Service<Record, Response = (), Error = BoxError, Future = impl Send> + Clone {
    tower::service_fn(move |r: Record| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push((r.partition(), r.offset()));
            Ok::<_, BoxError>(())
        }
    })
}

/// [`recording`], taking `delay` per record before it records it.
pub fn slow_recording(
    seen: Seen,
    delay: Duration,
) -> impl tower::Service<Record, Response = (), Error = BoxError, Future = impl Send> + Clone {
    tower::service_fn(move |r: Record| {
        let seen = seen.clone();
        async move {
            tokio::time::sleep(delay).await;
            seen.lock().unwrap().push((r.partition(), r.offset()));
            Ok::<_, BoxError>(())
        }
    })
}

/// librdkafka's in-process mock cluster with `brokers` brokers.
pub type Mock = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster of one broker with `topic` (`partitions` partitions) and, under `policy`,
/// its retry and dead-letter topics.
pub fn mock_cluster(topic: &str, partitions: i32, policy: Option<&RetryPolicy>) -> Mock {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(topic, partitions, 1).unwrap();
    for t in policy.iter().flat_map(|p| {
        p.topology(topic)
            .derived_topics()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    }) {
        mock.create_topic(&t, partitions, 1).unwrap();
    }
    mock
}

/// This process's resident set size in bytes (`VmRSS` in `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib << 10
}
