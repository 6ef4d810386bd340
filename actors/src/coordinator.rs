//! `CoordinatorActor` and its handle, [`Coordinator`]: the seed's
//! CommandCoordinator + CommandExecutor.
//!
//! The actor keeps the live commands (their addresses and statuses), spawns
//! command actors, routes a child's end to its parent, resolves `execute` /
//! `wait_for` futures, and rebuilds every unfinished command at start-up. The
//! handle is what hosts hold: cheap to clone, `Send + Sync`, usable from any
//! arbiter (an actix-web worker, say).
//!
//! Start-up order (one order, so no recursion or deadlock between
//! coordinator and store, oVirt 024f3216eaa / 8f487931740): configuration
//! validated → store prepared (migrations) → host registered, first
//! heartbeat, heartbeat thread started → writer started → cleanup and
//! coordinator actors started → hierarchies no live host owns adopted and
//! loaded → every actor of every hierarchy created in one step → handle
//! returned. (The cleanup actor's first pass comes one interval later, and it
//! never touches a hierarchy with a command not ended, so starting it first
//! is harmless.) Hierarchies of hosts that died are adopted later, by the
//! host tick, once their lease ran out.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use actix::prelude::*;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::cleanup::{CleanupActor, RunCleanup};
use crate::command::{ChildView, Command};
use crate::command_actor::{ActorSetup, LiveAddr, StartKind};
use crate::config::{OnRootEnd, RuntimeConfig};
use crate::fence::Fence;
use crate::heartbeat::{Heartbeat, HeartbeatThread};
use crate::hosts::{HostId, HostInfo, OwnedRows};
use crate::membership::Membership;
use crate::messages::{ChildCompleted, Finished, Inspect};
use crate::model::{CommandEntity, CommandId, CommandStatus, JsonPayload};
use crate::poll_timers::PollTimers;
use crate::registry::Registry;
use crate::store::{BadRow, CancelOutcome, CommandStore, Notice, StoreError, Transition};
use crate::submit::{SubmitOptions, Submitted};
use crate::writer::{Committed, OnCommit, StoreWriter};

/// Why a coordinator call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// The store failed (for `submit`: the command was not persisted).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The command's type was not registered with this coordinator.
    #[error("command type {command_type} ({type_name}) is not registered with this coordinator")]
    UnregisteredType {
        command_type: i32,
        type_name: String,
    },
    /// The command's parameters or output could not be (de)serialized.
    #[error("command {what} cannot be serialized: {error}")]
    Serialization {
        what: &'static str,
        error: serde_json::Error,
    },
    /// No command has this id.
    #[error("command {0} does not exist")]
    NotFound(CommandId),
    /// [`crate::SubmitOptions`] that cannot be used (the message says why).
    #[error("invalid submit options: {0}")]
    InvalidOptions(String),
    /// A [`crate::ListFilter`] that cannot be used (the message says why).
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// The command exists, has not ended, and belongs to this host, which
    /// does not run it: its row could not be rebuilt (see the logs for its
    /// id; `command-coordinator fail` ends such rows).
    #[error("command {0} has not ended and this host, which owns it, cannot run it")]
    NotRunning(CommandId),
    /// The coordinator has shut down.
    #[error("the coordinator has stopped")]
    Stopped,
    /// `submit_child` was called from an end method or `finalize`: a
    /// parent's end is its last step (see [`crate::CommandContext::submit_child`]).
    #[error(
        "command {parent}: children cannot be submitted from an end method or finalize \
         (the end is a command's last step); submit follow-up work from execute or poll, \
         or as a new root command"
    )]
    ChildFromEndMethod { parent: CommandId },
}

/// Why a coordinator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("invalid coordinator configuration: {0}")]
    InvalidConfig(String),
    #[error("command type registration: {0}")]
    Registration(String),
    #[error("could not prepare the store: {0}")]
    Store(#[from] StoreError),
    #[error("the coordinator actor stopped during start-up")]
    Stopped,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<O = JsonPayload> {
    pub id: CommandId,
    /// `ENDED_SUCCESSFULLY` or `ENDED_WITH_FAILURE`.
    pub status: CommandStatus,
    /// The output, when the command succeeded.
    pub output: Option<O>,
    pub failure_reason: Option<String>,
}

impl<O> Outcome<O> {
    pub fn succeeded(&self) -> bool {
        self.status == CommandStatus::EndedSuccessfully
    }

    /// `Ok(output)` when the command ended successfully, else `Err(reason)`.
    pub fn into_result(self) -> Result<O, String> {
        match (self.status, self.output) {
            (CommandStatus::EndedSuccessfully, Some(output)) => Ok(output),
            _ => Err(self
                .failure_reason
                .unwrap_or_else(|| format!("command ended with status {}", self.status))),
        }
    }
}

impl Outcome<JsonPayload> {
    /// Decodes the output as `O`.
    pub fn decode<O: DeserializeOwned>(self) -> Result<Outcome<O>, CoordinatorError> {
        let output = match self.output {
            Some(p) => Some(
                p.decode()
                    .map_err(|error| CoordinatorError::Serialization {
                        what: "output",
                        error,
                    })?,
            ),
            None => None,
        };
        Ok(Outcome {
            id: self.id,
            status: self.status,
            output,
            failure_reason: self.failure_reason,
        })
    }

    fn from_entity(e: CommandEntity) -> Self {
        Outcome {
            id: e.id,
            status: e.status,
            output: e.return_value,
            failure_reason: e.failure_reason,
        }
    }

    fn from_finished(f: &Finished) -> Self {
        Outcome {
            id: f.id,
            status: f.status,
            output: f.output.clone(),
            failure_reason: f.failure_reason.clone(),
        }
    }
}

/// Where a submitted child hangs in its hierarchy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParentLink {
    pub(crate) parent: CommandId,
    pub(crate) root: CommandId,
    /// A serial parent's child waits until its parent starts it.
    pub(crate) parked: bool,
}

struct Shared {
    addr: Addr<CoordinatorActor>,
    cleanup: Addr<CleanupActor>,
    writer: StoreWriter,
    store: Arc<dyn CommandStore>,
    registry: Registry,
    config: RuntimeConfig,
    /// Whether this host may act, its id and its epoch (see [`Fence`]).
    fence: Arc<Fence>,
    heartbeat: Arc<Heartbeat>,
    heartbeat_thread: std::sync::Mutex<Option<HeartbeatThread>>,
    /// The live hosts and the commands each ran at its last heartbeat, as
    /// the last host check read them: where `Placement::LeastLoaded` puts
    /// new hierarchies.
    live_hosts: std::sync::Mutex<Vec<(HostId, u64)>>,
    /// Picks of placement so far (its random choice is derived from it).
    picks: std::sync::atomic::AtomicU64,
    /// Set by [`Coordinator::shutdown`]: nothing new is accepted or started.
    stopped: std::sync::atomic::AtomicBool,
}

/// How long [`Coordinator::shutdown`] waits for the queued writes to
/// commit (the database may be down); what is not committed is redone from
/// the rows at the next start.
pub const SHUTDOWN_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The handle hosts use: submit, execute, wait for and look up commands.
///
/// ```no_run
/// # use command_coordinator_actors::*;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct RemoveSnapshot;
/// # impl Command for RemoveSnapshot { const COMMAND_TYPE: i32 = 1; type Output = ();
/// #   async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> { Ok(()) }
/// #   async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> { Ok(PollOutcome::Succeeded(())) } }
/// # async fn demo(store: impl CommandStore) -> Result<(), Box<dyn std::error::Error>> {
/// let coordinator = Coordinator::builder(store)
///     .register::<RemoveSnapshot>()
///     .start()
///     .await?;
/// let outcome = coordinator.execute(RemoveSnapshot).await?;
/// assert!(outcome.succeeded());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Coordinator {
    shared: Arc<Shared>,
    /// For the handle a command actor holds: the epoch it was born in (see
    /// [`Fence`]); its writes carry it. `None` for the host's handles.
    epoch: Option<u32>,
}

/// The writer as a command actor uses it: its transitions carry the actor's
/// epoch, so that an actor of an epoch that ended can never write.
#[derive(Clone)]
pub(crate) struct EpochWriter {
    writer: StoreWriter,
    epoch: Option<u32>,
}

impl EpochWriter {
    pub(crate) fn queue(
        &self,
        transition: Transition,
        on_commit: Option<OnCommit>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let committed = self.writer.queue(transition, on_commit, self.epoch);
        async move { committed.await.map(drop) }
    }

