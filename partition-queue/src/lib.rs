//! A consumer's partition queue, read in batches.
//!
//! rust-rdkafka reads a partition queue one message per call (`PartitionQueue::poll`): each
//! call reads the clock in Rust and three times in librdkafka, takes librdkafka's telemetry
//! and partition locks, and allocates an `Arc` for the event. redrive's poll thread reads
//! every record of every partition, and those per-call costs were a quarter of its CPU
//! (BENCHMARKS.md, Tuning). librdkafka's `rd_kafka_consume_batch_queue` pays them once
//! per batch, but rust-rdkafka does not wrap it; this crate does, so that the `unsafe` it
//! takes stays out of `redrive` (which forbids it).
//!
//! The safe surface: [`BatchQueue::split`] takes a partition's queue out of the consumer's
//! (as `BaseConsumer::split_partition_queue` does), [`BatchQueue::consume`] returns up to `n`
//! messages as [`Messages`], which borrow the queue and free every message when dropped, and
//! [`MessageView`] implements rdkafka's [`Message`] trait for each of them.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use rdkafka::consumer::{BaseConsumer, Consumer};
//! use rdkafka::message::Message;
//! use rdkafka::{ClientConfig, Offset, TopicPartitionList};
//! use redrive_partition_queue::BatchQueue;
//!
//! let consumer: Arc<BaseConsumer> = Arc::new(
//!     ClientConfig::new()
//!         .set("bootstrap.servers", "127.0.0.1:9092")
//!         .set("group.id", "example")
//!         .create()?,
//! );
//! let mut queue = BatchQueue::split(&consumer, "orders", 0).expect("a valid topic name");
//! let mut tpl = TopicPartitionList::new();
//! tpl.add_partition_offset("orders", 0, Offset::Beginning)?;
//! consumer.assign(&tpl)?;
//! loop {
//!     // The consumer's own queue serves rebalances, errors and commits.
//!     consumer.poll(Duration::ZERO);
//!     let messages = queue.consume(128);
//!     for m in messages.iter() {
//!         match m {
//!             Ok(m) => println!("{}@{}: {:?}", m.partition(), m.offset(), m.payload()),
//!             Err(e) => eprintln!("{e}"),
//!         }
//!     }
//!     if messages.is_empty() {
//!         std::thread::sleep(Duration::from_millis(10));
//!     }
//! }
//! # #[allow(unreachable_code)]
//! # Ok::<(), rdkafka::error::KafkaError>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use std::ffi::{c_void, CStr, CString};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message};
use rdkafka::Timestamp;

/// The callback librdkafka calls when the queue goes from empty to non-empty. Boxed twice:
/// librdkafka keeps a thin pointer, a `dyn Fn` reference is a fat one.
type NonEmpty = Box<Box<dyn Fn() + Send + Sync>>;

/// One partition's librdkafka queue, no longer forwarded to the consumer's queue, read in
/// batches.
///
/// Like rust-rdkafka's `PartitionQueue`, it keeps the consumer alive; the consumer's own
/// queue must still be polled to serve rebalances and commits.
pub struct BatchQueue<C: ConsumerContext + 'static> {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    nonempty: Option<NonEmpty>,
    /// The messages of the current batch; kept between batches for its capacity.
    slots: Vec<*mut rdsys::rd_kafka_message_t>,
    // Dropped after the queue is destroyed (see `Drop`).
    _consumer: Arc<BaseConsumer<C>>,
}

// SAFETY: librdkafka's queues are thread-safe (every operation takes the queue's lock), the
// callback is `Send + Sync`, and `slots` holds pointers only while a `Messages` borrows the
// queue mutably, which ties them to one thread at a time.
unsafe impl<C: ConsumerContext + 'static> Send for BatchQueue<C> {}

