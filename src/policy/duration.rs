//! Serde helpers: humantime durations ("500ms", "2s", "1m") and checked numbers, so a bad
//! value is rejected while the config is read, with the offending text in the message.

use std::time::Duration;

use serde::de::Error as _;
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

pub(super) fn attempts<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    if n < 1 {
        return Err(D::Error::custom(format!(
            "attempts must be at least 1 (it counts the first delivery), got {n}"
        )));
    }
    u32::try_from(n).map_err(|_| D::Error::custom(format!("attempts {n} is too large")))
}

pub(super) fn multiplier<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let m = f64::deserialize(d)?;
    if !(m >= 1.0 && m.is_finite()) {
        return Err(D::Error::custom(format!(
            "backoff multiplier must be a finite number >= 1.0, got {m}"
        )));
    }
    Ok(m)
}

pub(super) fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let j = f64::deserialize(d)?;
    if !(0.0..1.0).contains(&j) {
        return Err(D::Error::custom(format!(
            "backoff jitter must be in [0, 1), got {j}"
        )));
    }
    Ok(j)
}
