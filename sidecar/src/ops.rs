//! The operations endpoints: `/healthz`, `/readyz`, `/metrics`.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when every worker has partitions assigned (it joined its group and
//!   is consuming) and the cluster answered a metadata request within 2 s; 503 otherwise,
//!   with the reason in the body.
//! - `GET /metrics`: Prometheus text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};

use redrive::WorkerHandle;

struct Ops {
    workers: Vec<(String, WorkerHandle)>,
    metrics: Option<PrometheusHandle>,
    probe: Arc<BaseConsumer>,
}

/// Binds `addr` and serves the endpoints until the task is dropped.
pub(crate) async fn serve(
    addr: SocketAddr,
    workers: Vec<(String, WorkerHandle)>,
    metrics: Option<PrometheusHandle>,
    probe: BaseConsumer,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "operations endpoints: /healthz /readyz /metrics");
    let ops = Arc::new(Ops {
        workers,
        metrics,
        probe: Arc::new(probe),
    });
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ops = ops.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let ops = ops.clone();
                    async move { Ok::<_, Infallible>(ops.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static parts are valid")
}

impl Ops {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != hyper::Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.ready().await {
                Ok(summary) => text(StatusCode::OK, summary),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
            },
            "/metrics" => match &self.metrics {
                Some(h) => text(StatusCode::OK, h.render()),
                None => text(StatusCode::NOT_FOUND, "metrics are not installed\n"),
            },
            _ => text(StatusCode::NOT_FOUND, "try /healthz, /readyz or /metrics\n"),
        }
    }

    async fn ready(&self) -> Result<String, String> {
        let mut summary = String::new();
        for (group, w) in &self.workers {
            if w.is_shutting_down() {
                return Err(format!("group {group}: shutting down\n"));
            }
            let n = w.assignment().len();
            if n == 0 {
                return Err(format!("group {group}: no partitions assigned yet\n"));
            }
            summary.push_str(&format!("group {group}: {n} partitions\n"));
        }
        let probe = self.probe.clone();
        let reachable = tokio::task::spawn_blocking(move || {
            probe
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|md| md.brokers().len())
        })
        .await;
        match reachable {
            Ok(Ok(brokers)) => {
                summary.push_str(&format!("cluster: {brokers} brokers reachable\n"));
                Ok(summary)
            }
            Ok(Err(e)) => Err(format!("cluster unreachable: {e}\n")),
            Err(e) => Err(format!("cluster probe failed: {e}\n")),
        }
    }
}
