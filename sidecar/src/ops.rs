//! The operations endpoints: `/healthz`, `/readyz`, `/metrics`.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when every worker joined its consumer group (a member with no
//!   partition to read is ready: its group has more members than partitions) and the cluster
//!   answered the last metadata probe; 503 otherwise, with the reason in the body. The probe
//!   runs in the background every 2 s, so an answer takes no broker round trip. Also 503
//!   while a partition has made no progress for 10 s or more: the broker refuses its failure
//!   copies (an ACL, a missing topic), or its records cannot be read (an unsupported codec,
//!   a corrupt batch).
//! - `GET /metrics`: Prometheus text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};

use redrive::WorkerHandle;

/// A partition whose failure copies have been refused this long makes the sidecar unready.
const BLOCKED_UNREADY: Duration = Duration::from_secs(10);

struct Ops {
    workers: Vec<(String, WorkerHandle)>,
    metrics: Option<PrometheusHandle>,
    cluster: Probed,
}

/// The last cluster probe: when, and the brokers it saw or its error.
type Probed = Arc<Mutex<Option<(Instant, Result<usize, String>)>>>;

/// How often the cluster is probed, and how old a probe may be before it no longer counts.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_STALE: Duration = Duration::from_secs(10);

/// Probes the cluster's metadata every [`PROBE_EVERY`] on a thread of its own (not the
/// runtime's blocking pool, which a shutdown would wait for), for as long as the endpoints
/// are served.
fn spawn_probe(probe: BaseConsumer) -> Probed {
    let cluster = Arc::new(Mutex::new(None));
    let last = Arc::downgrade(&cluster);
    let probing = move || loop {
        let answer = probe
            .fetch_metadata(None, PROBE_EVERY)
            .map(|md| md.brokers().len())
            .map_err(|e| e.to_string());
        let Some(last) = last.upgrade() else {
            return;
        };
        *last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), answer));
        drop(last);
        std::thread::sleep(PROBE_EVERY);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("redrive-ops-probe".into())
        .spawn(probing)
    {
        tracing::error!(error = %e, "cannot start the cluster probe; /readyz stays unready");
    }
    cluster
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
        cluster: spawn_probe(probe),
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
            if !w.has_joined() {
                return Err(format!("group {group}: not joined yet\n"));
            }
            let blocked: Vec<String> = w
                .blocked_partitions()
                .into_iter()
                .filter(|b| b.since >= BLOCKED_UNREADY)
                .map(|b| {
                    let secs = b.since.as_secs();
                    format!("{}/{} for {secs}s: {}", b.topic, b.partition, b.reason)
                })
                .collect();
            if !blocked.is_empty() {
                return Err(format!(
                    "group {group}: partitions make no progress ({}); see the ERROR log for the cause\n",
                    blocked.join("; ")
                ));
            }
            let n = w.assignment().len();
            summary.push_str(&format!("group {group}: joined, {n} partitions\n"));
        }
        let last = self
            .cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match last {
            Some((at, _)) if at.elapsed() > PROBE_STALE => Err(format!(
                "cluster: no answer to the metadata probe for {:?}\n",
                at.elapsed()
            )),
            Some((_, Ok(brokers))) => {
                summary.push_str(&format!("cluster: {brokers} brokers reachable\n"));
                Ok(summary)
            }
            Some((_, Err(e))) => Err(format!("cluster unreachable: {e}\n")),
            None => Err("cluster: not probed yet\n".into()),
        }
    }
}
