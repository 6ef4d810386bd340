//! What host code writes: a command type and the context it runs in.
//!
//! A command type is plain serde data plus behaviour, the seed's `CommandBase`
//! and `CommandCallBack` in one trait:
//!
//! | seed (oVirt)                      | here                                   |
//! |-----------------------------------|----------------------------------------|
//! | `executeCommand`                  | [`Command::execute`]                   |
//! | `CommandCallBack.executed`        | [`Command::on_executed`]               |
//! | `CommandCallBack.doPolling`       | [`Command::poll`]                      |
//! | `onSucceeded` → `endSuccessfully` | [`Command::end_successfully`]          |
//! | `onFailed` → `endWithFailure`     | [`Command::end_with_failure`]          |
//! | `VdcReturnValueBase` persisted    | [`Command::Output`] → `return_value`   |
//! | `VdcActionType`                   | [`Command::COMMAND_TYPE`]              |

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::coordinator::{Coordinator, CoordinatorError};
use crate::model::{CommandId, CommandStatus, JsonPayload};
use crate::retry::RetryPolicy;
use crate::store::EndTransaction;

/// A persisted, long-running command.
///
/// The value itself is the command's parameters: it is stored as JSON in
/// `command_parameters` when submitted, stored again after `execute` (so that
/// what `execute` learned, such as an external job id, survives a restart) and
/// at every status change, and rebuilt from the row after a restart.
///
/// ```
/// use command_coordinator_actors::{Command, CommandContext, CommandError, PollOutcome};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Merge { disk: String, job: Option<u64> }
///
/// impl Command for Merge {
///     const COMMAND_TYPE: i32 = 2;
///     type Output = u64; // bytes merged
///
///     async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
///         self.job = Some(42); // start the external job; persisted after execute
///         Ok(())
///     }
///
///     async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
///         Ok(PollOutcome::Succeeded(1 << 20)) // ask the external system
///     }
/// }
/// ```
pub trait Command: Serialize + DeserializeOwned + Unpin + 'static {
    /// The stable number stored in `command_type`; it is how a row is rebuilt
    /// into this type after a restart, so it must never change or be reused.
    const COMMAND_TYPE: i32;

    /// How this command's children run: all at once (the default) or one after
    /// another (oVirt's `SerialChildCommandsExecutionCallback`).
    const CHILD_EXECUTION: ChildExecution = ChildExecution::Parallel;

    /// What a restart does to this command when it was interrupted inside
    /// `execute`: fail it (the default) or run `execute` again (only for
    /// commands whose `execute` is idempotent).
    const ON_INTERRUPTED_EXECUTE: InterruptedExecute = InterruptedExecute::Fail;

    /// How transient errors ([`CommandError::transient`]) of `execute` and
    /// `poll` are retried: [`RetryPolicy::NONE`] by default (a transient
    /// error fails the command like any other). The count of failures in a
    /// row and the last error are persisted, so a restart continues the
    /// count. A retried `execute` runs again from the parameters as
    /// `execute` left them: it must be safe to call again after it returned
    /// a transient error.
    ///
    /// ```
    /// # use command_coordinator_actors::*;
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Fetch;
    /// impl Command for Fetch {
    ///     const COMMAND_TYPE: i32 = 7;
    ///     const RETRY: RetryPolicy = RetryPolicy::exponential(5)
    ///         .initial_backoff(Duration::from_millis(500))
    ///         .max_backoff(Duration::from_secs(60));
    ///     type Output = ();
    ///     async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
    ///         // A refused connection is worth another try; a 404 is not.
    ///         Err(CommandError::transient("connection refused"))
    ///     }
    ///     async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
    ///         Ok(PollOutcome::Succeeded(()))
    ///     }
    /// }
    /// ```
    const RETRY: RetryPolicy = RetryPolicy::NONE;

    /// The command's result, persisted as `return_value` and readable by its
    /// parent, also after a restart.
    type Output: Serialize + DeserializeOwned + 'static;

    /// The command's own action. It may submit child commands through
    /// [`CommandContext::submit_child`]. An error (or a panic) fails the command
    /// with `EXECUTION_FAILED`, unless it is [transient](CommandError::transient)
    /// and [`Command::RETRY`] allows another try; an interrupted `execute` is
    /// never run twice unless the type opts in with [`InterruptedExecute::Rerun`].
    fn execute(&mut self, ctx: &CommandContext) -> impl Future<Output = Result<(), CommandError>>;

    /// Called once `execute` has completed and `executed = true` is committed.
    fn on_executed(&mut self, ctx: &CommandContext) -> impl Future<Output = ()> {
        let _ = ctx;
        async {}
    }

    /// The seed's `doPolling`: is the work done? Called on the poll interval
    /// (with backoff) and at once when a child ends, but only after every child
    /// has *ended* and none failed (the runtime answers for the children: a
    /// failed child fails the parent without calling this). An error or a
    /// panic that persists fails the command; it is never re-invoked forever.
    /// A [transient](CommandError::transient) error is retried as
    /// [`Command::RETRY`] says.
    fn poll(
        &mut self,
        ctx: &CommandContext,
    ) -> impl Future<Output = Result<PollOutcome<Self::Output>, CommandError>>;

    /// The end action after success. Retried with backoff when it fails, up to
    /// the configured number of attempts; then [`Command::finalize`] runs and
    /// the command ends with failure.
    fn end_successfully(
        &mut self,
        output: &Self::Output,
        ctx: &CommandContext,
    ) -> impl Future<Output = Result<(), CommandError>> {
        let _ = (output, ctx);
        async { Ok(()) }
    }

    /// The end action after failure (`reason` says why). Retried like
    /// `end_successfully`.
    fn end_with_failure(
        &mut self,
        reason: &str,
        ctx: &CommandContext,
    ) -> impl Future<Output = Result<(), CommandError>> {
        let _ = (reason, ctx);
        async { Ok(()) }
    }

    /// Runs once when the end method failed on every attempt, before the
    /// command is recorded as `ENDED_WITH_FAILURE`: the last chance to clean up.
    fn finalize(&mut self, error: &CommandError, ctx: &CommandContext) -> impl Future<Output = ()> {
        let _ = (error, ctx);
        async {}
    }

    /// How long the command may stay active before it fails (oVirt's
    /// `CoCoLifeInMinutes`). `None` uses the coordinator's default.
    fn life_time(&self) -> Option<Duration> {
        None
    }
}

