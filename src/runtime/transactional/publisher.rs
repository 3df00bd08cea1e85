//! The publisher of a transactional worker: sends inside the open transaction.

use std::sync::Mutex;

use rdkafka::producer::FutureProducer;

use crate::publish::{future_record, Outgoing, Publish, PublishFuture};

/// Sends copies and outputs inside the open transaction. A send is acknowledged by the
/// transaction's commit (which fails when any send failed), so `publish` resolves at once;
/// a send that cannot even be enqueued marks the transaction for abort.
pub(crate) struct TxnPublisher {
    producer: FutureProducer,
    failure: Mutex<Option<String>>,
}

impl TxnPublisher {
    pub(crate) fn new(producer: FutureProducer) -> Self {
        TxnPublisher {
            producer,
            failure: Mutex::new(None),
        }
    }

    pub(super) fn take_failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn fail(&self, why: String) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
    }
}

impl Publish for TxnPublisher {
    fn publish(&self, r: &Outgoing) -> PublishFuture {
        match self.producer.send_result(future_record(r)) {
            Ok(_delivery) => Box::pin(std::future::ready(Ok(()))),
            Err((e, _)) => {
                self.fail(format!("cannot enqueue a record for `{}`: {e}", r.topic));
                Box::pin(std::future::ready(Ok(())))
            }
        }
    }
}
