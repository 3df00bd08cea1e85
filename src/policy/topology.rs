//! Retry and dead-letter topic names (docs/design.md, Topics; Spring's
//! `SuffixingRetryTopicNamesProviderFactory` with the `SINGLE_TOPIC` reuse of the max delay).

use std::fmt;
use std::time::Duration;

use super::retry::{DltStrategy, RetryPolicy, TopicSuffix};

/// One retry: where it waits and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The retry number, 1-based (retry 1 is the second attempt).
    pub retry: u32,
    /// The retry topic it waits in.
    pub topic: String,
    /// Its nominal delay.
    pub delay: Duration,
}

/// The topics of one main topic under a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    main: String,
    retry_topics: Vec<String>,
    hops: Vec<Hop>,
    dlt: Option<String>,
}

impl Topology {
    pub(crate) fn new(p: &RetryPolicy, main: &str) -> Self {
        let retries = p.attempts.saturating_sub(1);
        let delays: Vec<Duration> = (1..=retries).map(|n| p.delay_before_retry(n)).collect();
        let single = delays.windows(2).all(|w| w[0] == w[1]);
        let mut retry_topics: Vec<String> = Vec::new();
        let mut distinct: Vec<Duration> = Vec::new();
        let mut hops = Vec::with_capacity(delays.len());
        for (i, d) in delays.iter().enumerate() {
            let idx = match distinct.iter().position(|x| x == d) {
                Some(idx) => idx,
                None => {
                    distinct.push(*d);
                    let name = if single {
                        format!("{main}{}", p.retry_topic_suffix)
                    } else {
                        match p.suffix {
                            TopicSuffix::Delay => {
                                format!("{main}{}-{}", p.retry_topic_suffix, d.as_millis())
                            }
                            TopicSuffix::Index => {
                                format!("{main}{}-{}", p.retry_topic_suffix, distinct.len() - 1)
                            }
                        }
                    };
                    retry_topics.push(name);
                    distinct.len() - 1
                }
            };
            hops.push(Hop {
                retry: i as u32 + 1,
                topic: retry_topics[idx].clone(),
                delay: *d,
            });
        }
        let dlt =
            (p.dlt_strategy != DltStrategy::NoDlt).then(|| format!("{main}{}", p.dlt_topic_suffix));
        Topology {
            main: main.to_owned(),
            retry_topics,
            hops,
            dlt,
        }
    }

    /// The main topic.
    pub fn main(&self) -> &str {
        &self.main
    }

    /// The distinct retry topics, in the order records go through them.
    pub fn retry_topics(&self) -> &[String] {
        &self.retry_topics
    }

    /// One entry per retry.
    pub fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// The hop of retry `n` (1-based), if the policy has that many retries.
    pub fn hop(&self, n: u32) -> Option<&Hop> {
        self.hops.get((n as usize).checked_sub(1)?)
    }

    /// The dead-letter topic, unless the strategy is `no_dlt`.
    pub fn dlt(&self) -> Option<&str> {
        self.dlt.as_deref()
    }

    /// Every topic redrive writes to for this main topic: retry topics, then the DLT.
    pub fn derived_topics(&self) -> impl Iterator<Item = &str> {
        self.retry_topics
            .iter()
            .map(String::as_str)
            .chain(self.dlt.as_deref())
    }
}

