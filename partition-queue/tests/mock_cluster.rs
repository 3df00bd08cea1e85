//! `BatchQueue` against librdkafka's in-process mock cluster (test tier 2): every message
//! read once, in order, with its key, value, timestamp and headers as produced.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{ClientConfig, Offset, Timestamp, TopicPartitionList};
use redrive_partition_queue::BatchQueue;

const RECORDS: i64 = 1_000;

/// What record `i` was produced with: every 3rd has no key, every 5th a null value, every
/// 7th an empty one, every 4th two headers (the second with a null value).
fn key(i: i64) -> Option<Vec<u8>> {
    (i % 3 != 0).then(|| format!("k{i}").into_bytes())
}
fn value(i: i64) -> Option<Vec<u8>> {
    match i {
        _ if i % 5 == 0 => None,
        _ if i % 7 == 0 => Some(Vec::new()),
        _ => Some(vec![(i % 251) as u8; 100 + (i % 13) as usize]),
    }
}
fn has_headers(i: i64) -> bool {
    i % 4 == 0
}

/// A one-broker mock cluster with an `orders` topic of `partitions`, and a producer to it.
fn cluster(partitions: i32) -> (MockCluster<'static, DefaultProducerContext>, BaseProducer) {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("orders", partitions, 1).expect("topic");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .expect("producer");
    (mock, producer)
}

/// A consumer of `mock` that commits nothing by itself.
fn consumer(mock: &MockCluster<'static, DefaultProducerContext>, eof: bool) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "batch-queue-test")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", eof.to_string())
        .create()
        .expect("consumer")
}

#[test]
fn reads_every_message_once_in_order_with_all_its_parts() {
    let (mock, producer) = cluster(2);
    for i in 0..RECORDS {
        let (k, v) = (key(i), value(i));
        let mut r: BaseRecord<'_, Vec<u8>, Vec<u8>> = BaseRecord::to("orders")
            .partition(1)
            .timestamp(1_700_000_000_000 + i);
        if let Some(k) = &k {
            r = r.key(k);
        }
        if let Some(v) = &v {
            r = r.payload(v);
        }
        if has_headers(i) {
            r = r.headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "attempt",
                        value: Some(&i.to_string()),
                    })
                    .insert(Header::<&[u8]> {
                        key: "x-null",
                        value: None,
                    }),
            );
        }
        producer.send(r).map_err(|(e, _)| e).expect("send");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(10)).expect("flush");

    let consumer = Arc::new(consumer(&mock, true));
    let mut queue = BatchQueue::split(&consumer, "orders", 1).expect("split");
    let wakeups = Arc::new(AtomicUsize::new(0));
    let w = wakeups.clone();
    queue.set_nonempty_callback(move || {
        w.fetch_add(1, Ordering::Relaxed);
    });
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("orders", 1, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");

    let mut next = 0i64;
    let mut eof = false;
    let mut largest = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(eof && next == RECORDS) {
        assert!(
            Instant::now() < deadline,
            "read {next} of {RECORDS} in 30 s"
        );
        // The consumer's own queue still serves the assignment.
        consumer.poll(Duration::ZERO);
        let messages = queue.consume(64);
        assert!(messages.len() <= 64, "at most what was asked for");
        largest = largest.max(messages.len());
        if messages.is_empty() {
            drop(messages);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        for m in messages.iter() {
            let m = match m {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(1)) => {
                    eof = true;
                    continue;
                }
                Err(e) => panic!("unexpected error: {e}"),
            };
            let i = next;
            assert_eq!(m.offset(), i, "in order, none skipped or repeated");
            assert_eq!((m.topic(), m.partition()), ("orders", 1));
            assert_eq!(m.key(), key(i).as_deref(), "key of {i}");
            assert_eq!(m.payload(), value(i).as_deref(), "value of {i}");
            assert_eq!(m.timestamp(), Timestamp::CreateTime(1_700_000_000_000 + i));
            match m.headers() {
                Some(h) if has_headers(i) => {
                    assert_eq!(h.count(), 2);
                    let all: Vec<_> = h.iter().map(|h| (h.key, h.value)).collect();
                    assert_eq!(
                        all,
                        vec![
                            ("attempt", Some(i.to_string().as_bytes())),
                            ("x-null", None)
                        ]
                    );
                    assert!(h.try_get(2).is_none(), "nothing past the end");
                }
                Some(h) => assert_eq!(h.count(), 0, "record {i} had no headers"),
                None => assert!(!has_headers(i), "record {i}'s headers are missing"),
            }
            next += 1;
        }
    }
    assert!(largest > 1, "messages came in batches (largest {largest})");
    assert!(
        wakeups.load(Ordering::Relaxed) > 0,
        "the non-empty callback ran"
    );
    // Nothing more: the partition's end was reported and every message was read.
    consumer.poll(Duration::ZERO);
    assert!(queue.consume(64).iter().all(|m| m.is_err()));
}

#[test]
fn a_topic_name_with_a_nul_byte_is_refused() {
    let (mock, _) = cluster(1);
    let consumer = Arc::new(consumer(&mock, false));
    assert!(BatchQueue::split(&consumer, "or\0ders", 0).is_none());
}

#[test]
fn headers_of_reads_a_message_rust_rdkafka_returned() {
    let (mock, producer) = cluster(1);
    for with_headers in [true, false] {
        let mut r: BaseRecord<'_, (), str> = BaseRecord::to("orders").payload("v");
        if with_headers {
            r = r.headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "tenant",
                        value: Some("acme"),
                    })
                    .insert(Header::<&[u8]> {
                        key: "x-null",
                        value: None,
                    }),
            );
        }
        producer.send(r).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let consumer = consumer(&mock, false);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("orders", 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "read {} of 2 in 30 s",
            seen.len()
        );
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.expect("message");
        let headers: Option<Vec<(String, Option<Vec<u8>>)>> =
            redrive_partition_queue::headers_of(&m).map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            });
        seen.push(headers.unwrap_or_default());
    }
    assert_eq!(
        seen,
        vec![
            vec![
                ("tenant".to_owned(), Some(b"acme".to_vec())),
                ("x-null".to_owned(), None)
            ],
            vec![]
        ]
    );
}
