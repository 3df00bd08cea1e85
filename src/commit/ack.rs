use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::partition_state::AckEvent;

/// Marks a record's outcome final in manual-acknowledgement mode (Spring's `MANUAL` ack mode).
///
/// Until a record is acknowledged, no offset at or after it is committed for its partition.
/// Acknowledging may happen after the handler returned (e.g. once a batch written elsewhere
/// is flushed): keep the handle, or a clone of it, until then. Acknowledging twice is
/// harmless. A record whose handler returns an error is final once the error was handled
/// (logged, or published to a retry/dead-letter topic), so it needs no acknowledgement.
///
/// A record whose handler returned `Ok` and whose every handle was dropped without
/// [`acknowledge`](Self::acknowledge) (or which never had one taken) can never become final:
/// instead of stalling its partition silently, the worker stops with
/// [`Error::Fatal`](crate::Error::Fatal) naming the record, which stays uncommitted and is
/// delivered again after a restart.
#[derive(Clone, Debug)]
pub struct Acknowledgment {
    inner: Arc<Handle>,
}

/// One handle and its clones: its drop reports whether it acknowledged.
#[derive(Debug)]
struct Handle {
    offset: i64,
    tx: UnboundedSender<AckEvent>,
    acked: AtomicBool,
}

impl Acknowledgment {
    /// A handle for the record at `offset`; the partition's task counts it as alive.
    pub(crate) fn new(offset: i64, tx: UnboundedSender<AckEvent>) -> Self {
        let _ = tx.send(AckEvent::Taken(offset));
        Acknowledgment {
            inner: Arc::new(Handle {
                offset,
                tx,
                acked: AtomicBool::new(false),
            }),
        }
    }

    /// Marks the record final. Does nothing if its partition was revoked meanwhile (the
    /// record will be delivered again to the partition's new owner).
    pub fn acknowledge(&self) {
        self.inner.acked.store(true, Ordering::Release);
        let _ = self.inner.tx.send(AckEvent::Acked(self.inner.offset));
    }

    /// The offset this acknowledgement covers.
    pub fn offset(&self) -> i64 {
        self.inner.offset
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.acked.load(Ordering::Acquire) {
            let _ = self.tx.send(AckEvent::Dropped(self.offset));
        }
    }
}