/// One line per attempt, e.g. `attempt 2: orders-retry-1000 (after 1s)`.
impl RetryPolicy {
    /// The retry and dead-letter topics of `main_topic` under this policy.
    pub fn topology(&self, main_topic: &str) -> Topology {
        Topology::new(self, main_topic)
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "attempt 1: {}", self.main)?;
        for h in &self.hops {
            writeln!(
                f,
                "attempt {}: {} (after {})",
                h.retry + 1,
                h.topic,
                humantime::format_duration(h.delay)
            )?;
        }
        match &self.dlt {
            Some(d) => writeln!(f, "dead letters: {d}"),
            None => writeln!(f, "dead letters: dropped (no_dlt)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn design_example_attempts_4_exponential() {
        let p = RetryPolicy::new()
            .attempts(4)
            .exponential(secs(1), 2.0, secs(10));
        let t = p.topology("orders");
        assert_eq!(
            t.retry_topics(),
            [
                "orders-retry-1000",
                "orders-retry-2000",
                "orders-retry-4000"
            ]
        );
        assert_eq!(t.dlt(), Some("orders-dlt"));
    }

    /// attempts = 5, 1 s x2, max 5 s: one topic per delay up to the max, then the max reused.
    #[test]
    fn attempts_5_one_second_doubling_max_5s() {
        let p = RetryPolicy::new()
            .attempts(5)
            .exponential(secs(1), 2.0, secs(5));
        let t = p.topology("orders");
        println!("{t}");
        assert_eq!(
            t.retry_topics(),
            [
                "orders-retry-1000",
                "orders-retry-2000",
                "orders-retry-4000",
                "orders-retry-5000"
            ]
        );
        assert_eq!(t.dlt(), Some("orders-dlt"));
        assert_eq!(
            t.to_string(),
            "attempt 1: orders\nattempt 2: orders-retry-1000 (after 1s)\nattempt 3: orders-retry-2000 (after 2s)\nattempt 4: orders-retry-4000 (after 4s)\nattempt 5: orders-retry-5000 (after 5s)\ndead letters: orders-dlt\n"
        );
    }

    #[test]
    fn the_max_delay_topic_is_reused() {
        let p = RetryPolicy::new()
            .attempts(8)
            .exponential(secs(1), 2.0, secs(5));
        let t = p.topology("orders");
        assert_eq!(t.retry_topics().len(), 4);
        let hops: Vec<&str> = t.hops().iter().map(|h| h.topic.as_str()).collect();
        assert_eq!(
            hops,
            [
                "orders-retry-1000",
                "orders-retry-2000",
                "orders-retry-4000",
                "orders-retry-5000",
                "orders-retry-5000",
                "orders-retry-5000",
                "orders-retry-5000"
            ]
        );
    }

    #[test]
    fn fixed_back_off_uses_one_topic() {
        let t = RetryPolicy::new()
            .attempts(5)
            .fixed(secs(3))
            .topology("orders");
        assert_eq!(t.retry_topics(), ["orders-retry"]);
        assert_eq!(t.hops().len(), 4);
    }

    #[test]
    fn index_suffixes() {
        let t = RetryPolicy::new()
            .attempts(4)
            .exponential(secs(1), 2.0, secs(10))
            .suffix(TopicSuffix::Index)
            .topology("orders");
        assert_eq!(
            t.retry_topics(),
            ["orders-retry-0", "orders-retry-1", "orders-retry-2"]
        );
    }

    #[test]
    fn one_attempt_goes_straight_to_the_dlt_and_no_dlt_has_none() {
        let t = RetryPolicy::new().attempts(1).topology("orders");
        assert!(t.retry_topics().is_empty());
        assert_eq!(t.dlt(), Some("orders-dlt"));
        let t = RetryPolicy::new()
            .dlt_strategy(DltStrategy::NoDlt)
            .topology("orders");
        assert_eq!(t.dlt(), None);
        assert_eq!(t.derived_topics().collect::<Vec<_>>(), ["orders-retry"]);
    }

    #[test]
    fn custom_suffixes() {
        let mut p = RetryPolicy::new()
            .attempts(3)
            .exponential(secs(1), 2.0, secs(10));
        p.retry_topic_suffix = ".retry".into();
        p.dlt_topic_suffix = ".DLT".into();
        let t = p.topology("orders");
        assert_eq!(t.retry_topics(), ["orders.retry-1000", "orders.retry-2000"]);
        assert_eq!(t.dlt(), Some("orders.DLT"));
    }
}
