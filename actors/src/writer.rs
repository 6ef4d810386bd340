//! The one place every runtime write goes through: a group-committing writer.
//!
//! Command actors hand their transitions here and await an acknowledgement
//! that resolves only after the transaction holding the transition committed;
//! an actor acts on a new status only then.
//!
//! Batching is "smart", not timed: while one transaction is in flight, new
//! transitions queue; the next transaction takes everything queued (up to
//! [`WriterConfig::max_batch`]). At low load a batch is one row and the
//! latency one round trip; under load batches grow by themselves. One
//! statement per transition caps at ~7,000 lifecycles/s on a 2-core machine;
//! batched statements reach ~40,000-54,000/s.
//!
//! Failures:
//! - database unreachable: everything is kept and retried with backoff until
//!   the database is back, so a restart of a few seconds costs latency, not
//!   work. Updates (status changes of running commands) are kept for as long
//!   as it takes; inserts (a `submit`) for at most
//!   [`WriterConfig::submit_wait`], after which their sender gets a clear
//!   error. An insert retried after a lost COMMIT reply finds its row there
//!   (`ON CONFLICT DO NOTHING`) and succeeds, so "submit failed" never means
//!   "the row exists after all": an insert given up on is deleted once the
//!   database answers again, in case an earlier attempt did commit. Nothing
//!   is lost, nothing spins.
//! - any other error: the batch is split in halves until the transitions at
//!   fault are alone, so one bad transition fails only its own sender, and a
//!   batch of 5,000 with one bad row costs about 26 statements, not 5,000.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use crate::fence::Fence;
use crate::hosts::HostId;
use crate::model::CommandId;
use crate::store::{CommandStore, StoreError, StoreErrorKind, StoreOp, Transition};

/// Senders acknowledged between two yields of the writer (see `try_commit`).
const ACK_SLICE: usize = 128;

/// Default upper bound of transitions per transaction (River uses 5,000).
pub const DEFAULT_MAX_BATCH: usize = 5_000;
/// Default number of batches committing at once, each on its own connection.
/// Two keeps PostgreSQL busy while the next batch is gathered; more only
/// adds contention on a small machine.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2;
/// Default queue length before senders wait (backpressure).
pub const DEFAULT_QUEUE_CAPACITY: usize = 50_000;
/// First pause after the database was unreachable.
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between retries while the database is unreachable.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a new command's insert waits for an unreachable database before
/// its `submit` fails: long enough for a PostgreSQL restart or a failover,
/// short enough that a caller learns of a real outage.
pub const DEFAULT_SUBMIT_WAIT: Duration = Duration::from_secs(30);

/// Settings of the group-committing writer (see the module documentation).
#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub max_batch: usize,
    pub max_in_flight: usize,
    pub queue_capacity: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How long an insert (a `submit`) waits for an unreachable database
    /// before it fails ([`DEFAULT_SUBMIT_WAIT`]).
    pub submit_wait: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            retry_min: DEFAULT_RETRY_MIN,
            retry_max: DEFAULT_RETRY_MAX,
            submit_wait: DEFAULT_SUBMIT_WAIT,
        }
    }
}

impl WriterConfig {
    /// Checks the settings; the message names the one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch == 0 {
            return Err("writer max_batch must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return Err("writer max_in_flight must be at least 1".into());
        }
        if self.queue_capacity == 0 {
            return Err("writer queue_capacity must be at least 1".into());
        }
        // Zero would retry an unreachable database in a busy loop.
        if self.retry_min < Duration::from_millis(1) {
            return Err(format!(
                "writer retry_min ({:?}) must be at least 1 ms",
                self.retry_min
            ));
        }
        if self.retry_max < self.retry_min || self.retry_max > Duration::from_secs(3600) {
            return Err(format!(
                "writer retry_max ({:?}) must be between retry_min ({:?}) and 1 h",
                self.retry_max, self.retry_min
            ));
        }
        if self.submit_wait > Duration::from_secs(24 * 3600) {
            return Err(format!(
                "writer submit_wait ({:?}) must be at most 24 h",
                self.submit_wait
            ));
        }
        Ok(())
    }
}

