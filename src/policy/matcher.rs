//! Matching errors by type anywhere in a `source()` chain.

use std::error::Error as StdError;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

type Test = fn(&(dyn StdError + 'static)) -> bool;

/// Matches an error type anywhere in a `source()` chain (Spring's `traversingCauses`).
///
/// Built from a type, it matches by downcast: `ErrorMatcher::of::<std::io::Error>()`. Read
/// from a config file, it is a name and matches an error whose type (or, for an enum, the
/// variant its `Debug` form starts with) has that name: `"TimeoutError"` matches
/// `my_app::TimeoutError`, `"Timeout"` matches `MyError::Timeout(..)`.
#[derive(Clone)]
pub struct ErrorMatcher {
    name: String,
    test: Option<Test>,
}

impl ErrorMatcher {
    /// Matches errors of type `E`.
    pub fn of<E: StdError + 'static>() -> Self {
        ErrorMatcher {
            name: std::any::type_name::<E>().to_owned(),
            test: Some(|e| e.is::<E>()),
        }
    }

    /// Matches errors by type or variant name (see the type's docs).
    pub fn named(name: impl Into<String>) -> Self {
        ErrorMatcher {
            name: name.into(),
            test: None,
        }
    }

    /// The name this matcher was made from.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn matches_one(&self, e: &(dyn StdError + 'static)) -> bool {
        match self.test {
            Some(test) => test(e),
            None => {
                let wanted = last_segment(&self.name);
                last_segment(&crate::headers::type_name_of(e)) == wanted
            }
        }
    }

    /// True when `err` or any error in its `source()` chain matches.
    pub fn matches(&self, err: &(dyn StdError + 'static)) -> bool {
        chain(err).any(|e| self.matches_one(e))
    }
}

fn last_segment(s: &str) -> &str {
    let s = s.split('<').next().unwrap_or(s);
    s.rsplit("::").next().unwrap_or(s)
}

/// `err` and its sources, outermost first.
pub(crate) fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| {
        let e: &'a (dyn StdError + 'static) = *e;
        e.source()
    })
}

impl PartialEq for ErrorMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl fmt::Debug for ErrorMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorMatcher({})", self.name)
    }
}

impl Serialize for ErrorMatcher {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for ErrorMatcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if name.trim().is_empty() {
            return Err(serde::de::Error::custom(
                "an error type name must not be empty",
            ));
        }
        Ok(ErrorMatcher::named(name))
    }
}
