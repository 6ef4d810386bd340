//! The store interface: how the runtime persists and reloads commands.
//!
//! This is the seed's `CommandCRUDOperations` and `CommandEntityDao` as one async
//! trait. The PostgreSQL implementation lives in the `command-coordinator` crate
//! (`PgStore`); the runtime only sees this trait, which keeps the actor code free
//! of SQL and lets pure state logic be unit-tested without a database.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};

use crate::hosts::{HostId, HostInfo, HostRecord, HostState, OwnedRows};
use crate::model::{CommandEntity, CommandId, CommandStatus, JsonPayload};

/// The future every store operation returns.
///
/// Boxed so that the trait can be used as `dyn CommandStore`; the allocation is
/// negligible next to a database round trip.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store future that stays on the actor's thread (its output may hold `Rc`s).
pub type LocalStoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + 'a>>;

/// A boxed error from the layer below (driver, pool), kept as the error's source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Which store operation failed: part of every [`StoreError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp {
    Connect,
    Migrate,
    SaveOrUpdate,
    Get,
    GetStatus,
    ChildIds,
    Hierarchy,
    HasCommandsWithRoot,
    CommandsWithCallbackEnabled,
    UpdateStatus,
    UpdateExecuted,
    UpdateNotified,
    UpdateReturnValue,
    Remove,
    RemoveHierarchy,
    RemoveBefore,
    Children,
    Apply,
    Cancel,
    Hosts,
    Adopt,
    Submit,
}

impl StoreOp {
    /// The operation's name as it appears in error messages and logs.
    pub const fn name(self) -> &'static str {
        match self {
            StoreOp::Connect => "connect",
            StoreOp::Migrate => "migrate",
            StoreOp::SaveOrUpdate => "save_or_update",
            StoreOp::Get => "get",
            StoreOp::GetStatus => "get_status",
            StoreOp::ChildIds => "child_ids",
            StoreOp::Hierarchy => "hierarchy",
            StoreOp::HasCommandsWithRoot => "has_commands_with_root",
            StoreOp::CommandsWithCallbackEnabled => "commands_with_callback_enabled",
            StoreOp::UpdateStatus => "update_status",
            StoreOp::Submit => "submit",
            StoreOp::UpdateExecuted => "update_executed",
            StoreOp::UpdateNotified => "update_notified",
            StoreOp::UpdateReturnValue => "update_return_value",
            StoreOp::Remove => "remove",
            StoreOp::RemoveHierarchy => "remove_hierarchy",
            StoreOp::RemoveBefore => "remove_before",
            StoreOp::Children => "children",
            StoreOp::Apply => "apply",
            StoreOp::Cancel => "cancel",
            StoreOp::Hosts => "hosts",
            StoreOp::Adopt => "adopt",
        }
    }
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong, without the where (that is in [`StoreError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The database could not be reached, or the connection broke. Worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The database answered with an error (constraint, permission, syntax...).
    #[error("database error: {0}")]
    Database(#[source] BoxError),
    /// A row exists but cannot be read as a [`CommandEntity`].
    #[error("unreadable row: {0}")]
    BadRow(String),
    /// A value could not be serialized for storage.
    #[error("cannot encode value: {0}")]
    Encode(#[source] BoxError),
    /// This host may not write: its lease ran out, it was declared dead,
    /// another host owns the command's hierarchy now, or it shut down. The
    /// command stops acting; it is rebuilt from its row by whichever host
    /// owns it.
    #[error("this host may not write: {0}")]
    Fenced(String),
}

/// The one error type of the store: which operation, on which command, and why.
///
/// ```
/// use command_coordinator_actors::{CommandId, StoreError, StoreErrorKind, StoreOp};
/// let id = CommandId::new();
/// let err = StoreError::new(StoreOp::Get, Some(id), StoreErrorKind::BadRow("status is NULL".into()));
/// assert_eq!(err.to_string(), format!("get of command {id} failed: unreadable row: status is NULL"));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{op} of {} failed: {kind}", DisplayTarget(.command_id))]
pub struct StoreError {
    /// The operation that failed.
    pub op: StoreOp,
    /// The command it was about, when it was about one.
    pub command_id: Option<CommandId>,
    /// The cause.
    #[source]
    pub kind: StoreErrorKind,
}

struct DisplayTarget<'a>(&'a Option<CommandId>);

impl fmt::Display for DisplayTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "command {id}"),
            None => f.write_str("commands"),
        }
    }
}

