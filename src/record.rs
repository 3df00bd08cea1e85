//! The record a handler receives: an owned copy of one Kafka message.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::commit::Acknowledgment;
use crate::headers::{Header, Headers};
use crate::partition_state::{Deferral, PartitionShared};
use crate::timestamp::Timestamp;

/// An owned Kafka record, as handed to a handler.
///
/// Key, value and headers are [`Bytes`], so cloning a record is cheap and a tombstone
/// (`value() == None`) stays distinct from an empty value.
#[derive(Clone)]
pub struct Record {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp: Option<Timestamp>,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Headers,
    /// The partition's runtime state, so a layer can defer the record's completion and a
    /// handler can acknowledge the record. The acknowledgement's sender lives there rather than
    /// in every record: it keeps a record at 128 bytes, which the compiler moves inline
    /// where a larger one costs a `memcpy` call at each of the several moves per record.
    pub(crate) partition_state: Option<Arc<PartitionShared>>,
}

// See `partition_state`: the per-record moves are measurable in the happy-path benchmark.
const _: () = assert!(std::mem::size_of::<Record>() <= 128);

impl Record {
    /// A record with the given coordinates and no key, value or headers.
    /// Useful to test a handler without a broker.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Self {
        Record {
            topic: topic.into(),
            partition,
            offset,
            timestamp: None,
            key: None,
            value: None,
            headers: Headers::new(),
            partition_state: None,
        }
    }

    /// An owned copy of a message consumed with rdkafka, headers included: for tools that read
    /// topics themselves (a dead-letter browser, a replay) and hand the records to redrive's
    /// header readers.
    pub fn from_message(msg: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        use rdkafka::message::Message;
        Self::from_borrowed(msg, Arc::from(msg.topic()), true)
    }

    /// An owned copy of a consumed message, read from `topic` (interned by the caller); its
    /// headers only with `read_headers` (librdkafka parses them only when asked).
    pub(crate) fn from_borrowed(
        msg: &rdkafka::message::BorrowedMessage<'_>,
        topic: Arc<str>,
        read_headers: bool,
    ) -> Self {
        use rdkafka::message::{Headers as _, Message};
        // Not `msg.headers()`: rust-rdkafka's reader panics on a name that is not UTF-8.
        let parsed = if read_headers {
            redrive_partition_queue::headers_of(msg)
        } else {
            None
        };
        let headers = match parsed {
            Some(h) => h
                .iter()
                .map(|h| Header {
                    key: crate::headers::interned(h.key),
                    value: h.value.map(Bytes::copy_from_slice),
                })
                .collect(),
            None => Headers::new(),
        };
        // Key and value share one buffer, already shared: a clone of the record (the retry
        // layer keeps one per call for its failure path) then only counts references instead
        // of allocating a shared header for each on the first clone.
        let (key, value) = match (msg.key(), msg.payload()) {
            (Some(k), Some(v)) => {
                let mut buf = Vec::with_capacity(k.len() + v.len());
                buf.extend_from_slice(k);
                buf.extend_from_slice(v);
                let mut value = Bytes::from(buf);
                let key = value.split_to(k.len());
                (Some(key), Some(value))
            }
            (k, v) => (k.map(Bytes::copy_from_slice), v.map(Bytes::copy_from_slice)),
        };
        let timestamp = Timestamp::from_kafka(msg.timestamp());
        Record {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp,
            key,
            value,
            headers,
            partition_state: None,
        }
    }

    /// Takes over this record's completion: the runtime will not count the record final when
    /// the service returns, but when the returned token is completed (a retry-topic copy
    /// acknowledged after the handler moved on). None outside a worker, or when the
    /// partition already has too many deferred records (the caller then finishes inline).
    pub(crate) fn defer(&self) -> Option<Deferral> {
        self.partition_state.as_ref()?.defer(self.offset)
    }

    /// Sets the key (builder style).
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value (builder style).
    pub fn with_value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Sets the headers (builder style).
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the timestamp (builder style).
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// The topic the record was read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic name as a shared string (no allocation to keep it).
    pub fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }

    /// The partition the record was read from.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The record's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record's timestamp, if the broker reported one.
    pub fn timestamp(&self) -> Option<Timestamp> {
        self.timestamp
    }

    /// The key, `None` for a null key.
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The value, `None` for a tombstone.
    pub fn value(&self) -> Option<&Bytes> {
        self.value.as_ref()
    }

    /// The headers; empty on a route built with
    /// [`Route::without_headers`](crate::Route::without_headers).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Mutable headers (layers use this to add or strip headers).
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The handle to acknowledge this record when the worker runs with manual acknowledgement
    /// ([`WorkerBuilder::manual_ack`](crate::WorkerBuilder::manual_ack)); `None` otherwise.
    /// The handle may be kept and used after the handler returned; take it before the handler
    /// returns. Each call gives a new handle; the record needs one of them acknowledged.
    pub fn acknowledgment(&self) -> Option<Acknowledgment> {
        let tx = self.partition_state.as_ref()?.ack_tx.clone()?;
        Some(Acknowledgment::new(self.offset, tx))
    }

    /// Size of key, value and headers in bytes.
    pub fn byte_len(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self.headers.byte_len()
    }

    /// `topic/partition@offset`, the form used in logs.
    pub fn coordinates(&self) -> Coordinates<'_> {
        Coordinates(self)
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("timestamp", &self.timestamp)
            .field("key", &self.key)
            .field("value_len", &self.value.as_ref().map(Bytes::len))
            .field("headers", &self.headers.len())
            .finish()
    }
}

/// Displays a record's coordinates as `topic/partition@offset`.
pub struct Coordinates<'a>(&'a Record);

impl fmt::Display for Coordinates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.0.topic, self.0.partition, self.0.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_nulls_and_repeats() {
        let mut h = Headers::new();
        h.push("a", Some(&b"1"[..]));
        h.push("a", Some(&b"2"[..]));
        h.push("n", None::<Bytes>);
        assert_eq!(h.last_value("a"), Some(&b"2"[..]));
        assert_eq!(h.get_all("a").count(), 2);
        assert!(h.last("n").unwrap().value.is_none());
        h.set("a", &b"3"[..]);
        assert_eq!(h.get_all("a").count(), 1);
        assert_eq!(h.iter().last().unwrap().key, "a");
    }

    #[test]
    fn tombstone_differs_from_empty() {
        let t = Record::new("t", 0, 1);
        let e = Record::new("t", 0, 1).with_value(Bytes::new());
        assert!(t.value().is_none());
        assert_eq!(e.value().map(|v| v.len()), Some(0));
        assert_eq!(t.coordinates().to_string(), "t/0@1");
    }
}