/// What [`Command::poll`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome<O> {
    /// Not done yet: poll again later.
    Running,
    /// Done, with this output.
    Succeeded(O),
    /// Done, failed for this reason.
    Failed(String),
}

/// How a parent's children are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExecution {
    /// Every child starts as soon as it is submitted.
    Parallel,
    /// A child starts only when the one submitted before it has ended. When one
    /// ends with failure, the ones not started yet are failed without running.
    Serial,
}

/// What a restart does to a command that was inside `execute` when the
/// process died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptedExecute {
    /// Fail it with `EXECUTION_FAILED` (then `end_with_failure` runs). Safe for
    /// any command: nobody knows how far `execute` got.
    Fail,
    /// Run `execute` again: for commands that declare `execute` idempotent.
    Rerun,
}

/// An error from user code: its message is recorded as the failure reason.
///
/// Permanent unless made [transient](CommandError::transient): a permanent
/// error of `execute` or `poll` fails the command at once; a transient one
/// is tried again as the type's [`Command::RETRY`] policy says.
///
/// Any `std::error::Error` converts into it (as a permanent error), so `?`
/// works in command code. (Like `anyhow::Error`, it deliberately does not
/// implement `Error` itself, which is what makes that blanket conversion
/// possible.)
///
/// ```
/// use command_coordinator_actors::CommandError;
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let error = CommandError::from(refused).into_transient();
/// assert!(error.is_transient());
/// assert!(!CommandError::new("no such disk").is_transient());
/// ```
pub struct CommandError {
    message: String,
    transient: bool,
}

