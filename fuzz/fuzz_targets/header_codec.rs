//! The Spring-compatible header codec on arbitrary header values: reading never panics, and
//! a failure hop always leaves exactly one value per retry header with the next attempt.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redrive::headers::{self, AttemptsHeader, Failure, Original};
use redrive::{headers::Headers, TimestampType};

const KEYS: [&str; 14] = [
    headers::ATTEMPTS,
    headers::BACKOFF_TIMESTAMP,
    headers::ORIGINAL_TIMESTAMP_RETRY,
    headers::ORIGINAL_TOPIC,
    headers::ORIGINAL_PARTITION,
    headers::ORIGINAL_OFFSET,
    headers::ORIGINAL_TIMESTAMP,
    headers::ORIGINAL_TIMESTAMP_TYPE,
    headers::ORIGINAL_CONSUMER_GROUP,
    headers::EXCEPTION_FQCN,
    headers::EXCEPTION_MESSAGE,
    headers::EXCEPTION_STACKTRACE,
    headers::TRACEPARENT,
    "user-header",
];

fuzz_target!(|data: &[u8]| {
    // [key index, length, bytes...]*: any byte string is a header list.
    let mut h = Headers::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let key = KEYS[rest[0] as usize % KEYS.len()];
        let len = (rest[1] as usize).min(rest.len() - 2);
        let value = &rest[2..2 + len];
        if rest[0] & 0x80 != 0 {
            h.push(key, None::<Vec<u8>>);
        } else {
            h.push(key, Some(value.to_vec()));
        }
        rest = &rest[2 + len..];
    }
    let attempt = match headers::read_attempts(&h) {
        AttemptsHeader::Valid(n) => n,
        _ => 1,
    };
    let _ = headers::due_at_ms(&h);
    let _ = headers::original_timestamp(&h);
    let _ = headers::trace_id(&h);
    let original = Original::read(&h);
    if let Some(v) = h.last_value(headers::BACKOFF_TIMESTAMP) {
        if let Some(x) = headers::decode_big_integer(v) {
            assert_eq!(headers::decode_big_integer(&headers::encode_big_integer(x)), Some(x));
        }
    }

    let err = std::io::Error::other(String::from_utf8_lossy(data).into_owned());
    let mut out = h.clone();
    headers::apply_failure(
        &mut out,
        &Failure {
            topic: "orders",
            partition: 3,
            offset: 42,
            timestamp: Some((1_700_000_000_000, TimestampType::CreateTime)),
            group: "g",
            attempt,
            due_ms: 1_700_000_001_000,
            error: &err,
            max_text: 256,
        },
    );
    for key in [headers::ATTEMPTS, headers::BACKOFF_TIMESTAMP, headers::EXCEPTION_MESSAGE] {
        assert_eq!(out.get_all(key).count(), 1, "{key} once");
    }
    assert_eq!(
        headers::read_attempts(&out),
        AttemptsHeader::Valid(attempt.saturating_add(1).min(headers::ATTEMPTS_HARD_CAP as u32))
    );
    assert!(out.last_value(headers::EXCEPTION_MESSAGE).unwrap().len() <= 256);
    // The first hop's coordinates are kept, not overwritten.
    if original.topic.is_some() {
        assert_eq!(Original::read(&out).topic, original.topic);
    }
    headers::propagate_traceparent(&mut out, &headers::derived_trace_id("orders", 3, 42), 7);
    assert!(headers::trace_id(&out).is_some() || h.last(headers::TRACEPARENT).is_some());
});