impl StoreError {
    pub fn new(op: StoreOp, command_id: Option<CommandId>, kind: StoreErrorKind) -> Self {
        Self {
            op,
            command_id,
            kind,
        }
    }

    /// True when retrying later may succeed (the database was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Unavailable(_))
    }

    /// True when this host may not write any more (see
    /// [`StoreErrorKind::Fenced`]): the caller stops acting, it does not retry.
    pub fn is_fenced(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Fenced(_))
    }
}

/// A row that could not be read, reported by id so that it can be found and fixed
/// while every other row is still served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    pub command_id: CommandId,
    pub reason: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command {}: {}", self.command_id, self.reason)
    }
}

/// The result of a query over many rows: the readable ones and the others.
///
/// One corrupt row must not hide the rest (in oVirt one undeserialisable row broke
/// the whole cache load), so listing never fails because of a row's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadedRows {
    pub entities: Vec<CommandEntity>,
    pub bad_rows: Vec<BadRow>,
}

/// The answer to a cancellation request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No command has this id.
    NotFound,
    /// The command had already ended: nothing to cancel.
    AlreadyEnded(CommandStatus),
    /// Cancellation was requested for this many commands (the command and its
    /// descendants that had not ended).
    Requested { commands: u64 },
}

/// What cleanup would remove now (see [`CommandStore::expired`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub hierarchies: u64,
    pub rows: u64,
}

/// What one bounded cleanup batch removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemovedBatch {
    /// Hierarchies removed (their roots).
    pub roots: usize,
    /// Every removed row, roots and descendants.
    pub removed: Vec<CommandId>,
}

/// One change to `command_entities` made by the runtime, applied by the
/// writer (see [`crate::writer`]) together with others in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// A new command (normally `NOT_STARTED`). Inserting an id that exists
    /// changes nothing, which makes a retried batch harmless.
    Insert(Box<CommandEntity>),
    /// A change to an existing command.
    Update(CommandUpdate),
}

impl Transition {
    pub fn command_id(&self) -> CommandId {
        match self {
            Transition::Insert(e) => e.id,
            Transition::Update(u) => u.id,
        }
    }
}

/// The columns a runtime transition sets; `None` leaves a column as it is.
/// `updated_at` is always set, and `ended_at` when the status becomes `ENDED_*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandUpdate {
    pub id: CommandId,
    pub status: Option<CommandStatus>,
    pub executed: Option<bool>,
    pub notified: Option<bool>,
    /// The command's current state, re-serialized (`command_parameters`).
    pub parameters: Option<JsonPayload>,
    pub return_value: Option<JsonPayload>,
    pub failure_reason: Option<String>,
    /// The command's hierarchy (`coalesce(root_command_id, command_id)`),
    /// set where the update leaves the actor: the store finds the row by
    /// (hierarchy, id), so that a sharded deployment can route every update
    /// to the shard of its hierarchy (docs/scaling.md). `None`: by id alone.
    pub root: Option<CommandId>,
    /// The retry columns, for the rare update that changes them (boxed:
    /// every queued update carries the pointer, few carry these).
    pub retry: Option<Box<RetryUpdate>>,
}

/// The retry columns of a [`CommandUpdate`]: after a transient error of
/// `execute` or `poll`, or once the step succeeds again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryUpdate {
    /// `failed_attempts`: transient failures in a row of the current step.
    pub failed_attempts: i32,
    /// `last_error`: the last transient failure's message (`None` leaves it).
    pub last_error: Option<String>,
    /// `not_before`: the next step waits until then (`None` leaves it).
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
}