    pub(crate) async fn write(&self, transition: Transition) -> Result<(), StoreError> {
        self.writer.write(transition, self.epoch).await
    }
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Coordinator {
    /// Starts building a coordinator over `store`.
    pub fn builder(store: impl CommandStore) -> CoordinatorBuilder {
        CoordinatorBuilder {
            store: Arc::new(store),
            registry: Registry::default(),
            registration_errors: Vec::new(),
            config: RuntimeConfig::default(),
        }
    }

    /// Persists `command` as NOT_STARTED and starts it; returns its id once the
    /// row is committed. Nothing runs before that (oVirt e474c6742a6).
    pub async fn submit<C: Command>(&self, command: C) -> Result<CommandId, CoordinatorError> {
        self.submit_with_parent(command, None).await
    }

    /// Submits `command` with an idempotency key and/or a later start (see
    /// [`SubmitOptions`]); returns once its row is committed (or once the
    /// command already holding the key is found).
    ///
    /// The row goes through the writer's batches like any submit's: a
    /// conflict on the key skips that row alone, and its caller is answered
    /// the holder's id. A transient failure (the database away, a reply
    /// lost) is retried by the writer with the same command id for up to
    /// `submit_wait`; a try that finds its own row (the first committed,
    /// its reply lost) answers it as new. So neither the library's retry
    /// nor the caller's makes a second command: with a key, a second submit
    /// returns the first command's id.
    ///
    /// ```no_run
    /// # use command_coordinator_actors::*;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct SendInvoice { order: u64 }
    /// # impl Command for SendInvoice { const COMMAND_TYPE: i32 = 40; type Output = ();
    /// #   async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> { Ok(()) }
    /// #   async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> { Ok(PollOutcome::Succeeded(())) } }
    /// # async fn demo(coordinator: Coordinator) -> Result<(), CoordinatorError> {
    /// let options = SubmitOptions::new()
    ///     .key("invoice-for-order-42")
    ///     .delay(std::time::Duration::from_secs(3600));
    /// let first = coordinator.submit_with(SendInvoice { order: 42 }, options.clone()).await?;
    /// let again = coordinator.submit_with(SendInvoice { order: 42 }, options).await?;
    /// assert_eq!(again.id, first.id);
    /// assert!(again.duplicate);
    /// # Ok(()) }
    /// ```
    pub async fn submit_with<C: Command>(
        &self,
        command: C,
        options: SubmitOptions,
    ) -> Result<Submitted, CoordinatorError> {
        self.submit_one(command, &options, None).await
    }

    /// Submits `command` to start at `at` (see [`SubmitOptions::not_before`]).
    pub async fn submit_at<C: Command>(
        &self,
        at: chrono::DateTime<chrono::Utc>,
        command: C,
    ) -> Result<CommandId, CoordinatorError> {
        let options = SubmitOptions::new().not_before(at);
        Ok(self.submit_one(command, &options, None).await?.id)
    }

    /// [`Coordinator::submit_with`], then waits until the command ended:
    /// the new one, or the one that already held the key.
    pub async fn execute_with<C: Command>(
        &self,
        command: C,
        options: SubmitOptions,
    ) -> Result<Outcome<C::Output>, CoordinatorError> {
        let (tx, rx) = oneshot::channel();
        let submitted = self.submit_one(command, &options, Some(tx)).await?;
        if submitted.duplicate {
            return self.wait_for(submitted.id).await?.decode();
        }
        rx.await.map_err(|_| CoordinatorError::Stopped)?.decode()
    }

    /// The row of a new root command that a host inserts itself, in its
    /// own transaction (`command_coordinator::SubmitInTransaction` does
    /// this for PostgreSQL): `command` validated and encoded as for
    /// [`Coordinator::submit`], with `options`, owned by the host it goes
    /// to (this one, or the one placement picked) and *offered* (epoch 0).
    /// No host runs it before it is committed: once it is, the owner
    /// claims it at its next host check, or as soon as it hears the notice
    /// the inserting transaction sends with its commit.
    pub fn prepare_offered<C: Command>(
        &self,
        command: C,
        options: &SubmitOptions,
    ) -> Result<CommandEntity, CoordinatorError> {
        let mut entity = self.prepare_with(command, options)?;
        entity.owner = Some(entity.owner.unwrap_or_else(|| self.shared.fence.host()));
        entity.owner_epoch = 0;
        Ok(*entity)
    }

    /// The store this coordinator runs on, for extensions that need its
    /// concrete type (see [`CommandStore::as_any`]).
    pub fn store_as<S: 'static>(&self) -> Option<&S> {
        self.shared.store.as_any()?.downcast_ref::<S>()
    }

    /// A new root command's row with `options`, validated.
    fn prepare_with<C: Command>(
        &self,
        command: C,
        options: &SubmitOptions,
    ) -> Result<Box<CommandEntity>, CoordinatorError> {
        options
            .validate()
            .map_err(CoordinatorError::InvalidOptions)?;
        let (mut entity, _) = self.prepare(command, None)?;
        options.apply_to(&mut entity);
        Ok(entity)
    }

    /// Inserts one command with options (see [`Coordinator::submit_with`])
    /// and starts it here, unless it was placed on another host.
    async fn submit_one<C: Command>(
        &self,
        command: C,
        options: &SubmitOptions,
        waiter: Option<oneshot::Sender<Outcome>>,
    ) -> Result<Submitted, CoordinatorError> {
        let entity = self.prepare_with(command, options)?;
        let id = entity.id;
        let key = entity.idempotency_key.clone();
        let committed = self.persist_and_spawn(entity, false, waiter).await?;
        Ok(match committed {
            Committed::Applied => Submitted {
                id,
                duplicate: false,
            },
            Committed::Duplicate(holder) => {
                debug!(command_id = %holder, key = ?key, "idempotency key taken: the command holding it is answered");
                Submitted {
                    id: holder,
                    duplicate: true,
                }
            }
        })
    }

    /// Submits `command` and waits until it ended (the seed's
    /// `executeAsyncCommand`).
    pub async fn execute<C: Command>(
        &self,
        command: C,
    ) -> Result<Outcome<C::Output>, CoordinatorError> {
        let (entity, parked) = self.prepare(command, None)?;
        let id = entity.id;
        let (tx, rx) = oneshot::channel();
        self.persist_and_spawn(entity, parked, Some(tx)).await?;
        let finished = rx.await.map_err(|_| CoordinatorError::Stopped)?;
        debug_assert_eq!(finished.id, id);
        finished.decode()
    }

    /// Waits until the command `id` ended: for commands whose original
    /// `execute` future is gone (after a restart, or submitted elsewhere).
    pub async fn wait_for(&self, id: CommandId) -> Result<Outcome, CoordinatorError> {
        if let Some(ended) = self.wait_live(id).await? {
            return ended.await.map_err(|_| CoordinatorError::Stopped);
        }
        // Not live here: the store knows.
        match self.shared.store.get(id).await? {
            None => Err(CoordinatorError::NotFound(id)),
            Some(e) if e.status.is_ended() => Ok(Outcome::from_entity(e)),
            // This host owns it and does not run it: its row could not be
            // rebuilt (see the logs); waiting would be forever.
            // (Not one placed here and not claimed yet: epoch 0.)
            Some(e) if e.owner == Some(self.shared.fence.host()) && e.owner_epoch > 0 => {
                // Claimed or adopted a moment ago, its actor not built yet?
                // The rebuild follows the claim within a host check.
                actix::clock::sleep(self.shared.config.host_check_interval).await;
                if let Some(ended) = self.wait_live(id).await? {
                    return ended.await.map_err(|_| CoordinatorError::Stopped);
                }
                match self.shared.store.get(id).await? {
                    Some(e) if e.status.is_ended() => Ok(Outcome::from_entity(e)),
                    _ => Err(CoordinatorError::NotRunning(id)),
                }
            }
            Some(_) => {
                // Runs on another host (or waits to be adopted): its end
                // is looked for in the store every remote_wait_interval.
                let (tx, rx) = oneshot::channel();
                self.shared
                    .addr
                    .send(WaitRemote { id, tx })
                    .await
                    .map_err(|_| CoordinatorError::Stopped)?;
                rx.await.map_err(|_| CoordinatorError::Stopped)
            }
        }
    }

    /// Registers a waiter for `id` when it is live or parked here: its end
    /// comes through the returned receiver. `None`: not here.
    async fn wait_live(
        &self,
        id: CommandId,
    ) -> Result<Option<oneshot::Receiver<Outcome>>, CoordinatorError> {
        let (tx, rx) = oneshot::channel();
        let registered = self
            .shared
            .addr
            .send(Wait { id, tx })
            .await
            .map_err(|_| CoordinatorError::Stopped)?;
        Ok(registered.then_some(rx))
    }

    /// The command's status: from memory for a live command, else from the store.
    pub async fn status(&self, id: CommandId) -> Result<Option<CommandStatus>, CoordinatorError> {
        match self.lookup(id).await? {
            Some(live) => Ok(Some(live.status)),
            None => Ok(self.shared.store.get_status(id).await?),
        }
    }

