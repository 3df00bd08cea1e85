//! The retry policy's settings and the delays they give.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use super::matcher::ErrorMatcher;
use crate::headers::HeaderProfile;
use crate::Error;

/// How long to wait before each retry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Backoff {
    /// The first retry's delay (Spring's `@Backoff(delay)`); default 1 s.
    #[serde(with = "duration")]
    pub delay: Duration,
    /// Each further retry waits `multiplier` times longer; 1.0 (the default) is a fixed
    /// back-off.
    #[serde(deserialize_with = "duration::multiplier")]
    pub multiplier: f64,
    /// No delay exceeds this; default 30 s (Spring's exponential maximum).
    #[serde(with = "duration")]
    pub max: Duration,
    /// Random spread of each due time, as a fraction of the delay: 0.1 = +/-10 %. Topic names
    /// use the nominal delay. Default 0. A retry topic is read in order, so with jitter a
    /// record may wait behind an earlier copy due later: it can start up to
    /// `2 * jitter * delay` late, never early.
    #[serde(deserialize_with = "duration::fraction")]
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: Duration::from_secs(1),
            multiplier: 1.0,
            max: Duration::from_secs(30),
            jitter: 0.0,
        }
    }
}

/// What happens to a record that failed in its dead-letter handler (Spring's
/// `DltStrategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DltStrategy {
    /// The DLT handler's failure is published back to the DLT, to be handled again
    /// (Spring's default).
    #[default]
    AlwaysRetryOnError,
    /// The DLT partition stops at the failed record, which stays uncommitted, and the error is
    /// logged: an operator has to look (alert on `redrive_records_handled_total{stage="dlt",
    /// outcome="fatal_error"}`). A restart handles it again.
    FailOnError,
    /// There is no DLT: records that exhaust their attempts or fail fatally are logged and
    /// dropped.
    NoDlt,
}

/// How retry topics are named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicSuffix {
    /// `orders-retry-1000`, `orders-retry-2000` (the delay in ms). The default.
    #[default]
    Delay,
    /// `orders-retry-0`, `orders-retry-1`.
    Index,
}

/// Blocking retries run in memory before the first hop to a retry topic (Spring's
/// `DefaultErrorHandler` in front of `@RetryableTopic`). They hold the partition while they
/// wait, so keep them short.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct InMemoryRetries {
    /// Extra calls after the first failure; 0 (the default) disables them.
    pub attempts: u32,
    /// The pause before each of them.
    #[serde(with = "duration")]
    pub delay: Duration,
}

