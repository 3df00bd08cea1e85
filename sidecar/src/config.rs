//! The sidecar's configuration: a TOML file plus `REDRIVE_...` environment overrides.
//!
//! Every mistake is reported as `FILE: KEY: REASON`, all of them at once, and secrets
//! (`sasl.password`, `ssl.key.password`, any property naming a password or secret, passwords in
//! endpoint URLs) are redacted wherever the configuration is printed, logged or debugged.
//! `examples/sidecar.toml` documents every key.
//!
//! Environment overrides (applied after the file; the error names the variable):
//!
//! | variable | sets |
//! |---|---|
//! | `REDRIVE_KAFKA_SASL_PASSWORD` | `kafka."sasl.password"` (`_` becomes `.`, lower case) |
//! | `REDRIVE_WORKER_DRAIN_TIMEOUT` | `worker.drain_timeout` |
//! | `REDRIVE_OPS_LISTEN` | `ops.listen` |
//! | `REDRIVE_ROUTE_ORDERS__URL` | `url` of the route named `orders` (`__` nests: `..._RETRY__ATTEMPTS`) |
//!
//! A route's name matches case-insensitively, with any character other than a letter or digit
//! written as `_`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use redrive::commit::CommitPolicy;
use redrive::policy::RetryPolicy;

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
    /// Where records are POSTed (`http://` only: the sidecar talks to its neighbour).
    pub url: String,
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
    /// The `Content-Type` of forwarded requests.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// The retry policy: the same keys as `#[retryable_topic]`. Default: Spring's (3 attempts,
    /// 1 s fixed back-off, a DLT).
    #[serde(default)]
    pub retry: RetryPolicy,
}

impl fmt::Debug for RouteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteConfig")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("url", &redact_url(&self.url))
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("partition_concurrency", &self.partition_concurrency)
            .field("commit_policy", &self.commit_policy)
            .field("transactional", &self.transactional)
            .field("content_type", &self.content_type)
            .field("retry", &self.retry)
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

