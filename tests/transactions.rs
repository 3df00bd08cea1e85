//! Transactional consume-transform-produce (docs/design.md, Transactions) on librdkafka's mock cluster, or on a
//! real Kafka named by `REDRIVE_TEST_BOOTSTRAP`.
//!
//! Neither the mock cluster nor nisshi hides aborted records from `read_committed` readers, so
//! on them these tests prove what they can: offsets move only when a transaction commits; a
//! fault between send and commit aborts and the input is handled again; every input's offset
//! is committed exactly once; a second instance with the same transactional id fences the
//! first. Against a real Kafka they also read the output with `read_committed` and assert each
//! input's output appears exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redrive::publish::Outgoing;
use redrive::transaction::Transactional;
use redrive::{policy::RetryPolicy, BoxError, Record, Route, Worker, WorkerHandle};
use tower::service_fn;

mod support;

const PARTITIONS: i32 = 2;

/// A cluster for one test: the mock cluster, or the external one.
struct Cluster {
    mock: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    bootstrap: String,
    prefix: String,
}

impl Cluster {
    fn new(name: &str) -> Cluster {
        support::init_tracing();
        let prefix = format!("{name}-{}-{}", std::process::id(), rand_suffix());
        match std::env::var("REDRIVE_TEST_BOOTSTRAP") {
            Ok(b) if !b.is_empty() => Cluster {
                mock: None,
                bootstrap: b,
                prefix,
            },
            _ => {
                let mock = MockCluster::new(3).unwrap();
                let bootstrap = mock.bootstrap_servers();
                Cluster {
                    mock: Some(mock),
                    bootstrap,
                    prefix,
                }
            }
        }
    }

    fn real(&self) -> bool {
        self.mock.is_none()
    }

    fn name(&self, t: &str) -> String {
        format!("{}-{t}", self.prefix)
    }

    async fn create(&self, topic: &str) {
        match &self.mock {
            Some(m) => m.create_topic(topic, PARTITIONS, 1).unwrap(),
            None => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", &self.bootstrap)
                    .create()
                    .unwrap();
                for r in admin
                    .create_topics(
                        &[NewTopic::new(
                            topic,
                            PARTITIONS,
                            TopicReplication::Fixed(-1),
                        )],
                        &AdminOptions::new(),
                    )
                    .await
                    .unwrap()
                {
                    r.unwrap();
                }
            }
        }
    }

    async fn produce(&self, topic: &str, n: u64) {
        self.produce_from(topic, 0, n).await
    }

    /// Records `order-{from}` .. `order-{from + n - 1}`, alternating partitions.
    async fn produce_from(&self, topic: &str, from: u64, n: u64) {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let keys: Vec<String> = (from..from + n).map(|i| format!("order-{i}")).collect();
        let sends = keys.iter().enumerate().map(|(i, k)| {
            p.send(
                FutureRecord::to(topic)
                    .key(k)
                    .payload(k)
                    .partition((from as usize + i) as i32 % PARTITIONS),
                Duration::from_secs(30),
            )
        });
        for r in futures_util::future::join_all(sends).await {
            r.map_err(|(e, _)| e).unwrap();
        }
    }

    fn committed(&self, group: &str, topic: &str) -> Vec<i64> {
        support::try_committed(&self.bootstrap, group, topic, PARTITIONS).map_or_else(
            |_| vec![0; PARTITIONS as usize],
            |m| m.into_values().map(|o| o.unwrap_or(0)).collect(),
        )
    }

    /// Every record of `topic` as (key, value), with the given isolation level.
    fn read(&self, topic: &str, isolation: &str) -> Vec<(String, String)> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("{}-reader", self.prefix))
            .set("isolation.level", isolation)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut eof = 0;
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while eof < PARTITIONS {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => out.push((
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                )),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
                Some(Err(e)) => panic!("read {topic}: {e}"),
                None => {}
            }
        }
        out
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// Calls per input key, and when each call started.
#[derive(Clone, Default)]
struct Ledger {
    calls: Arc<Mutex<HashMap<String, u32>>>,
    starts: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
    total: Arc<AtomicU64>,
}