impl CommandUpdate {
    pub fn new(id: CommandId) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    /// Folds a later update of the same command into this one.
    pub fn merge(&mut self, later: CommandUpdate) {
        debug_assert_eq!(self.id, later.id);
        self.status = later.status.or(self.status);
        self.executed = later.executed.or(self.executed);
        self.notified = later.notified.or(self.notified);
        self.parameters = later.parameters.or(self.parameters.take());
        self.return_value = later.return_value.or(self.return_value.take());
        self.failure_reason = later.failure_reason.or(self.failure_reason.take());
        self.root = later.root.or(self.root);
        self.retry = match (self.retry.take(), later.retry) {
            (Some(earlier), Some(mut later)) => {
                later.last_error = later.last_error.or(earlier.last_error);
                later.not_before = later.not_before.or(earlier.not_before);
                Some(later)
            }
            (earlier, later) => later.or(earlier),
        };
    }
}

/// A database transaction an end method writes its own rows through
/// ([`crate::CommandContext::transaction`]). The runtime commits the command's
/// end (`ENDED_*` and `callback_notified`) in the same transaction, so however
/// often the process dies, the end method's database effects happen once.
pub trait EndTransaction {
    /// The store's concrete transaction type, for the context to downcast.
    fn as_any_rc(self: std::rc::Rc<Self>) -> std::rc::Rc<dyn std::any::Any>;

    /// Applies `update` (the command's end) in this transaction and commits.
    fn commit(&self, update: CommandUpdate) -> LocalStoreFuture<'_, ()>;

    /// Rolls back everything written through this transaction.
    fn rollback(&self) -> LocalStoreFuture<'_, ()>;

    /// True when the connection under the transaction is gone (the database
    /// went away): a failure of the end method is then the database's, not
    /// the end method's, and is retried without counting an attempt.
    fn is_broken(&self) -> bool {
        false
    }
}

/// A notice between hosts (see [`CommandStore::subscribe`]): it only makes
/// things prompt; polling finds the same a moment later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A cancellation was requested: the hosts look at once.
    Cancel,
    /// A host left: its hierarchies are there to adopt.
    Adopt,
    /// A host waits for this command: its owner says when it ended.
    Waited(CommandId),
    /// This command ended (for hosts waiting for it).
    Ended(CommandId),
    /// A new hierarchy was placed on this host: it claims it.
    Offered(HostId),
    /// The listener (re)connected: notices may have been missed meanwhile.
    Resubscribed,
}

/// What [`CommandStore::apply`] did with a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Commands of the batch whose transition was not applied because this
    /// host may not write them (it is not alive, or another host owns the
    /// hierarchy now).
    pub fenced: Vec<CommandId>,
    /// Inserts not made because a command of the same type holds their
    /// idempotency key: (the insert's id, the holder's id).
    pub duplicates: Vec<(CommandId, CommandId)>,
}