impl Config {
    /// Reads `path`, applies the `REDRIVE_...` variables of the process environment, and
    /// validates.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.display().to_string(),
                key: "-".into(),
                reason: format!("cannot read the file: {e}"),
            }])
        })?;
        Self::parse(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses `text` (named `file` in messages) with the given environment, and validates.
    pub fn parse(
        text: &str,
        file: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let err = |key: String, reason: String| ConfigError {
            file: file.to_owned(),
            key,
            reason,
        };
        let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let key = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                }
                None => "-".into(),
            };
            ConfigErrors(vec![err(key, e.message().to_owned())])
        })?;
        let mut origins: Vec<(String, String)> = Vec::new();
        let mut errors = Vec::new();
        apply_env(&mut root, env, &mut origins, &mut errors, file);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(root))
            .map_err(|e| {
                let path = e.path().to_string();
                let key = describe_key(&path, &origins);
                let mut reason = e.into_inner().to_string();
                // toml appends its own location, which is meaningless for a re-built table.
                if let Some(i) = reason.find("\nin ") {
                    reason.truncate(i);
                }
                ConfigErrors(vec![err(key, reason.trim().to_owned())])
            })?;
        config.file = file.to_owned();
        config.validate(&origins)?;
        Ok(config)
    }

    fn validate(&mut self, origins: &[(String, String)]) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut push = |key: String, reason: String| {
            errors.push(ConfigError {
                file: self.file.clone(),
                key: describe_key(&key, origins),
                reason,
            })
        };
        match self.kafka.get("bootstrap.servers") {
            Some(s) if !s.trim().is_empty() => {}
            _ => push(
                "kafka.\"bootstrap.servers\"".into(),
                "missing: name the Kafka cluster (or set REDRIVE_KAFKA_BOOTSTRAP_SERVERS)".into(),
            ),
        }
        for k in ["group.id", "enable.auto.commit", "enable.auto.offset.store"] {
            if self.kafka.0.contains_key(k) {
                push(
                    format!("kafka.\"{k}\""),
                    "managed by redrive: set `group` per route; commits follow `commit_policy`"
                        .into(),
                );
            }
        }
        if self.ops.enabled {
            if let Err(e) = self.ops.listen.parse::<SocketAddr>() {
                push(
                    "ops.listen".into(),
                    format!(
                        "`{}` is not an address such as 127.0.0.1:9464: {e}",
                        self.ops.listen
                    ),
                );
            }
        }
        if self.worker.drain_timeout.is_zero() {
            push(
                "worker.drain_timeout".into(),
                "must be above 0 (in-flight records need time to finish)".into(),
            );
        }
        if self.routes.is_empty() {
            push(
                "routes".into(),
                "no routes: add at least one [[routes]] table with topic, group and url".into(),
            );
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut topics: BTreeMap<String, usize> = BTreeMap::new();
        let mut group_policy: BTreeMap<String, (usize, CommitPolicy)> = BTreeMap::new();
        for (i, r) in self.routes.iter_mut().enumerate() {
            let at = |k: &str| format!("routes[{i}].{k}");
            if r.name.is_empty() {
                r.name = r.topic.clone();
            }
            if r.topic.trim().is_empty() {
                push(at("topic"), "must name a topic".into());
            }
            if r.group.trim().is_empty() {
                push(at("group"), "must name a consumer group".into());
            }
            if let Some(j) = names.insert(r.name.clone(), i) {
                push(
                    at("name"),
                    format!(
                        "`{}` is also the name of routes[{j}]; names must be unique",
                        r.name
                    ),
                );
            }
            if let Some(j) = topics.insert(r.topic.clone(), i) {
                push(
                    at("topic"),
                    format!(
                        "`{}` is also read by routes[{j}]; one route per topic",
                        r.topic
                    ),
                );
            }
            if let Err(reason) = check_url(&r.url) {
                push(at("url"), reason);
            }
            if r.timeout.is_zero() {
                push(at("timeout"), "must be above 0".into());
            }
            if r.concurrency == 0 {
                push(at("concurrency"), "must be at least 1".into());
            }
            if r.partition_concurrency == 0 {
                push(at("partition_concurrency"), "must be at least 1".into());
            }
            if r.transactional {
                push(
                    at("transactional"),
                    "the sidecar does not offer transactional routes yet (an HTTP call is a side effect outside Kafka, which a Kafka transaction cannot undo); use at-least-once with an idempotent endpoint".into(),
                );
            }
            if let Err(e) = r.retry.validate() {
                let (key, reason) = match e {
                    redrive::Error::Config { setting, reason } if setting.starts_with("retry.") => {
                        (at(&setting), reason)
                    }
                    redrive::Error::Config { setting, reason } => {
                        (at(&format!("retry.{setting}")), reason)
                    }
                    other => (at("retry"), other.to_string()),
                };
                push(key, reason);
            }
            let policy = r.commit_policy(&self.worker);
            match group_policy.get(&r.group) {
                Some((j, p)) if *p != policy => push(
                    at("commit_policy"),
                    format!(
                        "`{policy}` differs from `{p}` of routes[{j}] in the same group `{}`; routes of one group share one consumer and one commit policy",
                        r.group
                    ),
                ),
                Some(_) => {}
                None => {
                    group_policy.insert(r.group.clone(), (i, policy));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The consumer groups, each with the indexes of its routes, in file order.
    pub fn groups(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, v)) => v.push(i),
                None => out.push((r.group.clone(), vec![i])),
            }
        }
        out
    }

    /// The resolved configuration and topology, secrets redacted: what `redrive check`
    /// prints.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "config: {}", self.file);
        let _ = writeln!(s, "kafka:");
        for (k, v) in self.kafka.redacted() {
            let _ = writeln!(s, "  {k} = {v}");
        }
        let _ = writeln!(
            s,
            "worker: drain_timeout={} startup_timeout={} commit_policy={}",
            humantime::format_duration(self.worker.drain_timeout),
            humantime::format_duration(self.worker.startup_timeout),
            self.worker.commit_policy
        );
        if self.ops.enabled {
            let _ = writeln!(
                s,
                "ops: http://{} (/healthz /readyz /metrics)",
                self.ops.listen
            );
        } else {
            let _ = writeln!(s, "ops: disabled");
        }
        for (group, routes) in self.groups() {
            let _ = writeln!(s, "group {group}:");
            for i in routes {
                let r = &self.routes[i];
                let _ = writeln!(
                    s,
                    "  route {}: {} -> POST {} (timeout {}, concurrency {} per route / {} per partition, commit {}, content-type {})",
                    r.name,
                    r.topic,
                    redact_url(&r.url),
                    humantime::format_duration(r.timeout),
                    r.concurrency,
                    r.partition_concurrency,
                    r.commit_policy(&self.worker),
                    r.content_type,
                );
                let _ = writeln!(s, "    policy: {}", r.retry);
                for line in r.retry.topology(&r.topic).to_string().lines() {
                    let _ = writeln!(s, "    {line}");
                }
            }
        }
        s
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", redact_url(url)))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "scheme `{other}` is not supported: the sidecar forwards to its neighbour over plain http://"
            ))
        }
        None => return Err(format!("`{}` has no scheme: write http://host:port/path", redact_url(url))),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{}` has no host", redact_url(url)));
    }
    Ok(())
}

/// `routes[0].retry.attempts` plus, when an environment variable set it, its name.
fn describe_key(path: &str, origins: &[(String, String)]) -> String {
    match origins
        .iter()
        .filter(|(p, _)| path == p || path.starts_with(&format!("{p}.")))
        .max_by_key(|(p, _)| p.len())
    {
        Some((_, var)) => format!("{path} (from ${var})"),
        None => path.to_owned(),
    }
}

fn env_scalar(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = v.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if v.contains('.') {
        if let Ok(x) = v.parse::<f64>() {
            return toml::Value::Float(x);
        }
    }
    toml::Value::String(v.to_owned())
}

fn normalize_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys.split_last().expect("a key");
    let mut cur = table;
    for k in parents {
        let entry = cur
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{k}` is not a table in the file"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

