//! What the configuration file holds, with its defaults; secrets redacted wherever it is
//! printed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use redrive::policy::{CircuitBreaker, RetryPolicy};
use redrive::CommitPolicy;

/// One mistake in a configuration: where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<env>` for a problem only an environment variable explains).
    pub file: String,
    /// The key, as a path (`routes[0].retry.attempts`), or the environment variable.
    pub key: String,
    /// Why it was rejected.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.reason)
    }
}

/// Every mistake found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// librdkafka properties, passed through unchanged (dotted keys preserved). `Debug` and
/// [`KafkaProperties::redacted`] hide secret values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl KafkaProperties {
    /// The properties with every secret value replaced by `***`.
    pub fn redacted(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if is_secret(k) {
                    "***".to_owned()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// A property's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

/// Whether a librdkafka property holds a secret (its value is never printed).
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.ends_with(".pem")
        || k == "sasl.oauthbearer.config"
        || k == "sasl.jaas.config"
        || k.contains("token")
}

fn de_kafka<'de, D: serde::Deserializer<'de>>(d: D) -> Result<KafkaProperties, D::Error> {
    use serde::de::Error as _;
    let raw = BTreeMap::<String, toml::Value>::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        let s = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(D::Error::custom(format!(
                    "property `{k}` must be a string, number or boolean, not {}",
                    other.type_str()
                )))
            }
        };
        out.insert(k, s);
    }
    Ok(KafkaProperties(out))
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// librdkafka properties shared by every consumer and producer (`bootstrap.servers`,
    /// security settings). `group.id` is set per route.
    #[serde(deserialize_with = "de_kafka")]
    pub kafka: KafkaProperties,
    /// Settings of every worker.
    #[serde(default)]
    pub worker: WorkerSettings,
    /// The operations endpoints.
    #[serde(default)]
    pub ops: OpsSettings,
    /// One entry per consumed topic.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Where the configuration was read from (for messages).
    #[serde(skip)]
    pub file: String,
}

/// `[worker]`: settings of every worker.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// How long SIGTERM waits for in-flight records before the final commit.
    #[serde(with = "redrive::policy::duration")]
    pub drain_timeout: Duration,
    /// How long start-up waits for the cluster.
    #[serde(with = "redrive::policy::duration")]
    pub startup_timeout: Duration,
    /// The commit policy of routes that do not set one.
    pub commit_policy: CommitPolicy,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            drain_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
            commit_policy: CommitPolicy::default(),
        }
    }
}

/// `[ops]`: `/healthz`, `/readyz` and `/metrics`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsSettings {
    /// Where they listen; 127.0.0.1 unless you expose them on purpose.
    pub listen: String,
    /// Set false to serve none of them.
    pub enabled: bool,
}

impl Default for OpsSettings {
    fn default() -> Self {
        OpsSettings {
            listen: "127.0.0.1:9464".into(),
            enabled: true,
        }
    }
}

/// `[[routes]]`: one consumed topic forwarded to one HTTP endpoint. `Debug` redacts a
/// password in the URL.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name (metrics label, environment overrides); default: the topic.
    #[serde(default)]
    pub name: String,
    /// The main topic.
    pub topic: String,
    /// The consumer group. Routes of one group run in one worker.
    pub group: String,
    /// Where records are POSTed: `http://` (the neighbour in the pod) or `https://`.
    pub url: String,
    /// A PEM file of CA certificates trusted for `https://` besides the system's roots.
    #[serde(default)]
    pub ca_path: Option<String>,
    /// Speak HTTP/2 to the service (negotiated on `https://`, prior knowledge on `http://`).
    #[serde(default)]
    pub http2: bool,
    /// Headers added to every request: `name = "value"`, `name = { env = "VAR" }` or
    /// `name = { file = "/path", prefix = "Bearer " }` (read again when the file changes).
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderSpec>,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "default_timeout", with = "redrive::policy::duration")]
    pub timeout: Duration,
    /// Most requests in flight for this route, over all its partitions.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most requests in flight per partition; 1 (the default) keeps each partition in order.
    #[serde(default = "default_partition_concurrency")]
    pub partition_concurrency: usize,
    /// The commit policy; default `worker.commit_policy`. Routes of one group must agree.
    #[serde(default)]
    pub commit_policy: Option<CommitPolicy>,
    /// Exactly-once consume-transform-produce. Not available in the sidecar yet.
    #[serde(default)]
    pub transactional: bool,
    /// Keeps each key's records in order while one of them retries (the library's
    /// `Route::key_ordering`): needs `partition_concurrency = 1` and no `retry.partitions`.
    #[serde(default)]
    pub key_ordering: bool,
    /// With `key_ordering`: what becomes of the records parked behind a dead letter,
    /// `"continue"` (the default: they are forwarded) or `"follow"` (dead-lettered unsent).
    #[serde(default)]
    pub after_dead_letter: Option<redrive::AfterDeadLetter>,
    /// The `Content-Type` of forwarded requests.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// The retry policy: the same keys as `#[retryable_topic]`. Default: Spring's (3 attempts,
    /// 1 s fixed back-off, a DLT).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Pauses the route while its endpoint is down (connection refused or reset, a timeout,
    /// 502, 503 or 504) instead of sending every record down the retry chain. Off unless the
    /// table is present; `[routes.circuit_breaker]` with no keys takes the defaults.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// A `GET` here answering 2xx says the service is up: asked before the route's first
    /// record and before each probe of its circuit breaker (which it turns on, with the
    /// defaults, when `[routes.circuit_breaker]` is absent).
    #[serde(default)]
    pub health_url: Option<String>,
    /// What some answer statuses mean for this route, over the default table:
    /// `[routes.statuses]` with `404 = "retry"` (`done`, `retry`, `dead-letter`). A
    /// `Redrive-Disposition` answer header still wins.
    #[serde(default)]
    pub statuses: BTreeMap<String, Disposition>,
    /// `redrive` (the default): the `Redrive-*` headers; `cloudevents`: also CloudEvents in
    /// HTTP binary mode (`ce-*`), as Knative's KafkaSource sends them.
    #[serde(default)]
    pub format: Format,
}