/// A retry policy. See the [module docs](crate::policy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Deliveries in total, counting the first: 4 = 1 try + 3 retries, then the DLT.
    /// Default 3.
    #[serde(deserialize_with = "duration::attempts")]
    pub attempts: u32,
    /// The back-off between attempts.
    pub backoff: Backoff,
    /// Per-attempt overrides: `delays[i]` is the delay before retry `i + 1`; retries beyond
    /// the list use the last entry. Empty (the default) means: use `backoff`.
    #[serde(with = "duration::list")]
    pub delays: Vec<Duration>,
    /// Give up early: a record whose next attempt would start later than this after its first
    /// delivery goes to the DLT (reason `timeout`). Default: none.
    #[serde(with = "duration::option")]
    pub timeout: Option<Duration>,
    /// Only errors matching one of these (anywhere in the `source()` chain) are retried;
    /// empty (the default) means every error not excluded.
    pub include: Vec<ErrorMatcher>,
    /// Errors matching one of these (anywhere in the chain) go straight to the DLT.
    pub exclude: Vec<ErrorMatcher>,
    /// What a DLT handler's failure does.
    pub dlt_strategy: DltStrategy,
    /// How retry topics are named.
    pub suffix: TopicSuffix,
    /// The retry topics' suffix; default `-retry`.
    pub retry_topic_suffix: String,
    /// The dead-letter topic's suffix; default `-dlt`.
    pub dlt_topic_suffix: String,
    /// Name the retry and dead-letter topics after the consumer group too
    /// (`orders-billing-retry-1000`, `orders-billing-dlt`), so two groups with retry policies
    /// on one topic have topics of their own. Default false: the names Spring uses, shared by
    /// every group (each group still handles only its own copies: a copy whose
    /// `kafka_dlt-original-consumer-group` names another group is skipped).
    pub group_scoped: bool,
    /// Create missing retry and dead-letter topics at start-up; default true.
    pub auto_create_topics: bool,
    /// Partitions of created topics; default: the main topic's count, so a record keeps its
    /// partition on every hop (Spring defaults to 1).
    pub partitions: Option<u32>,
    /// Replication factor of created topics; default: the broker's default.
    pub replication_factor: Option<i16>,
    /// Blocking in-memory retries before the first hop.
    pub in_memory: InMemoryRetries,
    /// Error texts written into headers (message, chain) are cut to this many bytes, so a
    /// record never grows toward the broker's size limit. Default 4096.
    pub max_header_text: usize,
    /// Which headers failure copies carry: Spring's (the default, what Spring consumers and
    /// tools read) or redrive's compact one. Every worker reads both, so a route can switch
    /// without draining its retry topics.
    pub headers: HeaderProfile,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Backoff::default(),
            delays: Vec::new(),
            timeout: None,
            include: Vec::new(),
            exclude: Vec::new(),
            dlt_strategy: DltStrategy::default(),
            suffix: TopicSuffix::default(),
            retry_topic_suffix: "-retry".into(),
            dlt_topic_suffix: "-dlt".into(),
            group_scoped: false,
            auto_create_topics: true,
            partitions: None,
            replication_factor: None,
            in_memory: InMemoryRetries::default(),
            max_header_text: 4096,
            headers: HeaderProfile::Spring,
        }
    }
}

impl RetryPolicy {
    /// Spring's defaults: 3 attempts, 1 s fixed back-off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deliveries in total, counting the first.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// A fixed back-off: every retry waits `delay` (one `-retry` topic).
    pub fn fixed(mut self, delay: Duration) -> Self {
        self.backoff.delay = delay;
        self.backoff.multiplier = 1.0;
        self
    }

    /// An exponential back-off: `delay`, `delay * multiplier`, ... capped at `max`.
    pub fn exponential(mut self, delay: Duration, multiplier: f64, max: Duration) -> Self {
        self.backoff = Backoff {
            delay,
            multiplier,
            max,
            jitter: self.backoff.jitter,
        };
        self
    }

