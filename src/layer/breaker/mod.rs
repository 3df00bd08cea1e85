//! A circuit breaker in front of a route's handler: an outage of what the handler depends on
//! pauses the route instead of sending every record down the retry chain to the dead-letter
//! topic (docs/design.md, Circuit breaker).
//!
//! It sits inside the retry-topic layer. An outage failure (an
//! [`Unavailable`](crate::Unavailable), or what the settings' predicate says) while the
//! breaker stays closed reaches the retry layer as usual; one that opens the breaker, or
//! comes while it is open, is held: the record is tried again once the breaker probes, and
//! its attempt is not counted. A poison record (an ordinary failure) never counts.
//!
//! ```
//! use std::time::Duration;
//! use redrive::layer::breaker::{CircuitBreakerLayer, CircuitState};
//! use redrive::policy::CircuitBreaker;
//!
//! let layer = CircuitBreakerLayer::new(CircuitBreaker::new().consecutive_failures(3));
//! // The first record probes; its answer closes the breaker.
//! assert_eq!(layer.state(), CircuitState::HalfOpen);
//! ```

mod layer;
mod state;

pub use layer::{CircuitBreakerLayer, CircuitBreakerService};
pub use state::CircuitState;

pub(crate) use state::Breaker;