impl Ledger {
    fn count(&self, key: &str) -> u32 {
        self.calls.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    fn at(&self, key: &str) {
        let mut starts = self.starts.lock().unwrap();
        starts
            .entry(key.to_owned())
            .or_default()
            .push(Instant::now());
    }

    fn times(&self, key: &str) -> Vec<Instant> {
        self.starts
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

struct Pipeline {
    handle: WorkerHandle,
    run: tokio::task::JoinHandle<Result<(), redrive::Error>>,
    group: String,
    input: String,
    output: String,
}

/// orders -> orders-enriched, transactional; every 10th order fails its first attempt and
/// goes through the retry topic (inside the transaction).
async fn pipeline(
    c: &Cluster,
    ledger: &Ledger,
    txn_id: &str,
    gate: Option<(String, Arc<AtomicBool>, Arc<AtomicBool>)>,
) -> Pipeline {
    let (input, output, group) = (c.name("orders"), c.name("enriched"), c.name("group"));
    let policy = RetryPolicy::new()
        .attempts(3)
        .fixed(Duration::from_millis(200));
    let ledger2 = ledger.clone();
    let handler = service_fn(move |r: Record| {
        let ledger = ledger2.clone();
        let output = output_name(&r);
        let gate = gate.clone();
        async move {
            let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
            let n: u64 = key.trim_start_matches("order-").parse().unwrap();
            *ledger.calls.lock().unwrap().entry(key.clone()).or_default() += 1;
            ledger.total.fetch_add(1, Ordering::Relaxed);
            if let Some((k, reached, release)) = gate {
                if k == key {
                    reached.store(true, Ordering::SeqCst);
                    while !release.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            // Every main-topic attempt fails, also when an aborted batch is handled again:
            // each such input then has exactly one retry copy in a committed transaction,
            // whichever batch the fault hit (n + n/10 committed records in all).
            if n % 10 == 0 && redrive::headers::attempt_of(r.headers()) <= 1 {
                return Err::<Vec<Outgoing>, BoxError>("first attempt fails".into());
            }
            let value = String::from_utf8_lossy(r.value().unwrap()).to_uppercase();
            Ok(vec![Outgoing::to(output).key(key).value(value)])
        }
    });
    let worker = Worker::builder()
        .bootstrap_servers(&c.bootstrap)
        .group_id(&group)
        .property("session.timeout.ms", "6000")
        .transactional(
            Transactional::new(txn_id)
                .batch_size(100)
                .transaction_timeout(Duration::from_secs(20)),
        )
        .route(Route::new(&input, handler).retry(policy))
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    Pipeline {
        handle,
        run,
        group,
        input,
        output,
    }
}

fn output_name(r: &Record) -> String {
    // orders and its retry topic both write to the same output.
    let t = r.topic();
    let base = t.split("-orders").next().unwrap();
    format!("{base}-enriched")
}

/// The input positions committed by transactions: the broker's view on a real Kafka (checked
/// against the worker's), the worker's on the mock cluster, whose TxnOffsetCommit handler
/// acknowledges offsets without storing them (librdkafka's rdkafka_mock_handlers.c).
fn positions(c: &Cluster, p: &Pipeline) -> Vec<i64> {
    let stats = p.handle.transactions().unwrap();
    let worker: Vec<i64> = (0..PARTITIONS)
        .map(|i| {
            stats
                .offsets
                .get(&(p.input.clone(), i))
                .copied()
                .unwrap_or(0)
        })
        .collect();
    if c.real() {
        let broker = c.committed(&p.group, &p.input);
        assert!(
            broker.iter().zip(&worker).all(|(b, w)| b >= w),
            "broker {broker:?} behind the worker's committed transactions {worker:?}"
        );
        return broker;
    }
    worker
}

/// The pipeline, once order-301 is being handled (its transaction open); store `true` in the
/// returned flag to let it go on.
async fn held_at_order_301(c: &Cluster, ledger: &Ledger) -> (Pipeline, Arc<AtomicBool>) {
    let (reached, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let p = pipeline(
        c,
        ledger,
        &c.name("txn"),
        Some(("order-301".into(), reached.clone(), release.clone())),
    )
    .await;
    support::eventually(Duration::from_secs(60), "order-301 reached", || {
        reached.load(Ordering::SeqCst)
    })
    .await;
    (p, release)
}

async fn setup(c: &Cluster) {
    for t in ["orders", "orders-retry", "orders-dlt", "enriched"] {
        c.create(&c.name(t)).await;
    }
}

/// Per input key: how many times it appears in `records`.
fn counts(records: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (k, _) in records {
        *m.entry(k.clone()).or_default() += 1;
    }
    m
}

fn assert_exactly_once_outputs(c: &Cluster, output: &str, n: u64) {
    let uncommitted = c.read(output, "read_uncommitted");
    let keys = counts(&uncommitted);
    assert_eq!(keys.len() as u64, n, "every input has an output");
    if c.real() {
        let committed = c.read(output, "read_committed");
        let keys = counts(&committed);
        assert_eq!(keys.len() as u64, n);
        assert!(
            keys.values().all(|&k| k == 1),
            "read_committed shows an output twice: {:?}",
            keys.iter().filter(|(_, v)| **v > 1).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_advance_only_when_the_transaction_commits() {
    let c = Cluster::new("txn-offsets");
    setup(&c).await;
    let n = 600;
    c.produce(&c.name("orders"), n).await;
    let ledger = Ledger::default();
    // order-301 (partition 1, offset 150) blocks inside its transaction until released.
    let (p, release) = held_at_order_301(&c, &ledger).await;
    // Its transaction is open: partition 1's committed offset has not passed it, although
    // records before it in the same batch were handled and their outputs sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = positions(&c, &p);
    assert!(
        during[1] <= 150,
        "committed {during:?} while order-301's transaction is open"
    );
    let before = p.handle.transactions().unwrap();
    release.store(true, Ordering::SeqCst);
    support::eventually(Duration::from_secs(60), "every input committed", || {
        positions(&c, &p).iter().sum::<i64>() == n as i64
            && p.handle.transactions().unwrap().records_committed == n + n / 10
    })
    .await;
    let stats = p.handle.transactions().unwrap();
    assert!(stats.committed > before.committed);
    // Every input offset went out in exactly one committed transaction.
    assert_eq!(
        stats.records_committed,
        n + n / 10,
        "inputs (retry-topic copies included)"
    );
    assert_exactly_once_outputs(&c, &p.output, n);
    p.handle.shutdown();
    p.run.await.unwrap().unwrap();
}

/// Injects `errors` into the mock cluster's answers to `api` once the pipeline committed
/// its first transaction, then checks the aborted batch is handled again and every input
/// still commits exactly once.
async fn abort_and_redo(name: &str, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
    let c = Cluster::new(name);
    setup(&c).await;
    let n = 400;
    c.produce(&c.name("orders"), n).await;
    let ledger = Ledger::default();
    // order-301 holds its transaction open while the fault is armed.
    let (p, release) = held_at_order_301(&c, &ledger).await;
    if let Some(m) = &c.mock {
        m.request_errors(api, errors);
    }
    release.store(true, Ordering::SeqCst);
    support::eventually(Duration::from_secs(90), "every input committed", || {
        positions(&c, &p).iter().sum::<i64>() == n as i64
            && p.handle.transactions().unwrap().records_committed >= n + n / 10
    })
    .await;
    let stats = p.handle.transactions().unwrap();
    if c.mock.is_some() {
        assert!(stats.aborted >= 1, "no transaction aborted: {stats:?}");
        let again = (0..n)
            .filter(|i| ledger.count(&format!("order-{i}")) > 1 + u32::from(i % 10 == 0))
            .count();
        assert!(again > 0, "no input was handled again after the abort");
    }
    // Aborted batches were handled again, but every input's offset went out in exactly one
    // committed transaction. The mock cluster also hands out the retry copies an aborted
    // batch wrote (a real Kafka hides them from read_committed readers): there, more
    // retry-topic records may be committed.
    if c.real() {
        assert_eq!(stats.records_committed, n + n / 10, "{stats:?}");
    } else {
        assert!(stats.records_committed >= n + n / 10, "{stats:?}");
    }
    assert_exactly_once_outputs(&c, &p.output, n);
    p.handle.shutdown();
    p.run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_produce_aborts_and_the_batch_is_handled_again() {
    abort_and_redo(
        "txn-produce",
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_end_txn_aborts_and_the_batch_is_handled_again() {
    abort_and_redo(
        "txn-endtxn",
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_with_the_same_id_fences_the_first() {
    let c = Cluster::new("txn-fence");
    setup(&c).await;
    c.produce(&c.name("orders"), 200).await;
    let ledger = Ledger::default();
    let id = c.name("txn");
    let p = pipeline(&c, &ledger, &id, None).await;
    support::eventually(Duration::from_secs(60), "a committed transaction", || {
        p.handle.transactions().unwrap().committed > 0
    })
    .await;
    // The zombie's successor: same transactional.id. The mock cluster hands a second
    // producer a new producer id instead of bumping the epoch (rdkafka_mock_handlers.c,
    // InitProducerId), so it cannot fence; there the broker's verdict is injected instead.
    let _successor: Option<FutureProducer> = match &c.mock {
        None => {
            let successor: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &c.bootstrap)
                .set("transactional.id", &id)
                .create()
                .unwrap();
            successor
                .init_transactions(Duration::from_secs(20))
                .unwrap();
            Some(successor)
        }
        Some(m) => {
            m.request_errors(
                RDKafkaApiKey::EndTxn,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
            );
            None
        }
    };
    c.produce_from(&c.name("orders"), 200, 200).await;
    let res = tokio::time::timeout(Duration::from_secs(60), p.run)
        .await
        .expect("the fenced worker must stop by itself")
        .unwrap();
    let err = res
        .expect_err("the fenced worker stopped without an error")
        .to_string();
    assert!(err.contains("fenced"), "{err}");
}

/// `Route::without_headers` holds in a transactional worker too, per route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_route_without_headers_gets_none() {
    let c = Cluster::new("txn-bare");
    let (bare, full, out) = (c.name("bare"), c.name("full"), c.name("out"));
    for t in [&bare, &full, &out] {
        c.create(t).await;
    }
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &c.bootstrap)
        .create()
        .unwrap();
    for t in [&bare, &full] {
        p.send(
            FutureRecord::to(t)
                .key("k")
                .payload("v")
                .partition(0)
                .headers(
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: "x-tenant",
                        value: Some("acme"),
                    }),
                ),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    // (topic, headers seen, value) per handled record.
    type Seen = Vec<(String, usize, Option<Vec<u8>>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let handler = {
        let (seen, out) = (seen.clone(), out.clone());
        service_fn(move |r: Record| {
            seen.lock().unwrap().push((
                r.topic().to_owned(),
                r.headers().len(),
                r.value().map(|v| v.to_vec()),
            ));
            let out = Outgoing::to(out.clone()).value(r.value().cloned().unwrap_or_default());
            std::future::ready(Ok::<_, BoxError>(vec![out]))
        })
    };
    let worker = Worker::builder()
        .bootstrap_servers(&c.bootstrap)
        .group_id(c.name("group"))
        .property("session.timeout.ms", "6000")
        .transactional(Transactional::new(c.name("txn")))
        .route(Route::new(&bare, handler.clone()).without_headers())
        .route(Route::new(&full, handler))
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    support::eventually(Duration::from_secs(60), "both records handled", || {
        seen.lock().unwrap().len() == 2
    })
    .await;
    handle.shutdown();
    run.await.unwrap().unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (bare, 0, Some(b"v".to_vec())),
            (full, 1, Some(b"v".to_vec())),
        ]
    );
}

/// A transactional worker whose handler fails on `poison` every time; `policy` routes the
/// failures (or not). Poison values are 1,990 bytes and the producer takes at most 2,000, so
/// a failure copy of the poison record (the value plus Spring's headers) cannot be sent.
async fn poisoned(
    c: &Cluster,
    ledger: &Ledger,
    poison: &'static str,
    policy: Option<RetryPolicy>,
) -> Pipeline {
    let (input, group) = (c.name("orders"), c.name("group"));
    let calls = ledger.clone();
    let handler = service_fn(move |r: Record| {
        let ledger = calls.clone();
        async move {
            let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
            *ledger.calls.lock().unwrap().entry(key.clone()).or_default() += 1;
            ledger.total.fetch_add(1, Ordering::Relaxed);
            ledger.at(&key);
            match key == poison {
                true => Err::<(), BoxError>("the order cannot be priced".into()),
                false => Ok(()),
            }
        }
    });
    let route = Route::new(&input, handler);
    let route = match policy {
        Some(p) => route.retry(p),
        None => route,
    };
    let worker = Worker::builder()
        .bootstrap_servers(&c.bootstrap)
        .group_id(&group)
        .property("session.timeout.ms", "6000")
        .property("producer.message.max.bytes", "2000")
        .transactional(
            Transactional::new(c.name("txn"))
                .batch_size(50)
                .transaction_timeout(Duration::from_secs(20))
                .rollback_backoff(Duration::from_millis(800), Duration::from_secs(4))
                .max_failed_transactions(3),
        )
        .route(route)
        .build()
        .unwrap();
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    Pipeline {
        handle,
        run,
        group,
        input,
        output: c.name("enriched"),
    }
}

/// 20 orders on two partitions (10 each), then `poison` on partition 1 with a 1,990-byte
/// value.
async fn produce_with_a_large_poison(c: &Cluster, input: &str) {
    c.produce(input, 20).await;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &c.bootstrap)
        .create()
        .unwrap();
    let big = "x".repeat(1990);
    p.send(
        FutureRecord::to(input)
            .key("poison")
            .payload(&big)
            .partition(1),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
}

/// The poison record fails three transactions with at least the back-off between them, while
/// the other partition commits to its end at once; then it is given up and its partition
/// moves on. Returns the gaps between the poison's calls.
async fn poison_is_given_up(c: &Cluster, ledger: &Ledger, p: &Pipeline) -> Vec<Duration> {
    eventually_positions(c, p, 0, 10, "partition 0 committed to its end").await;
    assert!(
        ledger.count("poison") < 3,
        "partition 0 waited for the poison's failed transactions"
    );
    eventually_positions(c, p, 1, 11, "the poison given up, partition 1 at its end").await;
    assert_eq!(
        ledger.count("poison"),
        3,
        "handled in exactly 3 transactions"
    );
    assert_eq!(p.handle.transactions().unwrap().records_given_up, 1);
    let at = ledger.times("poison");
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

async fn eventually_positions(c: &Cluster, p: &Pipeline, part: usize, end: i64, what: &str) {
    support::eventually(Duration::from_secs(60), what, || {
        positions(c, p)[part] == end
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_backs_off_then_reaches_the_dlt_while_other_partitions_commit() {
    let c = Cluster::new("txn-poison-dlt");
    setup(&c).await;
    let ledger = Ledger::default();
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(200));
    // `setup` created its retry and dead-letter topics.
    let dlt = policy.topology(&c.name("orders")).dlt().unwrap().to_owned();
    let p = poisoned(&c, &ledger, "poison", Some(policy)).await;
    produce_with_a_large_poison(&c, &p.input).await;
    let gaps = poison_is_given_up(&c, &ledger, &p).await;
    assert!(
        gaps[0] >= Duration::from_millis(750) && gaps[1] >= Duration::from_millis(1500),
        "the partition backed off 800 ms, then 1.6 s: {gaps:?}"
    );
    let dead = support::read_topic(&c.bootstrap, &dlt);
    let poison: Vec<_> = support::with_key(&dead, "poison").collect();
    assert_eq!(poison.len(), 1, "one dead letter: {dead:?}");
    assert!(
        poison[0].payload() == Some(&b""[..]),
        "sent without the value that made it too large"
    );
    let dropped = support::header(poison[0], redrive::headers::VALUE_DROPPED).unwrap();
    assert!(
        String::from_utf8_lossy(dropped).contains("orders/1@10"),
        "{dropped:?}"
    );
    let message = support::header(poison[0], redrive::headers::EXCEPTION_MESSAGE).unwrap();
    assert!(
        String::from_utf8_lossy(message).contains("failed 3 transactions"),
        "{}",
        String::from_utf8_lossy(message)
    );
    p.handle.shutdown();
    p.run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_without_a_dlt_is_skipped_after_its_failed_transactions() {
    let c = Cluster::new("txn-poison-skip");
    setup(&c).await;
    let ledger = Ledger::default();
    let p = poisoned(&c, &ledger, "poison", None).await;
    produce_with_a_large_poison(&c, &p.input).await;
    poison_is_given_up(&c, &ledger, &p).await;
    p.handle.shutdown();
    p.run.await.unwrap().unwrap();
}

/// A record that fails every attempt in a transactional worker: its retry copies and then its
/// dead-letter copy are produced inside transactions, and an outside reader of the topics
/// finds each of them once (no fault is injected, so nothing is aborted: on the mock cluster
/// and nisshi, which show aborted records too, this is what can be shown), every other input's
/// output once, and the inputs' committed positions at the end (the broker's on a real Kafka,
/// the worker's on the mock cluster, which does not store transactional offsets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failing_every_attempt_is_dead_lettered_inside_a_transaction() {
    let c = Cluster::new("txn-dlt");
    setup(&c).await;
    let (input, output, group) = (c.name("orders"), c.name("enriched"), c.name("group"));
    let n = 50u64;
    c.produce(&input, n).await;
    let out = output.clone();
    let handler = service_fn(move |r: Record| {
        let out = out.clone();
        async move {
            let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
            let i: u64 = key.trim_start_matches("order-").parse().unwrap();
            if i % 10 == 3 {
                return Err::<Vec<Outgoing>, BoxError>(format!("{key} always fails").into());
            }
            Ok(vec![Outgoing::to(out).key(key.clone()).value(key)])
        }
    });
    let policy = RetryPolicy::new()
        .attempts(3)
        .fixed(Duration::from_millis(200));
    let worker = Worker::builder()
        .bootstrap_servers(&c.bootstrap)
        .group_id(&group)
        .property("session.timeout.ms", "6000")
        .transactional(Transactional::new(format!("{}-txn", c.prefix)).batch_size(20))
        .route(Route::new(&input, handler).retry(policy))
        .build()
        .unwrap();
    let p = Pipeline {
        handle: worker.handle(),
        run: tokio::spawn(worker.run()),
        group,
        input,
        output,
    };
    let dlt = c.name("orders-dlt");
    support::eventually(Duration::from_secs(60), "5 dead letters", || {
        c.read(&dlt, "read_uncommitted").len() >= 5
    })
    .await;
    support::eventually(Duration::from_secs(30), "inputs committed", || {
        positions(&c, &p).iter().sum::<i64>() == n as i64
    })
    .await;
    p.handle.shutdown();
    p.run.await.unwrap().unwrap();
    let dead = counts(&c.read(&dlt, "read_uncommitted"));
    let want: BTreeMap<String, usize> = (0..n)
        .filter(|i| i % 10 == 3)
        .map(|i| (format!("order-{i}"), 1))
        .collect();
    assert_eq!(dead, want, "each always-failing input dead-lettered once");
    let retried = counts(&c.read(&c.name("orders-retry"), "read_uncommitted"));
    assert!(
        retried.len() == 5 && retried.values().all(|&k| k == 2),
        "two retry copies each: {retried:?}"
    );
    let outputs = counts(&c.read(&p.output, "read_uncommitted"));
    assert_eq!(outputs.len(), 45);
    assert!(outputs.values().all(|&k| k == 1), "{outputs:?}");
}
