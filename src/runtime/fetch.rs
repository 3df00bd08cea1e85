//! The fetcher: the poll thread takes records from every assigned partition's own
//! librdkafka queue, in batches, and hands each batch to the partition's task.
//!
//! Why one thread reads all queues: librdkafka allocates a message on its broker thread and
//! frees it on the thread that polled it. Partition tasks polling their own queues from
//! several worker threads made those frees contend on the allocator's arena lock with the
//! broker thread, which then cost up to twice as much CPU per record (BENCHMARKS.md). One
//! poller frees every message, as a plain consumer loop does. The poller copies keys, values
//! and headers into a few shared chunks, so it allocates nothing per record and the tasks,
//! which drop the records, free one chunk per many records.
//!
//! It takes up to [`MESSAGES_PER_READ`] messages per librdkafka call
//! (`rd_kafka_consume_batch_queue`, through `redrive-partition-queue`): rust-rdkafka's
//! one-message `poll` read the clock four times, took two locks and allocated per record,
//! which made the poll thread twice as expensive (BENCHMARKS.md, Tuning).
//!
//! Back-pressure is unchanged in kind: each partition holds at most a few batches waiting for
//! its task; while they wait, the fetcher leaves that partition's records in librdkafka's
//! queue, which stops fetching the partition when full. Other partitions are not affected.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message};
use redrive_partition_queue::BatchQueue;
use tokio::sync::mpsc;

use crate::headers::{interned, Header, Headers};
use crate::partition_state::PartitionShared;
use crate::timestamp::Timestamp;
use crate::Record;

/// Bytes copied into one chunk before a new one starts. A record a handler keeps alive keeps
/// its chunk alive, so this bounds what one kept record can pin (besides its own size).
const CHUNK_BYTES: usize = 64 * 1024;

/// Bytes after which a batch ends even below `max_poll_records`, so batches of large records
/// do not hold many megabytes outside librdkafka's per-partition bound.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Batches waiting for one partition's task: enough that the task rarely waits for the poll
/// thread; at most `BATCHES_WAITING x MAX_BATCH_BYTES` (1 MiB) of copies per partition.
const BATCHES_WAITING: usize = 4;

/// Messages taken from librdkafka per call: its per-call costs (clock reads, locks) are paid
/// once for this many records.
const MESSAGES_PER_READ: usize = 128;

/// How long a partition whose queue returned an error is left alone.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Records taken from one partition's queue in one go, with their bytes in shared chunks.
pub(crate) struct Batch {
    chunks: Vec<Bytes>,
    entries: Vec<Entry>,
    headers: Vec<RawHeader>,
    /// Every header name of the batch, one after the other: a `String`, so a name is sliced
    /// out of it without checking its UTF-8 again on the task's thread.
    keys: String,
}

/// One record of a batch; ranges index its chunk.
struct Entry {
    offset: i64,
    timestamp: Option<Timestamp>,
    chunk: usize,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    /// Its headers in [`Batch::headers`].
    headers: Range<usize>,
    /// Key, value and headers, as [`Record::byte_len`] counts them.
    bytes: usize,
}

struct RawHeader {
    /// In [`Batch::keys`].
    key: Range<usize>,
    /// In the record's chunk.
    value: Option<Range<usize>>,
}

/// Copies messages into a batch.
struct BatchBuilder {
    chunks: Vec<Bytes>,
    current: Vec<u8>,
    entries: Vec<Entry>,
    headers: Vec<RawHeader>,
    keys: String,
    bytes: usize,
}

impl BatchBuilder {
    fn new() -> Self {
        BatchBuilder {
            chunks: Vec::new(),
            current: Vec::new(),
            entries: Vec::new(),
            headers: Vec::new(),
            keys: String::new(),
            bytes: 0,
        }
    }

