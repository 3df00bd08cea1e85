//! Calling a service for one record, with its panics caught.

use crate::error::{BoxError, Panicked};
use crate::Record;

/// Calls a ready service, turning a panic (in `call` or in its future) into a [`Panicked`]
/// error and the service's error into a `BoxError`.
pub(crate) fn guarded_call<S>(
    svc: &mut S,
    record: Record,
) -> impl std::future::Future<Output = Result<(), BoxError>>
where
    S: tower::Service<Record>,
    S::Error: Into<BoxError>,
{
    use futures_util::FutureExt;
    use std::panic::AssertUnwindSafe;
    let fut = std::panic::catch_unwind(AssertUnwindSafe(|| svc.call(record)));
    async move {
        let fut = fut.map_err(|p| Box::new(Panicked::from_payload(&*p)) as BoxError)?;
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(p) => Err(Box::new(Panicked::from_payload(&*p)) as BoxError),
        }
    }
}
