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
//! written as `_`. Each variable also has a `_FILE` form (`REDRIVE_KAFKA_SASL_PASSWORD_FILE=
//! /run/secrets/kafka`) whose value names a file holding the value, as Docker and Kubernetes
//! mount secrets; the file's content is never printed.

mod env;
mod json;
mod model;
mod validate;

use std::path::Path;

pub use model::{
    is_secret, is_secret_header, redact_url, Config, ConfigError, ConfigErrors, Disposition,
    Format, HeaderFrom, HeaderSpec, KafkaProperties, OpsSettings, RouteConfig, WorkerSettings,
};

use env::{apply_env, describe_key};
pub use json::errors_json;
use validate::validate;

/// Reads the table into a [`Config`], reporting every key serde refuses, not only the first:
/// a refused value is left out (its default taken) and the rest read again, until the table
/// reads or a refusal names no single value (a missing key, a malformed table).
fn read_all(
    mut table: toml::Table,
    origins: &[(String, String)],
    file: &str,
) -> (Option<Config>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    for _ in 0..64 {
        let e = match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
            Ok(config) => return (Some(config), errors),
            Err(e) => e,
        };
        let path = e.path().to_string();
        let mut reason = e.into_inner().to_string();
        // toml appends its own location, which is meaningless for a re-built table.
        if let Some(i) = reason.find("\nin ") {
            reason.truncate(i);
        }
        let removed = errors.iter().any(|x: &ConfigError| {
            reason.contains(&format!("`{}`", x.key.rsplit('.').next().unwrap_or("")))
        });
        if reason.starts_with("missing field") && removed {
            break;
        }
        errors.push(ConfigError {
            file: file.to_owned(),
            key: describe_key(&path, origins),
            reason: reason.trim().to_owned(),
        });
        if !remove_leaf(&mut table, &path) {
            break;
        }
    }
    (None, errors)
}

