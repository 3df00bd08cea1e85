//! Header names and encodings, wire-compatible with Spring Kafka's `@RetryableTopic` flow.
//!
//! Encodings, as spring-kafka writes them (`DeadLetterPublishingRecovererFactory`,
//! `DeadLetterRecordManager`):
//! - `retry_topic-attempts`: 4-byte big-endian int (a legacy 1-byte unsigned value is read);
//! - `retry_topic-backoff-timestamp`, `retry_topic-original-timestamp`: Java
//!   `BigInteger.toByteArray()`, minimal big-endian two's complement;
//! - original partition: 4-byte int; original offset and timestamp: 8-byte longs;
//!   topic, timestamp type, group and exception texts: UTF-8.

use std::borrow::Cow;

use bytes::Bytes;

use crate::record::{Headers, TimestampType};

/// `retry_topic-attempts`: the attempt the record is on (1 = first delivery).
pub const ATTEMPTS: &str = "retry_topic-attempts";
/// `retry_topic-backoff-timestamp`: epoch ms when the record becomes due.
pub const BACKOFF_TIMESTAMP: &str = "retry_topic-backoff-timestamp";
/// `retry_topic-original-timestamp`: the first delivery's record timestamp.
pub const ORIGINAL_TIMESTAMP_RETRY: &str = "retry_topic-original-timestamp";

/// Original coordinates, retry-flow form (`kafka_original-*`).
pub const ORIGINAL_TOPIC: &str = "kafka_original-topic";
/// Original partition (4-byte int).
pub const ORIGINAL_PARTITION: &str = "kafka_original-partition";
/// Original offset (8-byte long).
pub const ORIGINAL_OFFSET: &str = "kafka_original-offset";
/// Original timestamp (8-byte long).
pub const ORIGINAL_TIMESTAMP: &str = "kafka_original-timestamp";
/// Original timestamp type (`CreateTime` / `LogAppendTime`, Kafka's Java names).
pub const ORIGINAL_TIMESTAMP_TYPE: &str = "kafka_original-timestamp-type";
/// The consumer group that failed (Spring uses the `dlt-` name in both forms).
pub const ORIGINAL_CONSUMER_GROUP: &str = "kafka_dlt-original-consumer-group";
/// Error type name.
pub const EXCEPTION_FQCN: &str = "kafka_exception-fqcn";
/// Type name of the root of the `source()` chain.
pub const EXCEPTION_CAUSE_FQCN: &str = "kafka_exception-cause-fqcn";
/// Error message (`message; root message`).
pub const EXCEPTION_MESSAGE: &str = "kafka_exception-message";
/// The error chain, one error per line.
pub const EXCEPTION_STACKTRACE: &str = "kafka_exception-stacktrace";

/// W3C trace context header, propagated across hops so all attempts share one trace.
pub const TRACEPARENT: &str = "traceparent";

/// Plain `DeadLetterPublishingRecoverer` form of the same data (read, not written).
pub mod dlt_form {
    /// Original topic.
    pub const ORIGINAL_TOPIC: &str = "kafka_dlt-original-topic";
    /// Original partition.
    pub const ORIGINAL_PARTITION: &str = "kafka_dlt-original-partition";
    /// Original offset.
    pub const ORIGINAL_OFFSET: &str = "kafka_dlt-original-offset";
    /// Original timestamp.
    pub const ORIGINAL_TIMESTAMP: &str = "kafka_dlt-original-timestamp";
    /// Original timestamp type.
    pub const ORIGINAL_TIMESTAMP_TYPE: &str = "kafka_dlt-original-timestamp-type";
    /// Error type name.
    pub const EXCEPTION_FQCN: &str = "kafka_dlt-exception-fqcn";
    /// Root cause type name.
    pub const EXCEPTION_CAUSE_FQCN: &str = "kafka_dlt-exception-cause-fqcn";
    /// Error message.
    pub const EXCEPTION_MESSAGE: &str = "kafka_dlt-exception-message";
    /// Stack trace.
    pub const EXCEPTION_STACKTRACE: &str = "kafka_dlt-exception-stacktrace";
}

