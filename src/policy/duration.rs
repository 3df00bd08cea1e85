//! Serde helpers: humantime durations ("500ms", "2s", "1m") and checked numbers, so a bad
//! value is rejected while the config is read, with the offending text in the message.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

fn parse<E: serde::de::Error>(s: &str) -> Result<Duration, E> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        E::custom(format!(
            "invalid duration `{s}`: {e} (write e.g. \"500ms\", \"2s\", \"1m\")"
        ))
    })
}

/// Writes a duration in humantime form (`"1s 500ms"`); for `#[serde(with = "...")]`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Reads a humantime duration (`"500ms"`, `"2s"`, `"1m"`); a bad value is an error naming it.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s)
}

pub(super) mod option {
    use super::*;

    pub(in crate::policy) fn serialize<S: Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub(in crate::policy) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| parse(&s))
            .transpose()
    }
}

pub(super) mod list {
    use super::*;
    use serde::ser::SerializeSeq;

    pub(in crate::policy) fn serialize<S: Serializer>(
        d: &[Duration],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(d.len()))?;
        for x in d {
            seq.serialize_element(&humantime::format_duration(*x).to_string())?;
        }
        seq.end()
    }

    pub(in crate::policy) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| parse(s))
            .collect()
    }
}

/// A rule's refusal as a deserialisation error naming the key, so a config file says what
/// the builder and the macro say.
fn refused<E: serde::de::Error>(key: &str, checked: Result<(), String>) -> Result<(), E> {
    checked.map_err(|reason| E::custom(format!("{key} {reason}")))
}

pub(super) fn attempts<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    let n = u64::try_from(n).unwrap_or(0);
    refused("attempts", redrive_policy_rules::attempts(n))?;
    Ok(n as u32)
}

pub(super) fn multiplier<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let m = f64::deserialize(d)?;
    refused("backoff.multiplier", redrive_policy_rules::multiplier(m))?;
    Ok(m)
}

pub(super) fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let j = f64::deserialize(d)?;
    refused("backoff.jitter", redrive_policy_rules::jitter(j))?;
    Ok(j)
}
