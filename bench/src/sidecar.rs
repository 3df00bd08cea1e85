//! The sidecar scenario: records forwarded over HTTP/1.1 to a no-op service on 127.0.0.1.

use crate::measure::*;
use crate::support;
use crate::workload::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redrive::{BoxError, CommitPolicy, Record, Route, Worker};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::service_fn;

/// When each record reached the handler (or the HTTP server) and its Kafka timestamp.
pub(crate) type Arrivals = Arc<Mutex<Vec<(Instant, i64)>>>;

/// A no-op HTTP/1.1 server on 127.0.0.1 that logs each request's arrival in `times`; its URL.
pub(crate) async fn noop_http_server(times: Arrivals) -> String {
    use std::convert::Infallible;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let log = times.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let ts: i64 = req
                            .headers()
                            .get("redrive-timestamp")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        log.lock().unwrap().push((Instant::now(), ts));
                        async move {
                            use http_body_util::BodyExt;
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    url
}

/// One side of one round of the sidecar scenario: the sidecar forwarding to the no-op HTTP
/// server at `url` (`via_http`), or an in-process no-op handler with the same per-partition
/// concurrency. Returns (records/s over a backlog of `n`, p99 ms of handler start - record
/// timestamp on a stream of 2,000 records/s for 5 s).
pub(crate) async fn sidecar_side(
    bootstrap: &str,
    n: u64,
    via_http: bool,
    url: &str,
    times: &Arrivals,
) -> (f64, f64) {
    let topic = support::unique("bench-sidecar");
    support::create_topic(bootstrap, &topic, PARTITIONS).await;
    produce(bootstrap, &topic, n).await;
    times.lock().unwrap().clear();
    let group = support::unique("bench-sidecar-group");
    let workers = if via_http {
        let text = format!(
            "[kafka]\n\"bootstrap.servers\" = \"{bootstrap}\"\n\"session.timeout.ms\" = 6000\n[ops]\nenabled = false\n[[routes]]\ntopic = \"{topic}\"\ngroup = \"{group}\"\nurl = \"{url}\"\nconcurrency = 64\npartition_concurrency = 16\ncommit_policy = \"async:1000\"\n"
        );
        let config =
            redrive_sidecar::Config::parse(&text, "bench.toml", std::iter::empty()).unwrap();
        redrive_sidecar::build_workers(&config).unwrap()
    } else {
        let log = times.clone();
        let handler = service_fn(move |r: Record| {
            log.lock()
                .unwrap()
                .push((Instant::now(), r.timestamp().map_or(0, |t| t.millis)));
            std::future::ready(Ok::<_, BoxError>(()))
        });
        vec![(
            group.clone(),
            Worker::builder()
                .bootstrap_servers(bootstrap)
                .group_id(&group)
                .property("session.timeout.ms", "6000")
                .commit_policy(CommitPolicy::async_every(1000))
                .route(Route::new(&topic, handler).concurrency(16))
                .build()
                .unwrap(),
        )]
    };
    let (_, worker) = workers.into_iter().next().unwrap();
    let h = worker.handle();
    let run = tokio::spawn(worker.run());
    while h.records_finished() < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = {
        let t = times.lock().unwrap();
        n as f64 / (t[t.len() - 1].0 - t[0].0).as_secs_f64()
    };
    // Latency on a paced stream: 2,000 records/s for 5 s. With `linger.ms=0` every record
    // was a produce request of its own, and how fast the broker took 2,000 of them a second
    // beside the HTTP traffic decided the tail (p99 from 40 to 560 ms between rounds, the
    // lateness growing through the stream); batching for librdkafka's default 5 ms costs both
    // sides the same few milliseconds and leaves the consumer's part.
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let value = [b'x'; VALUE_BYTES];
    // One record first, delivered and handled: a new producer's first sends wait for its
    // connection and metadata, and records stamped meanwhile would measure that instead.
    p.send(
        FutureRecord::<str, [u8]>::to(&topic)
            .payload(&value[..])
            .partition(0),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
    let n = n + 1;
    while h.records_finished() < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    times.lock().unwrap().clear();
    let mut tick = tokio::time::interval(Duration::from_micros(500));
    for i in 0..10_000u64 {
        tick.tick().await;
        let _ = p.send_result(
            FutureRecord::<str, [u8]>::to(&topic)
                .payload(&value[..])
                .partition((i % PARTITIONS as u64) as i32),
        );
    }
    let _ = rdkafka::producer::Producer::flush(&p, Duration::from_secs(10));
    while h.records_finished() < n + 10_000 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let now_ms = support::now_ms();
    let mut lat: Vec<f64> = {
        let t = times.lock().unwrap();
        t.iter()
            .map(|(at, ts)| (now_ms - at.elapsed().as_millis() as i64 - ts) as f64)
            .collect()
    };
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    h.shutdown();
    run.await.unwrap().unwrap();
    (rate, quantile(&lat, 0.99))
}