impl<C: ConsumerContext + 'static> BatchQueue<C> {
    /// Takes the queue of `topic`'s `partition` out of `consumer`'s, as
    /// `BaseConsumer::split_partition_queue` does: its messages are then read only here.
    /// None when `topic` holds a NUL byte or librdkafka has no such partition.
    pub fn split(consumer: &Arc<BaseConsumer<C>>, topic: &str, partition: i32) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives; the topic is a valid C
        // string for the call.
        let queue = unsafe {
            rdsys::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        let queue = NonNull::new(queue)?;
        // SAFETY: `queue` is a valid queue handle we own; a null destination stops forwarding.
        unsafe { rdsys::rd_kafka_queue_forward(queue.as_ptr(), ptr::null_mut()) };
        Some(BatchQueue {
            queue,
            nonempty: None,
            slots: Vec::new(),
            _consumer: consumer.clone(),
        })
    }

    /// Calls `f` (on a librdkafka thread) whenever the queue goes from empty to non-empty.
    /// Replaces an earlier callback.
    pub fn set_nonempty_callback<F>(&mut self, f: F)
    where
        F: Fn() + Send + Sync + 'static,
    {
        unsafe extern "C" fn trampoline(_: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
            // SAFETY: `opaque` is the inner box of `nonempty`, which outlives its
            // registration (it is replaced or dropped only after the next
            // `rd_kafka_queue_cb_event_enable` call).
            let f = unsafe { &*(opaque as *const Box<dyn Fn() + Send + Sync>) };
            f();
        }
        let f: NonEmpty = Box::new(Box::new(f));
        let opaque = &*f as *const Box<dyn Fn() + Send + Sync> as *mut c_void;
        // SAFETY: the queue is valid; `opaque` stays valid while registered (see above).
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), Some(trampoline), opaque)
        };
        self.nonempty = Some(f);
    }

    /// Takes up to `max` messages (at least one) waiting in the queue, without waiting for
    /// more. Errors (a partition's end, a fetch error) come as messages too, in order.
    pub fn consume(&mut self, max: usize) -> Messages<'_> {
        let max = max.max(1);
        self.slots.clear();
        self.slots.reserve(max);
        // SAFETY: the queue is valid; librdkafka writes at most `max` pointers into the
        // buffer, which has room for them, and returns how many it wrote.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                0,
                self.slots.as_mut_ptr(),
                max,
            )
        };
        let n = usize::try_from(n).unwrap_or(0).min(max);
        // SAFETY: the first `n` slots were just initialised by librdkafka.
        unsafe { self.slots.set_len(n) };
        Messages {
            slots: &mut self.slots,
        }
    }
}

impl<C: ConsumerContext + 'static> Drop for BatchQueue<C> {
    fn drop(&mut self) {
        // SAFETY: the queue is valid until destroyed here; the callback is unregistered
        // before its box is dropped (with the struct's fields, after this body), and the
        // client is kept alive by `_consumer` until then.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// A batch of messages taken from a [`BatchQueue`]; every message is freed when it drops.
pub struct Messages<'q> {
    slots: &'q mut Vec<*mut rdsys::rd_kafka_message_t>,
}

impl Messages<'_> {
    /// How many messages (errors included) the batch holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the queue held nothing.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The batch's messages in queue order; an error in place of each message that is one
    /// (`KafkaError::PartitionEOF` at a partition's end, as rust-rdkafka reports it).
    pub fn iter(&self) -> impl Iterator<Item = Result<MessageView<'_>, KafkaError>> + '_ {
        self.slots.iter().map(|&p| {
            // SAFETY: every slot holds a message librdkafka returned and that is freed only
            // when `self` drops, after the borrow this view carries ends.
            let m = unsafe { &*p };
            match m.err {
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(MessageView {
                    msg: m,
                    _not_send: PhantomData,
                }),
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                    Err(KafkaError::PartitionEOF(m.partition))
                }
                e => Err(KafkaError::MessageConsumption(e.into())),
            }
        })
    }
}

impl Drop for Messages<'_> {
    fn drop(&mut self) {
        for p in self.slots.drain(..) {
            // SAFETY: each message was returned by librdkafka and is freed exactly once:
            // `drain` empties the buffer as it goes.
            unsafe { rdsys::rd_kafka_message_destroy(p) };
        }
    }
}

/// One message of a [`Messages`] batch, read in place.
pub struct MessageView<'m> {
    msg: &'m rdsys::rd_kafka_message_t,
    /// Read on the thread that consumed it, as the batch that owns it is.
    _not_send: PhantomData<*const ()>,
}

