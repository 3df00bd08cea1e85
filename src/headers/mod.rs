//! Header names and encodings, wire-compatible with Spring Kafka's `@RetryableTopic` flow.
//!
//! Encodings, as spring-kafka writes them (`DeadLetterPublishingRecovererFactory`,
//! `DeadLetterRecordManager`):
//! - `retry_topic-attempts`: 4-byte big-endian int (a legacy 1-byte unsigned value is read);
//! - `retry_topic-backoff-timestamp`, `retry_topic-original-timestamp`: Java
//!   `BigInteger.toByteArray()`, minimal big-endian two's complement;
//! - original partition: 4-byte int; original offset and timestamp: 8-byte longs;
//!   topic, timestamp type, group and exception texts: UTF-8.

mod compact;
mod list;

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;

pub use compact::{Compact, HeaderProfile, COMPACT};
pub use list::{Header, Headers};

use crate::timestamp::TimestampType;

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

/// Set on a dead-letter copy that had to leave its value behind, with why and where the
/// original is. A copy the broker can never take because it exceeds the maximum record size
/// is first sent without its error texts; if it is still too large, the dead-letter topic
/// gets the record's key, headers and coordinates without its value, and this header.
pub const VALUE_DROPPED: &str = "redrive-value-dropped";
/// On a dead letter still too large without its value: how many of the record's own headers
/// were left out (only redrive's and Spring's bookkeeping headers are kept).
pub const HEADERS_DROPPED: &str = "redrive-headers-dropped";

/// On a dead letter that its route's dead-letter handler failed on and the
/// `always_retry_on_error` strategy published to the DLT again: how many times the handler
/// failed on it (4-byte big-endian int). It sets the back-off before the next try.
pub const DLT_HANDLER_FAILURES: &str = "redrive-dlt-handler-failures";

/// On a record replayed from a dead-letter topic: how many times it was replayed (4-byte
/// big-endian int, like `retry_topic-attempts`).
pub const REPLAY_COUNT: &str = "redrive-replay-count";

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
const KNOWN: [&str; 27] = [
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
    VALUE_DROPPED,
    REPLAY_COUNT,
    DLT_HANDLER_FAILURES,
    COMPACT,
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
    let (bytes, start) = big_integer_bytes(v);
    bytes[start..].to_vec()
}

/// [`encode_big_integer`] without an allocation: the long's bytes and where its shortest
/// form starts.
fn big_integer_bytes(v: i64) -> ([u8; 8], usize) {
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
    (bytes, start)
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

/// The compact header, when the record carries a readable one.
pub fn compact(headers: &Headers) -> Option<Compact<'_>> {
    Compact::decode(headers.last_value(COMPACT)?)
}