    /// Spreads each due time by +/- `fraction` of its delay.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.backoff.jitter = fraction;
        self
    }

    /// Explicit per-retry delays (see [`RetryPolicy::delays`]).
    pub fn delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.delays = delays.into_iter().collect();
        self
    }

    /// Gives up early (see [`RetryPolicy::timeout`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retries only errors matching `m` (may be called several times).
    pub fn include(mut self, m: ErrorMatcher) -> Self {
        self.include.push(m);
        self
    }

    /// Never retries errors matching `m` (may be called several times).
    pub fn exclude(mut self, m: ErrorMatcher) -> Self {
        self.exclude.push(m);
        self
    }

    /// The DLT strategy.
    pub fn dlt_strategy(mut self, s: DltStrategy) -> Self {
        self.dlt_strategy = s;
        self
    }

    /// Names retry topics by index instead of delay.
    pub fn suffix(mut self, s: TopicSuffix) -> Self {
        self.suffix = s;
        self
    }

    /// Names the retry and dead-letter topics after the consumer group too (see
    /// [`group_scoped`](Self::group_scoped)).
    pub fn group_scoped(mut self, yes: bool) -> Self {
        self.group_scoped = yes;
        self
    }

    /// Which headers failure copies carry (see [`headers`](Self::headers)).
    pub fn header_profile(mut self, profile: HeaderProfile) -> Self {
        self.headers = profile;
        self
    }

    /// The policy as a worker of `group` applies it: with [`group_scoped`](Self::group_scoped)
    /// the topic suffixes name the group (`-billing-retry`, `-billing-dlt`); otherwise the
    /// policy itself.
    pub fn for_group(&self, group: &str) -> RetryPolicy {
        let mut p = self.clone();
        if p.group_scoped {
            p.retry_topic_suffix = format!("-{group}{}", p.retry_topic_suffix);
            p.dlt_topic_suffix = format!("-{group}{}", p.dlt_topic_suffix);
            p.group_scoped = false;
        }
        p
    }

    /// Whether missing retry/DLT topics are created at start-up.
    pub fn auto_create_topics(mut self, yes: bool) -> Self {
        self.auto_create_topics = yes;
        self
    }

    /// Partitions of created retry/DLT topics.
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = Some(n);
        self
    }

    /// Blocking in-memory retries before the first hop.
    pub fn in_memory(mut self, attempts: u32, delay: Duration) -> Self {
        self.in_memory = InMemoryRetries { attempts, delay };
        self
    }

    /// Checks every field; the error names the field as the config file spells it.
    pub fn validate(&self) -> Result<(), Error> {
        use redrive_policy_rules as rules;
        let b = &self.backoff;
        let checks = [
            ("attempts", rules::attempts(u64::from(self.attempts))),
            ("backoff.multiplier", rules::multiplier(b.multiplier)),
            ("backoff.jitter", rules::jitter(b.jitter)),
            ("backoff.max", rules::max_delay(b.delay, b.max)),
            (
                "partitions",
                self.partitions
                    .map_or(Ok(()), |n| rules::partitions(u64::from(n))),
            ),
            ("timeout", self.timeout.map_or(Ok(()), rules::timeout)),
            (
                "max_header_text",
                rules::max_header_text(self.max_header_text),
            ),
        ];
        for (field, check) in checks {
            check.map_err(|reason| Error::config(format!("retry.{field}"), reason))?;
        }
        rules::suffixes(&self.retry_topic_suffix, &self.dlt_topic_suffix)
            .map_err(|(field, reason)| Error::config(format!("retry.{field}"), reason))
    }

    /// The nominal delay before retry `n` (1-based: retry 1 follows the first delivery).
    pub fn delay_before_retry(&self, n: u32) -> Duration {
        let n = n.max(1);
        if let Some(last) = self.delays.last() {
            return *self.delays.get(n as usize - 1).unwrap_or(last);
        }
        let b = &self.backoff;
        let factor = b
            .multiplier
            .powi(n.saturating_sub(1).min(i32::MAX as u32) as i32);
        let ms = (b.delay.as_millis() as f64 * factor).min(b.max.as_millis() as f64);
        if ms.is_finite() {
            Duration::from_millis(ms as u64)
        } else {
            b.max
        }
    }

    /// The delay before retry `n` with jitter applied; `unit` is a uniform random number in
    /// [0, 1). Never negative, never above `max` plus the jitter.
    pub fn jittered_delay(&self, n: u32, unit: f64) -> Duration {
        let nominal = self.delay_before_retry(n);
        let j = self.backoff.jitter;
        if j == 0.0 {
            return nominal;
        }
        let scale = 1.0 + j * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((nominal.as_secs_f64() * scale).max(0.0))
    }

    /// The largest delay any retry can have, with jitter.
    pub fn max_delay(&self) -> Duration {
        let top = (1..self.attempts.max(2))
            .map(|n| self.delay_before_retry(n))
            .max()
            .unwrap_or_default();
        top.mul_f64(1.0 + self.backoff.jitter)
    }

    /// The longest a retry topic holds a record before handling it: the longest delay plus a
    /// minute of slack. A `retry_topic-backoff-timestamp` further ahead than this is not
    /// trusted (handled at once, with a warning), and a [`RetryAfter`](crate::error::RetryAfter)
    /// longer than this is cut to it.
    pub fn max_hold(&self) -> Duration {
        self.max_delay() + Duration::from_secs(60)
    }
}

