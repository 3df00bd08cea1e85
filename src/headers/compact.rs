//! The compact header profile: everything the retry flow needs in one header,
//! [`COMPACT`], instead of Spring's thirteen. It is binary, version-prefixed:
//!
//! | field | encoding |
//! |---|---|
//! | version | 1 byte, `1` |
//! | attempts (of the next delivery) | unsigned LEB128 varint |
//! | due time, epoch ms | zigzag varint |
//! | first delivery's record timestamp, epoch ms (-1: none) | zigzag varint |
//! | original partition | zigzag varint |
//! | original offset | zigzag varint |
//! | original timestamp, epoch ms (-1: none) | zigzag varint |
//! | original timestamp type | 1 byte: 0 `CREATE_TIME`, 1 `LOG_APPEND_TIME` |
//! | original topic, consumer group, error type, error message | each a varint length, then UTF-8 |
//!
//! Every worker reads both profiles (the compact header first), so a route can switch
//! without draining its retry topics. A hop in the compact profile removes the Spring
//! retry-flow headers a record may still carry from a hop before the switch.

/// The compact profile's one header.
pub const COMPACT: &str = "redrive-compact";

/// Which headers a failure hop writes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum HeaderProfile {
    /// Spring's retry-flow headers (`retry_topic-*`, `kafka_original-*`, `kafka_exception-*`,
    /// `kafka_dlt-original-consumer-group`) and a `traceparent`: what Spring consumers and
    /// tools read. The default.
    #[default]
    Spring,
    /// One [`COMPACT`] header with what redrive needs (attempts, due time, original
    /// coordinates, group, error type and message): cheaper to write, send and read; no
    /// root cause, error chain or derived `traceparent`.
    Compact,
}

impl std::str::FromStr for HeaderProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spring" => Ok(HeaderProfile::Spring),
            "compact" => Ok(HeaderProfile::Compact),
            other => Err(format!(
                "`{other}` is not a header profile: spring or compact"
            )),
        }
    }
}

const VERSION: u8 = 1;

/// The compact header's content, borrowing its strings from the header value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compact<'a> {
    /// The attempt the copy's next delivery is (1-based).
    pub attempts: u32,
    /// When the copy is due, epoch ms.
    pub due_ms: i64,
    /// The first delivery's record timestamp, epoch ms, or -1.
    pub first_timestamp: i64,
    /// The original partition.
    pub partition: i32,
    /// The original offset.
    pub offset: i64,
    /// The original record's timestamp, epoch ms, or -1.
    pub timestamp: i64,
    /// The original timestamp's type: true for `LOG_APPEND_TIME`.
    pub log_append_time: bool,
    /// The original topic.
    pub topic: &'a str,
    /// The consumer group whose flow wrote it.
    pub group: &'a str,
    /// The error's type name.
    pub error_type: &'a str,
    /// The error message (cut to the policy's `max_header_text`).
    pub message: &'a str,
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_signed(buf: &mut Vec<u8>, v: i64) {
    put_varint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_varint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Reads fields off the front of a header value.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn signed(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(s).ok()
    }
}

impl<'a> Compact<'a> {
    /// The original timestamp's type.
    pub fn timestamp_type(&self) -> crate::timestamp::TimestampType {
        match self.log_append_time {
            true => crate::timestamp::TimestampType::LogAppendTime,
            false => crate::timestamp::TimestampType::CreateTime,
        }
    }

    /// Appends the encoded header value to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.push(VERSION);
        put_varint(buf, u64::from(self.attempts));
        put_signed(buf, self.due_ms);
        put_signed(buf, self.first_timestamp);
        put_signed(buf, i64::from(self.partition));
        put_signed(buf, self.offset);
        put_signed(buf, self.timestamp);
        buf.push(u8::from(self.log_append_time));
        for s in [self.topic, self.group, self.error_type, self.message] {
            put_str(buf, s);
        }
    }

    /// Decodes a header value; `None` for another version or a malformed value.
    pub fn decode(value: &'a [u8]) -> Option<Self> {
        let mut r = Reader(value);
        if r.byte()? != VERSION {
            return None;
        }
        let attempts = u32::try_from(r.varint()?).ok()?;
        let (due_ms, first_timestamp) = (r.signed()?, r.signed()?);
        let partition = i32::try_from(r.signed()?).ok()?;
        let (offset, timestamp) = (r.signed()?, r.signed()?);
        let log_append_time = r.byte()? == 1;
        Some(Compact {
            attempts,
            due_ms,
            first_timestamp,
            partition,
            offset,
            timestamp,
            log_append_time,
            topic: r.str()?,
            group: r.str()?,
            error_type: r.str()?,
            message: r.str()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_and_readable_back() {
        let c = Compact {
            attempts: 2,
            due_ms: 1_765_000_000_000,
            first_timestamp: 1_764_999_999_000,
            partition: 3,
            offset: 42,
            timestamp: -1,
            log_append_time: false,
            topic: "orders",
            group: "billing",
            error_type: "http-503",
            message: "POST /orders answered 503",
        };
        let mut buf = Vec::new();
        c.encode(&mut buf);
        assert!(buf.len() < 80, "{} bytes", buf.len());
        assert_eq!(Compact::decode(&buf), Some(c));
        assert_eq!(Compact::decode(&buf[..buf.len() - 1]), None, "truncated");
        assert_eq!(Compact::decode(&[2]), None, "another version");
    }

    proptest! {
        #[test]
        fn any_value_round_trips(
            attempts in any::<u32>(), due in any::<i64>(), first in any::<i64>(),
            partition in any::<i32>(), offset in any::<i64>(), ts in any::<i64>(),
            log in any::<bool>(), topic in ".*", group in ".*", kind in ".*", msg in ".*",
        ) {
            let c = Compact {
                attempts, due_ms: due, first_timestamp: first, partition, offset,
                timestamp: ts, log_append_time: log, topic: &topic, group: &group,
                error_type: &kind, message: &msg,
            };
            let mut buf = Vec::new();
            c.encode(&mut buf);
            prop_assert_eq!(Compact::decode(&buf), Some(c));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Compact::decode(&bytes);
        }
    }
}