    /// One page of commands matching `filter`, newest first, read from the
    /// store (no actor is loaded; commands of every host are listed). See
    /// [`crate::query`] for paging.
    pub async fn list(
        &self,
        filter: &crate::query::ListFilter,
    ) -> Result<crate::query::Page, CoordinatorError> {
        filter.validate().map_err(CoordinatorError::InvalidFilter)?;
        Ok(self.shared.store.list(filter).await?)
    }

    /// The command's row, from the store. A live command's row there is
    /// exactly what it acts on: it applies a change only once committed.
    pub async fn get(&self, id: CommandId) -> Result<Option<CommandEntity>, CoordinatorError> {
        Ok(self.shared.store.get(id).await?)
    }

    /// The ids of the command's children: from its actor when live, else from
    /// the store.
    pub async fn children(&self, id: CommandId) -> Result<Vec<CommandId>, CoordinatorError> {
        if let Some(live) = self.lookup(id).await?
            && let Ok(inspection) = live.inspect.send(Inspect).await
        {
            return Ok(inspection.children);
        }
        Ok(self.shared.store.child_ids(id).await?)
    }

    /// How many commands this host runs right now.
    pub async fn live_count(&self) -> Result<usize, CoordinatorError> {
        self.shared
            .addr
            .send(LiveCount)
            .await
            .map_err(|_| CoordinatorError::Stopped)
    }

    /// Cancels the command `id` and every descendant that has not ended: each
    /// stops at its next step (running code sees `ctx.is_cancelled()`), ends
    /// with failure and reason "cancelled", and a parent's end method sees
    /// that. The request is stored in the database first, so it survives a
    /// restart and reaches commands run by another process within
    /// `cancel_check_interval`. Cancelling an ended command changes nothing
    /// and says so.
    pub async fn cancel(&self, id: CommandId) -> Result<CancelOutcome, CoordinatorError> {
        let outcome = self.shared.store.request_cancel(id).await?;
        if matches!(outcome, CancelOutcome::Requested { .. }) {
            // Act at once here rather than at the next periodic check.
            self.shared
                .addr
                .send(CheckCancellations)
                .await
                .map_err(|_| CoordinatorError::Stopped)?;
        }
        info!(command_id = %id, ?outcome, "cancellation requested");
        Ok(outcome)
    }

    /// Runs one cleanup pass now; returns how many rows it removed.
    pub async fn cleanup_now(&self) -> Result<u64, CoordinatorError> {
        self.shared
            .cleanup
            .send(RunCleanup)
            .await
            .map_err(|_| CoordinatorError::Stopped)?
            .map_err(CoordinatorError::from)
    }

    /// Stops this coordinator: from the call on, `submit`, `execute` and
    /// `wait_for` answer [`CoordinatorError::Stopped`] and no command takes
    /// another step; timers and intervals stop; the status changes already
    /// handed to the writer are committed (waiting at most
    /// [`SHUTDOWN_WRITE_WAIT`] for the database); the heartbeat stops. The
    /// host is then marked as leaving, so that the other hosts
    /// adopt its unfinished hierarchies at once (within their
    /// `host_check_interval`) instead of after its lease; with no other host,
    /// the next one to start adopts them. Calling it again does nothing.
    pub async fn shutdown(&self) {
        use std::sync::atomic::Ordering;
        if self.shared.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.shared.addr.send(StopCoordinator).await;
        let _ = self.shared.cleanup.send(crate::cleanup::StopCleanup).await;
        if actix::clock::timeout(SHUTDOWN_WRITE_WAIT, self.shared.writer.close())
            .await
            .is_err()
        {
            warn!(waited = ?SHUTDOWN_WRITE_WAIT, "shutdown: queued writes not committed (database unreachable); they are redone from the rows by the host that adopts them");
        }
        let host = self.shared.fence.host();
        match actix::clock::timeout(SHUTDOWN_WRITE_WAIT, self.shared.store.leave(host)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "shutdown: could not mark this host as leaving; its hierarchies are adopted once its lease ran out")
            }
            Err(_) => {
                warn!(
                    "shutdown: the database did not answer; this host's hierarchies are adopted once its lease ran out"
                )
            }
        }
        if let Some(mut thread) = self
            .shared
            .heartbeat_thread
            .lock()
            .expect("never poisoned")
            .take()
        {
            thread.stop();
        }
        if let Err(e) = self.shared.store.release().await {
            warn!(error = %e, "shutdown: could not close the heartbeat connection");
        }
        info!(host = %host, "coordinator shut down: pending writes committed, hierarchies handed over");
    }

    /// This host's id in the registry (`command-coordinator hosts`); a new
    /// one after the host was declared dead and rejoined.
    pub fn host_id(&self) -> HostId {
        self.shared.fence.host()
    }

    /// True while this coordinator may act: its lease runs (its heartbeats
    /// are acknowledged), it was not declared dead, and it was not shut
    /// down. For health checks: a coordinator that is not acting runs
    /// nothing until it has heartbeats again.
    pub fn is_acting(&self) -> bool {
        !self
            .shared
            .stopped
            .load(std::sync::atomic::Ordering::Acquire)
            && self.shared.fence.acting()
    }

    /// May the holder of this handle act (write, call command code)? An
    /// actor's handle stops allowing it once its epoch ended.
    pub(crate) fn may_act(&self) -> bool {
        !self
            .shared
            .stopped
            .load(std::sync::atomic::Ordering::Acquire)
            && match self.epoch {
                Some(epoch) => self.shared.fence.allows(epoch),
                None => !self.shared.fence.is_closed(),
            }
    }

    /// The handle a command actor born now holds.
    fn for_actor(&self) -> Coordinator {
        Coordinator {
            shared: self.shared.clone(),
            epoch: Some(self.shared.fence.epoch()),
        }
    }

    /// The settings this coordinator runs with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    pub(crate) fn writer(&self) -> EpochWriter {
        EpochWriter {
            writer: self.shared.writer.clone(),
            epoch: self.epoch,
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn CommandStore> {
        &self.shared.store
    }

    pub(crate) fn finished(&self, msg: Finished) {
        self.shared.addr.do_send(FinishedMsg(msg));
    }

    /// Cancels these children of a cancelled command (see `Cancel`).
    pub(crate) fn cancel_children(&self, ids: Vec<CommandId>) {
        self.shared.addr.do_send(CancelChildren(ids));
    }

    pub(crate) fn start_child(&self, msg: ChildStart) {
        self.shared.addr.do_send(msg);
    }

    async fn lookup(&self, id: CommandId) -> Result<Option<LiveView>, CoordinatorError> {
        self.shared
            .addr
            .send(Lookup(id))
            .await
            .map_err(|_| CoordinatorError::Stopped)
    }

    fn prepare<C: Command>(
        &self,
        command: C,
        link: Option<ParentLink>,
    ) -> Result<(Box<CommandEntity>, bool), CoordinatorError> {
        if self
            .shared
            .stopped
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(CoordinatorError::Stopped);
        }
        if !self.shared.registry.contains(C::COMMAND_TYPE) {
            return Err(CoordinatorError::UnregisteredType {
                command_type: C::COMMAND_TYPE,
                type_name: std::any::type_name::<C>().to_owned(),
            });
        }
        let parameters =
            JsonPayload::encode(&command).map_err(|error| CoordinatorError::Serialization {
                what: "parameters",
                error,
            })?;
        // The row is all a restart (or a panic's reload) has: parameters that
        // do not decode back (an f64 NaN is written as null, a
        // `skip_serializing` field without a default is missing) would leave
        // a committed row that no actor can be built from, and an `execute`
        // waiting for it forever. Refused here, before anything is written.
        if let Err(error) = parameters.decode::<C>() {
            return Err(CoordinatorError::Serialization {
                what: "parameters (they do not decode back into the command type)",
                error,
            });
        }
        // Boxed once here: the same allocation goes through the writer to the
        // coordinator and becomes the actor's row.
        let mut entity = Box::new(CommandEntity::new(
            CommandId::new(),
            C::COMMAND_TYPE,
            parameters,
        ));
        let mut parked = false;
        if let Some(link) = link {
            entity.parent_id = Some(link.parent);
            entity.root_id = Some(link.root);
            parked = link.parked;
        } else if self.shared.config.placement == crate::config::Placement::LeastLoaded {
            let me = self.shared.fence.host();
            entity.owner = Some(self.place()).filter(|host| *host != me);
        }
        Ok((entity, parked))
    }

    /// The less loaded of two live hosts picked at random ("the power of two
    /// choices": close to the least loaded, without every host sending its
    /// work to the same one between two heartbeats).
    fn place(&self) -> HostId {
        use std::hash::{BuildHasher, Hasher};
        let me = self.shared.fence.host();
        let hosts = self.shared.live_hosts.lock().expect("never poisoned");
        if hosts.len() < 2 {
            return me;
        }
        let pick = self
            .shared
            .picks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(pick);
        let r = hasher.finish();
        let n = hosts.len() as u64;
        let first = hosts[(r % n) as usize];
        let second = hosts[((r / n) % n) as usize];
        if second.1 < first.1 {
            second.0
        } else {
            first.0
        }
    }

    pub(crate) async fn submit_with_parent<C: Command>(
        &self,
        command: C,
        link: Option<ParentLink>,
    ) -> Result<CommandId, CoordinatorError> {
        let (entity, parked) = self.prepare(command, link)?;
        let id = entity.id;
        self.persist_and_spawn(entity, parked, None).await?;
        Ok(id)
    }

    /// Queues the NOT_STARTED row; the writer hands it to the coordinator
    /// (which starts the actor) right after the commit, and the returned
    /// future resolves after that (with the key's holder instead, when an
    /// idempotency key was taken: then nothing is started). It holds nothing but the acknowledgement:
    /// a host awaiting many submits at once keeps many small futures.
    fn persist_and_spawn(
        &self,
        entity: Box<CommandEntity>,
        parked: bool,
        waiter: Option<oneshot::Sender<Outcome>>,
    ) -> impl Future<Output = Result<Committed, CoordinatorError>> + Send + 'static {
        let coordinator = self.clone();
        let on_commit: OnCommit = Box::new(move |committed| {
            if let Some(Transition::Insert(entity)) = committed {
                debug!(command_id = %entity.id, r#type = entity.command_type, parent = ?entity.parent_id,
                    key = ?entity.idempotency_key, not_before = ?entity.not_before, "command persisted NOT_STARTED");
                coordinator.shared.addr.do_send(Spawn {
                    entity,
                    parked,
                    waiter,
                });
            }
        });
        let committed =
            self.shared
                .writer
                .queue(Transition::Insert(entity), Some(on_commit), self.epoch);
        async move { committed.await.map_err(Into::into) }
    }
}