enum Request {
    Write {
        transition: Transition,
        waiter: Waiter,
        /// The epoch of the actor that wrote it (see [`Fence`]); `None` for
        /// the host's own submits.
        epoch: Option<u32>,
    },
    /// Commits what is queued, then stops; resolves when it stopped.
    Close(oneshot::Sender<()>),
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub(crate) struct StoreWriter {
    tx: mpsc::Sender<Request>,
    /// Set by [`StoreWriter::close`]: later writes fail at once.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl StoreWriter {
    /// Starts the writer task on the current actix arbiter (Tokio local set).
    pub(crate) fn start(
        store: Arc<dyn CommandStore>,
        config: WriterConfig,
        fence: Arc<Fence>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        actix::spawn(run(store, config, fence, rx));
        Self {
            tx,
            closed: Default::default(),
        }
    }

    /// Queues `transition` and waits until it is committed.
    pub(crate) async fn write(
        &self,
        transition: Transition,
        epoch: Option<u32>,
    ) -> Result<(), StoreError> {
        self.queue(transition, None, epoch).await.map(drop)
    }

    /// Commits what was queued before this call, then stops the writer: any
    /// later write fails with [`StoreErrorKind::Fenced`].
    pub(crate) async fn close(&self) {
        if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Queues `transition` now and returns a future that resolves once it is
    /// committed. `on_commit`, if any, runs right after the commit, on the
    /// writer's task, before any sender of the batch is acknowledged, and is
    /// given the committed transition; it does not run when the transition
    /// fails.
    ///
    /// Why a hook: acknowledging a batch of thousands wakes thousands of
    /// tasks, and a message sent by one of them (a child telling its parent
    /// that it ended, a new command's actor to spawn) would queue behind all
    /// the others. Sent from here, it is ahead of them.
    ///
    /// Why queued at once: the returned future holds only the
    /// acknowledgement's receiver, so a host awaiting a hundred thousand
    /// submits holds a hundred thousand small futures, not large ones. Only
    /// when the queue is full (backpressure) does the wait hold the request.
    pub(crate) fn queue(
        &self,
        transition: Transition,
        on_commit: Option<OnCommit>,
        epoch: Option<u32>,
    ) -> impl Future<Output = Result<Committed, StoreError>> + Send + 'static {
        let id = transition.command_id();
        let stopped = move || {
            StoreError::new(
                StoreOp::Apply,
                Some(id),
                StoreErrorKind::Fenced("the coordinator has shut down".into()),
            )
        };
        let (ack, done) = oneshot::channel();
        let request = Request::Write {
            transition,
            waiter: Waiter { ack, on_commit },
            epoch,
        };
        let closed = self.closed.load(std::sync::atomic::Ordering::Acquire);
        let blocked: Option<Pin<Box<dyn Future<Output = bool> + Send>>> = if closed {
            Some(Box::pin(async { false }))
        } else {
            match self.tx.try_send(request) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(request)) => {
                    let tx = self.tx.clone();
                    Some(Box::pin(async move { tx.send(request).await.is_ok() }))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Some(Box::pin(async { false })),
            }
        };
        async move {
            if let Some(send) = blocked
                && !send.await
            {
                return Err(stopped());
            }
            done.await.map_err(|_| stopped())?
        }
    }
}

/// What became of a committed transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Committed {
    /// It is in the database.
    Applied,
    /// An insert not made: a command of its type holds its idempotency key,
    /// this one.
    Duplicate(CommandId),
}

type Ack = oneshot::Sender<Result<Committed, StoreError>>;

/// Work to run the moment a transition is committed, given the transition
/// (see [`StoreWriter::queue`]).
pub(crate) type OnCommit = Box<dyn FnOnce(Option<Transition>) + Send>;

