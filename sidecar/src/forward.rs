//! The HTTP forwarder: each record becomes a `POST` to the route's endpoint, and the response
//! decides the record's fate.
//!
//! | response | outcome | error type in dead letters |
//! |---|---|---|
//! | 2xx | handled | |
//! | 408, 429, 5xx | retryable ([`HttpStatusError`]); `Retry-After` is the minimum delay | `http-<status>` |
//! | timeout | retryable (tower's `Elapsed`) | `http-timeout` |
//! | connection error | retryable ([`HttpTransportError`]) | `http-connection` |
//! | any other status (4xx, 3xx, 1xx) | fatal: straight to the DLT | `http-<status>` |
//!
//! The error type is what `kafka_exception-fqcn` records and `redrive dlt list --error-type`
//! matches.
//!
//! A `Redrive-Disposition: done | retry | dead-letter` answer header overrides the table
//! (its `Redrive-Reason` header, else the body, goes into the dead letter), and so does the
//! route's `[routes.statuses]` table for the statuses it names ([`decide`]).
//!
//! With `[routes.circuit_breaker]`, the failures that say the endpoint is down
//! ([`is_outage`]: a connection error, a timeout, 502, 503, 504) count towards opening the
//! route's breaker, which pauses the route instead of sending records down the retry chain.
//!
//! The request (docs/sidecar-http.md, version 1): the record value as the body (empty for a
//! tombstone), and these headers: `Redrive-Topic`, `Redrive-Partition`, `Redrive-Offset`
//! (where this delivery was read), `Redrive-Id` (`topic/partition/offset` of the first
//! delivery: the same on every retry and replay), `Redrive-Original-Topic`, `-Partition`,
//! `-Offset`, `Redrive-Timestamp` (epoch ms, when the record has one), `Redrive-Attempt`
//! (1 = first delivery), `Redrive-Last-Error` (on a retry), `Redrive-Key` (absent when the
//! record has no key), `Redrive-Tombstone: true` for a null value, `Redrive-Header-<name>`
//! per record header of the producer's (the last value of each name; null values are
//! skipped; retry bookkeeping headers are not forwarded), and `traceparent` when the record
//! carries one. Keys, header names and values are
//! percent-encoded (RFC 3986: letters, digits and `-._~` stay as they are), so any bytes get
//! through and plain ASCII stays readable.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;

use redrive::headers::{self, AttemptsHeader};

use super::client::{ClientSettings, Connector};
pub use super::config::{Disposition, Format};
use super::request_headers::RouteHeaders;
use redrive::Record;
use redrive::{BoxError, ErrorType, Fatal, RetryAfter};

/// Error bodies are read up to this size; their start goes into the error message.
const MAX_ERROR_BODY: usize = 64 * 1024;
const ERROR_BODY_IN_MESSAGE: usize = 512;

/// The endpoint answered with a status that is not 2xx.
#[derive(Debug, thiserror::Error)]
#[error("POST {url} answered {status}{}", body_suffix(.body))]
pub struct HttpStatusError {
    /// The status code.
    pub status: u16,
    /// The endpoint (passwords redacted).
    pub url: String,
    /// The start of the response body.
    pub body: String,
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// The request did not get a response: connection refused or reset, DNS, protocol error.
#[derive(Debug, thiserror::Error)]
#[error("POST {url} failed: {source}")]
pub struct HttpTransportError {
    /// The endpoint (passwords redacted).
    pub url: String,
    /// The client's error.
    #[source]
    pub source: BoxError,
}

/// Forwards records to one HTTP endpoint. Clones share one connection pool.
#[derive(Clone)]
pub struct HttpForward {
    client: Client<Connector, Full<Bytes>>,
    /// The route's own headers (`[routes.headers]`).
    extra: std::sync::Arc<RouteHeaders>,
    uri: Uri,
    url: std::sync::Arc<str>,
    content_type: HeaderValue,
    /// The route's own meaning of some statuses (`[routes.statuses]`).
    statuses: std::sync::Arc<std::collections::BTreeMap<u16, Disposition>>,
    /// With `format = "cloudevents"`: the route's name, for `ce-source`.
    cloudevents: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for HttpForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpForward")
            .field("url", &self.url)
            .finish()
    }
}

impl HttpForward {
    /// A forwarder to `url` (`http://` or `https://` with the system's roots, HTTP/1.1)
    /// sending `content_type`.
    pub fn new(url: &str, content_type: &str) -> Result<Self, BoxError> {
        Self::with(
            &ClientSettings::new(url, Duration::from_secs(5)),
            content_type,
        )
    }