/// Configures and starts a [`Coordinator`].
pub struct CoordinatorBuilder {
    store: Arc<dyn CommandStore>,
    registry: Registry,
    registration_errors: Vec<String>,
    config: RuntimeConfig,
}

impl CoordinatorBuilder {
    /// Registers a command type (by its `COMMAND_TYPE`).
    pub fn register<C: Command>(mut self) -> Self {
        if let Err(e) = self.registry.register::<C>() {
            self.registration_errors.push(e);
        }
        self
    }

    /// Replaces every setting at once.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// First poll interval; grows to [`Self::max_poll_interval`].
    pub fn poll_interval(mut self, interval: std::time::Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    pub fn max_poll_interval(mut self, interval: std::time::Duration) -> Self {
        self.config.max_poll_interval = interval;
        self
    }

    /// How often the registry of hosts is read (default 1 s): to notice a
    /// lost lease, declare dead hosts, and adopt hierarchies.
    pub fn host_check_interval(mut self, interval: std::time::Duration) -> Self {
        self.config.host_check_interval = interval;
        self
    }

    /// How often this host renews its heartbeat (default 2 s).
    pub fn heartbeat_interval(mut self, interval: std::time::Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// The lease (default 10 s, [`crate::config::DEFAULT_LEASE`]): see
    /// docs/operations.md, "Picking the lease".
    pub fn lease(mut self, lease: std::time::Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// The name operators see for this host (default: the machine's name).
    pub fn host_name(mut self, name: impl Into<String>) -> Self {
        self.config.host_name = Some(name.into());
        self
    }

    /// How often the ends of commands waited for here and run on another
    /// host are looked for in the store (default 200 ms; with
    /// notifications, see `PgStore::with_notifications`, they come at once).
    pub fn remote_wait_interval(mut self, interval: std::time::Duration) -> Self {
        self.config.remote_wait_interval = interval;
        self
    }

    /// Where new hierarchies run (default: on this host).
    pub fn placement(mut self, placement: crate::config::Placement) -> Self {
        self.config.placement = placement;
        self
    }

    /// What this host does when it finds itself declared dead.
    pub fn on_declared_dead(mut self, on_dead: crate::config::OnDeclaredDead) -> Self {
        self.config.on_declared_dead = on_dead;
        self
    }

    /// How often database-requested cancellations are looked for.
    pub fn cancel_check_interval(mut self, interval: std::time::Duration) -> Self {
        self.config.cancel_check_interval = interval;
        self
    }

    /// Attempts of an end method before it is given up.
    pub fn end_attempts(mut self, attempts: u32) -> Self {
        self.config.end_attempts = attempts;
        self
    }

    pub fn end_retry_delay(mut self, delay: std::time::Duration) -> Self {
        self.config.end_retry_delay = delay;
        self
    }

    /// Default life time of a command (a type may override it).
    pub fn life_time(mut self, life: std::time::Duration) -> Self {
        self.config.life_time = life;
        self
    }

    pub fn max_restarts(mut self, restarts: u32) -> Self {
        self.config.max_restarts = restarts;
        self
    }

    /// What happens to a hierarchy when its root ends.
    pub fn on_root_end(mut self, on_root_end: OnRootEnd) -> Self {
        self.config.on_root_end = on_root_end;
        self
    }

    /// How long `submit` (and `submit_child`) wait for an unreachable
    /// database before they fail (default 30 s,
    /// [`crate::writer::DEFAULT_SUBMIT_WAIT`]): a restart or failover of
    /// PostgreSQL costs latency, not work. A submit that fails leaves no row.
    pub fn submit_wait(mut self, wait: std::time::Duration) -> Self {
        self.config.writer.submit_wait = wait;
        self
    }

    /// How long ended hierarchies are kept before cleanup removes them.
    pub fn retention(mut self, retention: std::time::Duration) -> Self {
        self.config.cleanup.retention = retention;
        self
    }

    pub fn cleanup_interval(mut self, interval: std::time::Duration) -> Self {
        self.config.cleanup.interval = interval;
        self
    }

    /// Validates the settings, prepares the store (migrations), rebuilds every
    /// unfinished command from the database and returns the handle. Must run
    /// inside an actix `System`.
    pub async fn start(self) -> Result<Coordinator, StartError> {
        if let Some(e) = self.registration_errors.first() {
            return Err(StartError::Registration(e.clone()));
        }
        self.config.validate().map_err(StartError::InvalidConfig)?;
        self.store.prepare().await?;
        let host = HostInfo {
            id: HostId::new(),
            name: self.config.effective_host_name(),
            pid: std::process::id(),
        };
        self.store.join(&host).await?;
        let fence = Arc::new(Fence::new(host.id));
        let heartbeat = Heartbeat::new(host.id);
        // The first heartbeat before anything runs: the lease starts here.
        let sent = std::time::Instant::now();
        match self.store.heartbeat(host.id, 0).await? {
            Some(crate::hosts::HostState::Alive) => {
                fence.extend_lease(sent, self.config.lease);
                heartbeat.lock().streak_since = Some(sent);
            }
            state => {
                return Err(StartError::Store(StoreError::new(
                    crate::store::StoreOp::Hosts,
                    None,
                    crate::store::StoreErrorKind::Database(
                        format!("this host was not alive right after joining ({state:?})").into(),
                    ),
                )));
            }
        }
        let heartbeat_thread = HeartbeatThread::start(
            self.store.clone(),
            fence.clone(),
            heartbeat.clone(),
            self.config.heartbeat_interval,
            self.config.lease,
        )
        .map_err(|e| {
            StartError::InvalidConfig(format!("cannot start the heartbeat thread: {e}"))
        })?;
        info!(host = %host.id, name = %host.name, "host joined");
        match self.store.prune_hosts(HOST_RECORD_KEPT).await {
            Ok(0) => {}
            Ok(n) => debug!(hosts = n, "hosts gone for a day removed from the registry"),
            Err(e) => warn!(error = %e, "could not prune the registry of hosts"),
        }
        let writer = StoreWriter::start(
            self.store.clone(),
            self.config.writer.clone(),
            fence.clone(),
        );

        let ctx = Context::<CoordinatorActor>::new();
        let addr = ctx.address();
        let cleanup = CleanupActor::new(
            self.store.clone(),
            addr.clone(),
            self.config.cleanup.clone(),
        )
        .start();
        let shared = Arc::new(Shared {
            addr: addr.clone(),
            cleanup,
            writer,
            store: self.store.clone(),
            registry: self.registry,
            config: self.config,
            fence,
            heartbeat,
            heartbeat_thread: std::sync::Mutex::new(Some(heartbeat_thread)),
            live_hosts: Default::default(),
            picks: Default::default(),
            stopped: Default::default(),
        });
        let coordinator = Coordinator {
            shared,
            epoch: None,
        };
        ctx.run(CoordinatorActor {
            handle: coordinator.clone(),
            live: HashMap::new(),
            parked: HashMap::new(),
            waiters: HashMap::new(),
            cancelled: HashSet::new(),
            checking_cancellations: false,
            checking_hosts: false,
            check_again: false,
            checking_remote: false,
            paused: false,
            held_polls: Vec::new(),
            notices: coordinator.shared.store.subscribe(),
            remote_waited: HashSet::new(),
            membership: Membership::new(
                coordinator.shared.config.lease,
                coordinator.shared.config.heartbeat_interval,
            ),
            timers: PollTimers::new(),
        });

        // What no live host owns (hierarchies of hosts that shut down, rows
        // without an owner) is this host's at once; those of hosts that
        // died follow once their lease ran out (the host tick).
        let batch = coordinator.shared.config.adopt_batch;
        let mut adopted = 0;
        loop {
            let roots = self.store.adopt(host.id, batch).await?;
            if roots.is_empty() {
                break;
            }
            adopted += roots.len();
        }
        if adopted > 0 {
            metrics::counter!(crate::metrics::ADOPTED_HIERARCHIES).increment(adopted as u64);
        }
        let rehydrate = Rehydrate::new(self.store.load_owned(host.id, None).await?, None);
        let count = rehydrate.entities.len();
        addr.send(rehydrate)
            .await
            .map_err(|_| StartError::Stopped)?;
        info!(host = %host.id, adopted_hierarchies = adopted, unfinished = count, "coordinator started");
        Ok(coordinator)
    }
}

impl Rehydrate {
    /// What a host rebuilds from `rows`; `reopen`: a rebuild of everything
    /// in a new epoch, under this host id.
    fn new(rows: OwnedRows, reopen: Option<HostId>) -> Self {
        Rehydrate {
            entities: rows.unfinished.entities,
            bad_rows: rows.unfinished.bad_rows,
            children: rows.children,
            cancel_requested: rows.cancel_requested,
            reopen,
        }
    }
}

/// What the coordinator knows of a live command.
struct LiveCommand {
    addr: LiveAddr,
    /// The committed status (and cancellation flag), written by the
    /// command's actor.
    status: std::rc::Rc<crate::command_actor::LiveCells>,
}

/// A live command as answered to a lookup.
#[derive(MessageResponse)]
struct LiveView {
    status: CommandStatus,
    inspect: Recipient<Inspect>,
}

pub(crate) struct CoordinatorActor {
    handle: Coordinator,
    live: HashMap<CommandId, LiveCommand>,
    /// Serial children persisted but not started yet, waiting for their parent.
    parked: HashMap<CommandId, Box<CommandEntity>>,
    waiters: HashMap<CommandId, Vec<oneshot::Sender<Outcome>>>,
    /// Commands already told to cancel (each is told once).
    cancelled: HashSet<CommandId>,
    /// A cancellation check is in flight: ticks do not pile up behind a slow
    /// database.
    checking_cancellations: bool,
    /// A host check is in flight.
    checking_hosts: bool,
    /// A notice offered work to this host while a check was in flight (and
    /// may have read the offers before that work committed): check again
    /// right after it, rather than at the next tick.
    check_again: bool,
    /// A look for the ends of commands waited for here and run elsewhere
    /// is in flight.
    checking_remote: bool,
    /// Which other hosts may be declared dead.
    membership: Membership,
    /// The lease ran out (and the host was not declared dead): no poll is
    /// delivered until it runs again.
    paused: bool,
    /// Polls that came due while paused.
    held_polls: Vec<(CommandId, u32)>,
    /// Notices from other hosts, until the actor starts reading them.
    notices: Option<tokio::sync::mpsc::UnboundedReceiver<Notice>>,
    /// Commands of this host that a host waits for: their end is
    /// announced.
    remote_waited: HashSet<CommandId>,
    /// Every live command's next poll.
    timers: PollTimers,
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = self.handle.shared.config.cancel_check_interval;
        ctx.run_interval(every, |_, ctx| ctx.notify(CheckCancellations));
        let every = self.handle.shared.config.host_check_interval;
        ctx.run_interval(every, |_, ctx| ctx.notify(CheckHosts));
        let every = self.handle.shared.config.remote_wait_interval;
        ctx.run_interval(every, |_, ctx| ctx.notify(CheckRemoteWaits));
        if let Some(notices) = self.notices.take() {
            self.drive_notices(ctx, notices);
        }
        self.drive_polls(ctx);
    }
}

/// Shuts the coordinator actor down (see [`Coordinator::shutdown`]).
#[derive(Message)]
#[rtype(result = "()")]
struct StopCoordinator;

impl Handler<StopCoordinator> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, _: StopCoordinator, ctx: &mut Self::Context) {
        // Dropping the addresses lets the command actors stop; waiters learn
        // that the coordinator stopped.
        self.live.clear();
        self.parked.clear();
        self.waiters.clear();
        ctx.stop();
    }
}

