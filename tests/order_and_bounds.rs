//! Order and bounds against the real broker.
//!
//! - With the default concurrency of 1, each partition's records are handled in offset order,
//!   on the main topic and on the retry topic alike; the check is the handled sequence itself,
//!   (topic, partition, offset) as the handler saw them.
//! - Under a handler that blocks, the records handed to handlers and not yet final never
//!   exceed `max_in_flight_records`, nor their bytes `max_in_flight_bytes`; the handler itself
//!   counts what it holds, and the bound is reached (so the check is not vacuous).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redrive::policy::RetryPolicy;
use redrive::{BoxError, Record, Route};
use support::*;
use tokio::sync::Semaphore;
use tower::service_fn;

/// Every 7th record fails once, so the retry topic holds copies of several partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partition_is_handled_in_offset_order_on_main_and_retry_topics() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("order");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 3).await;
    produce_n(&bootstrap, &topic, 3, 0, 150).await;
    type Handled = Arc<Mutex<Vec<(String, i32, i64)>>>;
    let handled: Handled = Arc::default();
    let calls: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let handler = {
        let (handled, calls) = (handled.clone(), calls.clone());
        service_fn(move |r: Record| {
            let (handled, calls) = (handled.clone(), calls.clone());
            async move {
                let key = String::from_utf8_lossy(r.key().unwrap()).into_owned();
                let i: u64 = key.trim_start_matches("key-").parse().unwrap();
                let n = {
                    let mut c = calls.lock().unwrap();
                    let n = c.entry(key).or_default();
                    *n += 1;
                    *n
                };
                let entry = (r.topic().to_owned(), r.partition(), r.offset());
                handled.lock().unwrap().push(entry);
                if i % 7 == 0 && n == 1 {
                    return Err::<(), BoxError>("once".into());
                }
                Ok(())
            }
        })
    };
    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(200));
    let w = test_worker(&bootstrap, &group)
        .route(Route::new(&topic, handler).retry(policy))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    let retried = (0..150).filter(|i| i % 7 == 0).count();
    eventually(
        Duration::from_secs(60),
        "every record and retry handled",
        || handled.lock().unwrap().len() >= 150 + retried,
    )
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    let mut by_partition: BTreeMap<(String, i32), Vec<i64>> = BTreeMap::new();
    for (t, p, o) in handled.lock().unwrap().iter() {
        by_partition.entry((t.clone(), *p)).or_default().push(*o);
    }
    let retry_topics = by_partition.keys().filter(|(t, _)| *t != topic).count();
    assert!(
        retry_topics > 0,
        "the retry topic was read: {by_partition:?}"
    );
    for ((t, p), offsets) in &by_partition {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{t}/{p} handled out of order: {offsets:?}"
        );
    }
}

/// A handler that blocks until the test lets it go, counting the records it holds.
struct Held {
    gate: Arc<Semaphore>,
    now: AtomicU64,
    most: AtomicU64,
    bytes_now: AtomicU64,
    bytes_most: AtomicU64,
}

impl Held {
    fn new() -> Arc<Self> {
        Arc::new(Held {
            gate: Arc::new(Semaphore::new(0)),
            now: AtomicU64::new(0),
            most: AtomicU64::new(0),
            bytes_now: AtomicU64::new(0),
            bytes_most: AtomicU64::new(0),
        })
    }

    async fn hold(&self, r: &Record) {
        let bytes = r.byte_len() as u64;
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        let b = self.bytes_now.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.bytes_most.fetch_max(b, Ordering::SeqCst);
        self.gate.acquire().await.unwrap().forget();
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.bytes_now.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// Runs 4 partitions at concurrency 8 each under `bounds`, letting one record go whenever the
/// handlers hold what they can, and returns (most records held at once, most bytes held at once).
async fn run_held(
    bounds: impl FnOnce(redrive::WorkerBuilder) -> redrive::WorkerBuilder,
) -> (u64, u64) {
    let bootstrap = bootstrap();
    let topic = unique("bounds");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 4).await;
    produce_n(&bootstrap, &topic, 4, 0, 120).await;
    let held = Held::new();
    let finished = Arc::new(AtomicU64::new(0));
    let handler = {
        let (held, finished) = (held.clone(), finished.clone());
        service_fn(move |r: Record| {
            let (held, finished) = (held.clone(), finished.clone());
            async move {
                held.hold(&r).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        })
    };
    let w = bounds(test_worker(&bootstrap, &group))
        .route(Route::new(&topic, handler).concurrency(8))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = (0, std::time::Instant::now());
    while finished.load(Ordering::SeqCst) < 120 {
        assert!(std::time::Instant::now() < deadline, "records stuck");
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Let go of one record once the handlers hold what they can: their count has not
        // changed for 50 ms (nothing more is handed over while the bound is full).
        let now = held.now.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if now > 0 && last.1.elapsed() >= Duration::from_millis(50) {
            held.gate.add_permits(1);
            last.1 = std::time::Instant::now();
        }
    }
    h.shutdown();
    run.await.unwrap().unwrap();
    (
        held.most.load(Ordering::SeqCst),
        held.bytes_most.load(Ordering::SeqCst),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_flight_never_exceed_max_in_flight_records() {
    init_tracing();
    let (most, _) = run_held(|b| b.max_in_flight_records(5)).await;
    assert!(most <= 5, "{most} records held at once, bound 5");
    assert_eq!(
        most, 5,
        "the bound was reached (4 partitions x 8 could hold 32)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_in_flight_never_exceed_max_in_flight_bytes() {
    init_tracing();
    // Records `key-N`/`value-N` are 11-14 bytes: 60 bytes hold 4 or 5 of them.
    let (most, bytes) = run_held(|b| b.max_in_flight_bytes(60)).await;
    assert!(bytes <= 60, "{bytes} bytes held at once, bound 60");
    assert!(
        most >= 4,
        "the bound was reached: {most} records, {bytes} bytes at most"
    );
}

/// An unfinished record holds its partition's commit position; the records behind it that
/// finish are tracked until it is final. With concurrency 4 and `max_in_flight_records(20)`,
/// a handler that holds offset 0 sees at most 20 records of the partition (0 included) until
/// it lets go: the partition pauses instead of tracking the whole topic behind one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_head_record_pauses_its_partition_at_the_bound() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("head");
    let group = unique("g");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 100).await;
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(AtomicU64::new(0));
    let handler = {
        let (gate, handled) = (gate.clone(), handled.clone());
        service_fn(move |r: Record| {
            let (gate, handled) = (gate.clone(), handled.clone());
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                if r.offset() == 0 {
                    gate.acquire().await.unwrap().forget();
                }
                Ok::<_, BoxError>(())
            }
        })
    };
    let w = test_worker(&bootstrap, &group)
        .max_in_flight_records(20)
        .route(Route::new(&topic, handler).concurrency(4))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "records handled", || {
        handled.load(Ordering::SeqCst) >= 20
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let while_held = handled.load(Ordering::SeqCst);
    assert_eq!(
        while_held, 20,
        "records handled while offset 0 is unfinished"
    );
    assert_eq!(committed(&bootstrap, &group, &topic, 1)[&0].unwrap_or(0), 0);
    gate.add_permits(1);
    eventually(Duration::from_secs(30), "all handled and committed", || {
        committed(&bootstrap, &group, &topic, 1)[&0] == Some(100)
    })
    .await;
    assert_eq!(handled.load(Ordering::SeqCst), 100);
    h.shutdown();
    run.await.unwrap().unwrap();
}