/// One sender waiting for a transition's commit.
struct Waiter {
    ack: Ack,
    on_commit: Option<OnCommit>,
}

/// A transition and everyone waiting for it (several when updates of one
/// command were folded together).
struct Pending {
    transition: Transition,
    waiters: Vec<Waiter>,
    /// For an insert kept through an outage: when its sender gets an error.
    give_up_at: Option<tokio::time::Instant>,
    /// The writing actor's epoch (`None`: a submit of the host's own).
    epoch: Option<u32>,
}

impl Pending {
    fn new(transition: Transition, waiter: Waiter, epoch: Option<u32>) -> Self {
        Self {
            transition,
            waiters: vec![waiter],
            give_up_at: None,
            epoch,
        }
    }
}

/// Refuses the transitions of actors that may not act any more (their host
/// was declared dead, or they belong to an epoch before it rejoined);
/// returns whether the rest may be committed now (false while the lease is
/// out: they then wait as in an outage).
fn screen(fence: &Fence, items: &mut Vec<Pending>) -> bool {
    let closed = fence.is_closed();
    let epoch = fence.epoch();
    items.retain_mut(|pending| match pending.epoch {
        Some(e) if closed || e != epoch => {
            refuse(
                pending,
                "this host was declared dead (or shut down); the command is rebuilt from its \
                 row by the host that owns it now",
            );
            false
        }
        _ => true,
    });
    // While the lease is out, everything waits as in an outage.
    fence.acting()
}

/// Answers every sender of `pending` that it was fenced.
fn refuse(pending: &mut Pending, why: &str) {
    let id = pending.transition.command_id();
    for waiter in pending.waiters.drain(..) {
        let _ = waiter.ack.send(Err(StoreError::new(
            StoreOp::Apply,
            Some(id),
            StoreErrorKind::Fenced(why.to_owned()),
        )));
    }
}