impl CommandError {
    /// A permanent error: the command fails with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }

    /// A transient error: the step may succeed if tried again (a timeout, a
    /// refused connection, a busy service). Retried per [`Command::RETRY`].
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
        }
    }

    /// The same error, marked transient.
    pub fn into_transient(mut self) -> Self {
        self.transient = true;
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// True for [`CommandError::transient`] errors.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl<E: std::error::Error> From<E> for CommandError {
    fn from(error: E) -> Self {
        Self::new(error.to_string())
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.transient {
            write!(f, "CommandError(transient: {:?})", self.message)
        } else {
            write!(f, "CommandError({:?})", self.message)
        }
    }
}

/// What a command knows about one of its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildView {
    pub id: CommandId,
    pub command_type: i32,
    pub status: CommandStatus,
    /// The child's persisted output, once it succeeded.
    pub output: Option<JsonPayload>,
    pub failure_reason: Option<String>,
}

impl ChildView {
    /// What a parent knows of a child, from the child's row.
    pub fn from_entity(child: &crate::model::CommandEntity) -> Self {
        Self {
            id: child.id,
            command_type: child.command_type,
            status: child.status,
            output: child.return_value.clone(),
            failure_reason: child.failure_reason.clone(),
        }
    }

    /// Decodes the child's output as `O`: `None` when it has none.
    pub fn output<O: DeserializeOwned>(&self) -> Result<Option<O>, serde_json::Error> {
        self.output.as_ref().map(|p| p.decode()).transpose()
    }
}

/// The context a command's code runs in: who it is, its children, and the
/// coordinator for submitting children.
///
/// A fresh context is built for every call into command code; what it shows
/// of the children is a snapshot taken at that moment.
pub struct CommandContext {
    pub(crate) id: CommandId,
    pub(crate) parent_id: Option<CommandId>,
    pub(crate) root_id: CommandId,
    pub(crate) command_type: i32,
    pub(crate) serial_children: bool,
    pub(crate) children: Vec<ChildView>,
    pub(crate) end_attempt: u32,
    pub(crate) coordinator: Coordinator,
    /// Children submitted during this call, handed back to the actor after it.
    pub(crate) submitted: Rc<RefCell<Vec<(CommandId, i32)>>>,
    /// Set for calls of end methods: the transaction may be opened.
    pub(crate) in_end_method: bool,
    /// Cleared for end methods and `finalize`: the end is a command's last
    /// step, so children cannot be submitted from it (see
    /// [`CommandContext::submit_child`]).
    pub(crate) may_submit_children: bool,
    /// True when this command was rebuilt from its row (start-up or a restart
    /// after a panic) since its status was last committed.
    pub(crate) resumed: bool,
    /// The end method's transaction, once it asked for one.
    pub(crate) end_tx: RefCell<Option<Rc<dyn EndTransaction>>>,
    /// Set when opening the end transaction failed because the database was
    /// unreachable.
    pub(crate) store_unavailable: std::cell::Cell<bool>,
    /// Set when cancellation of this command was requested (also while a call
    /// is running).
    pub(crate) cancelled: Rc<crate::command_actor::LiveCells>,
}

impl CommandContext {
    pub fn id(&self) -> CommandId {
        self.id
    }

    pub fn parent_id(&self) -> Option<CommandId> {
        self.parent_id
    }

    pub fn root_id(&self) -> CommandId {
        self.root_id
    }

    /// The children known when this call began, in submission order.
    pub fn children(&self) -> &[ChildView] {
        &self.children
    }

    /// The outputs of the children of type `C`, in submission order.
    pub fn child_outputs<C: Command>(&self) -> Result<Vec<C::Output>, CommandError> {
        self.children
            .iter()
            .filter(|c| c.command_type == C::COMMAND_TYPE)
            .filter_map(|c| c.output::<C::Output>().transpose())
            .collect::<Result<_, _>>()
            .map_err(|e| CommandError::new(format!("a child's output does not decode: {e}")))
    }

    /// Which attempt of the end method this is in this process (1 for the
    /// first).
    pub fn end_attempt(&self) -> u32 {
        self.end_attempt
    }