    /// Copies `msg` into the batch; its headers only with `read_headers`. Returns the
    /// record's size as [`Record::byte_len`] counts it.
    fn push(&mut self, msg: &impl Message, read_headers: bool) -> usize {
        let (key, value) = (msg.key(), msg.payload());
        // Once only: librdkafka parses headers on every call when a record has none, with two
        // allocations each time.
        let headers = if read_headers { msg.headers() } else { None };
        let (mut key_bytes, mut value_bytes) = (0, 0);
        if let Some(h) = &headers {
            for h in h.iter() {
                key_bytes += h.key.len();
                value_bytes += h.value.map_or(0, <[u8]>::len);
            }
        }
        // What goes into the chunk: header names go to `keys`.
        let needed = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + value_bytes;
        if self.current.capacity() - self.current.len() < needed {
            if !self.current.is_empty() {
                let full = std::mem::take(&mut self.current);
                self.chunks.push(Bytes::from(full));
            }
            self.current = Vec::with_capacity(needed.max(CHUNK_BYTES));
        }
        let buf = &mut self.current;
        let mut copy = |b: &[u8]| {
            let start = buf.len();
            buf.extend_from_slice(b);
            start..buf.len()
        };
        let first_header = self.headers.len();
        if let Some(h) = &headers {
            for h in h.iter() {
                let start = self.keys.len();
                self.keys.push_str(h.key);
                self.headers.push(RawHeader {
                    key: start..self.keys.len(),
                    value: h.value.map(&mut copy),
                });
            }
        }
        let bytes = needed + key_bytes;
        let entry = Entry {
            offset: msg.offset(),
            timestamp: Timestamp::from_kafka(msg.timestamp()),
            chunk: self.chunks.len(),
            key: key.map(&mut copy),
            value: value.map(&mut copy),
            headers: first_header..self.headers.len(),
            bytes,
        };
        self.entries.push(entry);
        self.bytes += bytes;
        bytes
    }

    /// The due time the last record's copied headers name (none when headers are not read).
    fn last_due(&self) -> Option<i64> {
        let e = self.entries.last()?;
        // The entry's chunk is the one being filled unless it was full and pushed.
        let chunk: &[u8] = self.chunks.get(e.chunk).map_or(&self.current, |c| &c[..]);
        let value = |name: &str| {
            self.headers[e.headers.clone()]
                .iter()
                .rev()
                .find(|h| &self.keys[h.key.clone()] == name)
                .and_then(|h| h.value.clone())
                .map(|r| &chunk[r])
        };
        crate::headers::due_from(
            value(crate::headers::COMPACT),
            value(crate::headers::BACKOFF_TIMESTAMP),
        )
    }

    fn finish(mut self) -> Batch {
        if !self.current.is_empty() {
            self.chunks.push(Bytes::from(self.current));
        }
        // Grown by doubling: a batch may wait long (a retry topic's records until due), so
        // it keeps only what it holds.
        self.keys.shrink_to_fit();
        Batch {
            chunks: self.chunks,
            entries: self.entries,
            headers: self.headers,
            keys: self.keys,
        }
    }
}

/// A batch being handed out by a partition task, record by record.
pub(crate) struct Cursor {
    batch: Batch,
    next: usize,
}

impl Cursor {
    /// The size of the next record, as [`Record::byte_len`] counts it, without taking it.
    pub(crate) fn peek_bytes(&self) -> Option<usize> {
        self.batch.entries.get(self.next).map(|e| e.bytes)
    }

    /// The next record, without its acknowledgement or partition state (the task sets them).
    pub(crate) fn next_record(&mut self, topic: &Arc<str>, partition: i32) -> Option<Record> {
        let e = self.batch.entries.get(self.next)?;
        self.next += 1;
        let chunk = &self.batch.chunks[e.chunk];
        let headers = if e.headers.is_empty() {
            Headers::new()
        } else {
            self.batch.headers[e.headers.clone()]
                .iter()
                .map(|h| Header {
                    key: interned(&self.batch.keys[h.key.clone()]),
                    value: h.value.clone().map(|r| chunk.slice(r)),
                })
                .collect()
        };
        let mut r = Record::new(topic.clone(), partition, e.offset);
        r.timestamp = e.timestamp;
        r.key = e.key.clone().map(|k| chunk.slice(k));
        r.value = e.value.clone().map(|v| chunk.slice(v));
        r.headers = headers;
        Some(r)
    }
}

/// The poll thread's side of one partition's hand-over: its librdkafka queue and the channel
/// to its task.
pub(crate) struct Feeder<C: ConsumerContext + 'static> {
    queue: BatchQueue<C>,
    tx: mpsc::Sender<Batch>,
    /// Set when the queue became non-empty or the task took a batch.
    signal: Arc<AtomicBool>,
    /// The last fetch stopped at a limit, or found the channel full: poll without a signal.
    more: bool,
    /// See `TopicBinding::read_headers`.
    read_headers: bool,
    error_until: Option<Instant>,
    read_errors: ReadErrors,
    /// A retry topic's partition: its fetching stops while it has records in hand for more
    /// than a second ([`Feeder::take_hold`]).
    held: Option<Hold>,
}