/// The host tick: notice a lost lease or a declaration of death (stop
/// acting; rebuild or rejoin when possible), declare dead the hosts that
/// stand still, adopt what no live host owns.
#[derive(Message)]
#[rtype(result = "()")]
struct CheckHosts;

/// How long the registry keeps a host that left or died (and owns
/// nothing unfinished): for `command-coordinator hosts --all` and the
/// post-mortem.
pub const HOST_RECORD_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Most adoption statements per host tick: the tick stays short, and other
/// hosts get their share of a large orphaned backlog.
const ADOPT_SLICES_PER_TICK: usize = 20;

impl Handler<CheckHosts> for CoordinatorActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: CheckHosts, ctx: &mut Self::Context) -> Self::Result {
        let done = || -> Self::Result { Box::pin(actix::fut::ready(())) };
        if self.checking_hosts
            || self
                .handle
                .shared
                .stopped
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return done();
        }
        let shared = self.handle.shared.clone();
        let fence = shared.fence.clone();
        let lost = shared.heartbeat.lock().lost.take();
        if let Some(why) = lost {
            fence.close();
            self.drop_all();
            self.membership.forget();
            metrics::counter!(crate::metrics::LEASE_LOST).increment(1);
            match shared.config.on_declared_dead {
                crate::config::OnDeclaredDead::Stop => {
                    error!(host = %fence.host(), %why, "this host was declared dead; it stays stopped (on_declared_dead = Stop)");
                    shared
                        .stopped
                        .store(true, std::sync::atomic::Ordering::Release);
                    // Its waiters learn that it stopped.
                    self.waiters.clear();
                    if let Some(mut thread) = shared
                        .heartbeat_thread
                        .lock()
                        .expect("never poisoned")
                        .take()
                    {
                        thread.stop();
                    }
                    return done();
                }
                crate::config::OnDeclaredDead::Rejoin => {
                    let info = HostInfo {
                        id: HostId::new(),
                        name: shared.config.effective_host_name(),
                        pid: std::process::id(),
                    };
                    error!(old = %fence.host(), new = %info.id, %why, "this host was declared dead: every command stopped; joining again under a new id");
                    self.checking_hosts = true;
                    let store = shared.store.clone();
                    return Box::pin(
                        async move { store.join(&info).await.map(|()| info.id) }
                            .into_actor(self)
                            .map(move |joined, act, _| {
                                act.checking_hosts = false;
                                match joined {
                                    Ok(id) => {
                                        // The heartbeat renews the new id; the
                                        // rebuild follows its first lease.
                                        let mut beat = shared.heartbeat.lock();
                                        beat.host = id;
                                        beat.streak_since = None;
                                    }
                                    Err(e) => {
                                        // Tried again at the next tick.
                                        shared.heartbeat.lock().lost = Some(why);
                                        warn!(error = %e, "cannot join again yet");
                                    }
                                }
                            }),
                    );
                }
            }
        }
        if !fence.is_closed() && !fence.lease_runs() {
            if !self.paused {
                self.paused = true;
                self.membership.forget();
                metrics::counter!(crate::metrics::LEASE_LOST).increment(1);
                error!(host = %fence.host(), lease = ?shared.config.lease,
                    "LEASE LOST: no heartbeat acknowledged for a lease; this host pauses (no writes, no polls) until it has heartbeats again");
            }
            return done();
        }
        if self.paused && !fence.is_closed() {
            // Acknowledged by a registry that says alive: nobody adopted
            // anything of this host's meanwhile; it carries on.
            self.paused = false;
            let held = std::mem::take(&mut self.held_polls);
            warn!(host = %fence.host(), polls = held.len(), "lease regained: this host resumes");
            for (id, generation) in held {
                if let Some(live) = self.live.get(&id) {
                    live.addr.poll(generation);
                }
            }
        }
        let me = shared.heartbeat.lock().host;
        let store = shared.store.clone();
        if fence.is_closed() {
            if !fence.lease_runs() {
                return done();
            }
            // Heartbeats again (under a new id after a rejoin): rebuild
            // everything this host owns, in a new epoch.
            self.checking_hosts = true;
            return Box::pin(async move { store.load_owned(me, None).await }.into_actor(self).map(
                move |rows, act, ctx| {
                    act.checking_hosts = false;
                    match rows {
                        Ok(rows) => ctx.notify(Rehydrate::new(rows, Some(me))),
                        Err(e) => warn!(error = %e, "cannot read this host's commands yet; will retry"),
                    }
                },
            ));
        }
        // Acting: judge the others, adopt what nobody alive owns.
        self.checking_hosts = true;
        let lease = shared.config.lease;
        let batch = shared.config.adopt_batch;
        let streak = shared.heartbeat.lock().streak_since;
        let _ = ctx;
        let reader = store.clone();
        Box::pin(
            async move { reader.hosts().await }
                .into_actor(self)
                .then(move |hosts, act, _| {
                    if let Ok(hosts) = &hosts {
                        let shared = &act.handle.shared;
                        let mine = shared.heartbeat.live.load(std::sync::atomic::Ordering::Relaxed);
                        *shared.live_hosts.lock().expect("never poisoned") = hosts
                            .iter()
                            // Alive and heartbeating: a host that died and
                            // is not declared yet would only sit on the work.
                            .filter(|h| {
                                h.state == crate::hosts::HostState::Alive
                                    && (h.id == me || h.heartbeat_age < lease)
                            })
                            .map(|h| (h.id, if h.id == me { mine } else { h.live_commands }))
                            .collect();
                    }
                    let candidates = match &hosts {
                        Ok(hosts) => act.membership.observe(me, hosts, std::time::Instant::now(), streak),
                        Err(e) => {
                            debug!(error = %e, "cannot read the hosts now; next tick retries");
                            Vec::new()
                        }
                    };
                    let store = store.clone();
                    let fence = fence.clone();
                    async move {
                        if hosts.is_err() {
                            return Ok(None);
                        }
                        if !candidates.is_empty() {
                            let dead = store.declare_dead(me, &candidates, lease).await?;
                            for host in &dead {
                                error!(host = %host, by = %me, "host declared dead: its heartbeat stood still for longer than the lease; adopting its hierarchies");
                            }
                            metrics::counter!(crate::metrics::HOSTS_DECLARED_DEAD).increment(dead.len() as u64);
                        }
                        // Hierarchies other hosts placed here first.
                        let mut roots = store.claim_offered(me).await?;
                        for _ in 0..ADOPT_SLICES_PER_TICK {
                            if !fence.acting() {
                                break;
                            }
                            let slice = store.adopt(me, batch).await?;
                            if slice.is_empty() {
                                break;
                            }
                            roots.extend(slice);
                        }
                        if roots.is_empty() {
                            return Ok(None);
                        }
                        metrics::counter!(crate::metrics::ADOPTED_HIERARCHIES).increment(roots.len() as u64);
                        info!(host = %me, hierarchies = roots.len(), "hierarchies adopted");
                        store.load_owned(me, Some(&roots)).await.map(Some)
                    }
                    .into_actor(act)
                })
                .map(move |adopted: Result<Option<OwnedRows>, StoreError>, act, ctx| {
                    act.checking_hosts = false;
                    if std::mem::take(&mut act.check_again) {
                        ctx.notify(CheckHosts);
                    }
                    match adopted {
                        Ok(Some(rows)) => ctx.notify(Rehydrate::new(rows, None)),
                        Ok(None) => {}
                        // Rows adopted but not loaded are this host's:
                        // the next rebuild of everything finds them.
                        Err(e) => warn!(error = %e, "host check failed; next tick retries"),
                    }
                }),
        )
    }
}

