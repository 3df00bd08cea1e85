//! The baselines: raw rdkafka loops doing what redrive does, as a hand-written consumer would.

use crate::measure::*;
use crate::report::*;
use crate::support;
use crate::workload::*;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A raw rdkafka consumer in a fresh group named after `group`, reading from the beginning,
/// committing only when told.
pub(crate) fn raw_consumer(bootstrap: &str, group: &str) -> StreamConsumer {
    raw_consumer_in(bootstrap, &support::unique(group))
}

/// A raw consumer in exactly this group.
pub(crate) fn raw_consumer_in(bootstrap: &str, group: &str) -> StreamConsumer {
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
pub(crate) async fn baseline(
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

/// A commit of `positions` (next offsets by partition of `topic`), asynchronous.
pub(crate) fn commit_positions(c: &StreamConsumer, topic: &str, positions: &HashMap<i32, i64>) {
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
pub(crate) fn spring_headers(
    m: &impl Message,
    group: &str,
    now: i64,
) -> rdkafka::message::OwnedHeaders {
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
pub(crate) async fn baseline_retry(
    bootstrap: &str,
    topic: &str,
    n: u64,
) -> (f64, f64, Option<f64>, u64) {
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
