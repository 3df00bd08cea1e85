use tokio::sync::mpsc::UnboundedSender;

/// Marks a record's outcome final in manual-acknowledgement mode (Spring's `MANUAL` ack mode).
///
/// Until a record is acknowledged, no offset at or after it is committed for its partition.
/// Acknowledging may happen after the handler returned (e.g. once a batch written elsewhere
/// is flushed). Acknowledging twice is harmless. A record whose handler returns an error is
/// final once the error was handled (logged, or published to a retry/dead-letter topic), so it
/// needs no acknowledgement.
#[derive(Clone, Debug)]
pub struct Acknowledgment {
    pub(crate) offset: i64,
    pub(crate) tx: UnboundedSender<i64>,
}

impl Acknowledgment {
    /// Marks the record final. Does nothing if its partition was revoked meanwhile (the
    /// record will be delivered again to the partition's new owner).
    pub fn acknowledge(&self) {
        let _ = self.tx.send(self.offset);
    }

    /// The offset this acknowledgement covers.
    pub fn offset(&self) -> i64 {
        self.offset
    }
}
