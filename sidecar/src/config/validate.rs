//! Every mistake in a configuration, found at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use redrive::policy::CircuitBreaker;
use redrive::CommitPolicy;

use super::env::describe_key;
use super::model::{
    redact_url, Config, ConfigError, ConfigErrors, HeaderSpec, RouteConfig, WorkerSettings,
};

/// The mistakes found so far, keyed as the file (or the variable that set them) names them.
struct Found<'a> {
    file: String,
    origins: &'a [(String, String)],
    list: Vec<ConfigError>,
}

impl Found<'_> {
    fn push(&mut self, key: String, reason: String) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            key: describe_key(&key, self.origins),
            reason,
        });
    }
}

/// Checks `config` (naming routes after their topic where unnamed); every mistake at once.
pub(super) fn validate(
    config: &mut Config,
    origins: &[(String, String)],
) -> Result<(), ConfigErrors> {
    let mut found = Found {
        file: config.file.clone(),
        origins,
        list: Vec::new(),
    };
    globals(config, &mut found);
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut topics: BTreeMap<String, usize> = BTreeMap::new();
    let mut group_policy: BTreeMap<String, (usize, CommitPolicy)> = BTreeMap::new();
    for (i, r) in config.routes.iter_mut().enumerate() {
        if r.name.is_empty() {
            r.name = r.topic.clone();
        }
        let at = |k: &str| format!("routes[{i}].{k}");
        if r.topic.trim().is_empty() {
            found.push(at("topic"), "must name a topic".into());
        }
        if r.group.trim().is_empty() {
            found.push(at("group"), "must name a consumer group".into());
        }
        if let Some(j) = names.insert(r.name.clone(), i) {
            let why = format!(
                "`{}` is also the name of routes[{j}]; names must be unique",
                r.name
            );
            found.push(at("name"), why);
        }
        if let Some(j) = topics.insert(r.topic.clone(), i) {
            let why = format!(
                "`{}` is also read by routes[{j}]; one route per topic",
                r.topic
            );
            found.push(at("topic"), why);
        }
        route(i, r, &mut found);
        let policy = r.commit_policy(&config.worker);
        match group_policy.get(&r.group) {
            Some((j, p)) if *p != policy => found.push(
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
    if found.list.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(found.list))
    }
}

/// `[kafka]`, `[ops]`, `[worker]` and the presence of routes.
fn globals(config: &Config, found: &mut Found<'_>) {
    match config.kafka.get("bootstrap.servers") {
        Some(s) if !s.trim().is_empty() => {}
        _ => found.push(
            "kafka.\"bootstrap.servers\"".into(),
            "missing: name the Kafka cluster (or set REDRIVE_KAFKA_BOOTSTRAP_SERVERS)".into(),
        ),
    }
    for k in ["group.id", "enable.auto.commit", "enable.auto.offset.store"] {
        if config.kafka.0.contains_key(k) {
            found.push(
                format!("kafka.\"{k}\""),
                "managed by redrive: set `group` per route; commits follow `commit_policy`".into(),
            );
        }
    }
    if config.ops.enabled {
        if let Err(e) = config.ops.listen.parse::<SocketAddr>() {
            let listen = &config.ops.listen;
            let why = format!("`{listen}` is not an address such as 127.0.0.1:9464: {e}");
            found.push("ops.listen".into(), why);
        }
    }
    worker(&config.worker, found);
    if config.routes.is_empty() {
        found.push(
            "routes".into(),
            "no routes: add at least one [[routes]] table with topic, group and url".into(),
        );
    }
}

fn worker(w: &WorkerSettings, found: &mut Found<'_>) {
    if w.drain_timeout.is_zero() {
        found.push(
            "worker.drain_timeout".into(),
            "must be above 0 (in-flight records need time to finish)".into(),
        );
    }
}

/// One route's settings besides its names; its retry policy by the library's own validator, so a key has
/// the same rule and message in the file, the builder and the macro.
fn route(i: usize, r: &RouteConfig, found: &mut Found<'_>) {
    let at = |k: &str| format!("routes[{i}].{k}");
    if let Err(reason) = check_url(&r.url) {
        found.push(at("url"), reason);
    }
    if r.timeout.is_zero() {
        found.push(at("timeout"), "must be above 0".into());
    }
    for (key, value) in [
        ("concurrency", r.concurrency),
        ("partition_concurrency", r.partition_concurrency),
    ] {
        if value == 0 {
            found.push(at(key), "must be at least 1".into());
        }
    }
    if r.transactional {
        found.push(
            at("transactional"),
            "the sidecar does not offer transactional routes yet (an HTTP call is a side effect outside Kafka, which a Kafka transaction cannot undo); use at-least-once with an idempotent endpoint".into(),
        );
    }
    key_ordering(r, &at, found);
    if let Err(e) = r.retry.validate() {
        let (key, reason) = match e {
            redrive::Error::Config { setting, reason } if setting.starts_with("retry.") => {
                (at(&setting), reason)
            }
            redrive::Error::Config { setting, reason } => (at(&format!("retry.{setting}")), reason),
            other => (at("retry"), other.to_string()),
        };
        found.push(key, reason);
    }
    if let Some(Err(reason)) = r.circuit_breaker.as_ref().map(CircuitBreaker::validate) {
        found.push(at("circuit_breaker"), reason);
    }
    if let Some(Err(reason)) = r.health_url.as_deref().map(check_url) {
        found.push(at("health_url"), reason);
    }
    if r.ca_path.is_some() && !r.url.starts_with("https:") {
        found.push(at("ca_path"), "applies to an https:// url only".into());
    }
    for (name, spec) in &r.headers {
        if let Err(reason) = check_header(name, spec) {
            found.push(at(&format!("headers.{name}")), reason);
        }
    }
    for code in r.statuses.keys() {
        if !code.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c)) {
            found.push(
                at(&format!("statuses.{code}")),
                "must be an HTTP status code, 100 to 599".into(),
            );
        }
    }
}

