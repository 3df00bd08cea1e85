//! The header codec against byte fixtures produced by a JVM with spring-kafka's own
//! expressions (`tests/fixtures/spring/SpringHeaderFixtures.java`; `scripts/test` re-runs it
//! and fails if the checked-in bytes differ). Proves both writing and reading.

use redrive::headers::{self, AttemptsHeader, Failure, Original};
use redrive::{headers::Headers, TimestampType};

fn fixtures() -> Vec<(String, String, Vec<u8>)> {
    let text = include_str!("fixtures/spring/headers.txt");
    text.lines()
        .map(|l| {
            let mut it = l.split(' ');
            let (c, name, hex) = (
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap_or(""),
            );
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (c.to_owned(), name.to_owned(), bytes)
        })
        .collect()
}

fn case(name: &str) -> Vec<(String, Vec<u8>)> {
    let v: Vec<_> = fixtures()
        .into_iter()
        .filter(|(c, _, _)| c == name)
        .map(|(_, n, b)| (n, b))
        .collect();
    assert!(!v.is_empty(), "fixture case {name} missing");
    v
}

fn one(name: &str) -> Vec<u8> {
    case(name).remove(0).1
}

#[derive(Debug, thiserror::Error)]
#[error("payment gateway timed out")]
struct GatewayTimeout;

#[test]
fn first_hop_writes_springs_bytes_and_reads_them_back() {
    let mut h = Headers::new();
    h.push("traceparent", Some(&b"00-abc-def-01"[..]));
    let err: redrive::BoxError = Box::new(GatewayTimeout);
    headers::apply_failure(
        &mut h,
        &Failure {
            topic: "orders",
            partition: 2,
            offset: 1_234_567_890_123,
            timestamp: Some((1_700_000_000_123, TimestampType::CreateTime)),
            group: "billing",
            attempt: 1,
            due_ms: 1_700_000_005_000 + 1000,
            error: &*err,
            max_text: 4096,
            declared_type: None,
            profile: Default::default(),
        },
    );
    for (name, bytes) in case("first-hop") {
        assert_eq!(h.get_all(&name).count(), 1, "{name}: one value");
        assert_eq!(h.last_value(&name), Some(&bytes[..]), "{name}");
    }
    assert_eq!(
        h.last_value("traceparent"),
        Some(&b"00-abc-def-01"[..]),
        "user headers survive"
    );
    assert_eq!(headers::read_attempts(&h), AttemptsHeader::Valid(2));
    assert_eq!(headers::due_at_ms(&h), Some(1_700_000_006_000));
    assert_eq!(headers::original_timestamp(&h), Some(1_700_000_000_123));
    let o = Original::read(&h);
    assert_eq!(o.topic.as_deref(), Some("orders"));
    assert_eq!(o.partition, Some(2));
    assert_eq!(o.offset, Some(1_234_567_890_123));
    assert_eq!(o.timestamp, Some(1_700_000_000_123));
    assert_eq!(o.timestamp_type.as_deref(), Some("CreateTime"));
    assert_eq!(o.consumer_group.as_deref(), Some("billing"));
    assert_eq!(
        o.exception_message.as_deref(),
        Some("payment gateway timed out")
    );
    assert_eq!(o.exception_fqcn.as_deref(), Some("GatewayTimeout"));
}

