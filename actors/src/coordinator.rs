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
//! validated → store prepared (migrations, host lock) → writer started →
//! cleanup and coordinator actors started → unfinished rows loaded → every
//! actor of every hierarchy created in one step → handle returned. (The
//! cleanup actor's first pass comes one interval later, and it never touches a
//! hierarchy with a command not ended, so starting it first is harmless.)

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
use crate::messages::{ChildCompleted, Finished, Inspect};
use crate::model::{CommandEntity, CommandId, CommandStatus, JsonPayload};
use crate::poll_timers::PollTimers;
use crate::registry::Registry;
use crate::store::{BadRow, CancelOutcome, CommandStore, HostLock, StoreError, Transition};
use crate::writer::{OnCommit, StoreWriter};

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
    /// The command exists and has not ended, but this host does not run it
    /// (its row could not be rebuilt at start-up: see the logs for its id).
    #[error("command {0} has not ended and is not running in this host")]
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
    /// Whether this host holds its lock, and its epoch (see [`Fence`]).
    fence: Arc<Fence>,
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
        self.writer.queue(transition, on_commit, self.epoch)
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
        let (tx, rx) = oneshot::channel();
        let registered = self
            .shared
            .addr
            .send(Wait { id, tx })
            .await
            .map_err(|_| CoordinatorError::Stopped)?;
        if registered {
            return rx.await.map_err(|_| CoordinatorError::Stopped);
        }
        // Not live here: the store knows.
        match self.shared.store.get(id).await? {
            None => Err(CoordinatorError::NotFound(id)),
            Some(e) if e.status.is_ended() => Ok(Outcome {
                id,
                status: e.status,
                output: e.return_value,
                failure_reason: e.failure_reason,
            }),
            Some(_) => Err(CoordinatorError::NotRunning(id)),
        }
    }

    /// The command's status: from memory for a live command, else from the store.
    pub async fn status(&self, id: CommandId) -> Result<Option<CommandStatus>, CoordinatorError> {
        match self.lookup(id).await? {
            Some(live) => Ok(Some(live.status)),
            None => Ok(self.shared.store.get_status(id).await?),
        }
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
    /// [`SHUTDOWN_WRITE_WAIT`] for the database); the host lock is released,
    /// so that a new coordinator can start on the schema, in this process or
    /// another. Whatever was still running is picked up from the database at
    /// the next start. Calling it again does nothing.
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
            warn!(waited = ?SHUTDOWN_WRITE_WAIT, "shutdown: queued writes not committed (database unreachable); they are redone from the rows at the next start");
        }
        if let Err(e) = self.shared.store.release().await {
            warn!(error = %e, "shutdown: could not release the host lock; it goes with the connection");
        }
        info!("coordinator shut down: pending writes committed, host lock released");
    }

    /// True while this coordinator may act: it holds the host lock (a
    /// lost lock is looked for every [`RuntimeConfig::host_check_interval`])
    /// and was not shut down. For health checks: a coordinator that is not
    /// acting runs nothing until it holds the lock again.
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
                None => self.shared.fence.acting(),
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
        }
        Ok((entity, parked))
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
    /// future resolves after that. It holds nothing but the acknowledgement:
    /// a host awaiting many submits at once keeps many small futures.
    fn persist_and_spawn(
        &self,
        entity: Box<CommandEntity>,
        parked: bool,
        waiter: Option<oneshot::Sender<Outcome>>,
    ) -> impl Future<Output = Result<(), CoordinatorError>> + Send + 'static {
        let coordinator = self.clone();
        let on_commit: OnCommit = Box::new(move |committed| {
            if let Some(Transition::Insert(entity)) = committed {
                debug!(command_id = %entity.id, r#type = entity.command_type, parent = ?entity.parent_id, "command persisted NOT_STARTED");
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
        async move { Ok(committed.await?) }
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

    /// How often the host lock is verified (default 2 s): a host that lost
    /// it stops acting within this time.
    pub fn host_check_interval(mut self, interval: std::time::Duration) -> Self {
        self.config.host_check_interval = interval;
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
        let fence = Arc::new(Fence::default());
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
            checking_host_lock: false,
            timers: PollTimers::new(),
        });

        let rehydrate = Rehydrate::load(&*self.store).await?;
        let count = rehydrate.entities.len();
        addr.send(rehydrate)
            .await
            .map_err(|_| StartError::Stopped)?;
        info!(unfinished = count, "coordinator started");
        Ok(coordinator)
    }
}

impl Rehydrate {
    /// Reads every unfinished command and what it needs, as start-up (and
    /// a host that took its lock again) rebuilds them.
    async fn load(store: &dyn CommandStore) -> Result<Self, StoreError> {
        // Cancellations requested while no host ran are honoured before any
        // rebuilt command takes a step.
        let cancel_requested = store.cancel_requested().await?;
        let loaded = store.commands_with_callback_enabled().await?;
        let children = store.children_of_unfinished().await?;
        Ok(Rehydrate {
            entities: loaded.entities,
            bad_rows: loaded.bad_rows,
            children,
            cancel_requested,
            reopen: false,
        })
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
    /// A host lock check is in flight.
    checking_host_lock: bool,
    /// Every live command's next poll.
    timers: PollTimers,
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = self.handle.shared.config.cancel_check_interval;
        ctx.run_interval(every, |_, ctx| ctx.notify(CheckCancellations));
        let every = self.handle.shared.config.host_check_interval;
        ctx.run_interval(every, |_, ctx| ctx.notify(CheckHostLock));
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

/// Verify the host lock; on its loss, stop acting; when it is held again,
/// rebuild every command from the database.
#[derive(Message)]
#[rtype(result = "()")]
struct CheckHostLock;

impl Handler<CheckHostLock> for CoordinatorActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: CheckHostLock, _: &mut Self::Context) -> Self::Result {
        if self.checking_host_lock {
            return Box::pin(actix::fut::ready(()));
        }
        self.checking_host_lock = true;
        let store = self.handle.shared.store.clone();
        Box::pin(
            async move {
                match store.check_host_lock().await {
                    Ok(HostLock::Reacquired) => match Rehydrate::load(&*store).await {
                        Ok(rehydrate) => (HostLock::Reacquired, Some(rehydrate)),
                        Err(e) => {
                            error!(error = %e, "host lock held again, but the commands cannot be read; will retry");
                            // The lock is held, the rebuild is not done: try again.
                            let _ = store.release().await;
                            (HostLock::NotHeld, None)
                        }
                    },
                    Ok(state) => (state, None),
                    Err(e) => {
                        error!(error = %e, "cannot check the host lock");
                        (HostLock::NotHeld, None)
                    }
                }
            }
            .into_actor(self)
            .map(|(state, rehydrate), act, ctx| {
                act.checking_host_lock = false;
                let fence = &act.handle.shared.fence;
                match state {
                    HostLock::Held => {}
                    HostLock::NotHeld => {
                        if fence.acting() {
                            fence.close();
                            error!(live = act.live.len(),
                                "HOST LOCK LOST: another host may run these commands now; this host stops acting (no writes, no steps, no end methods) until it holds the lock again");
                        }
                    }
                    HostLock::Reacquired => {
                        // Lost in between, even if only for a moment: what
                        // this host knew may be stale.
                        fence.close();
                        act.live.clear();
                        act.parked.clear();
                        act.cancelled.clear();
                        if let Some(mut rehydrate) = rehydrate {
                            rehydrate.reopen = true;
                            ctx.notify(rehydrate);
                        }
                    }
                }
            }),
        )
    }
}

impl CoordinatorActor {
    /// Waits for the next due polls of the shared poll timers, hands each to
    /// its live command, and waits again. (Owned by this actor's context, so
    /// it ends with it.)
    fn drive_polls(&mut self, ctx: &mut Context<Self>) {
        let timers = self.timers.clone();
        ctx.spawn(
            async move { timers.next_due().await }
                .into_actor(self)
                .map(|due, act, ctx| {
                    for (id, generation) in due {
                        if let Some(live) = act.live.get(&id) {
                            live.addr.poll(generation);
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
        if let Err(reason) = self.spawn_with(entity, setup) {
            self.end_unstartable(id, parent_id, command_type, reason);
        }
    }

    /// Ends a command that never ran, with failure, and tells its parent and
    /// waiters once that is committed.
    fn end_unstartable(
        &mut self,
        id: CommandId,
        parent_id: Option<CommandId>,
        command_type: i32,
        reason: String,
    ) {
        let reason = format!("cannot be started: {reason}");
        let mut update = crate::store::CommandUpdate::new(id);
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

    fn handle(&mut self, msg: Spawn, _: &mut Self::Context) {
        let id = msg.entity.id;
        if let Some(waiter) = msg.waiter {
            self.waiters.entry(id).or_default().push(waiter);
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
    /// A rebuild after the host lock was taken again: a new epoch begins
    /// when these actors are created (not before: a submit committed
    /// meanwhile would be started twice).
    reopen: bool,
}

impl Handler<Rehydrate> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, msg: Rehydrate, _: &mut Self::Context) {
        if msg.reopen {
            let epoch = self.handle.shared.fence.reopen();
            warn!(
                epoch,
                unfinished = msg.entities.len(),
                "host lock held again: commands rebuilt from the database"
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
