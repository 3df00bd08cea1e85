//! The rules every retry-policy value obeys, in one place: `RetryPolicy::validate` (the
//! builder and the sidecar's config file) and `#[retryable_topic]` (at compile time) check
//! the same rules and say the same thing. Each function returns why a value is refused; the
//! caller names the key (`retry.attempts` in a config, `attempts` in the attribute).
//!
//! ```
//! assert!(redrive_policy_rules::attempts(3).is_ok());
//! assert_eq!(
//!     redrive_policy_rules::attempts(0).unwrap_err(),
//!     "must be at least 1 (it counts the first delivery)"
//! );
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::time::Duration;

/// `attempts`: deliveries in total, the first included.
pub fn attempts(n: u64) -> Result<(), String> {
    match n {
        0 => Err("must be at least 1 (it counts the first delivery)".into()),
        n if n > u64::from(u32::MAX) => Err(format!("must be at most {}, got {n}", u32::MAX)),
        _ => Ok(()),
    }
}

/// `backoff.multiplier`: each further retry waits this many times longer.
pub fn multiplier(m: f64) -> Result<(), String> {
    if m >= 1.0 && m.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "must be a finite number >= 1.0 (1.0 is a fixed back-off), got {m}"
        ))
    }
}

/// `backoff.jitter`: the random spread of each due time, as a fraction of the delay.
pub fn jitter(j: f64) -> Result<(), String> {
    if (0.0..1.0).contains(&j) {
        Ok(())
    } else {
        Err(format!(
            "must be a fraction of the delay in [0, 1), got {j}"
        ))
    }
}

/// `backoff.max` against `backoff.delay`: no delay may exceed the maximum.
pub fn max_delay(delay: Duration, max: Duration) -> Result<(), String> {
    if max >= delay {
        Ok(())
    } else {
        Err(format!(
            "{} is shorter than backoff.delay {}",
            format_duration(max),
            format_duration(delay)
        ))
    }
}

/// `partitions` of the retry and dead-letter topics.
pub fn partitions(n: u64) -> Result<(), String> {
    if n == 0 {
        Err("must be at least 1".into())
    } else {
        Ok(())
    }
}

/// `timeout`: the total time a record may take, counted from its first delivery.
pub fn timeout(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        Err("must be longer than 0".into())
    } else {
        Ok(())
    }
}

/// `max_header_text`: the bytes error texts are cut to.
pub fn max_header_text(n: usize) -> Result<(), String> {
    if n < 64 {
        Err("must be at least 64 bytes".into())
    } else {
        Ok(())
    }
}

/// `retry_topic_suffix` and `dlt_topic_suffix`.
pub fn suffixes(retry: &str, dlt: &str) -> Result<(), (&'static str, String)> {
    if retry.is_empty() || retry == dlt {
        return Err((
            "retry_topic_suffix",
            "must be non-empty and differ from dlt_topic_suffix".into(),
        ));
    }
    if dlt.is_empty() {
        return Err(("dlt_topic_suffix", "must be non-empty".into()));
    }
    Ok(())
}

/// `500ms`, `1s`, `1m 30s`: how durations are written in messages.
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let (m, s, ms) = (ms / 60_000, ms / 1000 % 60, ms % 1000);
    let parts: Vec<String> = [(m, "m"), (s, "s"), (ms, "ms")]
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, u)| format!("{v}{u}"))
        .collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_takes_its_edge_and_refuses_past_it() {
        assert!(attempts(1).is_ok() && attempts(0).is_err());
        assert!(multiplier(1.0).is_ok() && multiplier(0.99).is_err());
        assert!(multiplier(f64::INFINITY).is_err() && multiplier(f64::NAN).is_err());
        assert!(jitter(0.0).is_ok() && jitter(0.99).is_ok() && jitter(1.0).is_err());
        let s = Duration::from_secs(1);
        assert!(max_delay(s, s).is_ok());
        assert_eq!(
            max_delay(s * 2, Duration::from_millis(1500)).unwrap_err(),
            "1s 500ms is shorter than backoff.delay 2s"
        );
        assert!(partitions(1).is_ok() && partitions(0).is_err());
        assert!(timeout(s).is_ok() && timeout(Duration::ZERO).is_err());
        assert!(max_header_text(64).is_ok() && max_header_text(63).is_err());
        assert!(suffixes("-retry", "-dlt").is_ok());
        assert_eq!(suffixes("-x", "-x").unwrap_err().0, "retry_topic_suffix");
        assert_eq!(suffixes("-retry", "").unwrap_err().0, "dlt_topic_suffix");
    }
}