/// The header names redrive writes or reads, so a consumed record's copy of them borrows a
/// static string instead of allocating one per header.
const KNOWN: [&str; 25] = [
    ATTEMPTS,
    BACKOFF_TIMESTAMP,
    ORIGINAL_TIMESTAMP_RETRY,
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
    ORIGINAL_TIMESTAMP_TYPE,
    ORIGINAL_CONSUMER_GROUP,
    EXCEPTION_FQCN,
    EXCEPTION_CAUSE_FQCN,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    TRACEPARENT,
    dlt_form::ORIGINAL_TOPIC,
    dlt_form::ORIGINAL_PARTITION,
    dlt_form::ORIGINAL_OFFSET,
    dlt_form::ORIGINAL_TIMESTAMP,
    dlt_form::ORIGINAL_TIMESTAMP_TYPE,
    dlt_form::EXCEPTION_FQCN,
    dlt_form::EXCEPTION_CAUSE_FQCN,
    dlt_form::EXCEPTION_MESSAGE,
    dlt_form::EXCEPTION_STACKTRACE,
    crate::layer::retry_topic::VALUE_DROPPED,
    // `sidecar::dlt::REPLAY_COUNT`, spelled out: that module exists only with feature `sidecar`.
    "redrive-replay-count",
];

/// `name` as a header key: a well-known name borrows its static string, others are copied.
pub(crate) fn interned(name: &str) -> Cow<'static, str> {
    match KNOWN.iter().find(|k| **k == name) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(name.to_owned()),
    }
}

/// Spring caps attempts at `Short.MAX_VALUE`; values outside 1..=cap read as attempt 1.
/// The largest attempt count read as valid, and written: a header claiming more is garbage.
pub const ATTEMPTS_HARD_CAP: i32 = i16::MAX as i32;

/// Encodes an int as Java's `ByteBuffer.putInt` does.
pub fn encode_int(v: i32) -> [u8; 4] {
    v.to_be_bytes()
}

/// Encodes a long as Java's `ByteBuffer.putLong` does.
pub fn encode_long(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Encodes a long as Java's `BigInteger.valueOf(v).toByteArray()`: the shortest big-endian
/// two's complement form.
pub fn encode_big_integer(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        let redundant = (b == 0x00 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    bytes[start..].to_vec()
}

/// Decodes `BigInteger.toByteArray()` output of 1 to 8 bytes; `None` for any other length.
pub fn decode_big_integer(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 8 {
        return None;
    }
    let fill = if b[0] & 0x80 != 0 { 0xFF } else { 0x00 };
    let mut buf = [fill; 8];
    buf[8 - b.len()..].copy_from_slice(b);
    Some(i64::from_be_bytes(buf))
}

/// Decodes a 4-byte big-endian int.
pub fn decode_int(b: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(b.try_into().ok()?))
}

/// Decodes an 8-byte big-endian long.
pub fn decode_long(b: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(b.try_into().ok()?))
}

/// What reading the attempts header found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptsHeader {
    /// No header: a first delivery.
    Absent,
    /// A valid value.
    Valid(u32),
    /// A header with a wrong length or a value out of range; treated as attempt 1.
    Malformed,
}

/// Reads `retry_topic-attempts` as Spring does: 1 byte (legacy) or 4 bytes.
pub fn read_attempts(headers: &Headers) -> AttemptsHeader {
    let Some(h) = headers.last(ATTEMPTS) else {
        return AttemptsHeader::Absent;
    };
    let Some(v) = h.value.as_deref() else {
        return AttemptsHeader::Malformed;
    };
    let raw = match v.len() {
        1 => i32::from(v[0]),
        4 => decode_int(v).unwrap_or(0),
        _ => return AttemptsHeader::Malformed,
    };
    if (1..=ATTEMPTS_HARD_CAP).contains(&raw) {
        AttemptsHeader::Valid(raw as u32)
    } else {
        AttemptsHeader::Malformed
    }
}

/// The attempt number (1-based) of a record; malformed or missing headers give 1.
pub fn attempt_of(headers: &Headers) -> u32 {
    match read_attempts(headers) {
        AttemptsHeader::Valid(n) => n,
        _ => 1,
    }
}