#[test]
fn second_hop_keeps_the_originals_and_replaces_retry_headers() {
    let mut h = Headers::new();
    let err: redrive::BoxError = Box::new(GatewayTimeout);
    let hop = |h: &mut Headers, topic: &str, attempt: u32, due: i64| {
        headers::apply_failure(
            h,
            &Failure {
                topic,
                partition: 2,
                offset: 7,
                timestamp: Some((1_800_000_000_000, TimestampType::LogAppendTime)),
                group: "billing",
                attempt,
                due_ms: due,
                error: &*err,
                max_text: 4096,
                declared_type: None,
                profile: Default::default(),
            },
        )
    };
    hop(&mut h, "orders", 1, 10);
    let first = h.clone();
    hop(&mut h, "orders-retry-1000", 2, 20);
    assert_eq!(
        h.len(),
        first.len(),
        "bounded: one value per header, not one per hop"
    );
    assert_eq!(headers::read_attempts(&h), AttemptsHeader::Valid(3));
    assert_eq!(headers::due_at_ms(&h), Some(20));
    for k in [
        headers::ORIGINAL_TOPIC,
        headers::ORIGINAL_OFFSET,
        headers::ORIGINAL_TIMESTAMP,
        headers::ORIGINAL_TIMESTAMP_RETRY,
    ] {
        assert_eq!(h.last_value(k), first.last_value(k), "{k} is written once");
    }
}

#[test]
fn attempts_header_reads_like_spring() {
    let read = |bytes: Vec<u8>| {
        let mut h = Headers::new();
        h.set(headers::ATTEMPTS, bytes);
        headers::read_attempts(&h)
    };
    assert_eq!(read(one("legacy-attempts-in")), AttemptsHeader::Valid(127));
    assert_eq!(read(one("legacy-high-bit-in")), AttemptsHeader::Valid(128));
    assert_eq!(read(one("negative-attempts-in")), AttemptsHeader::Malformed);
    assert_eq!(read(one("max-attempts-in")), AttemptsHeader::Malformed);
    assert_eq!(
        headers::encode_int(127 + 1).to_vec(),
        one("legacy-attempts-out")
    );
}

#[test]
fn big_integers_match_java_both_ways() {
    let mut n = 0;
    for (c, _, bytes) in fixtures() {
        let Some(v) = c.strip_prefix("big-") else {
            continue;
        };
        let v: i64 = v.parse().unwrap();
        assert_eq!(headers::encode_big_integer(v), bytes, "write {v}");
        assert_eq!(headers::decode_big_integer(&bytes), Some(v), "read {v}");
        n += 1;
    }
    assert!(n >= 14, "all BigInteger fixtures checked");
}

#[test]
fn timestamp_types_and_missing_timestamps() {
    assert_eq!(
        TimestampType::LogAppendTime.as_java_str().as_bytes(),
        one("log-append")
    );
    assert_eq!(headers::encode_long(-1).to_vec(), one("no-timestamp"));
}

#[test]
fn plain_dead_letter_form_is_read_too() {
    let mut h = Headers::new();
    h.push(headers::dlt_form::ORIGINAL_TOPIC, Some(&b"payments"[..]));
    h.push(
        headers::dlt_form::ORIGINAL_PARTITION,
        Some(headers::encode_int(5).to_vec()),
    );
    h.push(
        headers::dlt_form::ORIGINAL_OFFSET,
        Some(headers::encode_long(99).to_vec()),
    );
    h.push(headers::dlt_form::EXCEPTION_MESSAGE, Some(&b"boom"[..]));
    let o = Original::read(&h);
    assert_eq!(o.topic.as_deref(), Some("payments"));
    assert_eq!(o.partition, Some(5));
    assert_eq!(o.offset, Some(99));
    assert_eq!(o.exception_message.as_deref(), Some("boom"));
}

#[test]
fn error_texts_are_truncated() {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Long(String);
    let err: redrive::BoxError = Box::new(Long("x".repeat(100_000)));
    let mut h = Headers::new();
    headers::apply_failure(
        &mut h,
        &Failure {
            topic: "t",
            partition: 0,
            offset: 0,
            timestamp: None,
            group: "g",
            attempt: 1,
            due_ms: 0,
            error: &*err,
            max_text: 256,
            declared_type: None,
            profile: Default::default(),
        },
    );
    assert!(h.last_value(headers::EXCEPTION_MESSAGE).unwrap().len() <= 256);
    assert!(h.last_value(headers::EXCEPTION_STACKTRACE).unwrap().len() <= 256);
}