    /// True when the end method may have run before for this command: an
    /// earlier attempt in this process failed, or the command was rebuilt from
    /// its row (after a restart or a panic), so a previous process may have run
    /// it without committing the end. End methods with effects *outside* the
    /// database use this (and [`CommandContext::id`] as an idempotency key) to
    /// stay idempotent; effects *inside* the database go through
    /// [`CommandContext::transaction`] and happen exactly once anyway.
    pub fn may_have_run_before(&self) -> bool {
        self.end_attempt > 1 || self.resumed
    }

    /// The transaction this end method writes its own rows through, opened on
    /// first use. The runtime commits the command's end (`ENDED_*` and
    /// `callback_notified`) in the same transaction after the end method
    /// returned `Ok`, and rolls it back when it returned `Err` or panicked: the
    /// end method's database effects and the end are one atomic step, so they
    /// happen exactly once however often the process dies.
    ///
    /// `T` is the store's transaction type: `command_coordinator::PgTransaction`
    /// for PostgreSQL. Only available inside `end_successfully` and
    /// `end_with_failure`.
    pub async fn transaction<T: 'static>(&self) -> Result<Rc<T>, CommandError> {
        if !self.in_end_method {
            return Err(CommandError::new(
                "a transaction is only available in end methods",
            ));
        }
        let existing = self.end_tx.borrow().clone();
        let tx = match existing {
            Some(tx) => tx,
            None => {
                let tx: Rc<dyn EndTransaction> = self
                    .coordinator
                    .store()
                    .begin_end_transaction(self.coordinator.host_id())
                    .await
                    .map_err(|e| {
                        self.store_unavailable.set(e.is_transient());
                        CommandError::new(e.to_string())
                    })?
                    .into();
                *self.end_tx.borrow_mut() = Some(tx.clone());
                tx
            }
        };
        tx.as_any_rc().downcast::<T>().map_err(|_| {
            CommandError::new(format!(
                "this store's transactions are not {}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// Persists `child` (with this command as parent and this command's root
    /// as root) and starts it, or, for a serial parent, queues it behind the
    /// children submitted before it. Returns once the child's row is committed.
    ///
    /// Only from `execute`, `on_executed` and `poll`: from an end method or
    /// `finalize` it fails with [`CoordinatorError::ChildFromEndMethod`] and
    /// persists nothing. A parent's end is its last step: a child submitted
    /// there would outlive the end that its parent already committed (and,
    /// with [`crate::OnRootEnd::Remove`], have its row deleted under it),
    /// and every retried end attempt would submit it again. Follow-up work
    /// that must happen after an end belongs in a new root command
    /// (`ctx.coordinator().submit(..)`), keyed so that a retried end does
    /// not submit it twice.
    pub async fn submit_child<C: Command>(&self, child: C) -> Result<CommandId, CoordinatorError> {
        if !self.may_submit_children {
            return Err(CoordinatorError::ChildFromEndMethod { parent: self.id });
        }
        if self.cancelled.cancelled.get() {
            // Born cancelled: the child is persisted (so the parent sees and
            // waits for it) but fails without running.
            tracing::debug!(parent = %self.id, "child submitted after cancellation: it is born cancelled");
        }
        let id = self
            .coordinator
            .submit_with_parent(
                child,
                Some(crate::coordinator::ParentLink {
                    parent: self.id,
                    root: self.root_id,
                    parked: self.serial_children,
                }),
            )
            .await?;
        self.submitted.borrow_mut().push((id, C::COMMAND_TYPE));
        Ok(id)
    }

    /// True once cancellation of this command (or of an ancestor) was
    /// requested. Long-running `execute`/`poll` code may check it and return
    /// early; the runtime then fails the command with reason "cancelled"
    /// whatever the call returned.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.cancelled.get()
    }

    /// The coordinator, for anything else (status of other commands...).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// The command type of the command this context belongs to.
    pub fn command_type(&self) -> i32 {
        self.command_type
    }
}