impl fmt::Display for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempts={}", self.attempts)?;
        let delays: Vec<String> = (1..self.attempts)
            .map(|n| humantime::format_duration(self.delay_before_retry(n)).to_string())
            .collect();
        write!(f, " delays=[{}]", delays.join(", "))?;
        if self.backoff.jitter > 0.0 {
            write!(f, " jitter={}", self.backoff.jitter)?;
        }
        if let Some(t) = self.timeout {
            write!(f, " timeout={}", humantime::format_duration(t))?;
        }
        write!(f, " dlt_strategy={:?}", self.dlt_strategy)?;
        if self.headers == HeaderProfile::Compact {
            write!(f, " headers=compact")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_delays_cap_at_max() {
        let p = RetryPolicy::new().attempts(6).exponential(
            Duration::from_secs(1),
            2.0,
            Duration::from_secs(5),
        );
        let d: Vec<u64> = (1..6)
            .map(|n| p.delay_before_retry(n).as_millis() as u64)
            .collect();
        assert_eq!(d, [1000, 2000, 4000, 5000, 5000]);
        assert_eq!(p.max_delay(), Duration::from_secs(5));
    }

    #[test]
    fn huge_exponents_saturate_at_max() {
        let p = RetryPolicy::new().attempts(10_000).exponential(
            Duration::from_secs(1),
            10.0,
            Duration::from_secs(60),
        );
        assert_eq!(p.delay_before_retry(9_999), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = RetryPolicy::new()
            .fixed(Duration::from_secs(2))
            .jitter(0.25);
        assert_eq!(p.jittered_delay(1, 0.0), Duration::from_millis(1500));
        assert_eq!(p.jittered_delay(1, 0.5), Duration::from_secs(2));
        assert!(p.jittered_delay(1, 0.999_999) <= Duration::from_millis(2500));
        for i in 0..1000 {
            let d = p.jittered_delay(1, f64::from(i) / 1000.0);
            assert!(d >= Duration::from_millis(1500) && d <= Duration::from_millis(2500));
        }
        assert_eq!(p.max_delay(), Duration::from_millis(2500));
    }

    #[test]
    fn per_attempt_overrides_win_and_repeat_the_last() {
        let p = RetryPolicy::new()
            .attempts(5)
            .delays([Duration::from_millis(100), Duration::from_secs(3)]);
        let d: Vec<u64> = (1..5)
            .map(|n| p.delay_before_retry(n).as_millis() as u64)
            .collect();
        assert_eq!(d, [100, 3000, 3000, 3000]);
    }

    #[test]
    fn spring_defaults() {
        let p = RetryPolicy::default();
        assert_eq!(p.attempts, 3);
        assert_eq!(p.backoff.delay, Duration::from_secs(1));
        assert_eq!(p.backoff.multiplier, 1.0);
        assert_eq!(p.backoff.max, Duration::from_secs(30));
        assert_eq!(p.dlt_strategy, DltStrategy::AlwaysRetryOnError);
        assert_eq!(p.topology("orders").retry_topics(), ["orders-retry"]);
        assert_eq!(p.topology("orders").dlt(), Some("orders-dlt"));
    }

    #[test]
    fn config_mistakes_name_the_field() {
        let cases = [
            (r#"{"attempts": 0}"#, "attempts"),
            (r#"{"backoff": {"delay": "5 sekunds"}}"#, "sekunds"),
            (r#"{"backoff": {"delay": "-1s"}}"#, "-1s"),
            (r#"{"backoff": {"multiplier": 0.5}}"#, "multiplier"),
            (r#"{"retries": 3}"#, "retries"),
        ];
        for (json, needle) in cases {
            let e = serde_json::from_str::<RetryPolicy>(json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{json}: {e}");
        }
        let e = RetryPolicy::new()
            .attempts(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry.attempts"), "{e}");
        let e = RetryPolicy::new()
            .exponential(Duration::from_secs(1), 0.5, Duration::from_secs(9))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry.backoff.multiplier"), "{e}");
        let e = RetryPolicy::new()
            .exponential(Duration::from_secs(10), 2.0, Duration::from_secs(1))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry.backoff.max"), "{e}");
    }

    #[test]
    fn serde_round_trips_with_humantime() {
        let p = RetryPolicy::new()
            .attempts(5)
            .exponential(Duration::from_millis(500), 3.0, Duration::from_secs(60))
            .timeout(Duration::from_secs(300))
            .jitter(0.1);
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.contains("\"500ms\"") && json.contains("\"5m\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<RetryPolicy>(&json).unwrap(), p);
    }
}
