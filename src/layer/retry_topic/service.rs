//! The retry-topic service: calls the handler and hands a failure to the failure path.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use super::context::{Bound, FailureCtx, Kept};
use super::future::ResponseFuture;
use super::shared::RetryShared;
use crate::error::{BoxError, Panicked};
use crate::headers::{self, AttemptsHeader};
use crate::layer::Stage;
use crate::Record;

/// The service [`RetryTopicLayer`](super::RetryTopicLayer) produces. See the
/// [module docs](crate::layer::retry_topic).
pub struct RetryTopic<S> {
    inner: S,
    shared: Arc<RetryShared>,
    // Records of one partition share one interned topic name and one partition state: a
    // pointer check skips the map.
    last: Option<Arc<Bound>>,
}

impl<S: Clone> Clone for RetryTopic<S> {
    fn clone(&self) -> Self {
        RetryTopic {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            // Each clone (a partition's) binds its own: see [`Bound`].
            last: None,
        }
    }
}

impl<S> RetryTopic<S> {
    pub(crate) fn new(inner: S, shared: Arc<RetryShared>) -> Self {
        RetryTopic {
            inner,
            shared,
            last: None,
        }
    }

    fn bound(&mut self, r: &Record) -> Option<Arc<Bound>> {
        if let Some(b) = &self.last {
            if b.binds(r) {
                return Some(b.clone());
            }
        }
        let b = Arc::new(Bound {
            shared: self.shared.clone(),
            entry: self.shared.by_topic.get(r.topic())?.clone(),
            topic: r.topic.clone(),
            state: r.partition_state.clone(),
        });
        self.last = Some(b.clone());
        Some(b)
    }
}

impl<S> Service<Record> for RetryTopic<S>
where
    S: Service<Record> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, record: Record) -> Self::Future {
        let Some(bound) = self.bound(&record) else {
            // Not one of the layer's topics: no retry route, errors pass through.
            return ResponseFuture::passthrough(self.inner.call(record));
        };
        if bound.entry.foreign(&record, &bound.shared.group) {
            return ResponseFuture::skipped();
        }
        let attempt = match bound.entry.stage {
            Stage::Main => 1,
            _ => match headers::read_attempts(record.headers()) {
                AttemptsHeader::Valid(n) => n,
                AttemptsHeader::Absent => {
                    tracing::warn!(record = %record.coordinates(), "retry-topic record without a `retry_topic-attempts` header; treating it as attempt 1");
                    1
                }
                AttemptsHeader::Malformed => {
                    tracing::warn!(record = %record.coordinates(), "malformed `retry_topic-attempts` header; treating it as attempt 1");
                    1
                }
            },
        };
        let inner =
            (attempt == 1 && self.shared.policy.in_memory.attempts > 0).then(|| self.inner.clone());
        let ctx = FailureCtx {
            bound,
            kept: Kept::of(&record),
            attempt,
            inner,
        };
        if super::ordering::follows(&ctx.bound, ctx.kept.offset) {
            // Straight to the dead-letter topic: not handled, not retried in memory.
            let ctx = FailureCtx { inner: None, ..ctx };
            return ResponseFuture::failed(ctx, Box::new(crate::FollowedDeadLetter));
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(record))) {
            Ok(fut) => ResponseFuture::new(fut, ctx),
            Err(p) => ResponseFuture::failed(ctx, Box::new(Panicked::from_payload(&*p))),
        }
    }
}
