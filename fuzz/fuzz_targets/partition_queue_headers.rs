//! The partition queue's FFI header reader (`redrive-partition-queue`'s `HeadersView`) on
//! arbitrary header lists that went through librdkafka for real: each input becomes one
//! record, produced to an in-process mock cluster and read back through a `BatchQueue`;
//! every header must come back with its name and value (null values included), in order,
//! and reading past the end must return nothing.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redrive_partition_queue::BatchQueue;

struct Cluster {
    // Kept alive for the producer and consumer; dropped last.
    _mock: MockCluster<'static, DefaultProducerContext>,
    producer: BaseProducer,
    consumer: Arc<BaseConsumer>,
    queue: BatchQueue<rdkafka::consumer::DefaultConsumerContext>,
}

thread_local! {
    static CLUSTER: RefCell<Option<Cluster>> = const { RefCell::new(None) };
}

fn cluster() -> Cluster {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("fuzz", 1, 1).expect("topic");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("linger.ms", "0")
        .set("socket.nagle.disable", "true")
        .create()
        .expect("producer");
    let consumer: Arc<BaseConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "fuzz")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "1")
            .set("fetch.error.backoff.ms", "1")
            .set("fetch.queue.backoff.ms", "1")
            .create()
            .expect("consumer"),
    );
    let queue = BatchQueue::split(&consumer, "fuzz", 0).expect("partition queue");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("fuzz", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    Cluster {
        _mock: mock,
        producer,
        consumer,
        queue,
    }
}

/// `[flags, name length, value length (2 bytes), name, value]*`: up to 64 headers with names
/// of up to 32 bytes (made UTF-8 without NUL, as C strings carry them) and values up to 4 KiB;
/// flag bit 0 makes the value null.
fn header_list(data: &[u8]) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 4 && out.len() < 64 {
        let null = rest[0] & 1 != 0;
        let name_len = usize::from(rest[1] % 33).min(rest.len() - 4);
        let value_len = (usize::from(rest[2]) << 8 | usize::from(rest[3])) % 4097;
        let value_len = value_len.min(rest.len() - 4 - name_len);
        let name = String::from_utf8_lossy(&rest[4..4 + name_len]).replace('\0', "_");
        let value = &rest[4 + name_len..4 + name_len + value_len];
        out.push((name, (!null).then(|| value.to_vec())));
        rest = &rest[4 + name_len + value_len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let want = header_list(data);
    CLUSTER.with(|c| {
        let mut c = c.borrow_mut();
        let c = c.get_or_insert_with(cluster);
        let mut headers = OwnedHeaders::new_with_capacity(want.len());
        for (name, value) in &want {
            headers = headers.insert(Header {
                key: name.as_str(),
                value: value.as_deref(),
            });
        }
        let record: BaseRecord<'_, (), [u8]> = BaseRecord::to("fuzz")
            .partition(0)
            .payload(&b"v"[..])
            .headers(headers);
        c.producer.send(record).map_err(|(e, _)| e).expect("send");
        c.producer.flush(Duration::from_secs(10)).expect("flush");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            c.consumer.poll(Duration::ZERO);
            let messages = c.queue.consume(1);
            if let Some(m) = messages.iter().next() {
                let m = m.expect("a message, not an error");
                let got: Vec<(String, Option<Vec<u8>>)> = match m.headers() {
                    Some(h) => {
                        assert!(h.try_get(h.count()).is_none(), "a header past the end");
                        h.iter()
                            .map(|x| (x.key.to_owned(), x.value.map(<[u8]>::to_vec)))
                            .collect()
                    }
                    None => Vec::new(),
                };
                assert_eq!(got, want, "headers read back through the partition queue");
                return;
            }
            assert!(Instant::now() < deadline, "the record did not come back");
            std::thread::sleep(Duration::from_micros(200));
        }
    });
});