async fn run(
    store: Arc<dyn CommandStore>,
    config: WriterConfig,
    fence: Arc<Fence>,
    mut rx: mpsc::Receiver<Request>,
) {
    // Up to `lanes` batches commit at once, each on its own connection, so
    // that the database works on one batch while the next is being gathered
    // and sent (one batch in flight made the two sides take turns). An actor
    // never has two transitions in flight, so concurrent batches never touch
    // the same command.
    let lanes = config.max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(lanes));
    // Updates that a batch could not commit because the database was
    // unreachable come back here.
    let (kept_tx, mut kept_rx) = mpsc::unbounded_channel::<Vec<Pending>>();
    let mut retry: Vec<Pending> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut delay = config.retry_min;
    let mut open = true;
    // Inserts given up on during the current outage (see `remove_given_up`).
    let mut given_up: Vec<CommandId> = Vec::new();
    loop {
        while let Ok(kept) = kept_rx.try_recv() {
            retry.extend(kept);
        }
        let mut items: Vec<Pending> = Vec::new();
        if retry.is_empty() {
            // Wait for work (or for a batch to report an outage).
            if open {
                tokio::select! {
                    request = rx.recv() => match request {
                        Some(request) => open = accept(request, &mut items, &mut flushes),
                        None => open = false,
                    },
                    Some(kept) = kept_rx.recv() => retry.extend(kept),
                }
            }
            if items.is_empty() && retry.is_empty() && flushes.is_empty() {
                if !open {
                    wait_for_lanes(&slots, lanes).await;
                    while let Ok(kept) = kept_rx.try_recv() {
                        retry.extend(kept);
                    }
                    if retry.is_empty() {
                        debug!("store writer: all senders gone, stopping");
                        return;
                    }
                }
                continue;
            }
        }
        // Take whatever else is queued, up to a batch.
        while open && items.len() < config.max_batch {
            match rx.try_recv() {
                Ok(request) => open = accept(request, &mut items, &mut flushes),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if retry.is_empty() && !screen(&fence, &mut items) {
            // The lease is out: everything waits as in an outage.
            retry = std::mem::take(&mut items);
        }
        if retry.is_empty() {
            if !items.is_empty() {
                // Waiting for a free lane is the backpressure: meanwhile the
                // queue fills and the next batch grows.
                let lane = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let store = store.clone();
                let kept_tx = kept_tx.clone();
                let batch = coalesce(std::mem::take(&mut items));
                let host = fence.host();
                actix::spawn(async move {
                    let kept = try_commit(&*store, host, batch, Some(lane)).await;
                    if !kept.is_empty() {
                        let _ = kept_tx.send(kept);
                    }
                });
            }
            if !flushes.is_empty() {
                wait_for_lanes(&slots, lanes).await;
                while let Ok(kept) = kept_rx.try_recv() {
                    retry.extend(kept);
                }
                if retry.is_empty() {
                    resolve(&mut flushes);
                }
            }
            if retry.is_empty() {
                continue;
            }
        }
        // The database was unreachable: one batch at a time from here until a
        // commit succeeds, older changes first so that later ones win.
        wait_for_lanes(&slots, lanes).await;
        while let Ok(kept) = kept_rx.try_recv() {
            retry.extend(kept);
        }
        let mut all = std::mem::take(&mut retry);
        all.extend(items);
        let now = tokio::time::Instant::now();
        given_up.extend(give_up_inserts(&mut all, now, config.submit_wait));
        let acting = screen(&fence, &mut all);
        if acting && !all.is_empty() {
            retry = try_commit(&*store, fence.host(), coalesce(all), None).await;
        } else {
            retry = all;
        }
        if retry.is_empty() {
            delay = config.retry_min;
            remove_given_up(
                store.clone(),
                std::mem::take(&mut given_up),
                config.retry_max,
            );
            resolve(&mut flushes);
            continue;
        }
        // Inserts that have waited long enough fail now, not after the
        // next pause.
        given_up.extend(give_up_inserts(
            &mut retry,
            tokio::time::Instant::now(),
            config.submit_wait,
        ));
        // Wait before retrying, but keep serving the queue meanwhile: a submit
        // must learn of the outage at once rather than wait for the database.
        metrics::counter!(crate::metrics::WRITE_RETRIES).increment(1);
        if fence.acting() {
            warn!(pending = retry.len(), retry_in = ?delay,
                "database unavailable; status changes kept and retried");
        } else {
            warn!(
                pending = retry.len(),
                "this host may not act (no lease); submits wait until it acts again"
            );
        }
        // Meanwhile new work is taken in (it waits with the rest), and an
        // insert's wait ends on time even if the pause is longer.
        let deadline = tokio::time::Instant::now() + delay;
        let next_give_up = retry.iter().filter_map(|p| p.give_up_at).min();
        let deadline = next_give_up.map_or(deadline, |at| deadline.min(at));
        while open {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                request = rx.recv() => match request {
                    Some(request) => open = accept(request, &mut retry, &mut flushes),
                    None => open = false,
                },
            }
        }
        if !open {
            tokio::time::sleep_until(deadline).await;
        }
        delay = (delay * 2).min(config.retry_max);
    }
}

/// Waits until no batch is in flight.
async fn wait_for_lanes(slots: &Semaphore, lanes: usize) {
    let all = slots
        .acquire_many(lanes as u32)
        .await
        .expect("the semaphore is never closed");
    drop(all);
}

/// Takes a request in; returns false when it asks the writer to close.
fn accept(
    request: Request,
    items: &mut Vec<Pending>,
    flushes: &mut Vec<oneshot::Sender<()>>,
) -> bool {
    let open = !matches!(request, Request::Close(_));
    match request {
        Request::Write {
            transition,
            waiter,
            epoch,
        } => items.push(Pending::new(transition, waiter, epoch)),
        Request::Close(done) => flushes.push(done),
    }
    open
}