/// Look in the store for the ends of commands waited for here that no
/// actor of this host runs.
#[derive(Message)]
#[rtype(result = "()")]
struct CheckRemoteWaits;

impl Handler<CheckRemoteWaits> for CoordinatorActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: CheckRemoteWaits, _: &mut Self::Context) -> Self::Result {
        if self.checking_remote {
            return Box::pin(actix::fut::ready(()));
        }
        let ids: Vec<CommandId> = self
            .waiters
            .keys()
            .filter(|id| !self.live.contains_key(id) && !self.parked.contains_key(id))
            .copied()
            .collect();
        if ids.is_empty() {
            return Box::pin(actix::fut::ready(()));
        }
        self.checking_remote = true;
        let store = self.handle.shared.store.clone();
        Box::pin(
            async move { store.ended(&ids).await }
                .into_actor(self)
                .map(|ended, act, _| {
                    act.checking_remote = false;
                    match ended {
                        Ok(rows) => {
                            for row in rows {
                                // Live here meanwhile (adopted): its actor answers.
                                if act.live.contains_key(&row.id) {
                                    continue;
                                }
                                if let Some(waiters) = act.waiters.remove(&row.id) {
                                    let outcome = Outcome::from_entity(row);
                                    for waiter in waiters {
                                        let _ = waiter.send(outcome.clone());
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            debug!(error = %e, "cannot look for remote ends now; next tick retries")
                        }
                    }
                }),
        )
    }
}

/// Registers a waiter for a command that runs elsewhere.
#[derive(Message)]
#[rtype(result = "()")]
struct WaitRemote {
    id: CommandId,
    tx: oneshot::Sender<Outcome>,
}

impl Handler<WaitRemote> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, msg: WaitRemote, ctx: &mut Self::Context) {
        self.waiters.entry(msg.id).or_default().push(msg.tx);
        // Its host announces its end; the store is polled meanwhile.
        self.announce(Notice::Waited(msg.id));
        ctx.notify(CheckRemoteWaits);
    }
}

impl CoordinatorActor {
    /// Reads notices from other hosts one at a time, for as long as the
    /// actor runs.
    fn drive_notices(
        &mut self,
        ctx: &mut Context<Self>,
        mut notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
    ) {
        ctx.spawn(
            async move {
                let notice = notices.recv().await;
                (notice, notices)
            }
            .into_actor(self)
            .map(|(notice, notices), act, ctx| {
                let Some(notice) = notice else { return };
                match notice {
                    Notice::Cancel => ctx.notify(CheckCancellations),
                    Notice::Adopt => ctx.notify(CheckHosts),
                    Notice::Offered(host) => {
                        if host == act.handle.shared.fence.host() {
                            if act.checking_hosts {
                                act.check_again = true;
                            } else {
                                ctx.notify(CheckHosts);
                            }
                        }
                    }
                    Notice::Waited(id) => {
                        if act.live.contains_key(&id) || act.parked.contains_key(&id) {
                            act.remote_waited.insert(id);
                        }
                    }
                    Notice::Ended(id) => {
                        if act.waiters.contains_key(&id) {
                            ctx.notify(CheckRemoteWaits);
                        }
                    }
                    Notice::Resubscribed => {
                        // Whatever was said while nobody listened.
                        ctx.notify(CheckCancellations);
                        ctx.notify(CheckRemoteWaits);
                    }
                }
                act.drive_notices(ctx, notices);
            }),
        );
    }

    /// Tells the other hosts, without waiting (they poll anyway).
    fn announce(&self, notice: Notice) {
        let store = self.handle.shared.store.clone();
        actix::spawn(async move {
            if let Err(e) = store.notify(notice).await {
                debug!(error = %e, ?notice, "notice not sent; the other hosts find it by polling");
            }
        });
    }