impl Message for MessageView<'_> {
    type Headers = HeadersView;

    fn key(&self) -> Option<&[u8]> {
        // SAFETY: librdkafka's key pointer and length describe the message's key (or null).
        unsafe { slice(self.msg.key, self.msg.key_len) }
    }

    fn payload(&self) -> Option<&[u8]> {
        // SAFETY: as for the key.
        unsafe { slice(self.msg.payload, self.msg.len) }
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        if self.msg.payload.is_null() {
            return None;
        }
        // SAFETY: the caller guarantees no other reference to the payload exists (the
        // trait's contract); the pointer and length describe it.
        Some(unsafe { std::slice::from_raw_parts_mut(self.msg.payload.cast::<u8>(), self.msg.len) })
    }

    fn topic(&self) -> &str {
        // SAFETY: a consumed message's topic handle is valid while the message is, and its
        // name is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(self.msg.rkt)) };
        // Kafka topic names are ASCII ([a-zA-Z0-9._-]).
        name.to_str().unwrap_or("")
    }

    fn partition(&self) -> i32 {
        self.msg.partition
    }

    fn offset(&self) -> i64 {
        self.msg.offset
    }

    fn timestamp(&self) -> Timestamp {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message is valid; `kind` is a valid out-pointer.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(self.msg, &mut kind) };
        match kind {
            _ if ts == -1 => Timestamp::NotAvailable,
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
                Timestamp::CreateTime(ts)
            }
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
                Timestamp::LogAppendTime(ts)
            }
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => {
                Timestamp::NotAvailable
            }
        }
    }

    /// Parses the message's header section (librdkafka does so on every call when the
    /// message has none: call it once).
    fn headers(&self) -> Option<&HeadersView> {
        // SAFETY: the message lives as long as `self` borrows it.
        unsafe { headers_at(self.msg) }
    }
}

/// The headers of a message rust-rdkafka returned, read through [`HeadersView`], which reads
/// a name that is not UTF-8 as [`INVALID_NAME`] where rust-rdkafka's own reader panics.
/// Parses the header section (on every call when the message has none: call it once).
pub fn headers_of<'m>(msg: &'m BorrowedMessage<'_>) -> Option<&'m HeadersView> {
    // SAFETY: a `BorrowedMessage` holds a valid message until it drops, after `'m` ends.
    unsafe { headers_at(msg.ptr()) }
}

/// librdkafka's headers of the message at `msg`, parsed on first use.
///
/// # Safety
/// `msg` must point to a message that stays valid for `'a`.
unsafe fn headers_at<'a>(msg: *const rdsys::rd_kafka_message_t) -> Option<&'a HeadersView> {
    let mut hdrs = ptr::null_mut();
    // SAFETY: the caller's guarantee; `hdrs` is a valid out-pointer.
    let err = unsafe { rdsys::rd_kafka_message_headers(msg, &mut hdrs) };
    if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return None;
    }
    // SAFETY: a reference to a zero-sized type is valid for any non-null, aligned address;
    // it stands for librdkafka's headers, which the message owns and frees with itself, and
    // the caller ties `'a` to the message.
    Some(unsafe { &*(hdrs as *const HeadersView) })
}

/// A message's headers, read in place (librdkafka's `rd_kafka_headers_t`).
pub struct HeadersView {
    // Zero-sized and never constructed: only references to it exist, whose address is
    // librdkafka's headers.
    _opaque: [u8; 0],
    _not_send: PhantomData<*const ()>,
}

impl HeadersView {
    fn raw(&self) -> *const rdsys::rd_kafka_headers_t {
        (self as *const HeadersView).cast()
    }
}

/// What a header name that is not UTF-8 reads as: Kafka's clients write names as UTF-8
/// strings, and rust-rdkafka panics on one that is not.
pub const INVALID_NAME: &str = "\u{FFFD}";

impl Headers for HeadersView {
    fn count(&self) -> usize {
        // SAFETY: `raw` is librdkafka's headers of a live message.
        unsafe { rdsys::rd_kafka_header_cnt(self.raw()) }
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0usize);
        // SAFETY: valid headers and out-pointers; librdkafka returns an error past the end.
        let err = unsafe {
            rdsys::rd_kafka_header_get_all(self.raw(), idx, &mut name, &mut value, &mut size)
        };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        // SAFETY: librdkafka's header names are NUL-terminated and live with the headers.
        let key = unsafe { CStr::from_ptr(name) }
            .to_str()
            .unwrap_or(INVALID_NAME);
        // SAFETY: a non-null value points to `size` bytes that live with the headers.
        let value = unsafe { slice(value.cast_mut(), size) };
        Some(Header { key, value })
    }
}

/// The bytes at `ptr`, or None for a null pointer.
///
/// # Safety
/// A non-null `ptr` must point to `len` initialised bytes that live at least as long as `'a`.
unsafe fn slice<'a>(ptr: *mut c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else if len == 0 {
        Some(&[])
    } else {
        // SAFETY: the caller's guarantee.
        Some(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
    }
}
