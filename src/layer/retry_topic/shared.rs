//! The layer's state shared by every clone of its service, and what it knows (and counts)
//! about each topic it reads.

use std::collections::HashMap;
use std::sync::Arc;

use crate::layer::Stage;
use crate::policy::{RetryPolicy, Topology};
use crate::publish::Publish;
use crate::Record;

pub(crate) struct RetryShared {
    pub(crate) policy: RetryPolicy,
    pub(crate) by_topic: HashMap<String, Arc<TopicEntry>>,
    pub(crate) publisher: Arc<dyn Publish>,
    pub(crate) group: Arc<str>,
    /// The handler's error type, named in dead letters whose error names none.
    pub(crate) declared_error: Option<&'static str>,
}

/// What the layer knows about one topic it reads.
pub(crate) struct TopicEntry {
    pub(crate) topology: Arc<Topology>,
    pub(crate) stage: Stage,
    /// The policy's attempts, which bound the `attempt` label (see [`attempt_label`]).
    attempts: u32,
    /// `records_handled_total` by outcome and `retries_scheduled_total`, by attempt.
    ok: ByAttempt,
    retryable: ByAttempt,
    fatal: ByAttempt,
    scheduled: ByAttempt,
    /// `records_dead_lettered_total` by [`DLT_REASONS`].
    dead: Vec<::metrics::Counter>,
    /// `foreign_copies_skipped_total`, and the foreign groups already logged.
    foreign: ::metrics::Counter,
    foreign_logged: std::sync::Mutex<Vec<String>>,
    labels: [(&'static str, String); 3],
}

/// Why a record goes to the dead-letter topic (the `reason` label).
const DLT_REASONS: [&str; 4] = ["decode", "fatal", "timeout", "exhausted"];

/// Most attempt labels registered up front; beyond, counters are looked up when counted.
const CACHED_ATTEMPTS: u32 = 64;

/// One counter per `attempt` label, registered once, so counting an outcome bumps an atomic
/// instead of building a label set and looking it up in the recorder.
struct ByAttempt {
    name: &'static str,
    outcome: Option<&'static str>,
    /// Labels the attempt after the counted one (`retries_scheduled_total`).
    next: bool,
    cached: Vec<::metrics::Counter>,
}

impl ByAttempt {
    pub(crate) fn new(
        base: &[(&'static str, String)],
        attempts: u32,
        name: &'static str,
        outcome: Option<&'static str>,
        next: bool,
    ) -> Self {
        let mut c = ByAttempt {
            name,
            outcome,
            next,
            cached: Vec::new(),
        };
        // Attempts 1..=attempts, and one more for every attempt beyond (they share a label).
        c.cached = (1..=attempts.saturating_add(1).min(CACHED_ATTEMPTS))
            .map(|a| c.lookup(base, attempts, a))
            .collect();
        c
    }

    pub(crate) fn lookup(
        &self,
        base: &[(&'static str, String)],
        attempts: u32,
        attempt: u32,
    ) -> ::metrics::Counter {
        let mut l: Vec<(&'static str, String)> = base.to_vec();
        if let Some(o) = self.outcome {
            l.push(("outcome", o.into()));
        }
        let labelled = attempt.saturating_add(u32::from(self.next));
        l.push(("attempt", attempt_label(labelled, attempts)));
        ::metrics::counter!(self.name, &l)
    }

    pub(crate) fn increment(&self, base: &[(&'static str, String)], attempts: u32, attempt: u32) {
        let i = attempt.clamp(1, attempts.saturating_add(1)) as usize - 1;
        match self.cached.get(i) {
            Some(c) => c.increment(1),
            None => self.lookup(base, attempts, attempt).increment(1),
        }
    }
}

impl TopicEntry {
    pub(crate) fn new(
        topology: Arc<Topology>,
        stage: Stage,
        policy: &RetryPolicy,
        group: &str,
        route: &str,
        topic: &str,
    ) -> Self {
        use crate::metrics::names::{
            DEAD_LETTERED, FOREIGN_COPIES_SKIPPED, RECORDS_HANDLED, RETRIES_SCHEDULED,
        };
        let labels = [
            ("group", group.to_owned()),
            ("topic", topic.to_owned()),
            ("route", route.to_owned()),
        ];
        let attempts = policy.attempts;
        let handled =
            |outcome| ByAttempt::new(&labels, attempts, RECORDS_HANDLED, Some(outcome), false);
        let dead = DLT_REASONS
            .iter()
            .map(|r| {
                let mut l: Vec<(&'static str, String)> = labels.to_vec();
                l.push(("reason", (*r).into()));
                ::metrics::counter!(DEAD_LETTERED, &l)
            })
            .collect();
        let entry = TopicEntry {
            topology,
            stage,
            attempts,
            ok: handled("ok"),
            retryable: handled("retryable_error"),
            fatal: handled("fatal_error"),
            scheduled: ByAttempt::new(&labels, attempts, RETRIES_SCHEDULED, None, true),
            dead,
            foreign: ::metrics::counter!(FOREIGN_COPIES_SKIPPED, &labels),
            foreign_logged: std::sync::Mutex::new(Vec::new()),
            labels,
        };
        entry.foreign.increment(0);
        // Failure counters exist from the start (at 0), so dashboards show 0, not "no data".
        for target in ["retry", "dlt"] {
            entry
                .counter(
                    crate::metrics::names::PUBLISH_FAILURES,
                    &[("target", target.into())],
                )
                .increment(0);
        }
        entry
    }

    /// Whether `record`, read from this retry or dead-letter topic, belongs to another
    /// consumer group's flow (its `kafka_dlt-original-consumer-group` names another group):
    /// then it is counted, logged once per foreign group, and must be skipped. Records of
    /// main topics, and copies without the header, belong to every group that reads them.
    pub(crate) fn foreign(&self, record: &Record, group: &str) -> bool {
        if self.stage == Stage::Main {
            return false;
        }
        let Some(owner) = crate::headers::original_group(record.headers()) else {
            return false;
        };
        if owner == group.as_bytes() {
            return false;
        }
        self.foreign.increment(1);
        let owner = String::from_utf8_lossy(owner).into_owned();
        let mut logged = self
            .foreign_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !logged.contains(&owner) && logged.len() < 16 {
            tracing::warn!(record = %record.coordinates(), owner = %owner, group, "skipping copies another consumer group's retry flow wrote to this topic (logged once per group); name the topics after the group with `group_scoped` to keep the flows apart");
            logged.push(owner);
        }
        true
    }

    pub(crate) fn count_ok(&self, attempt: u32) {
        self.ok.increment(&self.labels, self.attempts, attempt);
    }

    /// `records_handled_total` for a failure of `attempt`.
    pub(crate) fn count_failure(&self, fatal: bool, attempt: u32) {
        let c = if fatal { &self.fatal } else { &self.retryable };
        c.increment(&self.labels, self.attempts, attempt);
    }

    /// `retries_scheduled_total` for the retry after a failure of `attempt`.
    pub(crate) fn count_scheduled(&self, attempt: u32) {
        self.scheduled
            .increment(&self.labels, self.attempts, attempt);
    }

    pub(crate) fn count_dead(&self, reason: &'static str) {
        match DLT_REASONS.iter().position(|r| *r == reason) {
            Some(i) => self.dead[i].increment(1),
            None => self
                .counter(
                    crate::metrics::names::DEAD_LETTERED,
                    &[("reason", reason.into())],
                )
                .increment(1),
        }
    }

    pub(crate) fn counter(
        &self,
        name: &'static str,
        extra: &[(&'static str, String)],
    ) -> ::metrics::Counter {
        let mut l: Vec<(&'static str, String)> = self.labels.to_vec();
        l.extend_from_slice(extra);
        ::metrics::counter!(name, &l)
    }
}

/// The `attempt` metric label: a header written by another producer may claim any attempt,
/// so values beyond the policy's last attempt share one label, bounding the label's values.
pub(crate) fn attempt_label(attempt: u32, attempts: u32) -> String {
    if attempt > attempts {
        format!("{}+", attempts.saturating_add(1))
    } else {
        attempt.to_string()
    }
}