    /// Stops every command of this host (their actors stop once their
    /// addresses are dropped); waiters stay, and are answered from the
    /// store by whichever host runs the commands now.
    fn drop_all(&mut self) {
        self.paused = false;
        self.remote_waited.clear();
        self.held_polls.clear();
        self.live.clear();
        self.parked.clear();
        self.cancelled.clear();
        self.handle
            .shared
            .heartbeat
            .live
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for the next due polls of the shared poll timers, hands each to
    /// its live command, and waits again. (Owned by this actor's context, so
    /// it ends with it.)
    fn drive_polls(&mut self, ctx: &mut Context<Self>) {
        let timers = self.timers.clone();
        ctx.spawn(
            async move { timers.next_due().await }
                .into_actor(self)
                .map(|due, act, ctx| {
                    // While the lease is out no step starts: the polls wait.
                    if act.paused || !act.handle.shared.fence.lease_runs() {
                        act.held_polls.extend(due);
                    } else {
                        for (id, generation) in due {
                            if let Some(live) = act.live.get(&id) {
                                live.addr.poll(generation);
                            }
                        }
                    }
                    act.drive_polls(ctx);
                }),
        );
    }

    /// Delivers a cancellation to a live or parked command, once.
    fn cancel_one(&mut self, id: CommandId) {
        if !self.cancelled.insert(id) {
            return;
        }
        metrics::counter!(crate::metrics::CANCELLATIONS).increment(1);
        if let Some(entity) = self.parked.remove(&id) {
            self.spawn(
                entity,
                StartKind::Skip(crate::command_actor::CANCELLED.to_owned()),
            );
        } else if let Some(live) = self.live.get(&id) {
            live.addr.cancel();
        } else {
            // Not here (yet): forget it, so a later check can deliver it.
            self.cancelled.remove(&id);
        }
    }

    /// Starts a command persisted in this process (or a parked child), or,
    /// when no actor can be built from its row, ends it with failure so that
    /// no `execute` and no parent waits for it forever. (Submit refuses
    /// parameters that do not decode back, so this is a last line only.)
    fn spawn(&mut self, entity: Box<CommandEntity>, start: StartKind) {
        let setup = ActorSetup::new(start, entity.status, self.timers.clone());
        let (id, parent_id, command_type) = (entity.id, entity.parent_id, entity.command_type);
        let root = entity.root();
        if let Err(reason) = self.spawn_with(entity, setup) {
            self.end_unstartable(id, parent_id, root, command_type, reason);
        }
    }

    /// Ends a command that never ran, with failure, and tells its parent and
    /// waiters once that is committed.
    fn end_unstartable(
        &mut self,
        id: CommandId,
        parent_id: Option<CommandId>,
        root: CommandId,
        command_type: i32,
        reason: String,
    ) {
        let reason = format!("cannot be started: {reason}");
        let mut update = crate::store::CommandUpdate::new(id);
        update.root = Some(root);
        update.status = Some(CommandStatus::EndedWithFailure);
        update.notified = Some(true);
        update.failure_reason = Some(reason.clone());
        let handle = self.handle.clone();
        let write = self
            .handle
            .for_actor()
            .writer()
            .queue(Transition::Update(update), None);
        actix::spawn(async move {
            match write.await {
                Ok(()) => handle.finished(Finished {
                    ended: std::time::Instant::now(),
                    parent_told: false,
                    id,
                    parent_id,
                    command_type,
                    status: CommandStatus::EndedWithFailure,
                    output: None,
                    failure_reason: Some(reason),
                }),
                Err(e) => {
                    error!(command_id = %id, error = %e, "could not end a command that cannot be started; its row stays NOT_STARTED")
                }
            }
        });
    }

    /// Builds and starts the actor; `Err(reason)` when none can be built
    /// from the row (the row is left as it is, and logged).
    fn spawn_with(&mut self, entity: Box<CommandEntity>, setup: ActorSetup) -> Result<(), String> {
        let id = entity.id;
        let parent = entity.parent_id;
        let status = entity.status;
        if self.live.contains_key(&id) {
            // Already running (a rebuild found a row whose submit had just
            // committed): one actor per command.
            debug!(command_id = %id, "already live; not started twice");
            return Ok(());
        }
        let Some(factory) = self
            .handle
            .shared
            .registry
            .get(entity.command_type)
            .cloned()
        else {
            error!(command_id = %id, r#type = entity.command_type,
                "command type is not registered: row left as it is, isolated (register the type and restart)");
            return Err(format!(
                "command type {} is not registered",
                entity.command_type
            ));
        };
        let shared = setup.shared.clone();
        let mut setup = setup;
        if let Some(p) = parent.and_then(|p| self.live.get(&p)) {
            if setup.parent.is_none() {
                setup.parent = Some(p.addr.clone_handle());
            }
            // Children of a cancelled command are born cancelled: not one
            // step of theirs runs (a child submitted after the request
            // would otherwise never hear of it, and its parent wait forever).
            if p.status.cancelled.get() && !setup.shared.cancelled.replace(true) {
                self.cancelled.insert(id);
            }
        }
        match factory.spawn(entity, setup, self.handle.for_actor()) {
            Ok(addr) => {
                self.live.insert(
                    id,
                    LiveCommand {
                        addr,
                        status: shared,
                    },
                );
                metrics::gauge!(crate::metrics::COMMANDS, "status" => status.as_str())
                    .increment(1.0);
                metrics::gauge!(crate::metrics::LIVE_COMMANDS).set(self.live.len() as f64);
                self.handle
                    .shared
                    .heartbeat
                    .live
                    .store(self.live.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(reason) => {
                error!(command_id = %id, %reason, "command cannot be rebuilt: row left as it is, isolated");
                Err(reason)
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Spawn {
    entity: Box<CommandEntity>,
    parked: bool,
    waiter: Option<oneshot::Sender<Outcome>>,
}

impl Handler<Spawn> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, msg: Spawn, ctx: &mut Self::Context) {
        let id = msg.entity.id;
        if let Some(waiter) = msg.waiter {
            self.waiters.entry(id).or_default().push(waiter);
        }
        if let Some(host) = msg.entity.owner
            && host != self.handle.shared.fence.host()
        {
            // Placed on another host: it claims and runs it; a waiter here
            // hears of its end (announced, else found by polling).
            self.announce(Notice::Offered(host));
            if self.waiters.contains_key(&id) {
                self.announce(Notice::Waited(id));
                ctx.notify(CheckRemoteWaits);
            }
            return;
        }
        if msg.parked {
            self.parked.insert(id, msg.entity);
        } else {
            self.spawn(msg.entity, StartKind::Fresh);
        }
    }
}

/// Every unfinished command read at start-up.
#[derive(Message)]
#[rtype(result = "()")]
struct Rehydrate {
    entities: Vec<CommandEntity>,
    bad_rows: Vec<BadRow>,
    /// The children of those commands (ended ones included), oldest first.
    children: crate::store::LoadedRows,
    cancel_requested: Vec<CommandId>,
    /// A rebuild of everything after the host stopped acting: a new epoch
    /// begins, under this host id, when these actors are created (not
    /// before: a submit committed meanwhile would be started twice).
    reopen: Option<HostId>,
}

impl Handler<Rehydrate> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, msg: Rehydrate, _: &mut Self::Context) {
        if let Some(host) = msg.reopen {
            let epoch = self.handle.shared.fence.reopen(host);
            warn!(
                epoch,
                host = %host,
                unfinished = msg.entities.len(),
                "this host acts again: its commands were rebuilt from the database"
            );
        }
        for bad in &msg.bad_rows {
            error!(command_id = %bad.command_id, reason = %bad.reason,
                "unreadable command row: left as it is, isolated; the other commands start normally");
        }
        // Serial parents' children that never started wait for their parent.
        let serial_parents: std::collections::HashSet<CommandId> = msg
            .entities
            .iter()
            .filter(|e| {
                self.handle
                    .shared
                    .registry
                    .get(e.command_type)
                    .is_some_and(|f| f.serial())
            })
            .map(|e| e.id)
            .collect();
        for bad in &msg.children.bad_rows {
            warn!(command_id = %bad.command_id, reason = %bad.reason, "unreadable child row: its parent will not see it");
        }
        let mut children_of: HashMap<CommandId, Vec<ChildView>> = HashMap::new();
        for child in &msg.children.entities {
            if let Some(parent) = child.parent_id
                && parent != child.id
            {
                children_of
                    .entry(parent)
                    .or_default()
                    .push(ChildView::from_entity(child));
            }
        }
        // Cancelled before this host started: the actors are born cancelled,
        // so not one step of theirs runs first.
        let cancel_requested: HashSet<CommandId> = msg.cancel_requested.iter().copied().collect();
        // A row in a parent cycle (or its own parent) would wait for itself
        // forever: it is isolated and reported instead.
        let cyclic = parent_cycles(&msg.entities);
        for id in &cyclic {
            error!(command_id = %id, "command is part of a parent cycle (or its own parent): left as it is, isolated");
        }
        // All actors are created in this one handler, before any of them runs
        // (they start on this arbiter only after it returns): a child that ends
        // during start-up always finds its parent.
        for entity in msg.entities {
            if cyclic.contains(&entity.id) {
                continue;
            }
            let is_parked = entity.status == CommandStatus::NotStarted
                && entity
                    .parent_id
                    .is_some_and(|p| serial_parents.contains(&p));
            let entity = Box::new(entity);
            if is_parked {
                self.parked.insert(entity.id, entity);
            } else {
                let mut setup =
                    ActorSetup::new(StartKind::Rehydrated, entity.status, self.timers.clone());
                setup.children = children_of.remove(&entity.id).unwrap_or_default();
                setup
                    .shared
                    .cancelled
                    .set(cancel_requested.contains(&entity.id));
                // A row that cannot be rebuilt stays isolated (logged): an
                // operator may register its type and restart.
                let _ = self.spawn_with(entity, setup);
            }
        }
        // Parked ones (and the bookkeeping of the live ones) as usual.
        for id in msg.cancel_requested {
            self.cancel_one(id);
        }
        info!(
            live = self.live.len(),
            parked = self.parked.len(),
            "commands rebuilt from the database"
        );
    }
}

/// The ids of the entities whose parent links (within `entities`) form a
/// cycle, self-parents included. Linear: every entity is walked once.
fn parent_cycles(entities: &[CommandEntity]) -> std::collections::HashSet<CommandId> {
    let parent: HashMap<CommandId, Option<CommandId>> =
        entities.iter().map(|e| (e.id, e.parent_id)).collect();
    // 1 = on the current walk, 2 = settled.
    let mut state: HashMap<CommandId, u8> = HashMap::with_capacity(entities.len());
    let mut cyclic = std::collections::HashSet::new();
    for start in entities.iter().map(|e| e.id) {
        let mut path = Vec::new();
        let mut next = Some(start);
        while let Some(id) = next {
            match state.get(&id) {
                Some(1) => {
                    // Back on this walk: everything from `id` on is a cycle.
                    let from = path.iter().position(|p| *p == id).unwrap_or(0);
                    cyclic.extend(path[from..].iter().copied());
                    break;
                }
                Some(_) => break,
                None => {}
            }
            if !parent.contains_key(&id) {
                break;
            }
            state.insert(id, 1);
            path.push(id);
            next = parent[&id];
        }
        for id in path {
            state.insert(id, 2);
        }
    }
    cyclic
}

/// A serial parent starts (or skips) one of its parked children.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ChildStart {
    pub(crate) id: CommandId,
    pub(crate) skip: Option<String>,
}

impl Handler<ChildStart> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, msg: ChildStart, _: &mut Self::Context) {
        match self.parked.remove(&msg.id) {
            Some(entity) => {
                let start = match msg.skip {
                    Some(reason) => StartKind::Skip(reason),
                    None => StartKind::Fresh,
                };
                self.spawn(entity, start);
            }
            None => {
                debug!(command_id = %msg.id, "start of a child that is not parked (already running)")
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct FinishedMsg(Finished);

impl Handler<FinishedMsg> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, FinishedMsg(finished): FinishedMsg, ctx: &mut Self::Context) {
        let id = finished.id;
        // Dropping the addresses lets the actor stop.
        let live = self.live.remove(&id);
        self.cancelled.remove(&id);
        if let Some(l) = &live {
            metrics::gauge!(crate::metrics::COMMANDS, "status" => l.status.status.get().as_str())
                .decrement(1.0);
        }
        metrics::gauge!(crate::metrics::LIVE_COMMANDS).set(self.live.len() as f64);
        self.handle
            .shared
            .heartbeat
            .live
            .store(self.live.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let parent = finished.parent_id;
        match parent {
            Some(_) if finished.parent_told => {}
            Some(parent) => match self.live.get(&parent) {
                Some(p) => {
                    p.addr.child_completed(ChildCompleted {
                        ended: Some(finished.ended),
                        child: id,
                        command_type: finished.command_type,
                        status: finished.status,
                        output: finished.output.clone(),
                        failure_reason: finished.failure_reason.clone(),
                    });
                }
                None => {
                    warn!(command_id = %id, parent = %parent, "parent is not live here; it will see this child's end from the store")
                }
            },
            None => {
                if self.handle.shared.config.on_root_end == OnRootEnd::Remove {
                    let store = self.handle.shared.store.clone();
                    ctx.spawn(
                        async move {
                            match store.remove_hierarchy(id).await {
                                Ok(n) => debug!(root = %id, rows = n, "hierarchy removed as its root ended"),
                                Err(e) => warn!(root = %id, error = %e, "could not remove the ended hierarchy; cleanup will"),
                            }
                        }
                        .into_actor(self),
                    );
                }
            }
        }
        // A parent never ends before its children, but should a child still be
        // parked (its parent is gone), fail it rather than leave it waiting forever.
        let orphans: Vec<CommandId> = self
            .parked
            .values()
            .filter(|e| e.parent_id == Some(id))
            .map(|e| e.id)
            .collect();
        for orphan in orphans {
            if let Some(entity) = self.parked.remove(&orphan) {
                warn!(command_id = %orphan, parent = %id, "parked child outlived its parent; failing it");
                self.spawn(
                    entity,
                    StartKind::Skip("its parent ended before it started".into()),
                );
            }
        }
        if let Some(waiters) = self.waiters.remove(&id) {
            let outcome = Outcome::from_finished(&finished);
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
        }
        if self.remote_waited.remove(&id) {
            self.announce(Notice::Ended(id));
        }
    }
}

/// A cancelled command's children that had not ended: cancel them too.
#[derive(Message)]
#[rtype(result = "()")]
struct CancelChildren(Vec<CommandId>);

impl Handler<CancelChildren> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, CancelChildren(ids): CancelChildren, _: &mut Self::Context) {
        for id in ids {
            self.cancel_one(id);
        }
    }
}

/// Look for cancellations requested in the database and deliver them.
#[derive(Message)]
#[rtype(result = "()")]
struct CheckCancellations;

impl Handler<CheckCancellations> for CoordinatorActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: CheckCancellations, _: &mut Self::Context) -> Self::Result {
        if self.checking_cancellations {
            return Box::pin(actix::fut::ready(()));
        }
        self.checking_cancellations = true;
        let store = self.handle.shared.store.clone();
        Box::pin(
            async move { store.cancel_requested().await }
                .into_actor(self)
                .map(|result, act, _| {
                    act.checking_cancellations = false;
                    match result {
                        Ok(ids) => {
                            for id in ids {
                                act.cancel_one(id);
                            }
                        }
                        Err(e) => {
                            debug!(error = %e, "cannot look for cancellations now; next tick retries")
                        }
                    }
                }),
        )
    }
}