/// Whether a retry partition's fetching is stopped, and where it starts again.
#[derive(Debug, Default)]
struct Hold {
    /// The due time of the last record read from librdkafka's queue.
    last_due: Option<i64>,
    /// The offset after it.
    next_offset: Option<i64>,
    paused: bool,
    /// A pause (true) or resume (false) for the poll thread to make.
    request: Option<bool>,
}

/// A retry partition stops fetching while its hand-over is full and the last record handed
/// over is due further ahead than this.
const HOLD_AHEAD_MS: i64 = 1_000;

impl Hold {
    /// The hand-over is full: pause if what it holds lasts beyond [`HOLD_AHEAD_MS`].
    fn full(&mut self, now_ms: i64) {
        if !self.paused
            && self
                .last_due
                .is_some_and(|due| due - now_ms > HOLD_AHEAD_MS)
        {
            self.paused = true;
            self.request = Some(true);
        }
    }

    /// The task took every batch handed over: fetch again.
    fn room(&mut self) {
        if self.paused {
            self.paused = false;
            self.request = Some(false);
        }
    }
}

/// Reads of one partition that returned errors instead of records.
#[derive(Default)]
struct ReadErrors {
    /// Errors read since the last record, and when the first of them came.
    since_record: Option<(u64, Instant)>,
    last_log: Option<Instant>,
    /// The streak was logged as an ERROR.
    reported: bool,
}

/// The task's side: batches from the poll thread.
pub(crate) struct Feed {
    rx: mpsc::Receiver<Batch>,
    signal: Arc<AtomicBool>,
    poller: Thread,
}

/// The hand-over of one partition. Called on the poll thread, whose handle the wake-ups use.
pub(crate) fn feed<C: ConsumerContext + 'static>(
    mut queue: BatchQueue<C>,
    read_headers: bool,
    paced: bool,
) -> (Feeder<C>, Feed) {
    let (tx, rx) = mpsc::channel(BATCHES_WAITING);
    let signal = Arc::new(AtomicBool::new(true));
    let poller = std::thread::current();
    let (s, p) = (signal.clone(), poller.clone());
    // Called by librdkafka's broker thread when the queue goes from empty to non-empty.
    queue.set_nonempty_callback(move || {
        s.store(true, Ordering::Release);
        p.unpark();
    });
    (
        Feeder {
            queue,
            tx,
            signal: signal.clone(),
            more: true,
            read_headers,
            error_until: None,
            read_errors: ReadErrors::default(),
            held: paced.then(Hold::default),
        },
        Feed { rx, signal, poller },
    )
}

/// Reads that fail for this long with no record in between make the partition "unreadable":
/// an ERROR log, `WorkerHandle::blocked_partitions`, the sidecar unready.
pub(crate) const FETCH_FAILING_AFTER: Duration = Duration::from_secs(10);

impl ReadErrors {
    /// Counts a read that returned an error instead of a record; the first since the last
    /// record starts the partition's error streak. Logged at most every 5 s.
    fn failed(&mut self, p: &PartitionShared, group: &str, e: &KafkaError) {
        let (topic, partition) = (&*p.topic, p.partition);
        ::metrics::counter!(crate::metrics::names::FETCH_ERRORS, "group" => group.to_owned(), "topic" => topic.to_owned(), "partition" => partition.to_string())
            .increment(1);
        let (n, first) = self
            .since_record
            .map_or((1, Instant::now()), |(n, t)| (n + 1, t));
        self.since_record = Some((n, first));
        if n == 1 {
            p.set_fetch_failing(Some(crate::clock::now_ms()));
        }
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.last_log = Some(Instant::now());
            tracing::warn!(topic, partition, error = %e, "partition fetch error");
        }
    }

    /// A record was read: the partition's reads work again.
    fn recovered(&mut self, p: &PartitionShared) {
        if self.since_record.take().is_some() {
            p.set_fetch_failing(None);
            if std::mem::take(&mut self.reported) {
                tracing::info!(topic = %p.topic, partition = p.partition, "the partition's records can be read again");
            }
        }
    }

    /// Logs an ERROR once the error streak has lasted [`FETCH_FAILING_AFTER`] with no record.
    fn report(&mut self, p: &PartitionShared) {
        let Some((n, first)) = self.since_record else {
            return;
        };
        if self.reported
            || first.elapsed() < FETCH_FAILING_AFTER
            || p.fetch_failing_since().is_none()
        {
            return;
        }
        self.reported = true;
        tracing::error!(topic = %p.topic, partition = p.partition, errors = n, for_s = first.elapsed().as_secs(), "the partition's records cannot be read: it makes no progress until the cause is fixed (docs/design.md, Refused copies and unreadable records)");
    }
}