    /// A forwarder to `settings.url`, connecting as `settings` say, sending `content_type`.
    pub fn with(settings: &ClientSettings, content_type: &str) -> Result<Self, BoxError> {
        let uri: Uri = settings.url.parse()?;
        Ok(HttpForward {
            client: settings.client()?,
            extra: Default::default(),
            uri,
            url: super::config::redact_url(&settings.url).into(),
            content_type: HeaderValue::from_str(content_type)?,
            statuses: Default::default(),
            cloudevents: None,
        })
    }

    /// Adds the route's own headers (`[routes.headers]`) to every request.
    pub fn headers(mut self, headers: RouteHeaders) -> Self {
        self.extra = std::sync::Arc::new(headers);
        self
    }

    /// Adds CloudEvents binary-mode headers to every request, `ce-source` naming `route`.
    pub fn cloudevents(mut self, route: &str) -> Self {
        self.cloudevents = Some(route.into());
        self
    }

    /// What some statuses mean for this route, overriding the default table (e.g. a 404
    /// during deploys is `retry`).
    pub fn statuses(mut self, statuses: std::collections::BTreeMap<u16, Disposition>) -> Self {
        self.statuses = std::sync::Arc::new(statuses);
        self
    }

    fn request(&self, record: &Record) -> Request<Full<Bytes>> {
        let mut req = Request::post(self.uri.clone());
        let h = req.headers_mut().expect("a fresh builder has headers");
        self.extra.apply(h);
        h.insert(CONTENT_TYPE, self.content_type.clone());
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(HeaderName::from_static(name), v);
            }
        };
        put("redrive-topic", percent_encode(record.topic().as_bytes()));
        put("redrive-partition", record.partition().to_string());
        put("redrive-offset", record.offset().to_string());
        if let Some(t) = record.timestamp() {
            put("redrive-timestamp", t.millis.to_string());
        }
        let attempt = match headers::read_attempts(record.headers()) {
            AttemptsHeader::Valid(n) => n,
            _ => 1,
        };
        put("redrive-attempt", attempt.to_string());
        if let Some(k) = record.key() {
            put("redrive-key", percent_encode(k));
        }
        if record.value().is_none() {
            put("redrive-tombstone", "true".into());
        }
        let origin = Origin::of(record);
        for (name, value) in origin_headers(&origin) {
            put(name, value);
        }
        if let Some(route) = &self.cloudevents {
            for (name, value) in cloudevent_headers(record, &origin, route) {
                put(name, value);
            }
        }
        for header in record.headers().iter() {
            let Some(value) = &header.value else { continue };
            let Ok(v) = HeaderValue::from_str(&percent_encode(value)) else {
                continue;
            };
            if header.key == headers::TRACEPARENT {
                h.insert(HeaderName::from_static("traceparent"), v.clone());
                continue;
            }
            if is_bookkeeping(&header.key) {
                continue;
            }
            let name = format!("redrive-header-{}", header_name_part(&header.key));
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                h.insert(n, v);
            }
        }
        req.body(Full::new(record.value().cloned().unwrap_or_default()))
            .expect("the request parts are valid")
    }
}

/// Where a record was first delivered (its own coordinates on a first delivery), and the
/// previous attempt's error: read once per request from the retry flow's headers.
struct Origin {
    topic: String,
    partition: i32,
    offset: i64,
    last_error: Option<String>,
}

impl Origin {
    fn of(record: &Record) -> Self {
        let original = headers::Original::read(record.headers());
        Origin {
            topic: original.topic.unwrap_or_else(|| record.topic().to_owned()),
            partition: original.partition.unwrap_or(record.partition()),
            offset: original.offset.unwrap_or(record.offset()),
            last_error: original.exception_message,
        }
    }
}

/// The record's identity across retries and replays, and its retry context, as readable
/// headers: `Redrive-Id` (`topic/partition/offset` of the first delivery, percent-encoded
/// topic), `Redrive-Original-Topic`, `-Partition`, `-Offset`, and on a retry
/// `Redrive-Last-Error` (the previous attempt's error message, at most 200 bytes).
fn origin_headers(origin: &Origin) -> Vec<(&'static str, String)> {
    let (partition, offset) = (origin.partition, origin.offset);
    let topic = percent_encode(origin.topic.as_bytes());
    let mut out = vec![
        ("redrive-id", format!("{topic}/{partition}/{offset}")),
        ("redrive-original-topic", topic),
        ("redrive-original-partition", partition.to_string()),
        ("redrive-original-offset", offset.to_string()),
    ];
    if let Some(msg) = &origin.last_error {
        let end = (0..=msg.len().min(200))
            .rev()
            .find(|i| msg.is_char_boundary(*i))
            .unwrap_or(0);
        out.push(("redrive-last-error", percent_encode(&msg.as_bytes()[..end])));
    }
    out
}