/// Persistence of commands: the seed's CRUD operations and DAO in one interface.
///
/// Every method names itself and the command in its [`StoreError`]. A missing
/// row is `None` / `false`, never an error.
pub trait CommandStore: Send + Sync + 'static {
    /// Inserts the command, or updates every column but `created_at` if it exists.
    fn save_or_update<'a>(&'a self, entity: &'a CommandEntity) -> StoreFuture<'a, ()>;

    /// The command with this id, if there is one.
    fn get(&self, id: CommandId) -> StoreFuture<'_, Option<CommandEntity>>;

    /// Only the status of the command, if it exists.
    fn get_status(&self, id: CommandId) -> StoreFuture<'_, Option<CommandStatus>>;

    /// The ids of the commands whose parent is `parent`, oldest first.
    fn child_ids(&self, parent: CommandId) -> StoreFuture<'_, Vec<CommandId>>;

    /// Every command of the hierarchy rooted at `root`, the root included.
    fn hierarchy(&self, root: CommandId) -> StoreFuture<'_, LoadedRows>;

    /// Whether any command has `root` as its root.
    fn has_commands_with_root(&self, root: CommandId) -> StoreFuture<'_, bool>;

    /// Commands the runtime manages whose end has not been delivered yet: what a
    /// restart must pick up.
    fn commands_with_callback_enabled(&self) -> StoreFuture<'_, LoadedRows>;

    /// Sets the status; sets `ended_at` when the status is an `ENDED_*` one.
    /// False when there is no such command.
    fn update_status(&self, id: CommandId, status: CommandStatus) -> StoreFuture<'_, bool>;

    /// Records that `execute` ran to completion.
    fn update_executed(&self, id: CommandId) -> StoreFuture<'_, bool>;

    /// Records that the end action ran and its outcome was delivered.
    fn update_notified(&self, id: CommandId) -> StoreFuture<'_, bool>;

    /// Stores (or clears) the command's return value.
    fn update_return_value<'a>(
        &'a self,
        id: CommandId,
        value: Option<&'a JsonPayload>,
    ) -> StoreFuture<'a, bool>;

    /// Removes one command. True when it existed.
    fn remove(&self, id: CommandId) -> StoreFuture<'_, bool>;

    /// Removes `root` and every descendant in one transaction; returns how many rows.
    fn remove_hierarchy(&self, root: CommandId) -> StoreFuture<'_, u64>;

    /// The children of `parent` as entities, oldest first.
    fn children(&self, parent: CommandId) -> StoreFuture<'_, LoadedRows>;

    /// Marks `id` and every descendant not ended as to be cancelled. Hosts pick
    /// the request up (see [`CommandStore::cancel_requested`]).
    fn request_cancel(&self, id: CommandId) -> StoreFuture<'_, CancelOutcome>;

    /// Commands not ended whose cancellation was requested.
    fn cancel_requested(&self) -> StoreFuture<'_, Vec<CommandId>>;

    /// What [`CommandStore::remove_before_batch`] would remove for `cutoff`,
    /// without removing anything.
    fn expired(&self, cutoff: DateTime<Utc>) -> StoreFuture<'_, Expired>;

    /// The children of every command that [`CommandStore::commands_with_callback_enabled`]
    /// returns, oldest first: what a restart hands the rebuilt parents, in one
    /// query instead of one per parent.
    fn children_of_unfinished(&self) -> StoreFuture<'_, LoadedRows>;

    /// Applies `batch` for `host` in one transaction: inserts first, then
    /// updates; each command appears at most once among the updates. An
    /// insert whose id exists already is not made again (a batch retried
    /// after a lost reply); one whose idempotency key a command of its type
    /// holds is not made, and is answered in [`Applied::duplicates`].
    ///
    /// Fenced: inserts take effect only while `host` is alive (new rows
    /// are owned by it), updates only on rows `host` owns. What was fenced
    /// is answered per command in [`Applied::fenced`]; everything else of
    /// the batch is applied.
    fn apply<'a>(&'a self, host: HostId, batch: &'a [Transition]) -> StoreFuture<'a, Applied>;

    /// The store as `Any`, for extensions that need its concrete type
    /// ([`crate::Coordinator::store_as`]); `None` by default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// Opens a transaction for an end method (see [`EndTransaction`]) whose
    /// commit is fenced like [`CommandStore::apply`]. Stores without
    /// transactions answer with an error (the default).
    fn begin_end_transaction(
        &self,
        _host: HostId,
    ) -> LocalStoreFuture<'_, Box<dyn EndTransaction>> {
        Box::pin(async {
            Err(StoreError::new(
                StoreOp::Apply,
                None,
                StoreErrorKind::Database("this store has no end transactions".into()),
            ))
        })
    }

    /// Registers `host` as alive, with a fresh heartbeat.
    fn join<'a>(&'a self, host: &'a HostInfo) -> StoreFuture<'a, ()>;

    /// Renews `host`'s heartbeat (on a connection of its own, so that a
    /// busy pool cannot delay it) and reports `live` commands; answers the
    /// host's state in the registry (`None`: its row is gone).
    fn heartbeat(&self, host: HostId, live: u64) -> StoreFuture<'_, Option<HostState>>;

    /// Every registered host.
    fn hosts(&self) -> StoreFuture<'_, Vec<HostRecord>>;

    /// Declares dead those of `observed` (host, heartbeat seen) that are
    /// still alive with exactly that heartbeat, older than `lease` on the
    /// database's clock; ends their sessions' open transactions (a paused
    /// process holds its locks otherwise). Returns the hosts declared dead.
    fn declare_dead<'a>(
        &'a self,
        by: HostId,
        observed: &'a [(HostId, DateTime<Utc>)],
        lease: std::time::Duration,
    ) -> StoreFuture<'a, Vec<HostId>>;

    /// Removes from the registry the hosts that left or died more than
    /// `after` ago and own nothing unfinished (every process start registers
    /// a new host). Returns how many.
    fn prune_hosts(&self, _after: std::time::Duration) -> StoreFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }

    /// Claims the hierarchies another host placed on `host` (offered, not
    /// started yet); returns their keys, to load with
    /// [`CommandStore::load_owned`].
    fn claim_offered(&self, _host: HostId) -> StoreFuture<'_, Vec<CommandId>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Marks `host` as leaving: other hosts adopt its hierarchies at once.
    fn leave(&self, host: HostId) -> StoreFuture<'_, ()>;

    /// Takes over the unfinished hierarchies of up to `max_rows` unfinished
    /// rows whose owner is not alive (or that have none), skipping rows
    /// another host is taking at the same moment. Returns the hierarchies'
    /// keys (`coalesce(root_command_id, command_id)`); none when there is
    /// nothing left to adopt.
    fn adopt(&self, host: HostId, max_rows: u32) -> StoreFuture<'_, Vec<CommandId>>;

    /// The unfinished rows `host` owns: all of them (`roots: None`), or
    /// those of these hierarchies.
    fn load_owned<'a>(
        &'a self,
        host: HostId,
        roots: Option<&'a [CommandId]>,
    ) -> StoreFuture<'a, OwnedRows>;

    /// One page of rows matching `filter`, newest first (see
    /// [`crate::query`]). Stores that cannot list answer with an error (the
    /// default).
    fn list<'a>(
        &'a self,
        _filter: &'a crate::query::ListFilter,
    ) -> StoreFuture<'a, crate::query::Page> {
        Box::pin(async {
            Err(StoreError::new(
                StoreOp::Get,
                None,
                StoreErrorKind::Database("this store cannot list commands".into()),
            ))
        })
    }

    /// Those of `ids` that have ended (for waiters whose command runs on
    /// another host).
    fn ended<'a>(&'a self, ids: &'a [CommandId]) -> StoreFuture<'a, Vec<CommandEntity>>;

    /// Readies the store for a coordinator (migrations, for PostgreSQL).
    fn prepare(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Notices from other hosts, when the store can listen for them
    /// (`None`: polling only). Called once per coordinator.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Notice>> {
        None
    }

    /// Tells the other hosts (best effort: they poll anyway).
    fn notify(&self, _notice: Notice) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Closes what the store keeps for a host (its heartbeat connection).
    fn release(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Removes at most `max_hierarchies` whole hierarchies whose every command
    /// ended before `cutoff`. A hierarchy with any command not ended is never
    /// touched, however old (oVirt removed by age alone).
    fn remove_before_batch(
        &self,
        cutoff: DateTime<Utc>,
        max_hierarchies: u32,
    ) -> StoreFuture<'_, RemovedBatch>;
}