impl<C: ConsumerContext + 'static> Feeder<C> {
    /// For a retry partition: whether to pause (`Some(true)`) or resume (`Some(false)`) its
    /// fetching now. Records wait in a retry topic until due; fetched long before, they would
    /// sit in librdkafka's queue, each pinning the whole fetch response it came in. So once
    /// the task's hand-over is full and its last record is due more than a second ahead, the
    /// partition stops fetching (and a seek to [`Feeder::next_offset`] drops what was
    /// queued) until the task took every batch handed over; the records due next are in
    /// hand. Each fetch brings more than a batch, so the fewer fetches the less is fetched
    /// twice.
    pub(crate) fn take_hold(&mut self) -> Option<bool> {
        self.held.as_mut()?.request.take()
    }

    /// The offset after the last record read from the partition's queue.
    pub(crate) fn next_offset(&self) -> Option<i64> {
        self.held.as_ref()?.next_offset
    }

    /// After a seek of a paused partition: reads its queue once, so that librdkafka frees the
    /// records fetched before the seek (it drops them only as the queue is read). Returns how
    /// many records of the new position it took (none while the partition stays paused); the
    /// caller seeks back again if any, since they are not handed over.
    pub(crate) fn drop_queued(&mut self) -> usize {
        self.queue.consume(1).iter().filter(Result::is_ok).count()
    }

    /// Whether the partition's fetching is paused (see [`Feeder::take_hold`]).
    pub(crate) fn paused(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.paused)
    }

    /// The last pause or resume did not take: the partition stays as it was, and the next
    /// full hand-over or batch taken asks again.
    pub(crate) fn hold_failed(&mut self) {
        if let Some(h) = &mut self.held {
            h.paused = !h.paused;
        }
    }

    /// Logs an ERROR if the partition's reads have failed for long (called periodically).
    pub(crate) fn check_reads(&mut self, p: &PartitionShared) {
        self.read_errors.report(p);
    }

    /// Hands the partition's waiting records to its task when its channel has room. True when
    /// this partition may have more right away (the caller polls again before sleeping).
    pub(crate) fn fetch(&mut self, max_records: usize, p: &PartitionShared, group: &str) -> bool {
        let signalled = self.signal.swap(false, Ordering::AcqRel);
        if !(signalled || self.more) {
            return false;
        }
        if let Some(t) = self.error_until {
            if Instant::now() < t {
                self.more = true;
                return false;
            }
            self.error_until = None;
        }
        if self.tx.capacity() == 0 {
            // The task's `take` signals when it makes room.
            self.more = true;
            if let Some(h) = &mut self.held {
                h.full(crate::clock::now_ms());
            }
            return false;
        }
        if self.tx.capacity() == self.tx.max_capacity() {
            // The task took every batch handed over: fetch again.
            if let Some(h) = &mut self.held {
                h.room();
            }
        }
        let max_records = max_records.max(1);
        let mut batch = BatchBuilder::new();
        // The largest record of the batch so far (none read yet: read one first).
        // A record read after the last error (if any) ends the partition's error streak.
        let mut read_after_error = false;
        let mut largest: Option<usize> = None;
        while batch.entries.len() < max_records && batch.bytes < MAX_BATCH_BYTES {
            // Sized so that records as large as the largest so far end the batch near its
            // byte limit. Larger ones can overshoot it by what librdkafka holds for the
            // partition, whose queue is bounded in bytes too.
            let want = match largest {
                None => 1,
                Some(l) => ((MAX_BATCH_BYTES - batch.bytes) / l.max(1))
                    .clamp(1, MESSAGES_PER_READ)
                    .min(max_records - batch.entries.len()),
            };
            let messages = self.queue.consume(want);
            let got = messages.len();
            // Every message taken is copied, an error among them included: librdkafka has
            // moved its position past all of them, so one left out would never be handled.
            for m in messages.iter() {
                match m {
                    Ok(msg) => {
                        let bytes = batch.push(&msg, self.read_headers);
                        largest = largest.max(Some(bytes));
                        read_after_error = true;
                    }
                    Err(KafkaError::PartitionEOF(_)) => {}
                    Err(e) => {
                        self.error_until = Some(Instant::now() + ERROR_BACKOFF);
                        if std::mem::take(&mut read_after_error) {
                            self.read_errors.recovered(p);
                        }
                        self.read_errors.failed(p, group, &e);
                    }
                }
            }
            drop(messages);
            if got < want || self.error_until.is_some() {
                break;
            }
        }
        let limited = batch.entries.len() >= max_records || batch.bytes >= MAX_BATCH_BYTES;
        self.more = limited || self.error_until.is_some();
        if read_after_error {
            // Told once per batch, not per record.
            self.read_errors.recovered(p);
        }
        if batch.entries.is_empty() {
            return false;
        }
        // Once per batch: only the last record matters.
        if let Some(h) = &mut self.held {
            h.last_due = batch.last_due();
            h.next_offset = batch.entries.last().map(|e| e.offset + 1);
        }
        // Room was checked and only this thread sends; a closed channel means the task ended
        // (the partition is being released): its records stay uncommitted.
        let _ = self.tx.try_send(batch.finish());
        limited
    }
}