/// CloudEvents 1.0 attributes in HTTP binary mode, as Knative's KafkaSource sets them, so a
/// service built for it (or a CloudEvents SDK) works unchanged: `ce-id` is
/// `partition:P/offset:O` of the first delivery (stable across retries), `ce-source`
/// `/redrive/<route>#<topic>`, `ce-type` `dev.knative.kafka.event`, `ce-subject`
/// `partition:P#O`, `ce-time` the record's timestamp, and the `key` extension.
fn cloudevent_headers(
    record: &Record,
    origin: &Origin,
    route: &str,
) -> Vec<(&'static str, String)> {
    let (topic, partition, offset) = (&origin.topic, origin.partition, origin.offset);
    let mut out = vec![
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", format!("partition:{partition}/offset:{offset}")),
        (
            "ce-source",
            format!(
                "/redrive/{}#{}",
                percent_encode(route.as_bytes()),
                percent_encode(topic.as_bytes())
            ),
        ),
        ("ce-type", "dev.knative.kafka.event".to_owned()),
        ("ce-subject", format!("partition:{partition}#{offset}")),
    ];
    if let Some(t) = record.timestamp().filter(|t| t.millis >= 0) {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(t.millis as u64);
        out.push(("ce-time", humantime::format_rfc3339_millis(at).to_string()));
    }
    if let Some(k) = record.key() {
        out.push(("ce-key", percent_encode(k)));
    }
    out
}

/// Headers redrive and Spring keep for the retry flow: binary, and already told to the
/// service by the `Redrive-*` headers above; not forwarded as `Redrive-Header-*`.
fn is_bookkeeping(name: &str) -> bool {
    name.starts_with("kafka_") || name.starts_with("retry_topic-") || name.starts_with("redrive-")
}

/// A record header's name in `Redrive-Header-<name>`: lower case, percent-encoded, with `_`
/// encoded too (nginx drops header names with underscores by default).
fn header_name_part(name: &str) -> String {
    percent_encode(name.as_bytes())
        .replace('_', "%5F")
        .to_ascii_lowercase()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The delay a `Retry-After` value asks for: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// `err` under the type name dead letters record and `dlt --error-type` matches: `http-<status>`.
fn named(err: HttpStatusError) -> ErrorType {
    ErrorType::new(format!("http-{}", err.status), err)
}

/// A timeout of the route's `timeout` layer under the type name `http-timeout`; other
/// errors as they are.
pub fn name_timeout(err: BoxError) -> BoxError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ErrorType::new("http-timeout", err).into()
    } else {
        err
    }
}

/// True for a failure that says the endpoint is down rather than the record bad: no
/// response at all (connection refused or reset, DNS), a timeout, or 502, 503 or 504. A
/// route's circuit breaker counts these.
pub fn is_outage(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<HttpTransportError>() || e.is::<tower::timeout::error::Elapsed>() {
            return true;
        }
        if let Some(s) = e.downcast_ref::<HttpStatusError>() {
            return matches!(s.status, 502..=504);
        }
        cur = e.source();
    }
    false
}

/// What the answer means for the record: the service's `Redrive-Disposition` or the route's
/// table when either says (`asked`), else the status ([`classify`]). `body` is the reason the
/// dead letter carries.
pub fn decide(
    status: StatusCode,
    retry_after: Option<Duration>,
    url: &str,
    body: String,
    asked: Option<Disposition>,
) -> Result<(), BoxError> {
    let Some(asked) = asked else {
        return classify(status, retry_after, url, body);
    };
    let err = named(HttpStatusError {
        status: status.as_u16(),
        url: url.to_owned(),
        body,
    });
    match (asked, retry_after) {
        (Disposition::Done, _) => Ok(()),
        (Disposition::Retry, Some(after)) => Err(RetryAfter::new(after, err).into()),
        (Disposition::Retry, None) => Err(err.into()),
        (Disposition::DeadLetter, _) => Err(Fatal::new(err).into()),
    }
}

/// What a status means for the record (see the [module docs](self)).
pub fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    url: &str,
    body: String,
) -> Result<(), BoxError> {
    if status.is_success() {
        return Ok(());
    }
    let err = named(HttpStatusError {
        status: status.as_u16(),
        url: url.to_owned(),
        body,
    });
    let retryable = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    match (retryable, retry_after) {
        (true, Some(after)) => Err(RetryAfter::new(after, err).into()),
        (true, None) => Err(err.into()),
        (false, _) => Err(Fatal::new(err).into()),
    }
}

