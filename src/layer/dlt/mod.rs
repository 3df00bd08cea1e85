//! The dead-letter handler of a route, run under the policy's [`DltStrategy`].
//!
//! - `always_retry_on_error` (Spring's default): a failing DLT record is published to the DLT
//!   again, with the new error in its headers, and handled again once due: the policy's
//!   back-off for the number of times the handler failed on it (a handler that always fails
//!   retries at the policy's pace, never in a hot loop; the DLT partition waits meanwhile);
//! - `fail_on_error`: the DLT partition stops at the failing record, uncommitted, and the
//!   error is logged; a restart handles it again;
//! - `no_dlt`: there is no DLT, so there is no DLT handler either.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::retry_topic::{failure_copy, publish_until_acked, RetryShared};
use super::{guarded_call, Stage};
use crate::clock::now_ms;
use crate::error::Halt;
use crate::error::{error_chain, BoxError};
use crate::headers::{Headers, DLT_HANDLER_FAILURES};
use crate::policy::DltStrategy;
use crate::Record;

/// Applies [`DltHandler`]; made by [`RetryTopicLayer::dlt_layer`](crate::layer::retry_topic::RetryTopicLayer::dlt_layer).
#[derive(Clone)]
pub struct DltHandlerLayer {
    pub(crate) shared: Arc<RetryShared>,
}

impl<S> Layer<S> for DltHandlerLayer {
    type Service = DltHandler<S>;
    fn layer(&self, inner: S) -> DltHandler<S> {
        DltHandler {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Runs a dead-letter handler; see the [module docs](self).
#[derive(Clone)]
pub struct DltHandler<S> {
    inner: S,
    shared: Arc<RetryShared>,
}

impl<S> Service<Record> for DltHandler<S>
where
    S: Service<Record> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, record: Record) -> Self::Future {
        let shared = self.shared.clone();
        let foreign = shared.by_topic.get(record.topic());
        if foreign.is_some_and(|entry| entry.foreign(&record, &shared.group)) {
            return Box::pin(std::future::ready(Ok(())));
        }
        let copy = record.clone();
        let call = guarded_call(&mut self.inner, record);
        Box::pin(async move {
            let res = call.await;
            let Some(entry) = shared.by_topic.get(copy.topic()).cloned() else {
                return res;
            };
            debug_assert_eq!(entry.stage, Stage::Dlt);
            let attempt = crate::headers::attempt_of(copy.headers());
            let err = match res {
                Ok(()) => {
                    entry.count_ok(attempt);
                    return Ok(());
                }
                Err(e) => e,
            };
            entry.count_failure(true, attempt);
            match shared.policy.dlt_strategy {
                DltStrategy::FailOnError | DltStrategy::NoDlt => {
                    tracing::error!(record = %copy.coordinates(), error = %error_chain(&*err), "the dead-letter handler failed (fail_on_error): this DLT partition stops here, uncommitted, until the worker restarts");
                    Err(Box::new(Halt(format!(
                        "DLT handler failed on {}: {}",
                        copy.coordinates(),
                        error_chain(&*err)
                    ))))
                }
                DltStrategy::AlwaysRetryOnError => {
                    let failures = dlt_handler_failures(copy.headers()).saturating_add(1);
                    let delay = shared.policy.delay_before_retry(failures);
                    tracing::warn!(record = %copy.coordinates(), error = %error_chain(&*err), failures, retry_in = ?delay, "the dead-letter handler failed (always_retry_on_error): the record goes back to the DLT");
                    let mut out = failure_copy(
                        &shared,
                        &copy,
                        &*err,
                        attempt.saturating_sub(1),
                        copy.topic(),
                        now_ms() + delay.as_millis() as i64,
                    );
                    let count = crate::headers::encode_int(failures as i32);
                    out.headers.set(DLT_HANDLER_FAILURES, count.to_vec());
                    publish_until_acked(&*shared.publisher, out, None, &entry, "dlt", &copy).await;
                    Ok(())
                }
            }
        })
    }
}

/// How many times the dead-letter handler failed on this record before (0 for a fresh dead
/// letter or an unreadable header).
fn dlt_handler_failures(headers: &Headers) -> u32 {
    headers
        .last_value(DLT_HANDLER_FAILURES)
        .and_then(crate::headers::decode_int)
        .map_or(0, |n| n.max(0) as u32)
}