/// What `key_ordering` needs, and `after_dead_letter` without it.
fn key_ordering(r: &RouteConfig, at: &dyn Fn(&str) -> String, found: &mut Found<'_>) {
    if !r.key_ordering {
        if r.after_dead_letter.is_some() {
            found.push(
                at("after_dead_letter"),
                "applies only with key_ordering = true".into(),
            );
        }
        return;
    }
    if r.partition_concurrency != 1 {
        found.push(
            at("key_ordering"),
            format!("needs partition_concurrency = 1 (got {}): records of one key are forwarded one after the other", r.partition_concurrency),
        );
    }
    if let Some(n) = r.retry.partitions {
        found.push(
            at("key_ordering"),
            format!(
                "needs each copy to keep its record's partition: remove retry.partitions (= {n})"
            ),
        );
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", redact_url(url)))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "scheme `{other}` is not supported: write http:// or https://"
            ))
        }
        None => {
            return Err(format!(
                "`{}` has no scheme: write http://host:port/path",
                redact_url(url)
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{}` has no host", redact_url(url)));
    }
    Ok(())
}

/// A `[routes.headers]` entry: a valid name the sidecar does not set itself, one source, a
/// value a header can hold. Files and variables are read when the route starts.
fn check_header(name: &str, spec: &HeaderSpec) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("`{name}` is not a header name"));
    }
    let ours = [
        "content-type",
        "content-length",
        "host",
        "traceparent",
        "transfer-encoding",
    ];
    if ours.contains(&lower.as_str()) || lower.starts_with("redrive-") || lower.starts_with("ce-") {
        return Err(format!(
            "`{name}` is set by the sidecar itself (the request contract, docs/sidecar-http.md)"
        ));
    }
    match spec {
        HeaderSpec::Value(v) if hyper::header::HeaderValue::from_str(v).is_err() => {
            Err("the value holds characters a header cannot (line breaks, controls)".into())
        }
        HeaderSpec::From(f) if f.file.is_some() == f.env.is_some() => {
            Err("give exactly one of `file` or `env`".into())
        }
        _ => Ok(()),
    }
}
