use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::Service;

use super::context::FailureCtx;
use super::failure::{on_failure, Failing};
use super::ordering;
use crate::error::BoxError;
use crate::error::{Halt, Panicked};
use crate::Record;

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] fut: F },
        // Boxed: only failed records that still have something to await pay for it.
        Failing { fut: Failing },
        Done,
        Passthrough { #[pin] fut: F },
    }
}

pin_project! {
    /// The future of [`RetryTopic`](super::RetryTopic): the handler's, then on failure the
    /// publication of the copy.
    pub struct ResponseFuture<F, S> {
        #[pin]
        state: State<F>,
        ctx: Option<FailureCtx<S>>,
    }
}

impl<F, S> ResponseFuture<F, S> {
    pub(crate) fn new(fut: F, ctx: FailureCtx<S>) -> Self {
        ResponseFuture {
            state: State::Calling { fut },
            ctx: Some(ctx),
        }
    }

    /// A record the layer skips without calling the handler: final at once.
    pub(crate) fn skipped() -> Self {
        ResponseFuture {
            state: State::Done,
            ctx: None,
        }
    }

    pub(crate) fn passthrough(fut: F) -> Self {
        ResponseFuture {
            state: State::Passthrough { fut },
            ctx: None,
        }
    }
}

impl<F, S> ResponseFuture<F, S>
where
    S: Service<Record> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    pub(crate) fn failed(ctx: FailureCtx<S>, err: BoxError) -> Self {
        let state = match on_failure(ctx, err) {
            Some(fut) => State::Failing { fut },
            None => State::Done,
        };
        ResponseFuture { state, ctx: None }
    }
}

impl<F, T, E, S> Future for ResponseFuture<F, S>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    S: Service<Record> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx)));
                    let err: BoxError = match polled {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(Ok(_))) => {
                            let ctx = this.ctx.take().expect("polled after completion");
                            ctx.count_ok();
                            // A retry-topic record leaves the chain (key ordering).
                            ordering::succeeded(
                                &ctx.bound,
                                ctx.kept.key.as_ref(),
                                &ctx.kept.headers,
                            );
                            return Poll::Ready(Ok(()));
                        }
                        Ok(Poll::Ready(Err(e))) => e.into(),
                        Err(p) => Box::new(Panicked::from_payload(&*p)),
                    };
                    if err.is::<Halt>() {
                        // An inner layer stopped the partition at this record: it is not a
                        // failure to route, and stays uncommitted.
                        this.ctx.take();
                        this.state.set(State::Done);
                        return Poll::Ready(Err(err));
                    }
                    let ctx = this.ctx.take().expect("polled after completion");
                    match on_failure(ctx, err) {
                        Some(fut) => this.state.set(State::Failing { fut }),
                        None => {
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
                StateProj::Failing { fut } => return Poll::Ready(ready!(fut.as_mut().poll(cx))),
                StateProj::Done => return Poll::Ready(Ok(())),
                StateProj::Passthrough { fut } => {
                    return Poll::Ready(ready!(fut.poll(cx)).map(|_| ()).map_err(Into::into))
                }
            }
        }
    }
}
