use std::sync::Arc;

use tower::Layer;

use super::service::Output;
use crate::publish::Publish;

/// Wraps a handler so the records it returns are published. See the [module docs](super).
#[derive(Clone)]
pub struct OutputLayer {
    publisher: Arc<dyn Publish>,
}

impl OutputLayer {
    /// Publishes through `publisher`.
    pub fn new(publisher: Arc<dyn Publish>) -> Self {
        OutputLayer { publisher }
    }
}

impl<S> Layer<S> for OutputLayer {
    type Service = Output<S>;

    fn layer(&self, inner: S) -> Output<S> {
        Output::new(inner, self.publisher.clone())
    }
}