impl Feed {
    fn taken(&self, batch: Batch) -> Cursor {
        self.signal.store(true, Ordering::Release);
        self.poller.unpark();
        Cursor { batch, next: 0 }
    }

    /// The next batch if one is waiting.
    pub(crate) fn try_take(&mut self) -> Option<Cursor> {
        let b = self.rx.try_recv().ok()?;
        Some(self.taken(b))
    }

    /// Waits for the next batch; None once the poll thread dropped the partition. Cancel-safe.
    pub(crate) async fn take(&mut self) -> Option<Cursor> {
        let b = self.rx.recv().await?;
        Some(self.taken(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_due_time_is_read_from_either_header_form() {
        use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
        let with = |key: &str, value: Vec<u8>| {
            let headers = OwnedHeaders::new().insert(KafkaHeader {
                key,
                value: Some(&value),
            });
            let mut m = message(0, None, Some(b"v"));
            m = m.replace_headers(Some(headers));
            let mut b = BatchBuilder::new();
            b.push(&m, true);
            b.last_due()
        };
        let spring = crate::headers::encode_big_integer(1_765_000_000_123);
        assert_eq!(
            with(crate::headers::BACKOFF_TIMESTAMP, spring),
            Some(1_765_000_000_123)
        );
        let mut compact = Vec::new();
        crate::headers::Compact {
            due_ms: 42,
            ..Default::default()
        }
        .encode(&mut compact);
        assert_eq!(with(crate::headers::COMPACT, compact), Some(42));
        assert_eq!(with("user", b"x".to_vec()), None);
    }

    #[test]
    fn a_retry_partition_stops_fetching_while_it_has_enough_in_hand() {
        let mut h = Hold::default();
        h.full(0);
        assert_eq!(h.request.take(), None, "nothing handed over: keep fetching");
        h.last_due = Some(900);
        h.full(0);
        assert_eq!(
            h.request.take(),
            None,
            "in hand until within a second: keep fetching"
        );
        h.last_due = Some(10_000);
        h.full(0);
        assert_eq!(h.request.take(), Some(true), "in hand for 10 s: pause");
        h.full(100);
        assert_eq!(h.request.take(), None, "paused already");
        h.room();
        assert_eq!(h.request.take(), Some(false), "every batch taken: resume");
        h.room();
        assert_eq!(h.request.take(), None);
    }

    use rdkafka::message::{Header as KafkaHeader, OwnedHeaders, OwnedMessage};

    fn message(offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> OwnedMessage {
        OwnedMessage::new(
            value.map(<[u8]>::to_vec),
            key.map(<[u8]>::to_vec),
            "orders".into(),
            rdkafka::Timestamp::CreateTime(1_700_000_000_000 + offset),
            3,
            offset,
            None,
        )
    }

    fn records(b: BatchBuilder) -> Vec<Record> {
        let mut c = Cursor {
            batch: b.finish(),
            next: 0,
        };
        let topic: Arc<str> = Arc::from("orders");
        std::iter::from_fn(|| {
            // The size the in-flight bytes bound takes before the record is built.
            let peeked = c.peek_bytes();
            let r = c.next_record(&topic, 3)?;
            assert_eq!(
                peeked,
                Some(r.byte_len()),
                "peek_bytes at offset {}",
                r.offset()
            );
            Some(r)
        })
        .collect()
    }

    #[test]
    fn records_round_trip_across_chunks() {
        let mut b = BatchBuilder::new();
        // 1,000 records of ~110 bytes: more than one 64 KiB chunk.
        for i in 0..1_000i64 {
            let value = vec![(i % 251) as u8; 100 + (i % 7) as usize];
            b.push(
                &message(i, Some(i.to_string().as_bytes()), Some(&value)),
                true,
            );
        }
        assert!(!b.chunks.is_empty(), "the builder started a second chunk");
        let rs = records(b);
        assert_eq!(rs.len(), 1_000);
        for (i, r) in rs.iter().enumerate() {
            let i = i as i64;
            assert_eq!(r.offset(), i);
            assert_eq!(r.partition(), 3);
            assert_eq!(r.topic(), "orders");
            assert_eq!(r.key().map(|k| &k[..]), Some(i.to_string().as_bytes()));
            assert_eq!(
                &r.value().unwrap()[..],
                &vec![(i % 251) as u8; 100 + (i % 7) as usize][..]
            );
            assert_eq!(r.timestamp().unwrap().millis, 1_700_000_000_000 + i);
            assert!(r.headers().is_empty());
        }
    }

    #[test]
    fn a_record_larger_than_a_chunk_gets_its_own() {
        let big = vec![7u8; CHUNK_BYTES * 3];
        let mut b = BatchBuilder::new();
        b.push(&message(0, None, Some(b"small")), true);
        assert_eq!(
            b.push(&message(1, Some(b"k"), Some(&big)), true),
            1 + big.len(),
            "push returns the record's size"
        );
        b.push(&message(2, None, Some(b"after")), true);
        assert_eq!(b.bytes, 5 + 1 + big.len() + 5);
        let rs = records(b);
        assert_eq!(rs[0].value().map(|v| &v[..]), Some(&b"small"[..]));
        assert_eq!(rs[1].value().map(Bytes::len), Some(big.len()));
        assert_eq!(rs[1].key().map(|k| &k[..]), Some(&b"k"[..]));
        assert_eq!(rs[2].value().map(|v| &v[..]), Some(&b"after"[..]));
    }

    #[test]
    fn nulls_empties_and_headers_are_kept_apart() {
        let headers = OwnedHeaders::new()
            .insert(KafkaHeader {
                key: crate::headers::ORIGINAL_TOPIC,
                value: Some("orders"),
            })
            .insert(KafkaHeader::<&[u8]> {
                key: "x-null",
                value: None,
            })
            .insert(KafkaHeader {
                key: "x-empty",
                value: Some(""),
            });
        let with_headers = OwnedMessage::new(
            Some(Vec::new()),
            None,
            "orders".into(),
            rdkafka::Timestamp::NotAvailable,
            3,
            5,
            Some(headers),
        );
        let mut b = BatchBuilder::new();
        b.push(&message(4, Some(b""), None), true);
        b.push(&with_headers, true);
        b.push(&with_headers, false);
        let rs = records(b);
        assert_eq!(
            rs[0].key().map(|k| &k[..]),
            Some(&b""[..]),
            "an empty key is not a null key"
        );
        assert_eq!(rs[0].value(), None, "a null value stays null");
        assert_eq!(rs[1].key(), None);
        assert_eq!(rs[1].value().map(|v| &v[..]), Some(&b""[..]));
        let h = rs[1].headers().as_slice();
        assert_eq!(h.len(), 3);
        assert!(
            matches!(h[0].key, std::borrow::Cow::Borrowed(_)),
            "well-known names are interned"
        );
        assert_eq!(h[0].value.as_deref(), Some(&b"orders"[..]));
        assert_eq!((&*h[1].key, h[1].value.as_deref()), ("x-null", None));
        assert_eq!(
            (&*h[2].key, h[2].value.as_deref()),
            ("x-empty", Some(&b""[..]))
        );
        // The same message pushed without its headers (`Route::without_headers`): all else kept.
        assert!(rs[2].headers().is_empty());
        assert_eq!((rs[2].offset(), rs[2].key()), (5, None));
        assert_eq!(rs[2].value().map(|v| &v[..]), Some(&b""[..]));
        assert_eq!(rs[2].byte_len(), 0, "the skipped headers count for nothing");
    }
}
