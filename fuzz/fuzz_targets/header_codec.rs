//! The Spring-compatible header codec on arbitrary header lists (well-known and arbitrary
//! names, values up to 64 KiB, thousands of headers): reading never panics, and a failure hop
//! always leaves exactly one value per retry header with the next attempt and keeps every
//! header of the record's own, in the Spring profile and in the compact one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redrive::headers::{self, AttemptsHeader, Failure, HeaderProfile, Original};
use redrive::{headers::Headers, TimestampType};

const KEYS: [&str; 15] = [
    headers::COMPACT,
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

/// Reads `[flags, length (2 bytes), bytes...]*` as a header list: any byte string is one.
/// Flags: the low bits pick a well-known key, 0x20 takes the key from the value's first bytes
/// instead, 0x40 repeats the header up to ~10,000 times, 0x80 makes the value null. Values
/// reach 65,535 bytes.
fn header_list(data: &[u8]) -> Headers {
    let mut h = Headers::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let flags = rest[0];
        let len = (usize::from(rest[1]) << 8 | usize::from(rest[2])).min(rest.len() - 3);
        let value = &rest[3..3 + len];
        let key: String = if flags & 0x20 != 0 {
            String::from_utf8_lossy(&value[..value.len().min(16)]).into_owned()
        } else {
            KEYS[usize::from(flags) % KEYS.len()].to_owned()
        };
        let repeat = if flags & 0x40 != 0 {
            1 + usize::from(rest[2]) * 40
        } else {
            1
        };
        for _ in 0..repeat {
            if flags & 0x80 != 0 {
                h.push(key.clone(), None::<Vec<u8>>);
            } else {
                h.push(key.clone(), Some(value.to_vec()));
            }
        }
        rest = &rest[3 + len..];
    }
    h
}

/// Headers a failure hop does not rewrite: every one whose name is not among the retry
/// flow's own.
fn others(h: &Headers) -> usize {
    h.iter()
        .filter(|x| !KEYS[..KEYS.len() - 1].contains(&&*x.key))
        .filter(|x| !x.key.starts_with("kafka_") && !x.key.starts_with("retry_topic-"))
        .filter(|x| x.key != headers::COMPACT)
        .count()
}

/// `h` after a failure hop of `orders/3@42` in `profile`.
fn hop(h: &Headers, attempt: u32, err: &std::io::Error, profile: HeaderProfile) -> Headers {
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
            error: err,
            max_text: 256,
            declared_type: None,
            profile,
        },
    );
    out
}

fuzz_target!(|data: &[u8]| {
    let h = header_list(data);
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
            assert_eq!(
                headers::decode_big_integer(&headers::encode_big_integer(x)),
                Some(x)
            );
        }
    }

    let err = std::io::Error::other(String::from_utf8_lossy(data).into_owned());
    let mut out = hop(&h, attempt, &err, HeaderProfile::Spring);
    for key in [
        headers::ATTEMPTS,
        headers::BACKOFF_TIMESTAMP,
        headers::EXCEPTION_MESSAGE,
    ] {
        assert_eq!(out.get_all(key).count(), 1, "{key} once");
    }
    assert_eq!(
        others(&out),
        others(&h),
        "the record's own headers are kept"
    );
    assert_eq!(
        headers::read_attempts(&out),
        AttemptsHeader::Valid(
            attempt
                .saturating_add(1)
                .min(headers::ATTEMPTS_HARD_CAP as u32)
        )
    );
    assert!(out.last_value(headers::EXCEPTION_MESSAGE).unwrap().len() <= 256);
    // The first hop's coordinates are kept, not overwritten.
    if original.topic.is_some() {
        assert_eq!(Original::read(&out).topic, original.topic);
    }
    headers::propagate_traceparent(&mut out, &headers::derived_trace_id("orders", 3, 42), 7);
    assert!(headers::trace_id(&out).is_some() || h.last(headers::TRACEPARENT).is_some());

    // The compact profile: one compact header, no Spring retry-flow header, the same reads.
    let compact = hop(&h, attempt, &err, HeaderProfile::Compact);
    assert_eq!(compact.get_all(headers::COMPACT).count(), 1);
    let spring_flow = [
        "retry_topic-",
        "kafka_original-",
        "kafka_exception-",
        "kafka_dlt-",
    ];
    assert!(!compact
        .iter()
        .any(|x| spring_flow.iter().any(|p| x.key.starts_with(p))));
    assert_eq!(
        others(&compact),
        others(&h),
        "the record's own headers are kept"
    );
    assert_eq!(
        headers::read_attempts(&compact),
        AttemptsHeader::Valid(
            attempt
                .saturating_add(1)
                .min(headers::ATTEMPTS_HARD_CAP as u32)
        )
    );
    assert_eq!(headers::due_at_ms(&compact), Some(1_700_000_001_000));
    let c = headers::compact(&compact).expect("readable");
    assert!(c.message.len() <= 256);
    if let Some(t) = &original.topic {
        assert_eq!(c.topic, t.as_str(), "the first hop's coordinates are kept");
    }
});