/// Removes the value at `path` (`routes[0].retry.attempts`) if it is a leaf or an unknown
/// key's; false when there is none to remove.
fn remove_leaf(table: &mut toml::Table, path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else {
        return false;
    };
    let mut cur = table;
    for part in parts {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let next = match (cur.get_mut(name), index) {
            (Some(toml::Value::Array(a)), Some(i)) => a.get_mut(i),
            (v, None) => v,
            _ => None,
        };
        match next {
            Some(toml::Value::Table(t)) => cur = t,
            _ => return false,
        }
    }
    if last.contains('[') {
        return false;
    }
    cur.remove(last).is_some()
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
        let (config, mut errors) = read_all(root, &origins, file);
        let Some(mut config) = config else {
            return Err(ConfigErrors(errors));
        };
        config.file = file.to_owned();
        if let Err(ConfigErrors(more)) = validate(&mut config, &origins) {
            // A key already reported was left out to read the rest: its default is not news.
            let reported: Vec<String> = errors.iter().map(|e| e.key.clone()).collect();
            errors.extend(more.into_iter().filter(|e| !reported.contains(&e.key)));
        }
        match errors.is_empty() {
            true => Ok(config),
            false => Err(ConfigErrors(errors)),
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
                if r.key_ordering {
                    let after = r.after_dead_letter.unwrap_or_default();
                    let _ = writeln!(s, "    key ordering: on (after a dead letter: {after})");
                }
                if let Some(ca) = &r.ca_path {
                    let _ = writeln!(s, "    tls: the system's roots and {ca}");
                }
                if r.http2 {
                    let _ = writeln!(s, "    http/2");
                }
                for (name, spec) in &r.headers {
                    let _ = writeln!(s, "    header {name}: {}", spec.describe(name));
                }
                if let Some(h) = &r.health_url {
                    let _ = writeln!(
                        s,
                        "    health: GET {} before the first record and each probe",
                        redact_url(h)
                    );
                }
                // `health_url` alone turns the breaker on with its defaults.
                let breaker = r.circuit_breaker.clone().or_else(|| {
                    r.health_url
                        .as_ref()
                        .map(|_| redrive::policy::CircuitBreaker::new())
                });
                if let Some(b) = &breaker {
                    let _ = writeln!(
                        s,
                        "    circuit breaker: opens after {} outages in a row or {} of the last {} calls (at least {}); open {} at first, at most {}",
                        b.consecutive_failures,
                        b.failure_ratio,
                        b.window,
                        b.min_calls,
                        humantime::format_duration(b.open_for),
                        humantime::format_duration(b.max_open_for),
                    );
                }
                for line in r
                    .retry
                    .for_group(&r.group)
                    .topology(&r.topic)
                    .to_string()
                    .lines()
                {
                    let _ = writeln!(s, "    {line}");
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    fn file_variants_read_secrets_from_mounted_files() {
        let path = std::env::temp_dir().join(format!("redrive-secret-{}", std::process::id()));
        std::fs::write(&path, "from-a-file\n").unwrap();
        let p = path.to_str().unwrap();
        let c = parse(GOOD, &[("REDRIVE_KAFKA_SASL_PASSWORD_FILE", p)]).unwrap();
        assert_eq!(c.kafka.get("sasl.password"), Some("from-a-file"));
        let c = parse(GOOD, &[("REDRIVE_ROUTE_ORDERS__URL_FILE", p)]);
        let e = c.unwrap_err().to_string();
        assert!(
            e.contains("routes[0].url (from $REDRIVE_ROUTE_ORDERS__URL_FILE)"),
            "{e}"
        );
        let both = [
            ("REDRIVE_KAFKA_SASL_PASSWORD_FILE", p),
            ("REDRIVE_KAFKA_SASL_PASSWORD", "x"),
        ];
        let e = parse(GOOD, &both).unwrap_err().to_string();
        assert!(e.contains("$REDRIVE_KAFKA_SASL_PASSWORD is set too"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = parse(GOOD, &[("REDRIVE_KAFKA_SASL_PASSWORD_FILE", p)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("$REDRIVE_KAFKA_SASL_PASSWORD_FILE: cannot read"),
            "{e}"
        );
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
            "{GOOD}\n[[routes]]\ntopic = \"orders\"\ngroup = \"\"\nurl = \"ftp://user:pw@example.com/x\"\nconcurrency = 0\ntransactional = true\n"
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
    fn key_ordering_mistakes_are_reported() {
        let text = format!(
            "{GOOD}\n[[routes]]\nname = \"keyed\"\ntopic = \"accounts\"\ngroup = \"g2\"\nurl = \"http://127.0.0.1:1/x\"\nkey_ordering = true\npartition_concurrency = 2\n[routes.retry]\npartitions = 4\n[[routes]]\nname = \"loose\"\ntopic = \"audit\"\ngroup = \"g2\"\nurl = \"http://127.0.0.1:1/x\"\nafter_dead_letter = \"follow\"\n"
        );
        let e = parse(&text, &[]).unwrap_err();
        let found: Vec<(&str, &str)> =
            e.0.iter()
                .map(|e| (e.key.as_str(), e.reason.as_str()))
                .collect();
        assert_eq!(found.len(), 3, "{e}");
        assert!(
            found[0].0 == "routes[1].key_ordering"
                && found[0].1.contains("partition_concurrency = 1"),
            "{e}"
        );
        assert!(
            found[1].0 == "routes[1].key_ordering" && found[1].1.contains("retry.partitions"),
            "{e}"
        );
        assert_eq!(found[2].0, "routes[2].after_dead_letter", "{e}");
        let ok = format!(
            "{GOOD}\n[[routes]]\nname = \"keyed\"\ntopic = \"accounts\"\ngroup = \"g2\"\nurl = \"http://127.0.0.1:1/x\"\nkey_ordering = true\nafter_dead_letter = \"follow\"\n"
        );
        let config = parse(&ok, &[]).unwrap();
        assert!(config
            .describe()
            .contains("key ordering: on (after a dead letter: follow)"));
    }

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(redact_url("http://u:p@h:1/x"), "http://u:***@h:1/x");
        assert_eq!(redact_url("http://h:1/x@y"), "http://h:1/x@y");
    }
}