/// Reads the attempts from the compact header, or `retry_topic-attempts` as Spring does:
/// 1 byte (legacy) or 4 bytes.
pub fn read_attempts(headers: &Headers) -> AttemptsHeader {
    if let Some(c) = compact(headers) {
        return match i32::try_from(c.attempts) {
            Ok(n) if (1..=ATTEMPTS_HARD_CAP).contains(&n) => AttemptsHeader::Valid(c.attempts),
            _ => AttemptsHeader::Malformed,
        };
    }
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

/// Reads the due time (epoch ms): the compact header's, or `retry_topic-backoff-timestamp`.
pub fn due_at_ms(headers: &Headers) -> Option<i64> {
    due_from(
        headers.last_value(COMPACT),
        headers.last_value(BACKOFF_TIMESTAMP),
    )
}

/// The due time given the values of a record's compact header and its
/// `retry_topic-backoff-timestamp` (for readers of other header types).
pub(crate) fn due_from(compact: Option<&[u8]>, backoff: Option<&[u8]>) -> Option<i64> {
    match compact.and_then(Compact::decode) {
        Some(c) => Some(c.due_ms),
        None => backoff.and_then(decode_big_integer),
    }
}

/// Reads the first delivery's record timestamp (epoch ms): the compact header's, or
/// `retry_topic-original-timestamp`.
pub fn original_timestamp(headers: &Headers) -> Option<i64> {
    if let Some(c) = compact(headers) {
        return (c.first_timestamp >= 0).then_some(c.first_timestamp);
    }
    headers
        .last_value(ORIGINAL_TIMESTAMP_RETRY)
        .and_then(decode_big_integer)
}

/// The consumer group whose retry flow wrote the record: the compact header's, or
/// `kafka_dlt-original-consumer-group`.
pub fn original_group(headers: &Headers) -> Option<&[u8]> {
    match compact(headers) {
        Some(c) => Some(c.group.as_bytes()),
        None => headers.last_value(ORIGINAL_CONSUMER_GROUP),
    }
}

/// The main-topic offset a retry or dead-letter copy was first read at: the compact header's,
/// else `kafka_original-offset` (or its dead-letter form).
pub fn original_offset(headers: &Headers) -> Option<i64> {
    match compact(headers) {
        Some(c) => Some(c.offset),
        None => headers
            .last_value(ORIGINAL_OFFSET)
            .or_else(|| headers.last_value(dlt_form::ORIGINAL_OFFSET))
            .and_then(decode_long),
    }
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
    /// Reads the compact header, else the retry-flow form, falling back to the plain
    /// dead-letter form.
    pub fn read(headers: &Headers) -> Self {
        if let Some(c) = compact(headers) {
            let kind = c.timestamp_type();
            return Original {
                topic: Some(c.topic.to_owned()),
                partition: Some(c.partition),
                offset: Some(c.offset),
                timestamp: Some(c.timestamp),
                timestamp_type: Some(kind.as_java_str().to_owned()),
                consumer_group: Some(c.group.to_owned()),
                exception_fqcn: Some(c.error_type.to_owned()),
                exception_cause_fqcn: None,
                exception_message: Some(c.message.to_owned()),
                exception_stacktrace: None,
            };
        }
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
            offset: original_offset(headers),
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
    /// The handler's declared error type, named when the error's `Debug` form names none.
    pub declared_type: Option<&'a str>,
    /// Which headers the hop writes.
    pub profile: HeaderProfile,
}

/// Cuts `buf` back to at most `max` bytes after `start`, at a character boundary (what was
/// written from `start` on is UTF-8).
fn truncate_from(buf: &mut Vec<u8>, start: usize, max: usize) {
    if buf.len() - start <= max {
        return;
    }
    let mut end = start + max;
    // A UTF-8 continuation byte is 0b10xx_xxxx: step back to the start of its character.
    while end > start && (buf[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    buf.truncate(end);
}

/// The Rust name of an error's concrete type is not available through `dyn Error`; the
/// `Debug` form's leading identifier is the closest stable stand-in (e.g. `Timeout` from
/// `Timeout(..)`).
pub(crate) fn type_name_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut buf = Vec::new();
    write_type_name(&mut buf, e);
    String::from_utf8(buf).unwrap_or_default()
}

/// Appends [`type_name_of`]`(e)` to `buf`.
fn write_type_name(buf: &mut Vec<u8>, e: &(dyn std::error::Error + 'static)) {
    use std::io::Write;
    let start = buf.len();
    let _ = write!(buf, "{e:?}");
    let end = std::str::from_utf8(&buf[start..])
        .ok()
        .and_then(|d| d.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')))
        .map_or(buf.len(), |n| start + n);
    buf.truncate(end);
    if buf.len() == start {
        buf.extend_from_slice(b"error");
    }
}

/// Most headers one hop writes: the 13 of [`apply_failure`] and a `traceparent`.
const HOP_HEADERS: usize = 14;

/// Header values of one hop written into one buffer: a hop allocates once for all of them
/// instead of once per header, and the copy frees them at once.
struct HopValues {
    /// A compact hop: the Spring retry-flow headers of earlier hops are dropped.
    drop_spring_flow: bool,
    /// A Spring hop after compact ones: the compact header is dropped.
    drop_compact: bool,
    buf: Vec<u8>,
    /// Key, range in `buf`, and whether an existing header of that name is kept instead;
    /// the first `len` are set.
    pending: [(&'static str, Range<usize>, bool); HOP_HEADERS],
    len: usize,
}

impl HopValues {
    fn new() -> Self {
        HopValues {
            drop_spring_flow: false,
            drop_compact: false,
            buf: Vec::with_capacity(256),
            pending: std::array::from_fn(|_| ("", 0..0, false)),
            len: 0,
        }
    }

    /// Starts a value; what is appended to `buf` until [`end`](Self::end) belongs to it.
    fn start(&self) -> usize {
        self.buf.len()
    }

    fn end(&mut self, key: &'static str, start: usize, keep_existing: bool) {
        self.pending[self.len] = (key, start..self.buf.len(), keep_existing);
        self.len += 1;
    }

    fn put(&mut self, key: &'static str, value: &[u8], keep_existing: bool) {
        let start = self.start();
        self.buf.extend_from_slice(value);
        self.end(key, start, keep_existing);
    }

    fn put_big_integer(&mut self, key: &'static str, v: i64) {
        let (bytes, start) = big_integer_bytes(v);
        self.put(key, &bytes[start..], false);
    }

    /// `existing` with this hop's values: a replaced header is dropped where it was and its
    /// new value appended, a kept one stays, in one new list (as [`Headers::set`] and
    /// [`Headers::push`] would leave it, without their copies and searches).
    fn apply(self, existing: &Headers) -> Headers {
        let pending = &self.pending[..self.len];
        let replaced = |key: &str| {
            pending.iter().any(|(k, _, keep)| !keep && *k == key)
                || (self.drop_spring_flow && is_spring_flow(key))
                || (self.drop_compact && key == COMPACT)
        };
        let mut list = Vec::with_capacity(existing.len() + pending.len());
        list.extend(existing.iter().filter(|h| !replaced(&h.key)).cloned());
        let all = Bytes::from(self.buf);
        for (key, range, keep_existing) in pending {
            if *keep_existing && existing.last(key).is_some() {
                continue;
            }
            list.push(Header {
                key: Cow::Borrowed(key),
                value: Some(all.slice(range.clone())),
            });
        }
        Headers::from_list(list)
    }
}

/// Spring's retry-flow headers, which a compact hop replaces.
fn is_spring_flow(key: &str) -> bool {
    key.starts_with("retry_topic-")
        || key.starts_with("kafka_original-")
        || key.starts_with("kafka_exception-")
        || key.starts_with("kafka_dlt-")
}

/// Applies the headers of a retry or dead-letter hop, as Spring's retry flow does: retry
/// headers and exception headers are replaced (one value each), original coordinates are
/// written only on the first hop. User headers are left untouched.
pub fn apply_failure(headers: &mut Headers, f: &Failure<'_>) {
    *headers = failure_values(headers, f).apply(headers);
}

/// The headers of the copy a failure hop sends: [`apply_failure`]'s, and a `traceparent`
/// derived from the record's coordinates (with `span_id`) when it has no valid one.
pub(crate) fn failure_headers(existing: &Headers, f: &Failure<'_>, span_id: u64) -> Headers {
    use std::io::Write;
    let mut v = failure_values(existing, f);
    if trace_id(existing).is_none() && f.profile == HeaderProfile::Spring {
        let (a, b) = derived_trace_halves(f.topic, f.partition, f.offset);
        let start = v.start();
        let _ = write!(v.buf, "00-{a:016x}{b:016x}-{:016x}-01", span_id | 1);
        v.end(TRACEPARENT, start, false);
    }
    v.apply(existing)
}

/// The error a failure reports and the name an [`ErrorType`](crate::ErrorType) gives it:
/// `Fatal` and `RetryAfter` only steer the routing and `ErrorType` names the type; the error
/// they wrap is what failed.
fn reported<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> (&'e (dyn std::error::Error + 'static), Option<&'e str>) {
    let mut reported = error;
    let mut named: Option<&str> = None;
    while reported.is::<crate::error::Fatal>()
        || reported.is::<crate::error::RetryAfter>()
        || reported.is::<crate::error::ErrorType>()
    {
        if let Some(n) = reported.downcast_ref::<crate::error::ErrorType>() {
            named = named.or(Some(&n.name));
        }
        match reported.source() {
            Some(inner) => reported = inner,
            None => break,
        }
    }
    (reported, named)
}

/// Appends the reported error's type name: its [`ErrorType`](crate::ErrorType) name, else
/// the `Debug` form's identifier, else the declared type, else `error`.
fn write_error_type(buf: &mut Vec<u8>, f: &Failure<'_>) {
    let (reported, named) = reported(f.error);
    let start = buf.len();
    match named {
        Some(name) => buf.extend_from_slice(name.as_bytes()),
        None => {
            write_type_name(buf, reported);
            if let Some(declared) = f.declared_type.filter(|_| &buf[start..] == b"error") {
                buf.truncate(start);
                buf.extend_from_slice(declared.as_bytes());
            }
        }
    }
}

/// The one header of a compact hop. The original coordinates come from the record's
/// compact header, else from its Spring headers (a record from before a switch), else from
/// the record itself.
fn compact_values(headers: &Headers, f: &Failure<'_>) -> HopValues {
    use std::io::Write;
    let mut v = HopValues::new();
    v.drop_spring_flow = true;
    let mut text = Vec::with_capacity(128);
    write_error_type(&mut text, f);
    let kind_end = text.len();
    let _ = write!(text, "{}", reported(f.error).0);
    truncate_from(&mut text, kind_end, f.max_text);
    let text = String::from_utf8_lossy(&text);
    let (kind, message) = text.split_at(kind_end.min(text.len()));
    // Only Spring's headers are read when there is no compact one.
    let spring;
    let originals = match compact(headers) {
        Some(prev) => prev,
        None => {
            spring = Original::read(headers);
            let (ts, kind) = f.timestamp.unwrap_or((-1, TimestampType::CreateTime));
            let log_append = TimestampType::LogAppendTime;
            Compact {
                first_timestamp: original_timestamp(headers).unwrap_or(ts),
                partition: spring.partition.unwrap_or(f.partition),
                offset: spring.offset.unwrap_or(f.offset),
                timestamp: spring.timestamp.unwrap_or(ts),
                log_append_time: match spring.timestamp_type.as_deref() {
                    Some(t) => t == log_append.as_java_str(),
                    None => kind == log_append,
                },
                topic: spring.topic.as_deref().unwrap_or(f.topic),
                ..Compact::default()
            }
        }
    };
    let c = Compact {
        attempts: f.attempt.saturating_add(1).min(ATTEMPTS_HARD_CAP as u32),
        due_ms: f.due_ms,
        group: f.group,
        error_type: kind,
        message,
        ..originals
    };
    let start = v.start();
    c.encode(&mut v.buf);
    v.end(COMPACT, start, false);
    v
}

fn failure_values(headers: &Headers, f: &Failure<'_>) -> HopValues {
    use std::io::Write;
    if f.profile == HeaderProfile::Compact {
        return compact_values(headers, f);
    }
    let mut v = HopValues::new();
    // A record from before a switch back to Spring's headers: its flow so far is in the
    // compact header, which this hop replaces.
    let prev = compact(headers);
    v.drop_compact = prev.is_some();
    match headers
        .last(ORIGINAL_TIMESTAMP_RETRY)
        .and_then(|h| h.value.as_ref())
        .filter(|v| !v.is_empty() && v.len() <= 8)
    {
        _ if prev.is_some() => {
            let first = prev.as_ref().map_or(-1, |c| c.first_timestamp);
            v.put_big_integer(ORIGINAL_TIMESTAMP_RETRY, first);
        }
        // Already on the record: copied as is (a few bytes).
        Some(kept) => v.put(ORIGINAL_TIMESTAMP_RETRY, kept, false),
        None => v.put_big_integer(ORIGINAL_TIMESTAMP_RETRY, f.timestamp.map_or(-1, |(t, _)| t)),
    }
    // Saturates at the cap, so the copy's header always reads back as valid.
    let attempts = f.attempt.saturating_add(1).min(ATTEMPTS_HARD_CAP as u32) as i32;
    v.put(ATTEMPTS, &encode_int(attempts), false);
    v.put_big_integer(BACKOFF_TIMESTAMP, f.due_ms);

    let (ts, kind) = f.timestamp.unwrap_or((-1, TimestampType::CreateTime));
    let (topic, partition, offset, ts, kind) = match &prev {
        Some(c) => (
            c.topic,
            c.partition,
            c.offset,
            c.timestamp,
            c.timestamp_type(),
        ),
        None => (f.topic, f.partition, f.offset, ts, kind),
    };
    // The first hop's coordinates are kept; after a compact flow, the compact header's win
    // over any Spring ones the record also carries (as every reader ranks them).
    let keep = prev.is_none();
    v.put(ORIGINAL_TOPIC, topic.as_bytes(), keep);
    v.put(ORIGINAL_PARTITION, &encode_int(partition), keep);
    v.put(ORIGINAL_OFFSET, &encode_long(offset), keep);
    v.put(ORIGINAL_TIMESTAMP, &encode_long(ts), keep);
    v.put(ORIGINAL_TIMESTAMP_TYPE, kind.as_java_str().as_bytes(), keep);
    v.put(ORIGINAL_CONSUMER_GROUP, f.group.as_bytes(), true);

    let (reported, _) = reported(f.error);
    let mut root: &(dyn std::error::Error + 'static) = reported;
    while let Some(s) = root.source() {
        root = s;
    }

    let start = v.start();
    write_error_type(&mut v.buf, f);
    v.end(EXCEPTION_FQCN, start, false);
    let start = v.start();
    write_type_name(&mut v.buf, root);
    v.end(EXCEPTION_CAUSE_FQCN, start, false);

    // Spring writes `message; root message`; skip the root when the message already says it.
    let start = v.start();
    let _ = write!(v.buf, "{reported}");
    // Not an address comparison: a cause stored first in its error shares its address.
    if reported.source().is_some() {
        let root_text = root.to_string();
        let said = std::str::from_utf8(&v.buf[start..]).is_ok_and(|m| m.contains(&root_text));
        if !said {
            let _ = write!(v.buf, "; {root_text}");
        }
    }
    truncate_from(&mut v.buf, start, f.max_text);
    v.end(EXCEPTION_MESSAGE, start, false);

    let start = v.start();
    let mut cur = Some(f.error);
    while let Some(e) = cur {
        if v.buf.len() > start {
            v.buf.extend_from_slice(b"Caused by: ");
        }
        write_type_name(&mut v.buf, e);
        let _ = writeln!(v.buf, ": {e}");
        cur = e.source();
    }
    truncate_from(&mut v.buf, start, f.max_text);
    v.end(EXCEPTION_STACKTRACE, start, false);
    v
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
        && !trace.bytes().all(|b| b == b'0'))
    .then_some(trace)
}

/// The trace id redrive uses for a record that arrived without a `traceparent`: derived from
/// its coordinates, so its first attempt (logged before any hop) and the copies share it.
pub fn derived_trace_id(topic: &str, partition: i32, offset: i64) -> String {
    let (a, b) = derived_trace_halves(topic, partition, offset);
    format!("{a:016x}{b:016x}")
}

/// The two halves of [`derived_trace_id`], never both zero.
fn derived_trace_halves(topic: &str, partition: i32, offset: i64) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: the same record gives the same id everywhere.
    let mut a = std::collections::hash_map::DefaultHasher::new();
    (topic, partition, offset, 0u8).hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (topic, partition, offset, 1u8).hash(&mut b);
    (a.finish() | 1, b.finish())
}

/// Makes sure a hop carries a `traceparent`: a valid one is kept byte for byte (it is a user
/// header like any other); a record without one gets `fallback_trace` with `span_id`, so every
/// attempt of a record shares one trace.
pub fn propagate_traceparent(headers: &mut Headers, fallback_trace: &str, span_id: u64) {
    if trace_id(headers).is_some() {
        return;
    }
    headers.set(
        TRACEPARENT,
        format!("00-{fallback_trace}-{:016x}-01", span_id | 1).into_bytes(),
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

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("charge failed")
        }
    }
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("gateway said nö")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl std::error::Error for Inner {}

    fn hop(error: &(dyn std::error::Error + 'static), max_text: usize) -> Headers {
        hop_declared(error, max_text, None)
    }

    fn hop_declared(
        error: &(dyn std::error::Error + 'static),
        max_text: usize,
        declared_type: Option<&str>,
    ) -> Headers {
        let mut h = Headers::new();
        apply_failure(
            &mut h,
            &Failure {
                topic: "orders",
                partition: 0,
                offset: 1,
                timestamp: None,
                group: "g",
                attempt: 1,
                due_ms: 0,
                error,
                max_text,
                declared_type,
                profile: Default::default(),
            },
        );
        h
    }

    /// A hop of the record `orders/3@7` (or of the copy `orders-retry/3@1`) failing attempt
    /// `attempt` in group `group`, in `profile`, applied to `h`.
    fn hop_on(h: &mut Headers, profile: HeaderProfile, attempt: u32, group: &str) {
        let copy = attempt > 1;
        apply_failure(
            h,
            &Failure {
                topic: if copy { "orders-retry" } else { "orders" },
                partition: 3,
                offset: if copy { 1 } else { 7 },
                timestamp: Some((1_000, TimestampType::CreateTime)),
                group,
                attempt,
                due_ms: 5_000 * i64::from(attempt),
                error: &Outer(Inner),
                max_text: 4096,
                declared_type: None,
                profile,
            },
        );
    }

    #[test]
    fn compact_hops_carry_the_flow_in_one_header() {
        let mut h = Headers::new();
        h.push("user", Some(Bytes::from_static(b"u")));
        hop_on(&mut h, HeaderProfile::Compact, 1, "billing");
        let keys: Vec<&str> = h.iter().map(|x| &*x.key).collect();
        assert_eq!(keys, ["user", COMPACT]);
        hop_on(&mut h, HeaderProfile::Compact, 2, "billing");
        assert_eq!(h.len(), 2, "one compact header, replaced");
        assert_eq!(attempt_of(&h), 3);
        assert_eq!(due_at_ms(&h), Some(10_000));
        assert_eq!(original_timestamp(&h), Some(1_000));
        assert_eq!(original_group(&h), Some(&b"billing"[..]));
        let o = Original::read(&h);
        assert_eq!(
            (o.topic.as_deref(), o.partition, o.offset),
            (Some("orders"), Some(3), Some(7)),
            "the first hop's coordinates"
        );
        assert_eq!(o.exception_fqcn.as_deref(), Some("Outer"));
        assert_eq!(o.exception_message.as_deref(), Some("charge failed"));
        let compact_len = h.last_value(COMPACT).unwrap().len();
        let mut spring = Headers::new();
        hop_on(&mut spring, HeaderProfile::Spring, 1, "billing");
        let spring_len: usize = spring
            .iter()
            .map(|x| x.key.len() + x.value.as_ref().map_or(0, Bytes::len))
            .sum();
        assert!(
            compact_len * 4 < spring_len,
            "{compact_len} vs {spring_len} bytes"
        );
    }

    #[test]
    fn a_switch_to_compact_keeps_the_originals_and_drops_springs_headers() {
        let mut h = Headers::new();
        hop_on(&mut h, HeaderProfile::Spring, 1, "billing");
        hop_on(&mut h, HeaderProfile::Compact, 2, "billing");
        let keys: Vec<&str> = h.iter().map(|x| &*x.key).collect();
        assert_eq!(
            keys,
            [TRACEPARENT, COMPACT]
                .iter()
                .filter(|k| keys.contains(k))
                .copied()
                .collect::<Vec<_>>()
        );
        assert!(h.last(ATTEMPTS).is_none() && h.last(ORIGINAL_TOPIC).is_none());
        let o = Original::read(&h);
        assert_eq!((o.topic.as_deref(), o.offset), (Some("orders"), Some(7)));
        assert_eq!(attempt_of(&h), 3);
        // And back: a Spring hop after a compact one carries the compact originals over.
        hop_on(&mut h, HeaderProfile::Spring, 3, "billing");
        assert!(h.last(COMPACT).is_none(), "replaced by Spring's headers");
        assert_eq!(attempt_of(&h), 4);
        let o = Original::read(&h);
        assert_eq!(
            (o.topic.as_deref(), o.partition, o.offset),
            (Some("orders"), Some(3), Some(7))
        );
        assert_eq!(original_timestamp(&h), Some(1_000));
    }

    #[test]
    fn exception_headers_name_the_chain() {
        let h = hop(&Outer(Inner), 4096);
        let text = |k| {
            std::str::from_utf8(h.last_value(k).unwrap())
                .unwrap()
                .to_owned()
        };
        assert_eq!(text(EXCEPTION_FQCN), "Outer");
        assert_eq!(text(EXCEPTION_CAUSE_FQCN), "Inner");
        assert_eq!(text(EXCEPTION_MESSAGE), "charge failed; gateway said nö");
        assert_eq!(
            text(EXCEPTION_STACKTRACE),
            "Outer: charge failed\nCaused by: Inner: gateway said nö\n"
        );
        // A Debug form without a leading identifier names no type.
        let plain: crate::BoxError = "plain text".into();
        let h = hop(&*plain, 4096);
        assert_eq!(h.last_value(EXCEPTION_FQCN), Some(&b"error"[..]));
        // The handler's declared error type then names it; a named error type wins over both.
        let h = hop_declared(&*plain, 4096, Some("shop::PaymentError"));
        assert_eq!(
            h.last_value(EXCEPTION_FQCN),
            Some(&b"shop::PaymentError"[..])
        );
        let h = hop_declared(&Outer(Inner), 4096, Some("shop::PaymentError"));
        assert_eq!(h.last_value(EXCEPTION_FQCN), Some(&b"Outer"[..]));
        let named = crate::Fatal::new(crate::ErrorType::new("http-503", Outer(Inner)));
        let h = hop_declared(&named, 4096, Some("shop::PaymentError"));
        assert_eq!(h.last_value(EXCEPTION_FQCN), Some(&b"http-503"[..]));
        assert_eq!(h.last_value(EXCEPTION_CAUSE_FQCN), Some(&b"Inner"[..]));
        assert_eq!(
            h.last_value(EXCEPTION_MESSAGE),
            Some("charge failed; gateway said nö".as_bytes())
        );
    }

    #[test]
    fn error_texts_are_cut_at_a_character_boundary() {
        // "ö" is two bytes; a cut inside it steps back to before it.
        let h = hop(&Outer(Inner), 29);
        assert_eq!(
            h.last_value(EXCEPTION_MESSAGE),
            Some("charge failed; gateway said n".as_bytes())
        );
        let h = hop(&Outer(Inner), 30);
        assert_eq!(
            h.last_value(EXCEPTION_MESSAGE),
            Some("charge failed; gateway said n".as_bytes())
        );
        let h = hop(&Outer(Inner), 31);
        assert_eq!(
            h.last_value(EXCEPTION_MESSAGE),
            Some("charge failed; gateway said nö".as_bytes())
        );
    }
}