impl fmt::Debug for RouteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteConfig")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("url", &redact_url(&self.url))
            .field("ca_path", &self.ca_path)
            .field("http2", &self.http2)
            .field("headers", &self.headers)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("partition_concurrency", &self.partition_concurrency)
            .field("commit_policy", &self.commit_policy)
            .field("transactional", &self.transactional)
            .field("key_ordering", &self.key_ordering)
            .field("after_dead_letter", &self.after_dead_letter)
            .field("content_type", &self.content_type)
            .field("retry", &self.retry)
            .field("circuit_breaker", &self.circuit_breaker)
            .field("health_url", &self.health_url.as_deref().map(redact_url))
            .field("statuses", &self.statuses)
            .field("format", &self.format)
            .finish()
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_concurrency() -> usize {
    16
}
fn default_partition_concurrency() -> usize {
    1
}
fn default_content_type() -> String {
    "application/octet-stream".into()
}

impl RouteConfig {
    /// The `statuses` table by status code; a key that is not one is left out (`validate`
    /// reports it).
    pub fn status_table(&self) -> BTreeMap<u16, Disposition> {
        self.statuses
            .iter()
            .filter_map(|(k, d)| Some((k.parse().ok()?, *d)))
            .collect()
    }

    /// The commit policy in force for this route.
    pub fn commit_policy(&self, worker: &WorkerSettings) -> CommitPolicy {
        self.commit_policy.unwrap_or(worker.commit_policy)
    }
}

/// Replaces the password of `user:password@` in a URL by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// What becomes of a record, as the service asks with a `Redrive-Disposition` answer header
/// or the route's `[routes.statuses]` table says for a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// Handled: nothing more to do.
    Done,
    /// Retried through the route's retry topics (`Retry-After` honoured).
    Retry,
    /// Straight to the dead-letter topic.
    DeadLetter,
}

impl Disposition {
    /// Reads a `Redrive-Disposition` value (`done`, `retry`, `dead-letter`; any case).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "done" => Some(Disposition::Done),
            "retry" => Some(Disposition::Retry),
            "dead-letter" => Some(Disposition::DeadLetter),
            _ => None,
        }
    }
}

/// How records are put into requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The `Redrive-*` headers only (docs/sidecar-http.md).
    #[default]
    Redrive,
    /// Also CloudEvents in HTTP binary mode, with Knative KafkaSource's conventions.
    Cloudevents,
}

/// Where a `[routes.headers]` value comes from.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum HeaderSpec {
    /// The value itself.
    Value(String),
    /// An environment variable or a file.
    From(HeaderFrom),
}

/// A header value read from an environment variable (once) or a file (again when it changes).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFrom {
    /// The file holding the value (trailing line breaks removed).
    #[serde(default)]
    pub file: Option<String>,
    /// The environment variable holding the value.
    #[serde(default)]
    pub env: Option<String>,
    /// Put before the value, e.g. `Bearer `.
    #[serde(default)]
    pub prefix: String,
}

impl HeaderSpec {
    /// How `redrive check` shows it: a value only for names that do not suggest a secret.
    pub fn describe(&self, name: &str) -> String {
        match self {
            HeaderSpec::Value(_) if is_secret_header(name) => "*** (a value in the file)".into(),
            HeaderSpec::Value(v) => v.clone(),
            HeaderSpec::From(HeaderFrom { file: Some(f), .. }) => format!("*** (from file {f})"),
            HeaderSpec::From(HeaderFrom { env: Some(e), .. }) => format!("*** (from ${e})"),
            HeaderSpec::From(_) => "(no source)".into(),
        }
    }
}

impl fmt::Debug for HeaderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderSpec::Value(_) => f.write_str("Value(***)"),
            HeaderSpec::From(from) => from.fmt(f),
        }
    }
}

/// Whether a request header's value is likely a credential.
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "authorization",
        "cookie",
        "key",
        "token",
        "secret",
        "password",
        "signature",
    ]
    .iter()
    .any(|s| n.contains(s))
}
