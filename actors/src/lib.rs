//! The actor runtime of command-coordinator.
//!
//! Every persisted command runs as a supervised [`actix`] actor
//! (`CommandActor`) that receives `Poll`, `ChildCompleted` and `Cancel`
//! messages and performs what its `Lifecycle`, a pure state machine, decides;
//! a [`Coordinator`] spawns them, routes completions from children
//! to parents and rebuilds every unfinished command from the database at
//! start-up; a cleanup actor expires old ended hierarchies. All writes go
//! through one group-committing writer (see [`writer`]).
//!
//! Hosts normally use this through the `command-coordinator` crate, which
//! re-exports it and adds the PostgreSQL store.

mod cleanup;
pub mod command;
mod command_actor;
pub mod config;
pub mod coordinator;
mod fence;
mod heartbeat;
pub mod hosts;
mod lifecycle;
mod membership;
mod messages;
pub mod metrics;
pub mod model;
mod panic;
mod poll_timers;
pub mod query;
mod registry;
pub mod retry;
pub mod store;
pub mod submit;
pub mod writer;

pub use writer::WriterConfig;

pub use command::{
    ChildExecution, ChildView, Command, CommandContext, CommandError, InterruptedExecute,
    PollOutcome,
};
pub use config::{CleanupConfig, OnDeclaredDead, OnRootEnd, Placement, RuntimeConfig};
pub use coordinator::{Coordinator, CoordinatorBuilder, CoordinatorError, Outcome, StartError};
pub use hosts::{HostId, HostInfo, HostRecord, HostState, OwnedRows};
pub use model::{CommandEntity, CommandId, CommandStatus, JsonPayload, UnknownStatus};
pub use query::{Cursor, ListFilter, Page};
pub use retry::RetryPolicy;
pub use store::{
    Applied, BadRow, BoxError, CancelOutcome, CommandStore, CommandUpdate, EndTransaction, Expired,
    LoadedRows, LocalStoreFuture, Notice, RemovedBatch, RetryUpdate, StoreError, StoreErrorKind,
    StoreFuture, StoreOp, Transition,
};
pub use submit::{SubmitOptions, Submitted};
