//! The error of a failed output.

use crate::error::BoxError;

/// Publishing an output record failed.
#[derive(Debug, thiserror::Error)]
#[error("publishing an output record to `{topic}` failed: {source}")]
pub struct OutputError {
    /// The output's topic.
    pub topic: String,
    /// The publisher's error.
    #[source]
    pub source: BoxError,
}
