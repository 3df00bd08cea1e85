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
//! Back-pressure is unchanged in kind: each partition holds at most one batch waiting for its
//! task; while it waits, the fetcher leaves that partition's records in librdkafka's queue,
//! which stops fetching the partition when full. Other partitions are not affected.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message};
use tokio::sync::mpsc;

use super::RuntimeContext;
use crate::record::{Header, Headers, Timestamp};
use crate::Record;

/// Bytes copied into one chunk before a new one starts. A record a handler keeps alive keeps
/// its chunk alive, so this bounds what one kept record can pin (besides its own size).
const CHUNK_BYTES: usize = 64 * 1024;

/// Bytes after which a batch ends even below `max_poll_records`, so a batch of large records
/// does not hold many megabytes outside librdkafka's per-partition bound.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How long a partition whose queue returned an error is left alone.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Records taken from one partition's queue in one go, with their bytes in shared chunks.
pub(crate) struct Batch {
    chunks: Vec<Bytes>,
    entries: Vec<Entry>,
    headers: Vec<RawHeader>,
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
}

struct RawHeader {
    /// Valid UTF-8: copied from a `&str`.
    key: Range<usize>,
    value: Option<Range<usize>>,
}

/// Copies messages into a batch.
struct BatchBuilder {
    chunks: Vec<Bytes>,
    current: Vec<u8>,
    entries: Vec<Entry>,
    headers: Vec<RawHeader>,
    bytes: usize,
}

impl BatchBuilder {
    fn new() -> Self {
        BatchBuilder {
            chunks: Vec::new(),
            current: Vec::new(),
            entries: Vec::new(),
            headers: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, msg: &impl Message) {
        let (key, value) = (msg.key(), msg.payload());
        let needed = key.map_or(0, <[u8]>::len)
            + value.map_or(0, <[u8]>::len)
            + msg.headers().map_or(0, |h| {
                h.iter()
                    .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                    .sum()
            });
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
        if let Some(h) = msg.headers() {
            for h in h.iter() {
                self.headers.push(RawHeader {
                    key: copy(h.key.as_bytes()),
                    value: h.value.map(&mut copy),
                });
            }
        }
        let entry = Entry {
            offset: msg.offset(),
            timestamp: Timestamp::from_kafka(msg.timestamp()),
            chunk: self.chunks.len(),
            key: key.map(&mut copy),
            value: value.map(&mut copy),
            headers: first_header..self.headers.len(),
        };
        self.entries.push(entry);
        self.bytes += needed;
    }

    fn finish(mut self) -> Batch {
        if !self.current.is_empty() {
            self.chunks.push(Bytes::from(self.current));
        }
        Batch {
            chunks: self.chunks,
            entries: self.entries,
            headers: self.headers,
        }
    }
}

/// A batch being handed out by a partition task, record by record.
pub(crate) struct Cursor {
    batch: Batch,
    next: usize,
}

impl Cursor {
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
                    key: crate::headers::interned(
                        std::str::from_utf8(&chunk[h.key.clone()]).unwrap_or_default(),
                    ),
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
pub(crate) struct Feeder {
    queue: PartitionQueue<RuntimeContext>,
    tx: mpsc::Sender<Batch>,
    /// Set when the queue became non-empty or the task took a batch.
    signal: Arc<AtomicBool>,
    /// The last fetch stopped at a limit, or found the channel full: poll without a signal.
    more: bool,
    error_until: Option<Instant>,
    last_warning: Option<Instant>,
}

/// The task's side: batches from the poll thread.
pub(crate) struct Feed {
    rx: mpsc::Receiver<Batch>,
    signal: Arc<AtomicBool>,
    poller: Thread,
}

/// The hand-over of one partition. Called on the poll thread, whose handle the wake-ups use.
pub(crate) fn feed(mut queue: PartitionQueue<RuntimeContext>) -> (Feeder, Feed) {
    let (tx, rx) = mpsc::channel(4);
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
            error_until: None,
            last_warning: None,
        },
        Feed { rx, signal, poller },
    )
}

impl Feeder {
    /// Hands the partition's waiting records to its task when its channel has room. True when
    /// this partition may have more right away (the caller polls again before sleeping).
    pub(crate) fn fetch(&mut self, max_records: usize, topic: &str, partition: i32) -> bool {
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
            return false;
        }
        let mut batch = BatchBuilder::new();
        let mut limited = false;
        while batch.entries.len() < max_records.max(1) {
            if batch.bytes >= MAX_BATCH_BYTES {
                limited = true;
                break;
            }
            match self.queue.poll(Duration::ZERO) {
                Some(Ok(msg)) => batch.push(&msg),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    self.error_until = Some(Instant::now() + ERROR_BACKOFF);
                    if self
                        .last_warning
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
                    {
                        self.last_warning = Some(Instant::now());
                        tracing::warn!(topic, partition, error = %e, "partition fetch error");
                    }
                    break;
                }
                None => break,
            }
        }
        limited |= batch.entries.len() >= max_records.max(1);
        self.more = limited || self.error_until.is_some();
        if batch.entries.is_empty() {
            return false;
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
