//! The publisher of a transactional worker: sends inside the open transaction.

use std::sync::Mutex;

use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use super::rollback::Blame;
use super::state::Key;
use crate::publish::{future_record, Outgoing, Publish, PublishFuture};

tokio::task_local! {
    /// The record a partition task of the loop is handling, so a send that fails is blamed on
    /// it.
    pub(super) static HANDLING: (Key, i64);
}

/// Sends copies and outputs inside the open transaction. A send is acknowledged by the
/// transaction's commit (which fails when any send failed), so `publish` resolves at once;
/// a send that cannot even be enqueued marks the transaction for abort, blaming the record
/// being handled.
pub(crate) struct TxnPublisher {
    producer: FutureProducer,
    failure: Mutex<Option<(Option<Blame>, String)>>,
}

impl TxnPublisher {
    pub(crate) fn new(producer: FutureProducer) -> Self {
        TxnPublisher {
            producer,
            failure: Mutex::new(None),
        }
    }

    /// The first send that failed since the last call, with the record it is blamed on.
    pub(super) fn take_failure(&self) -> Option<(Option<Blame>, String)> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Enqueues `r` in the open transaction; a refusal is the caller's to handle.
    pub(super) fn try_send(&self, r: &Outgoing) -> Result<(), KafkaError> {
        self.producer
            .send_result(future_record(r))
            .map(drop)
            .map_err(|(e, _)| e)
    }

    fn fail(&self, why: String) {
        let blame = HANDLING
            .try_with(|(key, offset)| Blame {
                key: key.clone(),
                offset: *offset,
                why: why.clone(),
            })
            .ok();
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert((blame, why));
    }
}

impl Publish for TxnPublisher {
    fn publish(&self, r: &Outgoing) -> PublishFuture {
        if let Err(e) = self.try_send(r) {
            self.fail(format!("cannot enqueue a record for `{}`: {e}", r.topic));
        }
        Box::pin(std::future::ready(Ok(())))
    }
}