/// Fails the inserts kept through an outage whose wait is over; returns their
/// ids (an earlier attempt of theirs may have committed without the reply
/// arriving: they are deleted once the database answers again).
fn give_up_inserts(
    retry: &mut Vec<Pending>,
    now: tokio::time::Instant,
    wait: Duration,
) -> Vec<CommandId> {
    let mut given_up = Vec::new();
    retry.retain_mut(|pending| {
        let Transition::Insert(_) = pending.transition else {
            return true;
        };
        let give_up_at = *pending.give_up_at.get_or_insert(now + wait);
        if give_up_at > now {
            return true;
        }
        let id = pending.transition.command_id();
        let why =
            format!("the database stayed unreachable for {wait:?}; the command was not submitted");
        for waiter in pending.waiters.drain(..) {
            let _ = waiter.ack.send(Err(unavailable(id, &why)));
        }
        given_up.push(id);
        false
    });
    given_up
}

/// Deletes the rows of inserts given up on, if an attempt of theirs did
/// commit: no actor was started for them and their senders were told they
/// failed. Retried until the database answers.
fn remove_given_up(store: Arc<dyn CommandStore>, ids: Vec<CommandId>, retry_max: Duration) {
    if ids.is_empty() {
        return;
    }
    actix::spawn(async move {
        for id in ids {
            let mut delay = Duration::from_millis(100);
            loop {
                match store.remove(id).await {
                    Ok(removed) => {
                        if removed {
                            warn!(command_id = %id, "removed the row of a submit that was reported as failed (its COMMIT reply had been lost)");
                        }
                        break;
                    }
                    Err(e) => {
                        debug!(command_id = %id, error = %e, "cannot remove a given-up insert yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(retry_max);
                    }
                }
            }
        }
    });
}

fn resolve(flushes: &mut Vec<oneshot::Sender<()>>) {
    for done in flushes.drain(..) {
        let _ = done.send(());
    }
}

fn unavailable(id: CommandId, why: &str) -> StoreError {
    StoreError::new(
        StoreOp::Apply,
        Some(id),
        StoreErrorKind::Unavailable(why.to_owned().into()),
    )
}

/// Tries once to commit `items`. Acknowledges everything that committed or
/// failed for good; returns the updates to retry because the database was
/// unreachable. Inserts are never retried: their senders (a `submit`) get the
/// error at once, and nothing of theirs is half-persisted.
///
/// `lane` is the batch's slot among those in flight: it is given back as soon
/// as the commit is done, before the senders are woken, so that the next
/// batch need not wait for the wake-ups.
async fn try_commit(
    store: &dyn CommandStore,
    host: HostId,
    items: Vec<Pending>,
    lane: Option<OwnedSemaphorePermit>,
) -> Vec<Pending> {
    let mut transitions = Vec::with_capacity(items.len());
    let mut senders = Vec::with_capacity(items.len());
    let mut give_up = Vec::with_capacity(items.len());
    for pending in items {
        transitions.push(pending.transition);
        senders.push(pending.waiters);
        give_up.push((pending.give_up_at, pending.epoch));
    }
    let error = match store.apply(host, &transitions).await {
        Ok(applied) => {
            drop(lane);
            metrics::histogram!(crate::metrics::WRITE_BATCH_SIZE).record(transitions.len() as f64);
            let fenced: std::collections::HashSet<CommandId> = applied.fenced.into_iter().collect();
            let duplicates: HashMap<CommandId, CommandId> =
                applied.duplicates.into_iter().collect();
            if !fenced.is_empty() {
                metrics::counter!(crate::metrics::FENCED_WRITES).increment(fenced.len() as u64);
                warn!(host = %host, commands = fenced.len(), "writes refused: this host no longer owns these commands (another host adopted them) or is not alive");
            }
            // Commit hooks first: what they send is ahead of the wake-ups
            // of every sender below. The first hook of a transition gets it.
            let mut waiters: Vec<(Waiter, Committed)> = Vec::with_capacity(senders.len());
            for (transition, group) in transitions.into_iter().zip(senders) {
                if let Some(holder) = duplicates.get(&transition.command_id()) {
                    // Not inserted: no hook (nothing to start), and the
                    // sender learns the key's holder.
                    waiters.extend(
                        group
                            .into_iter()
                            .map(|w| (w, Committed::Duplicate(*holder))),
                    );
                    continue;
                }
                if fenced.contains(&transition.command_id()) {
                    let mut pending = Pending {
                        transition,
                        waiters: group,
                        give_up_at: None,
                        epoch: None,
                    };
                    refuse(
                        &mut pending,
                        "another host owns this command's hierarchy now (this host was declared \
                         dead or left); the write was not applied",
                    );
                    continue;
                }
                let mut transition = Some(transition);
                for mut waiter in group {
                    if let Some(on_commit) = waiter.on_commit.take() {
                        on_commit(transition.take());
                    }
                    waiters.push((waiter, Committed::Applied));
                }
            }
            // Wake the senders a slice at a time, yielding in between: each
            // wake-up queues an actor on this thread, and what another lane's
            // commit hooks send then waits behind one slice, not behind
            // thousands.
            let mut waiters = waiters.into_iter().peekable();
            while waiters.peek().is_some() {
                for (waiter, committed) in waiters.by_ref().take(ACK_SLICE) {
                    let _ = waiter.ack.send(Ok(committed));
                }
                if waiters.peek().is_some() {
                    tokio::task::yield_now().await;
                }
            }
            return Vec::new();
        }
        Err(e) => e,
    };
    let mut items: Vec<Pending> = transitions
        .into_iter()
        .zip(senders)
        .zip(give_up)
        .map(|((transition, waiters), (give_up_at, epoch))| Pending {
            transition,
            waiters,
            give_up_at,
            epoch,
        })
        .collect();
    drop(lane);
    if error.is_transient() {
        // Kept, inserts included (see the module's doc): retried until the
        // database is back.
        items
    } else if items.len() > 1 {
        // Find the culprits by halves, so that one bad transition fails
        // only its own senders and costs O(log n) statements, not n.
        debug!(error = %error, size = items.len(), "batch failed; splitting it");
        let second = items.split_off(items.len() / 2);
        let mut kept = Box::pin(try_commit(store, host, items, None)).await;
        kept.extend(Box::pin(try_commit(store, host, second, None)).await);
        kept
    } else {
        let (transitions, senders): (Vec<Transition>, Vec<Vec<Waiter>>) =
            items.into_iter().map(|p| (p.transition, p.waiters)).unzip();
        warn!(error = %error, "store write failed");
        let message = error.to_string();
        for (transition, acks) in transitions.iter().zip(senders) {
            for waiter in acks {
                let _ = waiter.ack.send(Err(StoreError::new(
                    StoreOp::Apply,
                    Some(transition.command_id()),
                    StoreErrorKind::Database(message.clone().into()),
                )));
            }
        }
        Vec::new()
    }
}

/// Puts inserts first and folds several updates of one command into one, so
/// that a multi-row UPDATE never sees the same row twice.
fn coalesce(items: Vec<Pending>) -> Vec<Pending> {
    let mut inserts: Vec<Pending> = Vec::new();
    let mut updates: Vec<Pending> = Vec::new();
    let mut update_index: HashMap<CommandId, usize> = HashMap::new();
    for pending in items {
        let Pending {
            transition,
            waiters,
            give_up_at,
            epoch,
        } = pending;
        match transition {
            Transition::Insert(_) => inserts.push(Pending {
                transition,
                waiters,
                give_up_at,
                epoch,
            }),
            Transition::Update(update) => match update_index.get(&update.id) {
                Some(&i) => {
                    if let Transition::Update(earlier) = &mut updates[i].transition {
                        earlier.merge(update);
                    }
                    updates[i].waiters.extend(waiters);
                }
                None => {
                    update_index.insert(update.id, updates.len());
                    updates.push(Pending {
                        transition: Transition::Update(update),
                        waiters,
                        give_up_at,
                        epoch,
                    });
                }
            },
        }
    }
    inserts.extend(updates);
    inserts
}
