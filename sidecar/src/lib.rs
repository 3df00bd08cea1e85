//! The sidecar: the runtime driven by a config file, forwarding records to HTTP services
//! written in any language, plus the operations commands of the `redrive` binary
//! (feature `sidecar`).
//!
//! ```text
//! redrive run --config redrive.toml       consume and forward (SIGTERM drains and commits)
//! redrive check --config redrive.toml     validate and print the resolved topology
//! redrive topics create --config F        create retry and dead-letter topics up front
//! redrive dlt list|show|stats|replay ...  inspect dead letters and send them back
//! redrive skip --route R --partition P --to-offset N   move past records that cannot be read
//! ```
//!
//! Each `[[routes]]` entry reads one topic (plus its retry topics) in one consumer group and
//! `POST`s every record to its `url`; the response decides the outcome (see [`forward`]).
//! Routes of one group share one [`Worker`]. See `examples/sidecar.toml`.

pub mod cli;
pub mod client;
pub mod config;
pub mod dlt;
pub mod forward;
pub mod health;
mod ops;
pub mod request_headers;
pub mod skip;
mod topics;

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;

pub use config::{Config, ConfigError, ConfigErrors};
pub use forward::{HttpForward, HttpStatusError, HttpTransportError};

use client::ClientSettings;
use request_headers::RouteHeaders;

use redrive::policy::CircuitBreaker;
use redrive::BoxError;
use redrive::{Route, Worker, WorkerBuilder};

/// The workers a configuration describes, one per consumer group, not yet running.
pub fn build_workers(config: &Config) -> Result<Vec<(String, Worker)>, BoxError> {
    let mut out = Vec::new();
    for (group, routes) in config.groups() {
        let first = &config.routes[routes[0]];
        let mut builder = WorkerBuilder::new()
            .properties(config.kafka.0.clone())
            .group_id(group.clone())
            .commit_policy(first.commit_policy(&config.worker))
            .drain_timeout(config.worker.drain_timeout)
            .startup_timeout(config.worker.startup_timeout);
        for i in routes {
            let r = &config.routes[i];
            let at = |e: &dyn std::fmt::Display| format!("{}: routes[{i}].{e}", config.file);
            let headers = RouteHeaders::new(&r.headers, |v| std::env::var(v).ok())
                .map_err(|e| at(&format_args!("headers: {e}")))?;
            let mut forward = HttpForward::with(&client_settings(r, &r.url), &r.content_type)
                .map_err(|e| at(&format_args!("url: {e}")))?
                .headers(headers)
                .statuses(r.status_table());
            if r.format == forward::Format::Cloudevents {
                forward = forward.cloudevents(&r.name);
            }
            // The limit wraps the timeout: a request waiting for a slot is not timed out.
            let service = ServiceBuilder::new()
                .map_err(forward::name_timeout)
                .concurrency_limit(r.concurrency)
                .timeout(r.timeout)
                .service(forward);
            let route = Route::new(r.topic.clone(), service)
                .name(r.name.clone())
                .concurrency(r.partition_concurrency)
                .retry(r.retry.clone());
            let route = match (r.key_ordering, r.after_dead_letter) {
                (true, Some(after)) => route.key_ordering_after_dead_letter(after),
                (on, _) => route.key_ordering(on),
            };
            builder = match breaker(r).map_err(|e| format!("{}: routes[{i}]: {e}", config.file))? {
                Some(b) => builder.route(route.circuit_breaker(b)),
                None => builder.route(route),
            };
        }
        out.push((group, builder.build()?));
    }
    Ok(out)
}

/// A route's circuit breaker: its `[routes.circuit_breaker]` table, or the defaults when only
/// `health_url` is set; HTTP outages count, and the health endpoint gates start-up and probes.
fn breaker(r: &config::RouteConfig) -> Result<Option<CircuitBreaker>, BoxError> {
    let settings = match (&r.circuit_breaker, &r.health_url) {
        (None, None) => return Ok(None),
        (Some(b), _) => b.clone(),
        (None, Some(_)) => CircuitBreaker::new(),
    };
    let settings = settings.outage_when(forward::is_outage);
    Ok(Some(match &r.health_url {
        Some(url) => settings.health_check(health::http_check_with(
            &client_settings(r, url),
            r.timeout,
        )?),
        None => settings,
    }))
}

/// How a route's client connects to `url` (its endpoint or its health URL).
fn client_settings(r: &config::RouteConfig, url: &str) -> ClientSettings {
    ClientSettings {
        ca_path: r.ca_path.clone(),
        http2: r.http2,
        ..ClientSettings::new(url, Duration::from_secs(5).min(r.timeout))
    }
}

/// Runs every route of `config` until SIGTERM or ctrl-c, then drains in-flight records
/// (up to `worker.drain_timeout`), commits, and returns. Serves the operations endpoints when
/// `ops.enabled`, with `metrics` as `/metrics`.
pub async fn run(config: &Config, metrics: Option<PrometheusHandle>) -> Result<(), BoxError> {
    let workers = build_workers(config)?;
    let handles: Vec<_> = workers
        .iter()
        .map(|(g, w)| (g.clone(), w.handle()))
        .collect();
    let ops = if config.ops.enabled {
        let addr: SocketAddr = config.ops.listen.parse()?;
        let probe = rdkafka::ClientConfig::from_iter(config.kafka.0.clone()).create()?;
        Some(
            ops::serve(addr, handles.clone(), metrics, probe)
                .await
                .map_err(|e| format!("cannot serve the operations endpoints on {addr}: {e}"))?,
        )
    } else {
        None
    };
    let all = handles.clone();
    let signal = tokio::spawn(async move {
        redrive::shutdown_signal().await;
        tracing::info!("shutdown requested: draining in-flight records");
        for (_, h) in &handles {
            h.shutdown();
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (group, w) in workers {
        tasks.spawn(async move { (group, w.run().await) });
    }
    let mut first_error: Option<BoxError> = None;
    while let Some(joined) = tasks.join_next().await {
        let (group, res) = joined?;
        match res {
            Ok(()) => tracing::info!(%group, "worker stopped"),
            Err(e) => {
                // One failed group stops the process (the others drain and commit first), so
                // a supervisor restarts all of it.
                tracing::error!(%group, error = %redrive::error_chain(&e), "worker failed; stopping the others");
                for (_, h) in &all {
                    h.shutdown();
                }
                first_error.get_or_insert_with(|| format!("group {group}: {e}").into());
            }
        }
    }
    signal.abort();
    if let Some(ops) = ops {
        ops.abort();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
