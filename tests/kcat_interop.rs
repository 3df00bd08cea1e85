//! Interop with a non-Rust client: records produced with `kcat` (librdkafka's CLI) go through
//! a retry and the DLT, and `kcat` reads the dead letter back with every header.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use redrive::policy::RetryPolicy;
use redrive::{BoxError, Record, Route, Worker};
use support::*;
use tower::service_fn;

fn kcat() -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("kcat").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`kcat` is not on PATH: install it with `apt-get install -y kcat` (scripts/test does this)"
    );
    let mut cmd = Command::new("kcat");
    // Debian's kcat links librdkafka 2.0.2, which misreads nisshi's ApiVersion v3 response;
    // scripts/test fetches a current librdkafka for it. Against an external Kafka
    // (REDRIVE_TEST_BOOTSTRAP) the system library is fine.
    if std::env::var_os("REDRIVE_TEST_BOOTSTRAP").is_none() {
        let dir = std::env::var_os("REDRIVE_KCAT_LIBRDKAFKA_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/librdkafka")
            });
        assert!(
            dir.join("librdkafka.so.1").is_file(),
            "no current librdkafka for kcat in {}: run scripts/test once (it downloads the \
             confluent-kafka wheel from PyPI and extracts its librdkafka.so.1 there), or set \
             REDRIVE_KCAT_LIBRDKAFKA_DIR to a directory holding librdkafka.so.1 >= 2.3",
            dir.display()
        );
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    cmd
}

/// Produces `input` (one record per line) to partition 0 of `topic` with `kcat -P` and `args`.
fn kcat_produce<I, A>(bootstrap: &str, topic: &str, args: I, input: &[u8])
where
    I: IntoIterator<Item = A>,
    A: AsRef<std::ffi::OsStr>,
{
    use std::io::Write;
    let mut child = kcat()
        .args(["-b", bootstrap, "-P", "-t", topic, "-p", "0"])
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    // Dropped at the end of the statement: kcat sees the end of its input.
    child.stdin.take().unwrap().write_all(input).unwrap();
    assert!(child.wait().unwrap().success(), "kcat produce failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_records_round_trip_through_retry_and_dlt() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("kcat");
    create_topic(&bootstrap, &topic, 1).await;
    // kcat -P: key `order-1`, a user header, value `{"id":1}`.
    kcat_produce(
        &bootstrap,
        &topic,
        ["-K", ":", "-H", "tenant=acme"],
        b"order-1:{\"id\":1}\n",
    );

    let policy = RetryPolicy::new()
        .attempts(2)
        .fixed(Duration::from_millis(200));
    let dlt = policy.topology(&topic).dlt().unwrap().to_owned();
    let w = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(unique("g"))
        .property("session.timeout.ms", SESSION_TIMEOUT_MS)
        .route(
            Route::new(
                &topic,
                service_fn(|_r: Record| async { Err::<(), BoxError>("card declined".into()) }),
            )
            .retry(policy),
        )
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    eventually(Duration::from_secs(60), "dead letter published", || {
        watermark(&bootstrap, &dlt, 0) >= 1
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();

    // kcat -C: key, value, then the headers as kcat prints them (they contain newlines: the
    // error chain), up to a marker.
    let out = kcat()
        .args([
            "-b",
            &bootstrap,
            "-C",
            "-t",
            &dlt,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "KEY=%k\nVALUE=%s\nHEADERS=%h\n--END--\n",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kcat consume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        let start = text
            .find(name)
            .unwrap_or_else(|| panic!("{name} missing in kcat output: {text}"))
            + name.len();
        let rest = &text[start..];
        rest[..rest.find('\n').unwrap()].to_owned()
    };
    assert_eq!(field("KEY="), "order-1");
    assert_eq!(field("VALUE="), r#"{"id":1}"#);
    let headers = &text[text.find("HEADERS=").unwrap()..text.find("--END--").unwrap()];
    for expected in [
        "tenant=acme".to_owned(),
        format!("kafka_original-topic={topic}"),
        "kafka_exception-message=card declined".to_owned(),
        "kafka_original-timestamp-type=CreateTime".to_owned(),
    ] {
        assert!(
            headers.contains(&expected),
            "{expected} missing from kcat's view: {headers}"
        );
    }
}

/// A header name that is not UTF-8 (Kafka's clients write names as strings, but the protocol
/// does not check) reaches the handler as U+FFFD with its value, and the records after it are
/// handled: rust-rdkafka's own header reader panics on such a name, which on the poll thread
/// stopped the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_is_read_as_a_replacement_character() {
    use std::os::unix::ffi::OsStringExt;
    init_tracing();
    let bootstrap = bootstrap();
    let topic = unique("kcat-name");
    create_topic(&bootstrap, &topic, 1).await;
    for (header, value) in [
        (&b"\xff\xfe=bad-name"[..], "first"),
        (b"tenant=acme", "second"),
    ] {
        let header = std::ffi::OsString::from_vec(header.to_vec());
        kcat_produce(
            &bootstrap,
            &topic,
            ["-H".as_ref(), header.as_os_str()],
            format!("{value}\n").as_bytes(),
        );
    }

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let w = Worker::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(unique("g"))
        .property("session.timeout.ms", SESSION_TIMEOUT_MS)
        .route(Route::new(
            &topic,
            service_fn(move |r: Record| {
                let headers: Vec<(String, Vec<u8>)> = r
                    .headers()
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.as_deref().unwrap_or(b"").to_vec(),
                        )
                    })
                    .collect();
                let value = String::from_utf8_lossy(r.value().map_or(&b""[..], |v| v)).into_owned();
                s.lock().unwrap().push((value, headers));
                async { Ok::<(), BoxError>(()) }
            }),
        ))
        .build()
        .unwrap();
    let h = w.handle();
    let run = tokio::spawn(w.run());
    let s = seen.clone();
    eventually(Duration::from_secs(60), "both records handled", move || {
        s.lock().unwrap().len() >= 2
    })
    .await;
    h.shutdown();
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (
                "first".to_owned(),
                vec![("\u{FFFD}".to_owned(), b"bad-name".to_vec())]
            ),
            (
                "second".to_owned(),
                vec![("tenant".to_owned(), b"acme".to_vec())]
            ),
        ]
    );
}

