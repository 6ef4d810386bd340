//! # command-coordinator
//!
//! Long-running commands that survive anything: each command is persisted in
//! PostgreSQL (`command_entities`, the table of oVirt's CommandCoordinator),
//! and is rebuilt from its row after the host process restarts.
//!
//! This crate is what a host depends on. It holds the PostgreSQL store
//! ([`PgStore`]), the migrations ([`migrate`]), the configuration
//! ([`DatabaseConfig`]) and re-exports the model of the actor runtime
//! (`command-coordinator-actors`).
//!
//! ```no_run
//! use command_coordinator::{CommandEntity, CommandId, CommandStore, DatabaseConfig, JsonPayload, PgStore, migrate};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = DatabaseConfig::from_url("postgres://app@localhost/app")?;
//! let pool = config.create_pool()?;
//! migrate(&pool, config.schema()).await?;
//! let store = PgStore::new(pool, config.schema().clone());
//!
//! let root = CommandEntity::new(CommandId::new(), 1, JsonPayload::encode(&"snapshot-7")?);
//! store.save_or_update(&root).await?;
//! assert_eq!(store.get(root.id).await?.map(|e| e.status), Some(root.status));
//! # Ok(()) }
//! ```

pub mod config;
#[cfg(feature = "embedded-postgres")]
pub mod embedded;
pub mod migrate;
mod pg_hosts;
mod pg_notify;
pub mod pg_store;
pub mod pg_transaction;
pub mod submit_in;
#[cfg(feature = "tls")]
pub mod tls;

pub use command_coordinator_actors as actors;
pub use command_coordinator_actors::{
    BadRow, CancelOutcome, ChildExecution, ChildView, CleanupConfig, Command, CommandContext,
    CommandEntity, CommandError, CommandId, CommandStatus, CommandStore, Coordinator,
    CoordinatorBuilder, CoordinatorError, Cursor, Expired, HostId, HostRecord, HostState,
    InterruptedExecute, JsonPayload, ListFilter, LoadedRows, OnDeclaredDead, OnRootEnd, Outcome,
    Page, Placement, PollOutcome, RemovedBatch, RetryPolicy, RuntimeConfig, StartError, StoreError,
    StoreErrorKind, StoreOp, SubmitOptions, Submitted,
};
pub use config::{ConfigError, DatabaseConfig, SchemaName};
pub use migrate::{MigrationReport, migrate};
pub use pg_store::{PgStore, error_chain};
pub use pg_transaction::PgTransaction;
pub use submit_in::SubmitInTransaction;

/// The pool and driver crates this library is built on, re-exported so that a
/// host names the same versions (`command_coordinator::deadpool_postgres::Pool`).
pub use deadpool_postgres;
pub use tokio_postgres;
