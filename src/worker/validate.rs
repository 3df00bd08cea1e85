//! What `WorkerBuilder::build` checks before it creates anything: every mistake is an
//! [`Error::Config`] naming the setting.

use std::collections::BTreeMap;
use std::time::Duration;

use super::plan::PendingRoute;
use crate::client;
use crate::commit::CommitPolicy;
use crate::policy::DltStrategy;
use crate::Error;

/// The worker's consumer group: `group.id`, or the group the routes declare
/// (`#[retryable_topic(group = ..)]`), which must agree. Sets `group.id` from the routes.
pub(super) fn group(
    routes: &[PendingRoute],
    props: &mut BTreeMap<String, String>,
) -> Result<String, Error> {
    let declared: Vec<(&str, &str)> = routes
        .iter()
        .filter_map(|r| Some((r.name.as_str(), r.group.as_deref()?)))
        .collect();
    if let Some((route, g)) = declared.first() {
        if let Some(w) = props.get("group.id").filter(|w| w != g) {
            return Err(Error::config(
                "group.id",
                format!("route `{route}` declares group `{g}` but the worker's group.id is `{w}`"),
            ));
        }
        if let Some((other, g2)) = declared.iter().find(|(_, x)| x != g) {
            return Err(Error::config(
                "group",
                format!("routes `{route}` and `{other}` declare different groups (`{g}`, `{g2}`); a worker is one group member: use two workers"),
            ));
        }
        props.insert("group.id".into(), g.to_string());
    }
    match props.get("group.id") {
        Some(g) if !g.trim().is_empty() => Ok(g.clone()),
        _ => Err(Error::config(
            "group.id",
            "required: a worker is a consumer group member (WorkerBuilder::group_id)",
        )),
    }
}

/// `bootstrap.servers`, which is required.
pub(super) fn bootstrap(props: &BTreeMap<String, String>) -> Result<String, Error> {
    match props.get("bootstrap.servers") {
        Some(b) if !b.trim().is_empty() => Ok(b.clone()),
        _ => Err(Error::config(
            "bootstrap.servers",
            "required (WorkerBuilder::bootstrap_servers)",
        )),
    }
}

