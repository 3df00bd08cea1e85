//! A route's health endpoint: a `GET` whose 2xx says the service behind the route is up.
//! The route's circuit breaker asks it before the first record and before each probe.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;

use super::client::ClientSettings;

use redrive::BoxError;

/// A health check of `url`: up when a `GET` answers 2xx within `timeout`.
pub fn http_check(
    url: &str,
    timeout: Duration,
) -> Result<impl Fn() -> BoxFuture<'static, bool> + Send + Sync + 'static, BoxError> {
    http_check_with(&ClientSettings::new(url, timeout), timeout)
}

/// A health check of `settings.url`, connecting as `settings` say: up when a `GET` answers
/// 2xx within `timeout`.
pub fn http_check_with(
    settings: &ClientSettings,
    timeout: Duration,
) -> Result<impl Fn() -> BoxFuture<'static, bool> + Send + Sync + 'static, BoxError> {
    let uri: Uri = settings.url.parse()?;
    let client: Client<_, Empty<Bytes>> = settings.client()?;
    let shown = super::config::redact_url(&settings.url);
    Ok(move || {
        let (client, uri, shown) = (client.clone(), uri.clone(), shown.clone());
        Box::pin(async move {
            let req = Request::get(uri)
                .body(Empty::new())
                .expect("a GET of a parsed URI");
            let answer = tokio::time::timeout(timeout, async {
                let res = client.request(req).await?;
                let status = res.status();
                // Drained so the connection goes back to the pool.
                res.into_body().collect().await?;
                Ok::<_, BoxError>(status)
            })
            .await;
            match answer {
                Ok(Ok(status)) if status.is_success() => true,
                Ok(Ok(status)) => {
                    tracing::info!(url = %shown, %status, "health check: not up");
                    false
                }
                Ok(Err(e)) => {
                    tracing::info!(url = %shown, error = %redrive::error_chain(&*e), "health check: no answer");
                    false
                }
                Err(_) => {
                    tracing::info!(url = %shown, ?timeout, "health check: timed out");
                    false
                }
            }
        }) as BoxFuture<'static, bool>
    })
}
