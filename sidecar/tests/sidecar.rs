//! The `redrive` sidecar binary against the real broker and a real HTTP server in this test
//! (both on 127.0.0.1): the response classification table row by row, SIGTERM mid-run, key
//! ordering, `check` on bad configs, and DLT list/show/replay.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rdkafka::message::Message;
use redrive::headers;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_redrive");

/// One request the endpoint received.
#[derive(Clone, Debug)]
struct Seen {
    key: String,
    attempt: u32,
    at_ms: i64,
    status: u16,
    headers: HashMap<String, String>,
    body: Bytes,
}

type Script = Arc<dyn Fn(&str, u32) -> (u16, Option<&'static str>, Duration) + Send + Sync>;

/// An HTTP endpoint that answers by script (record key, attempt) and records every request.
#[derive(Clone)]
struct Endpoint {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Endpoint {
    async fn start(script: Script) -> Endpoint {
        Self::start_on(script, None).await
    }

    /// Plain HTTP/1.1, or with `tls` HTTPS speaking HTTP/1.1 or HTTP/2 (ALPN). Each request's
    /// HTTP version is recorded as the pseudo-header `x-version`.
    async fn start_on(script: Script, tls: Option<tokio_rustls::TlsAcceptor>) -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/records", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (log, script, tls) = (log.clone(), script.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (log, script) = (log.clone(), script.clone());
                        async move {
                            let mut headers: HashMap<String, String> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                                .collect();
                            headers.insert("x-version".into(), format!("{:?}", req.version()));
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let key = headers.get("redrive-key").cloned().unwrap_or_default();
                            let attempt: u32 = headers["redrive-attempt"].parse().unwrap();
                            let (status, retry_after, delay) = script(&key, attempt);
                            log.lock().unwrap().push(Seen {
                                key,
                                attempt,
                                at_ms: now_ms(),
                                status,
                                headers,
                                body,
                            });
                            tokio::time::sleep(delay).await;
                            let mut res = Response::builder().status(status);
                            if let Some(ra) = retry_after {
                                res = res.header("retry-after", ra);
                            }
                            Ok::<_, Infallible>(
                                res.body(Full::new(Bytes::from(format!("answer {status}"))))
                                    .unwrap(),
                            )
                        }
                    });
                    let Some(tls) = tls else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                        return;
                    };
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        Endpoint { url, seen }
    }

    fn calls(&self, key: &str) -> Vec<Seen> {
        let v = self.seen.lock().unwrap();
        v.iter().filter(|s| s.key == key).cloned().collect()
    }

    fn ok_keys(&self) -> std::collections::HashSet<String> {
        let v = self.seen.lock().unwrap();
        v.iter()
            .filter(|s| (200..300).contains(&s.status))
            .map(|s| s.key.clone())
            .collect()
    }
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sidecar");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", unique(name)));
    std::fs::write(&path, text).unwrap();
    path
}

fn kafka_section(bootstrap: &str) -> String {
    format!(
        "[kafka]\n\"bootstrap.servers\" = \"{bootstrap}\"\n\"session.timeout.ms\" = {SESSION_TIMEOUT_MS}\n\"sasl.password\" = \"s3cret-do-not-print\"\n\"security.protocol\" = \"plaintext\"\n"
    )
}