/// Reads `retry_topic-backoff-timestamp` (epoch ms when due).
pub fn due_at_ms(headers: &Headers) -> Option<i64> {
    headers
        .last_value(BACKOFF_TIMESTAMP)
        .and_then(decode_big_integer)
}

/// Reads `retry_topic-original-timestamp` (epoch ms of the first delivery's record).
pub fn original_timestamp(headers: &Headers) -> Option<i64> {
    headers
        .last_value(ORIGINAL_TIMESTAMP_RETRY)
        .and_then(decode_big_integer)
}

/// Original coordinates of a record that went through retry or dead-letter topics, read from
/// either header form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Original {
    /// The topic the record was first read from.
    pub topic: Option<String>,
    /// Its partition.
    pub partition: Option<i32>,
    /// Its offset.
    pub offset: Option<i64>,
    /// Its timestamp (ms).
    pub timestamp: Option<i64>,
    /// Its timestamp type, as Java names it.
    pub timestamp_type: Option<String>,
    /// The consumer group that failed it.
    pub consumer_group: Option<String>,
    /// The error type name.
    pub exception_fqcn: Option<String>,
    /// The root cause type name.
    pub exception_cause_fqcn: Option<String>,
    /// The error message.
    pub exception_message: Option<String>,
    /// The error chain or stack trace.
    pub exception_stacktrace: Option<String>,
}

impl Original {
    /// Reads the retry-flow form, falling back to the plain dead-letter form.
    pub fn read(headers: &Headers) -> Self {
        let text = |a: &str, b: &str| {
            headers
                .last_value(a)
                .or_else(|| headers.last_value(b))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let bin = |a: &str, b: &str| headers.last_value(a).or_else(|| headers.last_value(b));
        Original {
            topic: text(ORIGINAL_TOPIC, dlt_form::ORIGINAL_TOPIC),
            partition: bin(ORIGINAL_PARTITION, dlt_form::ORIGINAL_PARTITION).and_then(decode_int),
            offset: bin(ORIGINAL_OFFSET, dlt_form::ORIGINAL_OFFSET).and_then(decode_long),
            timestamp: bin(ORIGINAL_TIMESTAMP, dlt_form::ORIGINAL_TIMESTAMP).and_then(decode_long),
            timestamp_type: text(ORIGINAL_TIMESTAMP_TYPE, dlt_form::ORIGINAL_TIMESTAMP_TYPE),
            consumer_group: text(ORIGINAL_CONSUMER_GROUP, ORIGINAL_CONSUMER_GROUP),
            exception_fqcn: text(EXCEPTION_FQCN, dlt_form::EXCEPTION_FQCN),
            exception_cause_fqcn: text(EXCEPTION_CAUSE_FQCN, dlt_form::EXCEPTION_CAUSE_FQCN),
            exception_message: text(EXCEPTION_MESSAGE, dlt_form::EXCEPTION_MESSAGE),
            exception_stacktrace: text(EXCEPTION_STACKTRACE, dlt_form::EXCEPTION_STACKTRACE),
        }
    }
}

/// What a failure hop (to a retry topic or the DLT) writes.
pub struct Failure<'a> {
    /// The topic the failed record was read from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp and type.
    pub timestamp: Option<(i64, TimestampType)>,
    /// The consumer group that failed it.
    pub group: &'a str,
    /// The attempt that failed (1 = first delivery); the copy carries `attempt + 1`.
    pub attempt: u32,
    /// Epoch ms when the copy becomes due (the failure time for the DLT).
    pub due_ms: i64,
    /// The error.
    pub error: &'a (dyn std::error::Error + 'static),
    /// Error texts are cut to this many bytes.
    pub max_text: usize,
}

