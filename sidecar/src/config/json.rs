//! What `redrive check --output json` prints: the resolved configuration and topology, secrets
//! redacted, for scripts and CI.

use serde_json::{json, Value};

use super::model::{redact_url, Config, ConfigErrors, RouteConfig};

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Config {
    /// The resolved configuration as JSON: `kafka` (secrets `***`), `worker`, `ops`, and per
    /// consumer group its routes with their endpoint, policy and topics.
    pub fn to_json(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .into_iter()
            .map(|(group, routes)| {
                let routes: Vec<Value> = routes
                    .into_iter()
                    .map(|i| self.route_json(&self.routes[i]))
                    .collect();
                json!({ "group": group, "routes": routes })
            })
            .collect();
        json!({
            "ok": true,
            "config": self.file,
            "kafka": self.kafka.redacted(),
            "worker": {
                "drain_timeout": duration(self.worker.drain_timeout),
                "startup_timeout": duration(self.worker.startup_timeout),
                "commit_policy": self.worker.commit_policy.to_string(),
            },
            "ops": { "enabled": self.ops.enabled, "listen": self.ops.listen },
            "groups": groups,
        })
    }

    fn route_json(&self, r: &RouteConfig) -> Value {
        let topology = r.retry.for_group(&r.group).topology(&r.topic);
        let retry_topics: Vec<Value> = topology
            .hops()
            .iter()
            .map(|h| json!({ "retry": h.retry, "topic": h.topic, "delay": duration(h.delay) }))
            .collect();
        let headers: serde_json::Map<String, Value> = r
            .headers
            .iter()
            .map(|(name, spec)| (name.clone(), spec.describe(name).into()))
            .collect();
        json!({
            "name": r.name,
            "topic": r.topic,
            "url": redact_url(&r.url),
            "timeout": duration(r.timeout),
            "concurrency": r.concurrency,
            "partition_concurrency": r.partition_concurrency,
            "key_ordering": r.key_ordering.then(|| r.after_dead_letter.unwrap_or_default().to_string()),
            "commit_policy": r.commit_policy(&self.worker).to_string(),
            "content_type": r.content_type,
            "format": format!("{:?}", r.format).to_lowercase(),
            "http2": r.http2,
            "ca_path": r.ca_path,
            "headers": headers,
            "health_url": r.health_url.as_deref().map(redact_url),
            "circuit_breaker": r.circuit_breaker.is_some() || r.health_url.is_some(),
            "policy": r.retry.to_string(),
            "retry_topics": retry_topics,
            "dlt": topology.dlt(),
        })
    }
}

/// A configuration's mistakes as JSON: `ok: false` and each mistake's `file`, `key`, `reason`.
pub fn errors_json(errors: &ConfigErrors) -> Value {
    let list: Vec<Value> = errors
        .0
        .iter()
        .map(|e| json!({ "file": e.file, "key": e.key, "reason": e.reason }))
        .collect();
    json!({ "ok": false, "errors": list })
}