fn apply_env(
    root: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    origins: &mut Vec<(String, String)>,
    errors: &mut Vec<ConfigError>,
    file: &str,
) {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("REDRIVE_"))
        .collect();
    vars.sort();
    for (var, value) in vars {
        let rest = &var["REDRIVE_".len()..];
        let lower = |s: &str| s.to_ascii_lowercase();
        let res: Result<(), String> = if let Some(prop) = rest.strip_prefix("KAFKA_") {
            let key = lower(prop).replace('_', ".");
            origins.push((format!("kafka.{key}"), var.clone()));
            set_path(
                root,
                &["kafka".into(), key],
                toml::Value::String(value.clone()),
            )
        } else if let Some(k) = rest.strip_prefix("WORKER_") {
            origins.push((format!("worker.{}", lower(k)), var.clone()));
            set_path(root, &["worker".into(), lower(k)], env_scalar(&value))
        } else if let Some(k) = rest.strip_prefix("OPS_") {
            origins.push((format!("ops.{}", lower(k)), var.clone()));
            set_path(root, &["ops".into(), lower(k)], env_scalar(&value))
        } else if let Some(spec) = rest.strip_prefix("ROUTE_") {
            let mut parts = spec.split("__");
            let name = parts.next().unwrap_or_default();
            let keys: Vec<String> = parts.map(lower).collect();
            let routes = root.get_mut("routes").and_then(toml::Value::as_array_mut);
            let found = routes.and_then(|routes| {
                routes.iter_mut().enumerate().find(|(_, r)| {
                    let n = r
                        .get("name")
                        .or_else(|| r.get("topic"))
                        .and_then(toml::Value::as_str)
                        .unwrap_or_default();
                    normalize_name(n) == name
                })
            });
            match (found, keys.is_empty()) {
                (_, true) => Err("write REDRIVE_ROUTE_<NAME>__<KEY>, e.g. REDRIVE_ROUTE_ORDERS__URL".into()),
                (None, _) => Err(format!("no route is named `{}` (names match case-insensitively, non-alphanumerics as `_`)", lower(name))),
                (Some((i, r)), false) => {
                    origins.push((format!("routes[{i}].{}", keys.join(".")), var.clone()));
                    match r.as_table_mut() {
                        Some(t) => set_path(t, &keys, env_scalar(&value)),
                        None => Err("the route is not a table".into()),
                    }
                }
            }
        } else {
            // Other REDRIVE_ variables (e.g. of the test suite) are not configuration.
            Ok(())
        };
        if let Err(reason) = res {
            errors.push(ConfigError {
                file: file.to_owned(),
                key: format!("${var}"),
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[kafka]
"bootstrap.servers" = "127.0.0.1:9092"
"sasl.password" = "hunter2"
"session.timeout.ms" = 6000

[[routes]]
topic = "orders"
group = "orders-sidecar"
url = "http://127.0.0.1:8080/orders"
timeout = "5s"
[routes.retry]
attempts = 4
backoff = { delay = "1s", multiplier = 2.0, max = "10s" }
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        Config::parse(
            text,
            "redrive.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn reads_a_good_file_with_defaults() {
        let c = parse(GOOD, &[]).unwrap();
        assert_eq!(c.routes[0].name, "orders");
        assert_eq!(c.routes[0].timeout, Duration::from_secs(5));
        assert_eq!(c.routes[0].retry.attempts, 4);
        assert_eq!(c.kafka.get("session.timeout.ms"), Some("6000"));
        assert_eq!(c.ops.listen, "127.0.0.1:9464");
        let d = c.describe();
        assert!(d.contains("orders-retry-1000"), "{d}");
        assert!(d.contains("sasl.password = ***"), "{d}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(!format!("{c:?}").contains("hunter2"));
        let mut with_user = c.clone();
        with_user.routes[0].url = "http://u:hunter2@127.0.0.1/x".into();
        assert!(!format!("{with_user:?}").contains("hunter2"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = parse(
            GOOD,
            &[
                ("REDRIVE_KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9092"),
                ("REDRIVE_ROUTE_ORDERS__URL", "http://127.0.0.1:9/x"),
                ("REDRIVE_ROUTE_ORDERS__RETRY__ATTEMPTS", "2"),
                ("REDRIVE_OPS_LISTEN", "127.0.0.1:1234"),
                ("REDRIVE_TEST_BOOTSTRAP", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.get("bootstrap.servers"), Some("10.0.0.1:9092"));
        assert_eq!(c.routes[0].url, "http://127.0.0.1:9/x");
        assert_eq!(c.routes[0].retry.attempts, 2);
        assert_eq!(c.ops.listen, "127.0.0.1:1234");
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = parse(
            &GOOD.replace("timeout = \"5s\"", "timeout = \"5 sekunds\""),
            &[],
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("redrive.toml: routes[0].timeout: invalid duration `5 sekunds`"),
            "{s}"
        );

        let e = parse(&GOOD.replace("attempts = 4", "atempts = 4"), &[]).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("routes[0].retry.atempts"), "{s}");
        assert!(
            s.contains("unknown field `atempts`, expected one of"),
            "{s}"
        );

        let e = parse(GOOD, &[("REDRIVE_ROUTE_ORDERS__RETRY__ATTEMPTS", "0")]).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("from $REDRIVE_ROUTE_ORDERS__RETRY__ATTEMPTS"),
            "{s}"
        );

        let e = parse(GOOD, &[("REDRIVE_ROUTE_PAYMENTS__URL", "http://x")]).unwrap_err();
        assert!(
            e.to_string().contains("no route is named `payments`"),
            "{e}"
        );

        let e = parse("[kafka\n", &[]).unwrap_err();
        assert!(e.to_string().starts_with("redrive.toml: line 1:"), "{e}");
    }

    #[test]
    fn validation_reports_every_mistake() {
        let text = format!(
            "{GOOD}\n[[routes]]\ntopic = \"orders\"\ngroup = \"\"\nurl = \"https://user:pw@example.com/x\"\nconcurrency = 0\ntransactional = true\n"
        );
        let e = parse(&text, &[]).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "routes[1].group",
                "routes[1].name",
                "routes[1].topic",
                "routes[1].url",
                "routes[1].concurrency",
                "routes[1].transactional"
            ],
            "{e}"
        );
        assert!(!e.to_string().contains(":pw@"), "{e}");
    }

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(redact_url("http://u:p@h:1/x"), "http://u:***@h:1/x");
        assert_eq!(redact_url("http://h:1/x@y"), "http://h:1/x@y");
    }
}