fn truncate(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The Rust name of an error's concrete type is not available through `dyn Error`; the
/// `Debug` form's leading identifier is the closest stable stand-in (e.g. `Timeout` from
/// `Timeout(..)`).
pub(crate) fn type_name_of(e: &(dyn std::error::Error + 'static)) -> String {
    let dbg = format!("{e:?}");
    let end = dbg
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(dbg.len());
    if end == 0 {
        "error".to_owned()
    } else {
        dbg[..end].to_owned()
    }
}

/// Applies the headers of a retry or dead-letter hop, as Spring's retry flow does: retry
/// headers and exception headers are replaced (one value each), original coordinates are
/// written only on the first hop. User headers are left untouched.
pub fn apply_failure(headers: &mut Headers, f: &Failure<'_>) {
    let original_ts = headers
        .last_value(ORIGINAL_TIMESTAMP_RETRY)
        .filter(|v| !v.is_empty() && v.len() <= 8)
        .map(Bytes::copy_from_slice)
        .unwrap_or_else(|| Bytes::from(encode_big_integer(f.timestamp.map_or(-1, |(t, _)| t))));
    headers.set(ORIGINAL_TIMESTAMP_RETRY, original_ts);
    headers.set(
        ATTEMPTS,
        // Saturates at the cap, so the copy's header always reads back as valid.
        Bytes::copy_from_slice(&encode_int(
            f.attempt.saturating_add(1).min(ATTEMPTS_HARD_CAP as u32) as i32,
        )),
    );
    headers.set(BACKOFF_TIMESTAMP, Bytes::from(encode_big_integer(f.due_ms)));

    let mut once = |key: &'static str, value: Bytes| {
        if headers.last(key).is_none() {
            headers.push(key, Some(value));
        }
    };
    once(ORIGINAL_TOPIC, Bytes::copy_from_slice(f.topic.as_bytes()));
    once(
        ORIGINAL_PARTITION,
        Bytes::copy_from_slice(&encode_int(f.partition)),
    );
    once(
        ORIGINAL_OFFSET,
        Bytes::copy_from_slice(&encode_long(f.offset)),
    );
    let (ts, kind) = f.timestamp.unwrap_or((-1, TimestampType::CreateTime));
    once(ORIGINAL_TIMESTAMP, Bytes::copy_from_slice(&encode_long(ts)));
    once(
        ORIGINAL_TIMESTAMP_TYPE,
        Bytes::from_static(kind.as_java_str().as_bytes()),
    );
    once(
        ORIGINAL_CONSUMER_GROUP,
        Bytes::copy_from_slice(f.group.as_bytes()),
    );

    // `Fatal` and `RetryAfter` only steer the routing; the error they wrap is what failed.
    let mut reported: &(dyn std::error::Error + 'static) = f.error;
    while reported.is::<crate::error::Fatal>() || reported.is::<crate::error::RetryAfter>() {
        match reported.source() {
            Some(inner) => reported = inner,
            None => break,
        }
    }
    let mut root: &(dyn std::error::Error + 'static) = reported;
    while let Some(s) = root.source() {
        root = s;
    }
    // Spring writes `message; root message`; skip the root when the message already says it.
    let message =
        if std::ptr::addr_eq(root, reported) || reported.to_string().contains(&root.to_string()) {
            reported.to_string()
        } else {
            format!("{}; {}", reported, root)
        };
    let mut trace = String::new();
    let mut cur = Some(f.error);
    let mut first = true;
    while let Some(e) = cur {
        if !first {
            trace.push_str("Caused by: ");
        }
        first = false;
        trace.push_str(&type_name_of(e));
        trace.push_str(": ");
        trace.push_str(&e.to_string());
        trace.push('\n');
        cur = e.source();
    }
    headers.set(EXCEPTION_FQCN, type_name_of(reported).into_bytes());
    headers.set(EXCEPTION_CAUSE_FQCN, type_name_of(root).into_bytes());
    headers.set(
        EXCEPTION_MESSAGE,
        truncate(message, f.max_text).into_bytes(),
    );
    headers.set(
        EXCEPTION_STACKTRACE,
        truncate(trace, f.max_text).into_bytes(),
    );
}

/// The trace id of a valid W3C `traceparent` header (`00-<trace id>-<parent id>-<flags>`).
pub fn trace_id(headers: &Headers) -> Option<&str> {
    let v = std::str::from_utf8(headers.last_value(TRACEPARENT)?).ok()?;
    let mut parts = v.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2)
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace != "0".repeat(32))
    .then_some(trace)
}

/// The trace id redrive uses for a record that arrived without a `traceparent`: derived from
/// its coordinates, so its first attempt (logged before any hop) and the copies share it.
pub fn derived_trace_id(topic: &str, partition: i32, offset: i64) -> String {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: the same record gives the same id everywhere.
    let mut a = std::collections::hash_map::DefaultHasher::new();
    (topic, partition, offset, 0u8).hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (topic, partition, offset, 1u8).hash(&mut b);
    format!("{:016x}{:016x}", a.finish() | 1, b.finish())
}

/// Makes sure a hop carries a `traceparent`: a valid one is kept byte for byte (it is a user
/// header like any other); a record without one gets `fallback_trace` with `span_id`, so every
/// attempt of a record shares one trace.
pub fn propagate_traceparent(headers: &mut Headers, fallback_trace: &str, span_id: u64) {
    ensure_traceparent(headers, || fallback_trace.to_owned(), span_id);
}

/// [`propagate_traceparent`] with the fallback trace id computed only when it is needed.
pub(crate) fn ensure_traceparent(
    headers: &mut Headers,
    fallback_trace: impl FnOnce() -> String,
    span_id: u64,
) {
    if trace_id(headers).is_some() {
        return;
    }
    headers.set(
        TRACEPARENT,
        format!("00-{}-{:016x}-01", fallback_trace(), span_id | 1).into_bytes(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_integer_is_minimal_twos_complement() {
        assert_eq!(encode_big_integer(0), vec![0x00]);
        assert_eq!(encode_big_integer(127), vec![0x7F]);
        assert_eq!(encode_big_integer(128), vec![0x00, 0x80]);
        assert_eq!(encode_big_integer(-1), vec![0xFF]);
        assert_eq!(encode_big_integer(-129), vec![0xFF, 0x7F]);
        for v in [
            0,
            1,
            -1,
            127,
            128,
            255,
            256,
            -128,
            -129,
            i64::MAX,
            i64::MIN,
            1_700_000_000_000,
        ] {
            assert_eq!(decode_big_integer(&encode_big_integer(v)), Some(v), "{v}");
        }
        assert_eq!(decode_big_integer(&[]), None);
        assert_eq!(decode_big_integer(&[0; 9]), None);
    }

    #[test]
    fn traceparent_keeps_the_trace_and_creates_one_when_missing() {
        let mut h = Headers::new();
        let derived = derived_trace_id("orders", 1, 7);
        assert_eq!(derived, derived_trace_id("orders", 1, 7));
        assert_ne!(derived, derived_trace_id("orders", 1, 8));
        propagate_traceparent(&mut h, &derived, 0xabcdef);
        let first = trace_id(&h).unwrap().to_owned();
        assert_eq!(first, derived);
        propagate_traceparent(&mut h, "ignored", 0x1234);
        assert_eq!(
            trace_id(&h),
            Some(first.as_str()),
            "the trace id survives a hop"
        );
        assert_eq!(h.get_all(TRACEPARENT).count(), 1);
        h.set(TRACEPARENT, &b"garbage"[..]);
        assert_eq!(trace_id(&h), None);
    }

    #[test]
    fn attempts_reads_legacy_and_rejects_garbage() {
        let mut h = Headers::new();
        assert_eq!(read_attempts(&h), AttemptsHeader::Absent);
        h.set(ATTEMPTS, vec![3u8]);
        assert_eq!(read_attempts(&h), AttemptsHeader::Valid(3));
        h.set(ATTEMPTS, encode_int(4).to_vec());
        assert_eq!(read_attempts(&h), AttemptsHeader::Valid(4));
        for bad in [
            vec![0u8, 0, 0],
            encode_int(-2).to_vec(),
            encode_int(0).to_vec(),
            encode_int(40_000).to_vec(),
        ] {
            h.set(ATTEMPTS, bad);
            assert_eq!(read_attempts(&h), AttemptsHeader::Malformed);
            assert_eq!(attempt_of(&h), 1);
        }
    }
}