#[derive(Message)]
#[rtype(result = "Option<LiveView>")]
struct Lookup(CommandId);

impl Handler<Lookup> for CoordinatorActor {
    type Result = Option<LiveView>;

    fn handle(&mut self, Lookup(id): Lookup, _: &mut Self::Context) -> Option<LiveView> {
        self.live.get(&id).map(|l| LiveView {
            status: l.status.status.get(),
            inspect: l.addr.inspector(),
        })
    }
}

/// Registers a waiter; `false` when the command is not live here.
#[derive(Message)]
#[rtype(result = "bool")]
struct Wait {
    id: CommandId,
    tx: oneshot::Sender<Outcome>,
}

impl Handler<Wait> for CoordinatorActor {
    type Result = bool;

    fn handle(&mut self, msg: Wait, _: &mut Self::Context) -> bool {
        if self.live.contains_key(&msg.id) || self.parked.contains_key(&msg.id) {
            self.waiters.entry(msg.id).or_default().push(msg.tx);
            true
        } else {
            false
        }
    }
}

#[derive(Message)]
#[rtype(result = "usize")]
struct LiveCount;

impl Handler<LiveCount> for CoordinatorActor {
    type Result = usize;

    fn handle(&mut self, _: LiveCount, _: &mut Self::Context) -> usize {
        self.live.len() + self.parked.len()
    }
}

/// Rows the cleanup actor removed: forget anything still held about them
/// (oVirt kept deleted rows in its cache).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Forget(pub(crate) Vec<CommandId>);

impl Handler<Forget> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, Forget(ids): Forget, _: &mut Self::Context) {
        for id in ids {
            self.parked.remove(&id);
            // A command still live here ended moments ago: its `Finished`
            // is on its way and answers its waiters. Only the waiters of a
            // command that is gone for good are dropped.
            if self.live.remove(&id).is_none() {
                self.waiters.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(parent: Option<CommandId>) -> CommandEntity {
        let mut e = CommandEntity::new(CommandId::new(), 1, JsonPayload::encode(&()).unwrap());
        e.parent_id = parent;
        e
    }

    #[test]
    fn parent_cycles_finds_loops_and_self_parents_only() {
        let root = entity(None);
        let child = entity(Some(root.id));
        let grandchild = entity(Some(child.id));
        let orphan = entity(Some(CommandId::new()));
        let mut a = entity(None);
        let b = entity(Some(a.id));
        a.parent_id = Some(b.id);
        let tail = entity(Some(a.id)); // hangs off the cycle, is not in it
        let mut selfish = entity(None);
        selfish.parent_id = Some(selfish.id);
        let all = vec![
            root.clone(),
            child,
            grandchild,
            orphan,
            a.clone(),
            b.clone(),
            tail,
            selfish.clone(),
        ];
        let cyclic = parent_cycles(&all);
        let expected: std::collections::HashSet<_> = [a.id, b.id, selfish.id].into_iter().collect();
        assert_eq!(cyclic, expected);
    }
}
