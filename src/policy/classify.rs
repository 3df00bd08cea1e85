//! Which errors are retried (docs/design.md, Classification).

use std::error::Error as StdError;

use super::matcher::chain;
use super::retry::RetryPolicy;
use crate::error::{DecodeError, Fatal};

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
    use crate::policy::ErrorMatcher;
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