/// Records that an outside client (kcat, on a current librdkafka) compressed with each codec
/// Kafka producers use are all handled: one topic per codec, 50 records each, every offset
/// seen by the handler and committed. A codec the worker's librdkafka lacks fails here (its
/// records never reach the handler), not silently in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_compressed_with_every_codec_are_handled() {
    init_tracing();
    let bootstrap = bootstrap();
    let lines: String = (0..50).map(|i| format!("k{i}:v{i}\n")).collect();
    for codec in ["zstd", "gzip", "snappy", "lz4"] {
        let topic = unique(&format!("codec-{codec}"));
        create_topic(&bootstrap, &topic, 1).await;
        kcat_produce(
            &bootstrap,
            &topic,
            ["-K", ":", "-z", codec, "-X", "linger.ms=50"],
            lines.as_bytes(),
        );
        let seen = Seen::default();
        let group = unique("g");
        let w = test_worker(&bootstrap, &group)
            .route(Route::new(&topic, recording(seen.clone())))
            .build()
            .unwrap();
        let h = w.handle();
        let run = tokio::spawn(w.run());
        let all = (0..50).map(|o| (0, o)).collect::<Vec<_>>();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while *seen.lock().unwrap() != all && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.shutdown();
        run.await.unwrap().unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            all,
            "records compressed with {codec}: every offset handled once, in order"
        );
        assert_eq!(
            committed(&bootstrap, &group, &topic, 1)[&0],
            Some(50),
            "{codec}: committed to the end"
        );
    }
}
