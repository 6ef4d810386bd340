//! The actor runtime of command-coordinator.
//!
//! For now it holds the command model and the store interface the runtime is
//! built on; hosts use it through the `command-coordinator` crate, which
//! re-exports everything here.

pub mod model;
pub mod store;

pub use model::{CommandEntity, CommandId, CommandStatus, JsonPayload, UnknownStatus};
pub use store::{
    BadRow, BoxError, CommandStore, LoadedRows, RemovedBatch, StoreError, StoreErrorKind,
    StoreFuture, StoreOp,
};
