use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use super::error::OutputError;
use crate::error::BoxError;
use crate::publish::{IntoOutputs, Publish};

type Publishing = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

pin_project! {
    /// The future of [`Output`](super::Output): the handler, then its outputs' publication.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        publisher: Arc<dyn Publish>,
        publishing: Option<Publishing>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, publisher: Arc<dyn Publish>) -> Self {
        ResponseFuture {
            inner,
            publisher,
            publishing: None,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    T: IntoOutputs,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(p) = this.publishing.as_mut() {
            return p.as_mut().poll(cx);
        }
        let outputs = ready!(this.inner.poll(cx))
            .map_err(Into::into)?
            .into_outputs();
        if outputs.is_empty() {
            return Poll::Ready(Ok(()));
        }
        // Every send is issued now, in order; their acknowledgements are awaited together.
        let sends: Vec<_> = outputs
            .into_iter()
            .map(|o| {
                let topic = o.topic.clone();
                let fut = this.publisher.publish(&o);
                async move { fut.await.map_err(|source| OutputError { topic, source }) }
            })
            .collect();
        let mut all: Publishing = Box::pin(async move {
            for r in futures_util::future::join_all(sends).await {
                r?;
            }
            Ok(())
        });
        let res = all.as_mut().poll(cx);
        *this.publishing = Some(all);
        res
    }
}