/// A running `redrive run`; killed on drop.
struct Sidecar {
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    fn start(config: &PathBuf) -> Sidecar {
        let log = config.with_extension(format!("{}.log", unique("run")));
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,redrive=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn redrive");
        Sidecar { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status within `within`.
    fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t0.elapsed() < within,
                "redrive did not exit within {within:?} of SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redrive(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run redrive")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

async fn produce_keyed(bootstrap: &str, topic: &str, records: &[(String, i32)]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let p = producer(bootstrap);
    let payloads: Vec<String> = records
        .iter()
        .map(|(k, _)| format!("payload of {k}"))
        .collect();
    let sends = records.iter().zip(&payloads).map(|((k, part), payload)| {
        p.send(
            FutureRecord::to(topic)
                .key(k)
                .payload(payload)
                .partition(*part)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "user-header",
                    value: Some("user value"),
                })),
            Duration::from_secs(30),
        )
    });
    for r in futures_util::future::join_all(sends).await {
        r.map_err(|(e, _)| e).expect("produce");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classification_table_row_by_row() {
    let bootstrap = bootstrap();
    let topic = unique("sc-orders");
    let dead = unique("sc-dead");
    create_topic(&bootstrap, &topic, 2).await;
    create_topic(&bootstrap, &dead, 1).await;
    // Retryable rows fail on the first attempt and succeed on the second; "always-500" fails
    // every time and must end in the DLT after its 3 attempts.
    let script: Script = Arc::new(|key: &str, attempt: u32| {
        let row = key.rsplit_once('_').unwrap().0;
        let first = attempt == 1;
        match row {
            "200" => (200, None, Duration::ZERO),
            "201" => (201, None, Duration::ZERO),
            "204" => (204, None, Duration::ZERO),
            "302" => (302, None, Duration::ZERO),
            "400" => (400, None, Duration::ZERO),
            "404" => (404, None, Duration::ZERO),
            "409" => (409, None, Duration::ZERO),
            "408" if first => (408, None, Duration::ZERO),
            "429" if first => (429, Some("3"), Duration::ZERO),
            "500" if first => (500, None, Duration::ZERO),
            "503" if first => (503, None, Duration::ZERO),
            // The sidecar gives up after 1 s; 599 marks the answer it never sees.
            "timeout" if first => (599, None, Duration::from_secs(3)),
            "always-500" => (500, None, Duration::ZERO),
            _ => (200, None, Duration::ZERO),
        }
    });
    let endpoint = Endpoint::start(script).await;
    let closed = free_port();
    let group = unique("sc-group");
    let ops = format!("127.0.0.1:{}", free_port());
    let config = write_config(
        "table",
        &format!(
            "{}\n[ops]\nlisten = \"{ops}\"\n\n[[routes]]\nname = \"orders\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\nurl = \"{}\"\ntimeout = \"1s\"\nconcurrency = 8\n[routes.retry]\nattempts = 3\nbackoff = {{ delay = \"500ms\" }}\n\n[[routes]]\nname = \"unreachable\"\ntopic = \"{dead}\"\ngroup = \"{group}\"\nurl = \"http://127.0.0.1:{closed}/nobody-listens\"\n[routes.retry]\nattempts = 2\nbackoff = {{ delay = \"200ms\" }}\n",
            kafka_section(&bootstrap),
            endpoint.url
        ),
    );
    let rows = [
        "200",
        "201",
        "204",
        "302",
        "400",
        "404",
        "409",
        "408",
        "429",
        "500",
        "503",
        "timeout",
        "always-500",
    ];
    let keys: Vec<(String, i32)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("{r}_{i}"), (i % 2) as i32))
        .collect();
    produce_keyed(&bootstrap, &topic, &keys).await;
    produce_keyed(&bootstrap, &dead, &[("refused_0".into(), 0)]).await;

    let mut sidecar = Sidecar::start(&config);
    let dlt = format!("{topic}-dlt");
    let dead_dlt = format!("{dead}-dlt");
    let expect_dlt = 5 + 1; // 302 400 404 409, always-500; plus the unreachable route's record
    let t0 = Instant::now();
    loop {
        let n = watermark(&bootstrap, &dlt, 0).max(0)
            + watermark(&bootstrap, &dlt, 1).max(0)
            + watermark(&bootstrap, &dead_dlt, 0).max(0);
        let ok = endpoint.ok_keys().len();
        if n >= expect_dlt && ok >= 8 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "dead letters {n}/{expect_dlt}, ok {ok}/8 after 90 s; log:\n{}",
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The readiness endpoint agrees while it runs.
    let (status, body) = http_get(&ops, "/readyz").expect("readyz answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(&ops, "/healthz").unwrap().0, 200);
    let (status, metrics) = http_get(&ops, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("redrive_dead_lettered_total"), "{metrics}");
    // Let stray retries (there must be none) surface before judging.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sidecar.terminate(Duration::from_secs(40)).success());

    let dl: Vec<_> = read_topic(&bootstrap, &dlt);
    let dl_keys = |k: &str| {
        dl.iter()
            .filter(|m| m.key().is_some_and(|x| x.starts_with(k.as_bytes())))
            .count()
    };
    for (i, row) in rows.iter().enumerate() {
        let key = format!("{row}_{i}");
        let calls = endpoint.calls(&key);
        let attempts: Vec<u32> = calls.iter().map(|c| c.attempt).collect();
        match *row {
            // 2xx: handled once, never dead-lettered.
            "200" | "201" | "204" => {
                assert_eq!(attempts, [1], "{key}");
                assert_eq!(dl_keys(row), 0, "{key}");
            }
            // Fatal: one call, straight to the DLT.
            "302" | "400" | "404" | "409" => {
                assert_eq!(attempts, [1], "{key}");
                assert_eq!(dl_keys(row), 1, "{key}");
                let m = with_key(&dl, &key).next().unwrap();
                assert_eq!(
                    header(m, headers::ATTEMPTS),
                    Some(&2i32.to_be_bytes()[..]),
                    "{key}"
                );
                let msg = String::from_utf8_lossy(header(m, headers::EXCEPTION_MESSAGE).unwrap())
                    .into_owned();
                assert!(msg.contains(&format!("answered {row}")), "{key}: {msg}");
                assert!(
                    msg.contains(&format!("answer {row}")),
                    "body in the message: {msg}"
                );
            }
            // Retryable: the retry topic, then success on attempt 2.
            "408" | "429" | "500" | "503" | "timeout" => {
                assert_eq!(attempts, [1, 2], "{key}");
                assert_eq!(dl_keys(row), 0, "{key}");
                let gap = calls[1].at_ms - calls[0].at_ms;
                if *row == "429" {
                    // Retry-After: 3 beats the 500 ms back-off.
                    assert!(
                        gap >= 3_000,
                        "429 retried after {gap} ms despite Retry-After: 3"
                    );
                } else {
                    assert!(gap >= 500, "{key} retried after {gap} ms");
                }
            }
            "always-500" => {
                assert_eq!(attempts, [1, 2, 3], "{key}");
                assert_eq!(dl_keys(row), 1, "{key}");
            }
            _ => unreachable!(),
        }
    }
    // What the endpoint received for a record.
    let first = &endpoint.calls("200_0")[0];
    assert_eq!(first.body, Bytes::from("payload of 200_0"));
    assert_eq!(first.headers["redrive-topic"], topic);
    assert_eq!(first.headers["redrive-partition"], "0");
    assert_eq!(first.headers["redrive-offset"], "0");
    assert_eq!(first.headers["redrive-header-user-header"], "user%20value");
    assert_eq!(first.headers["content-type"], "application/octet-stream");
    assert_eq!(first.headers["redrive-id"], format!("{topic}/0/0"));
    // A retried record: the same id on every attempt, readable original coordinates, the
    // last error; no binary bookkeeping header forwarded, no header name with `_`.
    let retried = endpoint
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.attempt == 2)
        .map(|c| c.key.clone())
        .next()
        .expect("a retried record");
    let calls = endpoint.calls(&retried);
    let (one, two) = (&calls[0], &calls[1]);
    assert_eq!(two.headers["redrive-id"], one.headers["redrive-id"]);
    assert_eq!(
        two.headers["redrive-original-offset"],
        one.headers["redrive-offset"]
    );
    assert_ne!(
        two.headers["redrive-topic"], one.headers["redrive-topic"],
        "read from a retry topic"
    );
    assert!(
        two.headers["redrive-last-error"].contains("answered"),
        "{:?}",
        two.headers
    );
    for name in two.headers.keys() {
        assert!(
            !name.contains('_'),
            "header name with an underscore: {name}"
        );
        assert!(
            !name.starts_with("redrive-header-kafka") && !name.starts_with("redrive-header-retry"),
            "bookkeeping header forwarded: {name}"
        );
    }
    // Connection refused: retryable, then the DLT after the route's 2 attempts.
    let refused = read_topic(&bootstrap, &dead_dlt);
    assert_eq!(refused.len(), 1);
    assert_eq!(
        header(&refused[0], headers::ATTEMPTS),
        Some(&3i32.to_be_bytes()[..])
    );
    let msg = String::from_utf8_lossy(header(&refused[0], headers::EXCEPTION_MESSAGE).unwrap())
        .into_owned();
    assert!(
        msg.contains("nobody-listens") && msg.contains("failed"),
        "{msg}"
    );
    // No secret in the log.
    let log = sidecar.log();
    assert!(
        !log.contains("s3cret-do-not-print"),
        "secret in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_loses_nothing() {
    let bootstrap = bootstrap();
    let topic = unique("sc-term");
    create_topic(&bootstrap, &topic, 3).await;
    // Every 10th record fails once; each call takes 2 ms.
    let script: Script = Arc::new(|key: &str, attempt: u32| {
        let n: u64 = key.trim_start_matches("key-").parse().unwrap();
        if n % 10 == 0 && attempt == 1 {
            (503, None, Duration::from_millis(2))
        } else {
            (200, None, Duration::from_millis(2))
        }
    });
    let endpoint = Endpoint::start(script).await;
    let group = unique("sc-term-group");
    let ops = format!("127.0.0.1:{}", free_port());
    let config = write_config(
        "term",
        &format!(
            "{}\n[worker]\ndrain_timeout = \"10s\"\ncommit_policy = \"async:100\"\n[ops]\nlisten = \"{ops}\"\n\n[[routes]]\ntopic = \"{topic}\"\ngroup = \"{group}\"\nurl = \"{}\"\npartition_concurrency = 4\n[routes.retry]\nattempts = 3\nbackoff = {{ delay = \"300ms\" }}\n",
            kafka_section(&bootstrap),
            endpoint.url
        ),
    );
    let total = 3_000u64;
    produce_n(&bootstrap, &topic, 3, 0, total).await;

    let mut sidecar = Sidecar::start(&config);
    // Not ready before it joined its group; ready once it has.
    let t0 = Instant::now();
    loop {
        if let Some((200, _)) = http_get(&ops, "/readyz") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never ready; log:\n{}",
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(
        Duration::from_secs(60),
        "a third of the records handled",
        || endpoint.ok_keys().len() as u64 >= total / 3,
    )
    .await;
    let status = sidecar.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit {status:?}; log:\n{}", sidecar.log());
    let log = sidecar.log();
    assert!(log.contains("shutdown requested"), "{log}");
    let handled_before = endpoint.ok_keys().len() as u64;
    assert!(
        handled_before < total,
        "SIGTERM came too late to test anything"
    );

    // A second run picks up where the first committed.
    let mut again = Sidecar::start(&config);
    eventually(Duration::from_secs(120), "every record handled ok", || {
        endpoint.ok_keys().len() as u64 == total
    })
    .await;
    // `async:100` commits every 100 records; the rest goes with SIGTERM's final commit.
    assert!(again.terminate(Duration::from_secs(20)).success());
    let committed_all: i64 = committed(&bootstrap, &group, &topic, 3)
        .values()
        .map(|o| o.unwrap_or(0))
        .sum();
    assert_eq!(committed_all, total as i64, "offsets committed to the end");
    let calls = endpoint.seen.lock().unwrap().len() as u64;
    println!(
        "sigterm: {total} records, {handled_before} handled before SIGTERM, {calls} calls in all ({} beyond one per record and retry)",
        calls - total - total / 10
    );
}

#[test]
fn check_rejects_bad_configs_with_file_key_and_reason() {
    let good = "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:9\"\n\"sasl.password\" = \"s3cret-do-not-print\"\n\n[[routes]]\ntopic = \"orders\"\ngroup = \"g\"\nurl = \"http://127.0.0.1:8080/orders\"\n[routes.retry]\nattempts = 4\nbackoff = { delay = \"1s\", multiplier = 2.0, max = \"10s\" }\n";
    let path = write_config("good", good);
    let out = redrive(&["check", "--config", path.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    for want in [
        "route orders: orders -> POST http://127.0.0.1:8080/orders",
        "orders-retry-1000",
        "orders-retry-4000",
        "orders-dlt",
        "sasl.password = ***",
    ] {
        assert!(stdout.contains(want), "`{want}` missing from:\n{stdout}");
    }
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"));
    let json = redrive(
        &[
            "check",
            "--config",
            path.to_str().unwrap(),
            "--output",
            "json",
        ],
        &[],
    );
    assert!(json.status.success(), "{}", text(&json).1);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(v["ok"], true);
    assert_eq!(v["kafka"]["sasl.password"], "***");
    let route = &v["groups"][0]["routes"][0];
    assert_eq!(route["dlt"], "orders-dlt");
    assert_eq!(route["retry_topics"][2]["topic"], "orders-retry-4000");
    assert!(!text(&json).0.contains("s3cret"));
    // The file may also come from REDRIVE_CONFIG.
    let from_env = redrive(&["check"], &[("REDRIVE_CONFIG", path.to_str().unwrap())]);
    assert!(from_env.status.success(), "{}", text(&from_env).1);
    assert_eq!(text(&from_env).0, stdout);

    type Case<'a> = (&'a str, String, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 12] = [
        (
            "a status table key that is no status",
            format!("{good}[routes.statuses]\n4o4 = \"retry\"\n"),
            &[],
            "routes[0].statuses.4o4: must be an HTTP status code, 100 to 599",
        ),
        (
            "circuit breaker opening on nothing",
            format!("{good}[routes.circuit_breaker]\nconsecutive_failures = 0\n"),
            &[],
            "routes[0].circuit_breaker: consecutive_failures must be at least 1",
        ),
        (
            "circuit breaker with an unknown key",
            format!("{good}[routes.circuit_breaker]\nthreshold = 3\n"),
            &[],
            "routes[0].circuit_breaker.threshold: unknown field `threshold`, expected one of",
        ),
        (
            "unknown key",
            good.replace("attempts = 4", "atempts = 4"),
            &[],
            "routes[0].retry.atempts: unknown field `atempts`, expected one of",
        ),
        (
            "bad duration",
            good.replace("delay = \"1s\"", "delay = \"5 sekunds\""),
            &[],
            "routes[0].retry.backoff.delay: invalid duration `5 sekunds`",
        ),
        (
            "missing bootstrap",
            good.replace("\"bootstrap.servers\" = \"127.0.0.1:9\"\n", ""),
            &[],
            "kafka.\"bootstrap.servers\": missing",
        ),
        (
            "ftp endpoint",
            good.replace("http://127.0.0.1:8080", "ftp://127.0.0.1:8080"),
            &[],
            "routes[0].url: scheme `ftp` is not supported",
        ),
        (
            "a CA file for plain http",
            good.replace("/orders\"\n", "/orders\"\nca_path = \"/etc/ca.pem\"\n"),
            &[],
            "routes[0].ca_path: applies to an https:// url only",
        ),
        (
            "a header the sidecar sets",
            format!("{good}[routes.headers]\nRedrive-Key = \"x\"\n"),
            &[],
            "routes[0].headers.Redrive-Key: `Redrive-Key` is set by the sidecar itself",
        ),
        (
            "a header with two sources",
            format!("{good}[routes.headers]\nAuthorization = {{ file = \"/t\", env = \"T\" }}\n"),
            &[],
            "routes[0].headers.Authorization: give exactly one of `file` or `env`",
        ),
        (
            "environment override",
            good.to_owned(),
            &[("REDRIVE_ROUTE_ORDERS__RETRY__ATTEMPTS", "0")],
            "routes[0].retry.attempts (from $REDRIVE_ROUTE_ORDERS__RETRY__ATTEMPTS)",
        ),
        (
            "two routes, one topic",
            format!("{good}\n[[routes]]\nname = \"again\"\ntopic = \"orders\"\ngroup = \"g\"\nurl = \"http://127.0.0.1:1/\"\n"),
            &[],
            "routes[1].topic: `orders` is also read by routes[0]",
        ),
    ];
    for (what, text_, env, want) in cases {
        let path = write_config("bad", &text_);
        let out = redrive(&["check", "--config", path.to_str().unwrap()], env);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {stdout}{stderr}");
        let expected = format!("{}: {want}", path.display());
        assert!(
            stderr.contains(&expected),
            "{what}: expected `{expected}` in:\n{stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{what}: secret printed");
    }
    // Every mistake at once, not only the first: an unknown key, a bad duration, a bad value
    // and a rule of the routes'.
    let many = good
        .replace("attempts = 4", "atempts = 4")
        .replace("delay = \"1s\"", "delay = \"soon\"")
        .replace("http://127.0.0.1:8080", "ftp://127.0.0.1:8080")
        + "[routes.statuses]\n999 = \"retry\"\n";
    let path = write_config("many", &many);
    let json = redrive(
        &[
            "check",
            "--config",
            path.to_str().unwrap(),
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(json.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 4, "{v}");
    let out = redrive(&["check", "--config", path.to_str().unwrap()], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for key in [
        "routes[0].retry.atempts",
        "routes[0].retry.backoff.delay",
        "routes[0].url",
        "routes[0].statuses.999",
    ] {
        assert!(
            stderr.contains(&format!("{}: {key}:", path.display())),
            "{key} missing from:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlt_replay_moves_exactly_the_selection_once() {
    let bootstrap = bootstrap();
    let topic = unique("sc-replay");
    create_topic(&bootstrap, &topic, 2).await;
    // Keys bad-* are refused (400 -> DLT) until replayed; replayed ones are accepted.
    let script: Script = Arc::new(|key: &str, _attempt: u32| {
        if key.starts_with("bad-") {
            (400, None, Duration::ZERO)
        } else {
            (200, None, Duration::ZERO)
        }
    });
    let endpoint = Endpoint::start(script).await;
    let group = unique("sc-replay-group");
    let config = write_config(
        "replay",
        &format!(
            "{}\n[ops]\nenabled = false\n\n[[routes]]\nname = \"orders\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\nurl = \"{}\"\n",
            kafka_section(&bootstrap),
            endpoint.url
        ),
    );
    let cfg = config.to_str().unwrap();
    let records: Vec<(String, i32)> = (0..20)
        .map(|i| {
            let k = if i % 2 == 0 {
                format!("bad-{i}")
            } else {
                format!("good-{i}")
            };
            (k, 0)
        })
        .collect();
    produce_keyed(&bootstrap, &topic, &records).await;
    let dlt = format!("{topic}-dlt");
    {
        let mut sidecar = Sidecar::start(&config);
        eventually(Duration::from_secs(60), "10 dead letters", || {
            watermark(&bootstrap, &dlt, 0) == 10
        })
        .await;
        assert!(sidecar.terminate(Duration::from_secs(30)).success());
    }

    let out = redrive(&["dlt", "list", "--config", cfg, "--route", "orders"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 10, "{stdout}");
    let line = stdout.lines().next().unwrap();
    assert!(
        line.contains(&format!("{dlt}/0@0"))
            && line.contains("key=\"bad-0\"")
            && line.contains(&format!("from={topic}/0@0"))
            && line.contains("http-400"),
        "{line}"
    );
    assert!(
        stderr.contains("10 of 10 scanned records selected"),
        "{stderr}"
    );
    // The same listing as JSON lines, for scripts.
    let args = [
        "dlt", "list", "--config", cfg, "--route", "orders", "--output", "json",
    ];
    let out = redrive(&args, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[0]["key"], "bad-0");
    assert_eq!(rows[0]["offset"], 0);
    assert_eq!(rows[0]["original"]["topic"], topic.as_str());
    assert_eq!(rows[0]["error_type"], "http-400");

    let out = redrive(
        &[
            "dlt",
            "show",
            "--config",
            cfg,
            "--topic",
            &dlt,
            "--partition",
            "0",
            "--offset",
            "3",
        ],
        &[],
    );
    let (stdout, _) = text(&out);
    assert!(stdout.contains("key:               \"bad-6\""), "{stdout}");
    assert!(stdout.contains("answered 400"), "{stdout}");
    let show = [
        "dlt",
        "show",
        "--config",
        cfg,
        "--topic",
        &dlt,
        "--partition",
        "0",
        "--offset",
        "3",
        "--output",
        "json",
    ];
    let out = redrive(&show, &[]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(shown["key"], "bad-6");
    assert_eq!(shown["value"], "payload of bad-6");
    assert_eq!(shown["original"]["group"], group.as_str());
    assert_eq!(shown["error_type"], "http-400");
    let attempts = shown["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == headers::ATTEMPTS)
        .expect("the attempts header");
    assert_eq!(attempts["value"], "2 (int)", "decoded");

    // Counted by route, error type and age, as text and JSON.
    let out = redrive(&["dlt", "stats", "--config", cfg], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("route orders ({dlt}): 10 dead letters"))
            && stdout.contains("by error type: http-400 10")
            && stdout.contains("by age: <1h 10"),
        "{stdout}"
    );
    let out = redrive(&["dlt", "stats", "--config", cfg, "--output", "json"], &[]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(stats["routes"][0]["total"], 10);
    assert_eq!(stats["routes"][0]["by_error_type"]["http-400"], 10);

    // Without --execute the command prints its plan and sends nothing.
    let before = watermark(&bootstrap, &topic, 0);
    let select = ["--from-offset", "2", "--to-offset", "5"];
    let mut args = vec!["dlt", "replay", "--config", cfg, "--route", "orders"];
    args.extend(select);
    let out = redrive(&args, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches("would replay").count(), 5, "{stdout}"); // 4 lines + summary
    assert_eq!(watermark(&bootstrap, &topic, 0), before);

    // With --execute it moves DLT offsets 2..=5 (keys bad-4, bad-6, bad-8, bad-10), once.
    let args: Vec<&str> = [
        "dlt",
        "replay",
        "--config",
        cfg,
        "--route",
        "orders",
        "--execute",
    ]
    .into_iter()
    .chain(select)
    .collect();
    let out = redrive(&args, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("replayed 4 of 4 scanned records"),
        "{stdout}"
    );
    assert_eq!(watermark(&bootstrap, &topic, 0), before + 4);
    let again = redrive(&args, &[]);
    let (stdout, stderr) = text(&again);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stdout.contains("replayed 0 of 0 scanned records"),
        "second run: {stdout}"
    );
    assert_eq!(
        watermark(&bootstrap, &topic, 0),
        before + 4,
        "the second run sent records"
    );

    // A relative time is resolved at each run, but the replay's group is named by the
    // selection as written: the same command run twice sends its records once.
    let relative = [
        "dlt",
        "replay",
        "--config",
        cfg,
        "--route",
        "orders",
        "--execute",
        "--since",
        "1h",
        "--key",
        "bad-2",
    ];
    for (run, sent) in [(1, 1), (2, 0)] {
        let out = redrive(&relative, &[]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains(&format!("replayed {sent} of")),
            "run {run} of `--since 1h`: {stdout}"
        );
    }
    assert_eq!(watermark(&bootstrap, &topic, 0), before + 5);
    // Named with --topic, no route vouches for a destination: the plan refuses to guess.
    let out = redrive(
        &[
            "dlt", "replay", "--config", cfg, "--topic", &dlt, "--key", "bad-0",
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains("skipped") && stdout.contains("--to"),
        "{stdout}{stderr}"
    );

    let main = read_topic(&bootstrap, &topic);
    let replayed: Vec<_> = main.iter().filter(|m| m.offset() >= before).collect();
    let keys: Vec<&[u8]> = replayed.iter().map(|m| m.key().unwrap()).collect();
    assert_eq!(
        keys,
        [&b"bad-4"[..], b"bad-6", b"bad-8", b"bad-10", b"bad-2"]
    );
    for m in replayed {
        assert_eq!(
            header(m, "redrive-replay-count"),
            Some(&1i32.to_be_bytes()[..])
        );
        assert_eq!(header(m, headers::ATTEMPTS), None, "attempts reset");
        assert_eq!(header(m, headers::EXCEPTION_MESSAGE), None);
        assert_eq!(header(m, "user-header"), Some(&b"user value"[..]));
        assert_eq!(
            m.payload(),
            Some(format!("payload of {}", String::from_utf8_lossy(m.key().unwrap())).as_bytes())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_makes_every_retry_and_dead_letter_topic_once() {
    let bootstrap = bootstrap();
    let topic = unique("sc-topics");
    create_topic(&bootstrap, &topic, 3).await;
    let config = write_config(
        "topics",
        &format!(
            "{}\n[ops]\nenabled = false\n\n[[routes]]\ntopic = \"{topic}\"\ngroup = \"g\"\nurl = \"http://127.0.0.1:1/\"\n[routes.retry]\nattempts = 3\nbackoff = {{ delay = \"1s\", multiplier = 2.0 }}\n",
            kafka_section(&bootstrap)
        ),
    );
    let cfg = config.to_str().unwrap();
    let out = redrive(&["topics", "create", "--config", cfg], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("ok: 3 topics created"), "{stdout}");
    for t in ["-retry-1000", "-retry-2000", "-dlt"] {
        let name = format!("{topic}{t}");
        assert!(stdout.contains(&format!("created {name}")), "{stdout}");
        assert_eq!(
            high_watermarks(&bootstrap, &name, 3).len(),
            3,
            "{name} partitions"
        );
    }
    let again = redrive(&["topics", "create", "--config", cfg], &[]);
    let (stdout, _) = text(&again);
    assert!(
        again.status.success() && stdout.contains("ok: 0 topics created"),
        "{stdout}"
    );
    // A main topic that does not exist is an error naming it.
    let missing = write_config(
        "topics-missing",
        &format!(
            "{}\n[ops]\nenabled = false\n\n[[routes]]\ntopic = \"no-such-topic-{}\"\ngroup = \"g\"\nurl = \"http://127.0.0.1:1/\"\n",
            kafka_section(&bootstrap),
            std::process::id()
        ),
    );
    let out = redrive(
        &["topics", "create", "--config", missing.to_str().unwrap()],
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("topic `no-such-topic-") && stderr.contains("does not exist"),
        "{stderr}"
    );
    // With --partitions the missing main topic is created too, then its derived topics.
    let out = redrive(
        &[
            "topics",
            "create",
            "--config",
            missing.to_str().unwrap(),
            "--partitions",
            "2",
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let main = format!("no-such-topic-{}", std::process::id());
    assert!(
        stdout.contains(&format!("created {main} (2 partitions)")),
        "{stdout}"
    );
    assert_eq!(high_watermarks(&bootstrap, &main, 2).len(), 2);
    assert_eq!(
        high_watermarks(&bootstrap, &format!("{main}-dlt"), 2).len(),
        2
    );
}

/// Security: the operations endpoints bind to 127.0.0.1 unless configured; SSL/SASL settings
/// reach librdkafka unchanged (a bad CA path is librdkafka's error, naming the property); no
/// secret appears in `check` output, logs (at trace level) or errors.
#[test]
fn security_defaults_pass_through_and_no_secret_leaks() {
    let secrets = [
        "s3cret-sasl-password",
        "s3cret-key-password",
        "s3cret-url-password",
    ];
    let config = format!(
        "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:9\"\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\"sasl.username\" = \"svc\"\n\"sasl.password\" = \"{}\"\n\"ssl.key.password\" = \"{}\"\n\"ssl.ca.location\" = \"/nonexistent/redrive-test-ca.pem\"\n\n[[routes]]\ntopic = \"orders\"\ngroup = \"g\"\nurl = \"http://user:{}@127.0.0.1:8080/orders\"\n",
        secrets[0], secrets[1], secrets[2]
    );
    let path = write_config("security", &config);
    let cfg = path.to_str().unwrap();

    let out = redrive(&["check", "--config", cfg], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("ops: http://127.0.0.1:9464"), "{stdout}");
    assert!(
        stdout.contains("ssl.ca.location = /nonexistent/redrive-test-ca.pem"),
        "{stdout}"
    );
    assert!(
        stdout.contains("http://user:***@127.0.0.1:8080/orders"),
        "{stdout}"
    );

    let out = redrive(&["run", "--config", cfg], &[("RUST_LOG", "trace")]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("ssl.ca.location"),
        "librdkafka's own error expected: {stderr}"
    );
    for s in secrets {
        for (what, output) in [("check", &stdout), ("run", &stderr)] {
            assert!(!output.contains(s), "{what} printed a secret:\n{output}");
        }
    }
}

/// Two sidecars in one group on a one-partition topic: the member without a partition is
/// ready too (it joined its group; `/readyz` no longer means "has partitions"), and each
/// answer comes from the cached cluster probe, well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_green_on_a_member_with_no_partitions() {
    let bootstrap = bootstrap();
    let topic = unique("sc-ready");
    create_topic(&bootstrap, &topic, 1).await;
    let endpoint = Endpoint::start(Arc::new(|_: &str, _| (200, None, Duration::ZERO))).await;
    let group = unique("sc-ready-group");
    let start = |name: &str| {
        let ops = format!("127.0.0.1:{}", free_port());
        let config = write_config(
            name,
            &format!(
                "{}\n[ops]\nlisten = \"{ops}\"\n\n[[routes]]\ntopic = \"{topic}\"\ngroup = \"{group}\"\nurl = \"{}\"\n",
                kafka_section(&bootstrap),
                endpoint.url
            ),
        );
        (Sidecar::start(&config), ops)
    };
    let (mut a, ops_a) = start("ready-a");
    let (mut b, ops_b) = start("ready-b");
    let t0 = Instant::now();
    let bodies: Vec<String> = loop {
        let answers = [http_get(&ops_a, "/readyz"), http_get(&ops_b, "/readyz")];
        if answers.iter().all(|x| matches!(x, Some((200, _)))) {
            break answers
                .into_iter()
                .flatten()
                .map(|(_, body)| body)
                .collect();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not both ready: {answers:?}; logs:\n{}\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let partitions: Vec<bool> = bodies
        .iter()
        .map(|b| b.contains("joined, 0 partitions"))
        .collect();
    assert_eq!(
        partitions.iter().filter(|none| **none).count(),
        1,
        "one of the two members has no partition and is ready: {bodies:?}"
    );
    for ops in [&ops_a, &ops_b] {
        let t = Instant::now();
        assert_eq!(http_get(ops, "/readyz").map(|x| x.0), Some(200));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "/readyz took {:?}",
            t.elapsed()
        );
    }
    assert!(a.terminate(Duration::from_secs(20)).success());
    assert!(b.terminate(Duration::from_secs(20)).success());
}

/// An HTTP service on a fixed port that answers 200 and can refuse connections for a while
/// (its listener and every open connection closed, as when the process behind it restarts).
/// `GET /healthz` answers 200 while `healthy`, else 503.
struct Restartable {
    port: u16,
    ok: Arc<Mutex<std::collections::HashSet<String>>>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl Restartable {
    async fn start() -> Restartable {
        let s = Restartable {
            port: free_port(),
            ok: Arc::default(),
            tasks: Arc::default(),
            healthy: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        s.listen().await;
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/records", self.port)
    }

    async fn listen(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let (ok, tasks) = (self.ok.clone(), self.tasks.clone());
        let healthy = self.healthy.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (ok, healthy) = (ok.clone(), healthy.clone());
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (ok, healthy) = (ok.clone(), healthy.clone());
                        async move {
                            if req.uri().path() == "/healthz" {
                                let up = healthy.load(std::sync::atomic::Ordering::SeqCst);
                                let status = if up { 200 } else { 503 };
                                let res = Response::builder().status(status);
                                return Ok(res.body(Full::new(Bytes::new())).unwrap());
                            }
                            let key = req.headers()["redrive-key"].to_str().unwrap().to_owned();
                            ok.lock().unwrap().insert(key);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    fn refuse(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn ok_count(&self) -> usize {
        self.ok.lock().unwrap().len()
    }
}

/// The sum of the samples of `name` whose labels include each of `labels` in `/metrics` at
/// `ops`.
fn scrape_sum(ops: &str, name: &str, labels: &[&str]) -> f64 {
    let (_, body) = http_get(ops, "/metrics").unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_refusing_connections_for_30_s_dead_letters_nothing() {
    let bootstrap = bootstrap();
    let topic = unique("sc-outage");
    create_topic(&bootstrap, &topic, 3).await;
    let service = Restartable::start().await;
    let ops = format!("127.0.0.1:{}", free_port());
    let config = write_config(
        "outage",
        &format!(
            "{}\n[ops]\nlisten = \"{ops}\"\n\n[[routes]]\ntopic = \"{topic}\"\ngroup = \"{}\"\nurl = \"{}\"\ntimeout = \"2s\"\n[routes.retry]\nattempts = 3\nbackoff = {{ delay = \"1s\" }}\n[routes.circuit_breaker]\n",
            kafka_section(&bootstrap),
            unique("sc-outage-group"),
            service.url()
        ),
    );
    let mut sidecar = Sidecar::start(&config);
    // A stream of 10 records a second, from before the outage to after it.
    let total = 450u64;
    let producer = tokio::spawn({
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        async move {
            for i in 0..total / 10 {
                produce_n(&bootstrap, &topic, 3, i * 10, 10).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    eventually(
        Duration::from_secs(60),
        "records flow before the outage",
        || service.ok_count() >= 50,
    )
    .await;
    service.refuse();
    let open_label = format!("route=\"{topic}\"");
    let opened = || {
        scrape_sum(
            &ops,
            "redrive_circuit_transitions_total{",
            &[&open_label, "to=\"open\""],
        ) >= 1.0
    };
    eventually(Duration::from_secs(20), "the breaker opened", opened).await;
    let state = scrape_sum(&ops, "redrive_circuit_state{", &[&open_label]);
    assert_eq!(state, 1.0, "open while the service refuses connections");
    assert_eq!(
        http_get(&ops, "/readyz").map(|x| x.0),
        Some(200),
        "the process stays ready"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    service.listen().await;
    producer.await.unwrap();
    eventually(
        Duration::from_secs(120),
        "every record delivered after the outage",
        || service.ok_count() == total as usize,
    )
    .await;
    assert!(sidecar.terminate(Duration::from_secs(20)).success());
    let dlt = format!("{topic}-dlt");
    let dead: i64 = (0..3).map(|p| watermark(&bootstrap, &dlt, p).max(0)).sum();
    assert_eq!(dead, 0, "nothing dead-lettered; log:\n{}", sidecar.log());
    let log = sidecar.log();
    assert!(log.contains("circuit breaker open"), "{log}");
    assert!(log.contains("circuit breaker closed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_url_gates_start_up_and_nothing_is_posted_while_unhealthy() {
    let bootstrap = bootstrap();
    let topic = unique("sc-health");
    create_topic(&bootstrap, &topic, 2).await;
    let service = Restartable::start().await;
    service
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let config = write_config(
        "health",
        &format!(
            "{}\n[ops]\nenabled = false\n\n[[routes]]\ntopic = \"{topic}\"\ngroup = \"{}\"\nurl = \"{}\"\nhealth_url = \"http://127.0.0.1:{}/healthz\"\n[routes.retry]\nattempts = 2\nbackoff = {{ delay = \"1s\" }}\n",
            kafka_section(&bootstrap),
            unique("sc-health-group"),
            service.url(),
            service.port
        ),
    );
    produce_n(&bootstrap, &topic, 2, 0, 60).await;
    let mut sidecar = Sidecar::start(&config);
    eventually(
        Duration::from_secs(60),
        "the health endpoint was asked",
        || sidecar.log().contains("health check: not up"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        service.ok_count(),
        0,
        "nothing POSTed while the service says it is down"
    );
    service
        .healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(
        Duration::from_secs(90),
        "every record delivered once healthy",
        || service.ok_count() == 60,
    )
    .await;
    assert!(sidecar.terminate(Duration::from_secs(20)).success());
    let dlt = format!("{topic}-dlt");
    let dead: i64 = (0..2).map(|p| watermark(&bootstrap, &dlt, p).max(0)).sum();
    assert_eq!(dead, 0, "nothing dead-lettered; log:\n{}", sidecar.log());
}

/// `--log-format json` writes one JSON object per log line; plain text (the default) has no
/// colour codes when stderr is not a terminal (a pipe, a log collector).
#[test]
fn logs_are_json_lines_on_request_and_never_coloured_in_a_pipe() {
    let config = "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:9\"\n[worker]\nstartup_timeout = \"2s\"\n[ops]\nenabled = false\n\n[[routes]]\ntopic = \"orders\"\ngroup = \"g\"\nurl = \"http://127.0.0.1:9/orders\"\n";
    let path = write_config("logs", config);
    let path = path.to_str().unwrap();
    let json = redrive(
        &["--log-format", "json", "run", "--config", path],
        &[("RUST_LOG", "info")],
    );
    let (_, stderr) = text(&json);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "no JSON log line:\n{stderr}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    let plain = redrive(&["run", "--config", path], &[("RUST_LOG", "info")]);
    let (_, stderr) = text(&plain);
    assert!(stderr.contains("starting"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe:\n{stderr}"
    );
}

/// The response contract: a service answers 200 with `Redrive-Disposition: dead-letter` and
/// a `Redrive-Reason` for `bad`, which lands in the DLT with that reason; a 404 the route's
/// `[routes.statuses]` maps to `retry` is retried (and succeeds) instead of dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispositions_and_the_status_table_decide_a_records_fate() {
    let bootstrap = bootstrap();
    let topic = unique("sc-disposition");
    create_topic(&bootstrap, &topic, 1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/records", listener.local_addr().unwrap());
    let deploying_seen = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ok: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (deploying_seen, ok) = (deploying_seen.clone(), ok.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (deploying_seen, ok) = (deploying_seen.clone(), ok.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (deploying_seen, ok) = (deploying_seen.clone(), ok.clone());
                        async move {
                            let key = req.headers()["redrive-key"].to_str().unwrap().to_owned();
                            let mut res = Response::builder().status(200);
                            match key.as_str() {
                                "bad" => {
                                    res = res
                                        .header("redrive-disposition", "dead-letter")
                                        .header("redrive-reason", "order 7 has no customer");
                                }
                                "deploying"
                                    if deploying_seen
                                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                                        == 0 =>
                                {
                                    res = res.status(404);
                                }
                                _ => ok.lock().unwrap().push(key),
                            }
                            Ok::<_, Infallible>(res.body(Full::new(Bytes::new())).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }
    let config = write_config(
        "disposition",
        &format!(
            "{}\n[ops]\nenabled = false\n\n[[routes]]\ntopic = \"{topic}\"\ngroup = \"{}\"\nurl = \"{url}\"\n[routes.retry]\nattempts = 2\nbackoff = {{ delay = \"300ms\" }}\n[routes.statuses]\n404 = \"retry\"\n",
            kafka_section(&bootstrap),
            unique("sc-disposition-group"),
        ),
    );
    let records: Vec<(String, i32)> = ["good", "bad", "deploying"]
        .iter()
        .map(|k| (k.to_string(), 0))
        .collect();
    produce_keyed(&bootstrap, &topic, &records).await;
    let mut sidecar = Sidecar::start(&config);
    let dlt = format!("{topic}-dlt");
    eventually(
        Duration::from_secs(60),
        "good and deploying handled, bad dead-lettered",
        || ok.lock().unwrap().len() == 2 && watermark(&bootstrap, &dlt, 0) == 1,
    )
    .await;
    assert!(sidecar.terminate(Duration::from_secs(20)).success());
    let dead = read_topic(&bootstrap, &dlt);
    assert_eq!(dead[0].key(), Some(&b"bad"[..]));
    let msg =
        String::from_utf8_lossy(header(&dead[0], headers::EXCEPTION_MESSAGE).unwrap()).into_owned();
    assert!(msg.contains("order 7 has no customer"), "{msg}");
    assert_eq!(
        header(&dead[0], headers::ATTEMPTS),
        Some(&2i32.to_be_bytes()[..]),
        "dead-lettered at once, not after its retries"
    );
    assert_eq!(
        deploying_seen.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the 404 was retried once"
    );
}

/// `key_ordering = true`: a record the service fails holds back only the later records of its
/// key, which reach the service after its retry succeeded, in order; the other key's records
/// are forwarded meanwhile. (Without key ordering `a1` and `a2` succeed before `a0`'s retry.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordering_holds_back_only_the_failing_key() {
    use rdkafka::producer::FutureRecord;
    let bootstrap = bootstrap();
    let topic = unique("sc-key-order");
    create_topic(&bootstrap, &topic, 1).await;
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failed.clone();
    let endpoint = Endpoint::start(Arc::new(move |key: &str, _| {
        let first_of_a = key == "a" && !f.swap(true, std::sync::atomic::Ordering::SeqCst);
        (if first_of_a { 500 } else { 200 }, None, Duration::ZERO)
    }))
    .await;
    let config = write_config(
        "key-order",
        &format!(
            "{}\n[ops]\nenabled = false\n\n[[routes]]\ntopic = \"{topic}\"\ngroup = \"{}\"\nurl = \"{}\"\nkey_ordering = true\n[routes.retry]\nattempts = 3\nbackoff = {{ delay = \"1s\" }}\n",
            kafka_section(&bootstrap),
            unique("sc-key-order-group"),
            endpoint.url
        ),
    );
    let p = producer(&bootstrap);
    for (k, v) in [
        ("a", "a0"),
        ("b", "b0"),
        ("a", "a1"),
        ("b", "b1"),
        ("a", "a2"),
        ("b", "b2"),
    ] {
        let record = FutureRecord::to(&topic).key(k).payload(v).partition(0);
        p.send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let mut sidecar = Sidecar::start(&config);
    let succeeded = |key: &str| -> Vec<Seen> {
        let calls = endpoint.calls(key).into_iter();
        calls.filter(|s| s.status == 200).collect()
    };
    eventually(
        Duration::from_secs(60),
        "all six records forwarded with success",
        || succeeded("a").len() + succeeded("b").len() == 6,
    )
    .await;
    assert!(
        sidecar.terminate(Duration::from_secs(20)).success(),
        "{}",
        sidecar.log()
    );
    let bodies = |calls: &[Seen]| -> Vec<String> {
        calls
            .iter()
            .map(|s| String::from_utf8_lossy(&s.body).into_owned())
            .collect()
    };
    let (a, b) = (succeeded("a"), succeeded("b"));
    let first_a = &endpoint.calls("a")[0];
    assert_eq!((first_a.status, &first_a.body[..]), (500, &b"a0"[..]));
    assert_eq!(
        bodies(&a),
        ["a0", "a1", "a2"],
        "key a forwarded out of order"
    );
    assert_eq!(bodies(&b), ["b0", "b1", "b2"]);
    assert!(
        b[2].at_ms < a[0].at_ms,
        "key b waited for key a's retry: b2 at {} ms, a0 at {} ms",
        b[2].at_ms,
        a[0].at_ms
    );
}

/// `format = "cloudevents"`: each request is a CloudEvent in HTTP binary mode (CloudEvents
/// 1.0 HTTP binding): the required attributes `ce-specversion` 1.0, `ce-id`, `ce-source` (a
/// URI reference), `ce-type`, plus `ce-subject`, an RFC 3339 `ce-time` and the `key`
/// extension, named as the binding requires (lower-case letters and digits after `ce-`),
/// with Knative KafkaSource's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_mode_follows_the_http_binary_binding() {
    let bootstrap = bootstrap();
    let topic = unique("sc-ce");
    create_topic(&bootstrap, &topic, 1).await;
    let endpoint = Endpoint::start(Arc::new(|_: &str, _| (200, None, Duration::ZERO))).await;
    let config = write_config(
        "ce",
        &format!(
            "{}\n[ops]\nenabled = false\n\n[[routes]]\nname = \"billing\"\ntopic = \"{topic}\"\ngroup = \"{}\"\nurl = \"{}\"\nformat = \"cloudevents\"\ncontent_type = \"application/json\"\n",
            kafka_section(&bootstrap),
            unique("sc-ce-group"),
            endpoint.url
        ),
    );
    produce_keyed(&bootstrap, &topic, &[("order-1".to_string(), 0)]).await;
    let mut sidecar = Sidecar::start(&config);
    eventually(Duration::from_secs(60), "the event delivered", || {
        !endpoint.calls("order-1").is_empty()
    })
    .await;
    assert!(sidecar.terminate(Duration::from_secs(20)).success());
    let h = &endpoint.calls("order-1")[0].headers;
    assert_eq!(h["ce-specversion"], "1.0");
    assert_eq!(h["ce-id"], "partition:0/offset:0");
    assert_eq!(h["ce-source"], format!("/redrive/billing#{topic}"));
    assert_eq!(h["ce-type"], "dev.knative.kafka.event");
    assert_eq!(h["ce-subject"], "partition:0#0");
    assert_eq!(h["ce-key"], "order-1");
    assert_eq!(h["content-type"], "application/json");
    humantime::parse_rfc3339(&h["ce-time"]).expect("ce-time is RFC 3339");
    for name in h.keys().filter(|n| n.starts_with("ce-")) {
        let attr = &name["ce-".len()..];
        assert!(
            !attr.is_empty()
                && attr
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "attribute name {name} breaks the binding's naming rule"
        );
    }
}

/// `redrive skip`: the plan changes nothing; with the group's workers running it refuses;
/// with them stopped it writes a marker naming the skipped offsets to the route's DLT and
/// moves the group's committed offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_moves_a_stopped_group_past_records_and_records_what_it_skipped() {
    let bootstrap = bootstrap();
    let topic = unique("sc-skip");
    create_topic(&bootstrap, &topic, 1).await;
    produce_n(&bootstrap, &topic, 1, 0, 10).await;
    let group = unique("sc-skip-group");
    // The group handled offsets 0..3.
    {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
        let c: BaseConsumer = client_config(&bootstrap)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(3))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }
    let endpoint = Endpoint::start(Arc::new(|_: &str, _| (200, None, Duration::ZERO))).await;
    let config = write_config(
        "skip",
        &format!(
            "{}\n[ops]\nenabled = false\n\n[[routes]]\nname = \"orders\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\nurl = \"{}\"\n",
            kafka_section(&bootstrap),
            endpoint.url
        ),
    );
    let cfg = config.to_str().unwrap();
    let skip = [
        "skip",
        "--config",
        cfg,
        "--route",
        "orders",
        "--partition",
        "0",
        "--to-offset",
        "7",
    ];
    let at = || committed(&bootstrap, &group, &topic, 1)[&0];

    let out = redrive(&skip, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("would skip") && stdout.contains("offsets 3..6 (4 records)"),
        "{stdout}"
    );
    assert_eq!(at(), Some(3), "the plan changed nothing");

    // With a worker of the group running, it refuses.
    let mut running = Sidecar::start(&config);
    eventually(
        Duration::from_secs(60),
        "the worker handled the rest",
        || endpoint.seen.lock().unwrap().len() == 7,
    )
    .await;
    let mut args = skip.to_vec();
    args.push("--execute");
    let refused = redrive(&args, &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused).1);
    assert!(
        text(&refused).1.contains("active members"),
        "{}",
        text(&refused).1
    );
    assert!(running.terminate(Duration::from_secs(20)).success());

    // Stopped: move it back to 3 as if 3..6 could not be read, then skip them.
    {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
        let c: BaseConsumer = client_config(&bootstrap)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(3))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }
    let done = redrive(&args, &[]);
    assert!(done.status.success(), "{}", text(&done).1);
    assert_eq!(at(), Some(7));
    let markers = read_topic(&bootstrap, &format!("{topic}-dlt"));
    assert_eq!(markers.len(), 1);
    let m = &markers[0];
    assert_eq!(m.payload(), Some(&b""[..]));
    assert_eq!(header(m, "redrive-skipped-to"), Some(&b"7"[..]));
    assert_eq!(
        header(m, "kafka_dlt-original-offset"),
        Some(&3i64.to_be_bytes()[..])
    );
    let why =
        String::from_utf8_lossy(header(m, "kafka_dlt-exception-message").unwrap()).into_owned();
    assert!(
        why.contains("offsets 3..6") && why.contains("4 records"),
        "{why}"
    );
}

/// A test CA and a certificate it signed for 127.0.0.1: (CA PEM, server TLS acceptor
/// offering HTTP/2 and HTTP/1.1).
fn test_tls() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// An https:// service with a certificate from a test CA (`ca_path`), over HTTP/2, and a bearer
/// token read from a file: every request carries the file's token, a new token once the file
/// changes; the token is in no log line and not in `check`'s output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_test_ca_and_a_bearer_token_from_a_file() {
    let bootstrap = bootstrap();
    let topic = unique("sc-tls");
    create_topic(&bootstrap, &topic, 1).await;
    let (ca_pem, acceptor) = test_tls();
    let endpoint = Endpoint::start_on(
        Arc::new(|_: &str, _| (200, None, Duration::ZERO)),
        Some(acceptor),
    )
    .await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, token) = (dir.join("ca.pem"), dir.join("token"));
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&token, "first-token-4f1c\n").unwrap();
    let config = write_config(
        "tls",
        &format!(
            "{}\n[ops]\nenabled = false\n\n[[routes]]\ntopic = \"{topic}\"\ngroup = \"{}\"\nurl = \"{}\"\nca_path = \"{}\"\nhttp2 = true\n[routes.headers]\nAuthorization = {{ file = \"{}\", prefix = \"Bearer \" }}\nX-Tenant = \"acme\"\n",
            kafka_section(&bootstrap),
            unique("sc-tls-group"),
            endpoint.url,
            ca.display(),
            token.display()
        ),
    );
    let check = redrive(&["check", "--config", config.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&check);
    assert!(check.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("header Authorization: *** (from file"),
        "{stdout}"
    );
    assert!(stdout.contains("header X-Tenant: acme"), "{stdout}");
    assert!(!stdout.contains("first-token"), "{stdout}");

    let mut sidecar = Sidecar::start(&config);
    produce_keyed(&bootstrap, &topic, &[("a".to_string(), 0)]).await;
    eventually(
        Duration::from_secs(60),
        "the first record delivered",
        || !endpoint.calls("a").is_empty(),
    )
    .await;
    let h = &endpoint.calls("a")[0].headers;
    assert_eq!(h["authorization"], "Bearer first-token-4f1c");
    assert_eq!(h["x-tenant"], "acme");
    assert_eq!(h["x-version"], "HTTP/2.0", "http2 = true negotiates HTTP/2");

    std::fs::write(&token, "second-token-9e2d\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    produce_keyed(&bootstrap, &topic, &[("b".to_string(), 0)]).await;
    eventually(
        Duration::from_secs(60),
        "the second record delivered",
        || !endpoint.calls("b").is_empty(),
    )
    .await;
    assert_eq!(
        endpoint.calls("b")[0].headers["authorization"],
        "Bearer second-token-9e2d",
        "the changed file is read again"
    );
    assert!(sidecar.terminate(Duration::from_secs(20)).success());
    let log = sidecar.log();
    assert!(
        !log.contains("first-token") && !log.contains("second-token"),
        "{log}"
    );
    assert!(endpoint
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.status == 200));
}
