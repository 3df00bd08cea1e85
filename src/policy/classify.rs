//! Which errors are retried (DESIGN §6).

use std::error::Error as StdError;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::RetryPolicy;
use crate::error::{DecodeError, Fatal};

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

/// Why an error is not retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatalReason {
    /// The payload could not be decoded ([`DecodeError`] in the chain).
    Decode,
    /// Marked [`Fatal`], matched by `exclude`, or not matched by a non-empty `include`.
    Fatal,
}

/// The verdict on a handler error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification {
    /// Try again later, through a retry topic.
    Retryable,
    /// Straight to the dead-letter topic.
    Fatal(FatalReason),
}

impl RetryPolicy {
    /// Classifies a handler error under this policy.
    pub fn classify(&self, err: &(dyn StdError + 'static)) -> Classification {
        if chain(err).any(|e| e.is::<DecodeError>()) {
            return Classification::Fatal(FatalReason::Decode);
        }
        if chain(err).any(|e| e.is::<Fatal>()) || self.exclude.iter().any(|m| m.matches(err)) {
            return Classification::Fatal(FatalReason::Fatal);
        }
        if !self.include.is_empty() && !self.include.iter().any(|m| m.matches(err)) {
            return Classification::Fatal(FatalReason::Fatal);
        }
        Classification::Retryable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;

    #[derive(Debug, thiserror::Error)]
    enum PaymentError {
        #[error("gateway timed out")]
        Timeout,
        #[error("card declined")]
        Declined,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("handling order failed")]
    struct HandlerFailed(#[source] PaymentError);

    fn boxed(e: impl StdError + Send + Sync + 'static) -> BoxError {
        Box::new(e)
    }

    #[test]
    fn everything_is_retryable_by_default_except_decode_errors() {
        let p = RetryPolicy::new();
        assert_eq!(
            p.classify(&*boxed(PaymentError::Timeout)),
            Classification::Retryable
        );
        let decode = DecodeError::new("Order", "expected `{` at line 1");
        assert_eq!(
            p.classify(&*boxed(decode)),
            Classification::Fatal(FatalReason::Decode)
        );
        assert_eq!(
            p.classify(&*boxed(Fatal::new("nope"))),
            Classification::Fatal(FatalReason::Fatal)
        );
    }

    #[test]
    fn exclude_matches_through_the_source_chain() {
        let p = RetryPolicy::new().exclude(ErrorMatcher::of::<PaymentError>());
        let e = boxed(HandlerFailed(PaymentError::Declined));
        assert_eq!(p.classify(&*e), Classification::Fatal(FatalReason::Fatal));
        let io = boxed(std::io::Error::other("disk"));
        assert_eq!(p.classify(&*io), Classification::Retryable);
    }

    #[test]
    fn include_limits_retries_to_listed_types() {
        let p = RetryPolicy::new().include(ErrorMatcher::of::<std::io::Error>());
        assert_eq!(
            p.classify(&*boxed(std::io::Error::other("x"))),
            Classification::Retryable
        );
        assert_eq!(
            p.classify(&*boxed(PaymentError::Timeout)),
            Classification::Fatal(FatalReason::Fatal)
        );
    }

    #[test]
    fn names_from_config_match_types_and_variants() {
        let p = RetryPolicy::new().exclude(ErrorMatcher::named("Declined"));
        assert_eq!(
            p.classify(&*boxed(HandlerFailed(PaymentError::Declined))),
            Classification::Fatal(FatalReason::Fatal)
        );
        assert_eq!(
            p.classify(&*boxed(HandlerFailed(PaymentError::Timeout))),
            Classification::Retryable
        );
        let p = RetryPolicy::new().exclude(ErrorMatcher::named("my_app::HandlerFailed"));
        assert_eq!(
            p.classify(&*boxed(HandlerFailed(PaymentError::Timeout))),
            Classification::Fatal(FatalReason::Fatal)
        );
    }
}