/// The worker-wide settings: properties redrive owns, the commit policy, the lag interval,
/// and `counts`, settings that must be at least 1.
pub(super) fn settings(
    props: &BTreeMap<String, String>,
    commit: &CommitPolicy,
    lag_interval: Duration,
    counts: [(&'static str, u64); 4],
) -> Result<(), Error> {
    owned_properties(props)?;
    commit
        .validate()
        .map_err(|r| Error::config("commit_policy", r))?;
    if lag_interval < Duration::from_millis(100) {
        return Err(Error::config("lag_interval", "must be at least 100ms"));
    }
    match counts.iter().find(|(_, value)| *value == 0) {
        Some((setting, _)) => Err(Error::config(*setting, "must be at least 1")),
        None => Ok(()),
    }
}

/// Every route; a worker needs at least one.
pub(super) fn routes(routes: &[PendingRoute]) -> Result<(), Error> {
    if routes.is_empty() {
        return Err(Error::config(
            "route",
            "a worker needs at least one route (WorkerBuilder::route)",
        ));
    }
    routes.iter().try_for_each(route)
}

/// The commit rule needs librdkafka's own offset commits off, and a copy counts only once the
/// broker has it durably: neither may be overridden.
fn owned_properties(props: &BTreeMap<String, String>) -> Result<(), Error> {
    for key in client::OWNED_PROPERTIES {
        if let Some(v) = props.get(key).filter(|v| *v != "false") {
            return Err(Error::config(
                key,
                format!("must stay false (got `{v}`): redrive commits only offsets whose records are final; choose a CommitPolicy instead"),
            ));
        }
    }
    for (key, required) in client::DURABILITY {
        let key = format!("producer.{key}");
        if let Some(v) = props.get(&key).filter(|v| *v != required) {
            return Err(Error::config(
                key,
                format!("must stay `{required}` (got `{v}`): a retry or dead-letter copy counts only once the broker has it durably"),
            ));
        }
    }
    Ok(())
}

/// One route: its topics, concurrency, retry policy and dead-letter handler.
fn route(r: &PendingRoute) -> Result<(), Error> {
    let name = &r.name;
    if r.concurrency == 0 {
        return Err(Error::config(
            "concurrency",
            format!("route `{name}`: must be at least 1"),
        ));
    }
    if r.topics.is_empty() {
        return Err(Error::config(
            "topics",
            format!("route `{name}` reads no topic"),
        ));
    }
    if let Some(t) = r.topics.iter().find(|t| t.trim().is_empty()) {
        return Err(Error::config(
            "topic",
            format!("route `{name}`: empty topic name `{t}`"),
        ));
    }
    if !r.read_headers && r.retry.is_some() {
        return Err(Error::config(
            "without_headers",
            format!("route `{name}` has a retry policy: its retry and dead-letter copies carry the record's headers, so it must read them"),
        ));
    }
    if r.handler_timeout.is_some_and(|t| t.is_zero()) {
        return Err(Error::config(
            "handler_timeout",
            format!("route `{name}`: must be above 0 (every call would time out)"),
        ));
    }
    if let Some(b) = &r.breaker {
        b.config().validate().map_err(|reason| {
            Error::config("circuit_breaker", format!("route `{name}`: {reason}"))
        })?;
    }
    retry(r)?;
    key_ordering(r)
}

/// A route with key ordering: it needs retry topics whose copies keep their partition, and
/// one record at a time per partition.
fn key_ordering(r: &PendingRoute) -> Result<(), Error> {
    if r.key_ordering.is_none() {
        return Ok(());
    }
    let name = &r.name;
    let Some(policy) = &r.retry else {
        return Err(Error::config(
            "key_ordering",
            format!("route `{name}` has no retry policy (Route::retry): without retry topics no record is handled out of order, so there is nothing to keep in order"),
        ));
    };
    if r.concurrency != 1 {
        return Err(Error::config(
            "key_ordering",
            format!("route `{name}`: needs concurrency 1 (got {}): records of one key from one partition are handled one after the other", r.concurrency),
        ));
    }
    if let Some(n) = policy.partitions {
        return Err(Error::config(
            "key_ordering",
            format!("route `{name}`: the retry policy sets partitions = {n}; key ordering needs each copy to keep its record's partition (remove `partitions`)"),
        ));
    }
    Ok(())
}

/// Key ordering parks records in a partition's task and reads each retry chain with its main
/// partition: neither manual acknowledgement nor a transactional worker's loop does that.
pub(super) fn key_ordering_worker(
    routes: &[PendingRoute],
    manual_ack: bool,
    transactional: bool,
) -> Result<(), Error> {
    let Some(r) = routes.iter().find(|r| r.key_ordering.is_some()) else {
        return Ok(());
    };
    let why = match (manual_ack, transactional) {
        (true, _) => "manual acknowledgement",
        (_, true) => "a transactional worker",
        _ => return Ok(()),
    };
    Err(Error::config(
        "key_ordering",
        format!(
            "route `{}`: key ordering is not available with {why}",
            r.name
        ),
    ))
}

/// A transactional worker cannot pause a route: its open transaction would outlive the
/// transaction timeout while the breaker is open.
pub(super) fn no_breakers(routes: &[PendingRoute]) -> Result<(), Error> {
    match routes.iter().find(|r| r.breaker.is_some()) {
        Some(r) => Err(Error::config(
            "circuit_breaker",
            format!("route `{}`: a transactional worker cannot pause a route (its open transaction would outlive transaction.timeout.ms); use the breaker on an at-least-once worker", r.name),
        )),
        None => Ok(()),
    }
}

/// A route's retry policy and its dead-letter handler.
fn retry(r: &PendingRoute) -> Result<(), Error> {
    let name = &r.name;
    match &r.retry {
        Some(p) => p.validate().map_err(|e| match e {
            Error::Config { setting, reason } => {
                Error::config(setting, format!("route `{name}`: {reason}"))
            }
            other => other,
        })?,
        None if r.has_dlt => {
            return Err(Error::config(
                "dlt_handler",
                format!("route `{name}` has a DLT handler but no retry policy (Route::retry)"),
            ))
        }
        None => {}
    }
    let no_dlt = r
        .retry
        .as_ref()
        .is_some_and(|p| p.dlt_strategy == DltStrategy::NoDlt);
    if r.has_dlt && no_dlt {
        return Err(Error::config(
            "dlt_handler",
            format!("route `{name}` has a DLT handler but its dlt_strategy is no_dlt"),
        ));
    }
    Ok(())
}

/// A transactional worker's consumer: its loop assumes eager rebalancing (a rebalance resets
/// every position to the committed offset and it drops the batch in hand) and reads only
/// committed outputs, so the properties that would change either are refused.
pub(super) fn transactional_consumer(props: &BTreeMap<String, String>) -> Result<(), Error> {
    if let Some(v) = props
        .get("partition.assignment.strategy")
        .filter(|v| v.contains("cooperative"))
    {
        return Err(Error::config(
            "partition.assignment.strategy",
            format!("`{v}` is incremental: a transactional worker needs an eager strategy (range or roundrobin, librdkafka's default), since it drops the batch in hand when partitions move"),
        ));
    }
    if let Some(v) = props
        .get("group.protocol")
        .filter(|v| !v.eq_ignore_ascii_case("classic"))
    {
        return Err(Error::config(
            "group.protocol",
            format!("`{v}` (KIP-848) rebalances incrementally: a transactional worker needs the classic protocol"),
        ));
    }
    if let Some(v) = props.get("isolation.level") {
        return Err(Error::config(
            "isolation.level",
            format!("set to `{v}`: a transactional worker reads read_committed, so outputs of aborted transactions are never handled; remove the property"),
        ));
    }
    Ok(())
}
