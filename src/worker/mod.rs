//! The worker: a consumer group member driving routes.

mod builder;
mod handle;
mod plan;
pub(crate) mod route;
mod run;
mod signal;
mod topics;
mod validate;

pub use builder::WorkerBuilder;
pub use handle::{BlockReason, BlockedPartition, WorkerHandle};
pub use run::Worker;
pub use signal::shutdown_signal;