impl tower::Service<Record> for HttpForward {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: Record) -> Self::Future {
        let req = self.request(&record);
        let client = self.client.clone();
        let url = self.url.clone();
        let statuses = self.statuses.clone();
        Box::pin(async move {
            let res = client.request(req).await.map_err(|e| {
                let err = HttpTransportError {
                    url: url.to_string(),
                    source: e.into(),
                };
                ErrorType::new("http-connection", err)
            })?;
            let status = res.status();
            let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok());
            let retry_after = header(RETRY_AFTER.as_str()).and_then(parse_retry_after);
            let asked = header("redrive-disposition")
                .and_then(Disposition::parse)
                .or_else(|| statuses.get(&status.as_u16()).copied());
            let reason = header("redrive-reason").map(str::to_owned);
            // The body is drained so the connection goes back to the pool.
            let body = match Limited::new(res.into_body(), MAX_ERROR_BODY)
                .collect()
                .await
            {
                Ok(_) if reason.is_some() => reason.unwrap_or_default(),
                Ok(b) if !status.is_success() || asked.is_some() => {
                    let b = b.to_bytes();
                    let end = b.len().min(ERROR_BODY_IN_MESSAGE);
                    String::from_utf8_lossy(&b[..end]).trim().to_owned()
                }
                Ok(_) => String::new(),
                Err(e) if status.is_success() => {
                    // The endpoint accepted the record; a broken body does not undo that.
                    tracing::debug!(url = %url, error = %e, "could not read the response body");
                    String::new()
                }
                Err(e) => format!("(body unreadable: {e})"),
            };
            decide(status, retry_after, &url, body, asked)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redrive::policy::{Classification, FatalReason, RetryPolicy};

    fn outcome(
        code: u16,
        retry_after: Option<Duration>,
    ) -> (Option<Classification>, Option<Duration>) {
        let status = StatusCode::from_u16(code).unwrap();
        match classify(status, retry_after, "http://x", String::new()) {
            Ok(()) => (None, None),
            Err(e) => (
                Some(RetryPolicy::default().classify(&*e)),
                RetryAfter::find(&*e),
            ),
        }
    }

    #[test]
    fn a_disposition_overrides_the_status() {
        let fate = |code: u16, asked: Option<Disposition>| {
            let s = StatusCode::from_u16(code).unwrap();
            decide(s, None, "http://x", "why".into(), asked)
                .err()
                .map(|e| RetryPolicy::default().classify(&*e))
        };
        let fatal = Some(Classification::Fatal(FatalReason::Fatal));
        assert_eq!(fate(200, Some(Disposition::DeadLetter)), fatal);
        assert_eq!(
            fate(200, Some(Disposition::Retry)),
            Some(Classification::Retryable)
        );
        assert_eq!(
            fate(404, Some(Disposition::Retry)),
            Some(Classification::Retryable)
        );
        assert_eq!(fate(503, Some(Disposition::Done)), None);
        assert_eq!(fate(404, None), fatal, "no disposition: the table");
        assert_eq!(
            Disposition::parse(" Dead-Letter "),
            Some(Disposition::DeadLetter)
        );
        assert_eq!(Disposition::parse("later"), None);
    }

    #[test]
    fn outages_are_no_answer_a_timeout_or_a_gateway_status() {
        let status = |code: u16, after: Option<Duration>| {
            let s = StatusCode::from_u16(code).unwrap();
            is_outage(&*classify(s, after, "http://x", String::new()).unwrap_err())
        };
        for code in [502, 503, 504] {
            assert!(status(code, None), "{code}");
            assert!(
                status(code, Some(Duration::from_secs(1))),
                "{code} with Retry-After"
            );
        }
        for code in [400, 404, 408, 429, 500, 501] {
            assert!(!status(code, None), "{code}");
        }
        let refused = HttpTransportError {
            url: "http://x".into(),
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert!(is_outage(&refused));
        assert!(is_outage(&tower::timeout::error::Elapsed::new()));
        assert!(!is_outage(&*BoxError::from("bad record")));
    }

    #[test]
    fn the_classification_table() {
        let fatal = Some(Classification::Fatal(FatalReason::Fatal));
        let retry = Some(Classification::Retryable);
        for (code, want) in [
            (200, None),
            (201, None),
            (204, None),
            (301, fatal),
            (400, fatal),
            (401, fatal),
            (404, fatal),
            (408, retry),
            (409, fatal),
            (422, fatal),
            (429, retry),
            (500, retry),
            (502, retry),
            (503, retry),
            (504, retry),
        ] {
            assert_eq!(outcome(code, None).0, want, "status {code}");
        }
        let s = Duration::from_secs(7);
        assert_eq!(outcome(503, Some(s)), (retry, Some(s)));
        assert_eq!(outcome(429, Some(s)), (retry, Some(s)));
        // A fatal status ignores Retry-After.
        assert_eq!(outcome(400, Some(s)), (fatal, None));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = std::time::SystemTime::now() + Duration::from_secs(100);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d > Duration::from_secs(95) && d <= Duration::from_secs(100),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn percent_encoding_keeps_ascii_readable_and_any_byte_through() {
        assert_eq!(percent_encode(b"order-42_a.b~"), "order-42_a.b~");
        assert_eq!(percent_encode(b"a b/\xff\x00"), "a%20b%2F%FF%00");
    }
}
