//! A command's lifecycle as a pure state machine: what to persist next, when
//! to call which method of the command, when the end method may run, when a
//! parent may end.
//!
//! Why a state machine: these decisions used to be made inside the actor's
//! `ctx.spawn(..).map(..)` closures, with nine flags that together encoded
//! one unnamed phase. Each rule could only be tested end to end through
//! PostgreSQL, and several defects (a second end attempt started by a
//! `Cancel`, a child's end failing a command whose reload was being
//! retried) hid in the combinations. Like quinn-proto for QUIC, [`Lifecycle`]
//! performs no I/O: the actor ([`crate::command_actor`]) turns messages and
//! completed futures into [`Input`]s, passes the time in, and performs the
//! [`Effect`]s it gets back. The property tests in `tests.rs` drive it
//! through thousands of random interleavings of commits, failures, child
//! ends, cancels, panics, restarts and timers, against a model of the row.
//!
//! Nothing here knows the command's type: the actor owns the command value,
//! calls into it and reports how each call returned. What the machine needs
//! of the type (serial children, re-running an interrupted `execute`, its
//! life time) is given to it as plain values.

mod children;
mod updates;

#[cfg(test)]
mod tests;

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{debug, error, warn};

use crate::command::ChildView;
use crate::config::RuntimeConfig;
use crate::model::{CommandEntity, CommandId, CommandStatus, JsonPayload};
use crate::store::CommandUpdate;

pub(crate) use updates::CANCELLED;
use updates::MAX_WRITE_FAILURES;
use updates::{ended, fail};

/// How the actor comes to life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartKind {
    /// Just submitted in this process: its row is NOT_STARTED and it has no
    /// children yet.
    Fresh,
    /// Rebuilt from its row at start-up: its children are read from the store.
    Rehydrated,
    /// A serial parent's child that will not run because an earlier sibling
    /// failed (or one cancelled before it started): it fails with this
    /// reason without executing.
    Skip(String),
}

/// What the machine needs to know of the command's type and of the
/// runtime's configuration, passed with every input rather than stored:
/// the configuration is shared by every command, and an idle command must
/// stay small.
pub(crate) struct Env<'a> {
    /// The wall clock, for the command's life time (measured from its row's
    /// `created_at`, which another process may have written).
    pub(crate) now: DateTime<Utc>,
    pub(crate) config: &'a RuntimeConfig,
    /// The command's life time (its own, or the configured default).
    pub(crate) life_time: Duration,
    /// This host's lease runs (and it has not shut down or been declared
    /// dead): false, and the command stops acting for good; whichever host
    /// owns it next rebuilds it from its row.
    pub(crate) may_act: bool,
    /// How the type retries transient errors of `execute` and `poll`.
    pub(crate) retry: crate::retry::RetryPolicy,
}

/// The type's choices that change the lifecycle, as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TypeRules {
    /// Children run one after another (`ChildExecution::Serial`).
    pub(crate) serial: bool,
    /// An interrupted `execute` runs again (`InterruptedExecute::Rerun`).
    pub(crate) rerun: bool,
}

/// Something that happened: a message, a completed future, a timer.
#[derive(Debug)]
pub(crate) enum Input {
    /// The actor started (first start, or after the restart that a panic
    /// asked for).
    Started,
    /// The supervisor is restarting the actor: futures and timers of the
    /// old context were dropped.
    Restarted,
    /// The row and the children were read again after a restart.
    Reloaded(Box<Reloaded>),
    /// The row is gone (deleted while the command was live).
    RowVanished,
    /// The command value was read back from the row for the end method
    /// (`Err`: why it could not be).
    Fetched(Result<(), String>),
    /// The end transaction's row was read after its COMMIT failed:
    /// `true` when it shows the command ended and notified.
    RowChecked { ended_and_notified: bool },
    /// A read (reload, fetch, row check) failed: the database is away.
    ReadFailed { error: String },
    /// The status change in flight is committed.
    WriteAcked,
    /// The database refused the status change in flight (the writer itself
    /// retries outages: this is an error of this write alone); `fenced`:
    /// the writer refused it because this host may not act.
    WriteFailed { error: String, fenced: bool },
    /// The poll timer of this generation fired.
    PollDue { generation: u32 },
    /// A timer of [`Effect::SetTimer`] fired.
    TimerFired(Timer),
    /// What is known of a child now (its end, pushed by the child; or its
    /// row as read at a reload).
    ChildEnded(ChildView),
    /// Cancellation of this command was requested.
    Cancel,
    /// The call into the command's code that was in flight returned.
    Returned(Returned),
    /// The end transaction committed (`Ok`), or its COMMIT failed.
    EndCommitted(Result<(), EndCommitError>),
}

/// A reloaded row and its children.
#[derive(Debug)]
pub(crate) struct Reloaded {
    pub(crate) row: Box<CommandEntity>,
    pub(crate) children: Vec<ChildView>,
    /// The parameters decoded into the command value (`Err`: why not).
    pub(crate) decoded: Result<(), String>,
}

/// How a call into the command's code returned.
#[derive(Debug)]
pub(crate) struct Returned {
    pub(crate) outcome: Outcome,
    /// Children submitted during the call.
    pub(crate) submitted: Vec<(CommandId, i32)>,
    /// The end method opened a transaction (still open, neither committed
    /// nor rolled back).
    pub(crate) end_tx: bool,
    /// The database, not the end method, failed it (the transaction could
    /// not be opened, or its connection broke).
    pub(crate) store_unavailable: bool,
}

#[derive(Debug)]
pub(crate) enum Outcome {
    /// `execute`, `on_executed`, an end method or `finalize` returned `Ok`
    /// (or nothing).
    Ok,
    /// It returned this error.
    Err(String),
    /// It returned this transient error ([`crate::CommandError::transient`]):
    /// `execute` and `poll` are tried again as the type's retry policy says;
    /// for the other calls it is an error like any other.
    Transient(String),
    /// It panicked with this message (the panic was caught).
    Panicked(String),
    /// `poll`: not done yet.
    Running,
    /// `poll`: done, with this output (`Err`: it does not serialize).
    Succeeded(Result<JsonPayload, String>),
    /// `poll`: done, failed for this reason.
    Failed(String),
}

#[derive(Debug)]
pub(crate) struct EndCommitError {
    pub(crate) error: String,
    pub(crate) transient: bool,
    /// Another host owns the command now (this one was declared dead or
    /// left): the transaction was rolled back, and this host stops here.
    pub(crate) fenced: bool,
}

/// What the machine asks the actor to do, in order.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Queue this status change with the writer; answer with
    /// [`Input::WriteAcked`] or [`Input::WriteFailed`]. With
    /// `encode_parameters` the actor first stores the command value in
    /// `update.parameters`. With `ends` it ends the command: the writer
    /// tells a live parent right after the commit.
    Write {
        update: CommandUpdate,
        encode_parameters: bool,
        ends: bool,
    },
    /// Call into the command's code; answer with [`Input::Returned`].
    Call(Call),
    /// The command value is suspect after a panic: drop it (it is read
    /// back from its last persisted state).
    DropCommand,
    /// Ask for a [`Input::PollDue`] of this generation after `delay`.
    SchedulePoll { generation: u32, delay: Duration },
    /// Answer with [`Input::TimerFired`] after `delay`.
    SetTimer { timer: Timer, delay: Duration },
    /// Start a serial child (`skip`: it fails at once without running).
    StartChild { id: CommandId, skip: Option<String> },
    /// Cancel these children (the hierarchy below a cancelled command).
    CancelChildren(Vec<CommandId>),
    /// Commit the end method's transaction with this update; answer with
    /// [`Input::EndCommitted`].
    CommitEndTx {
        update: CommandUpdate,
        encode_parameters: bool,
    },
    /// Roll the end method's transaction back.
    RollbackEndTx,
    /// Read the row to learn whether the end transaction committed; answer
    /// with [`Input::RowChecked`] or [`Input::ReadFailed`].
    CheckRow,
    /// Read the row and the children again; answer with
    /// [`Input::Reloaded`], [`Input::RowVanished`] or [`Input::ReadFailed`].
    Reload,
    /// Read the command value back from the row; answer with
    /// [`Input::Fetched`] or [`Input::ReadFailed`].
    FetchCommand,
    /// Stop the actor, so that its supervisor restarts it.
    Stop,
    /// The committed status changed.
    StatusCommitted {
        from: CommandStatus,
        to: CommandStatus,
    },
    /// The command ended and that is committed: tell the coordinator (and
    /// through it the waiters, and the parent if the writer did not).
    Finished,
}

/// A call into the command's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    Execute,
    OnExecuted,
    Poll,
    /// `end_successfully` (with the committed output) or `end_with_failure`
    /// (with the committed reason).
    End {
        succeeded: bool,
    },
    /// `finalize`, after the end method failed on every attempt.
    Finalize {
        error: Box<str>,
    },
}

/// The call in flight, as the phase records it (the data of a [`Call`] is
/// elsewhere: `finalize`'s error in [`Extra`], so that a phase stays two
/// words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Execute,
    OnExecuted,
    Poll,
    End { succeeded: bool },
    Finalize,
}

/// The timers of [`Effect::SetTimer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The next end attempt is due.
    EndAttempt,
    /// Send the refused status change again.
    RefusedWrite,
    /// Read again (reload, fetch, row check).
    Read,
}

/// Where the lifecycle is. One value instead of the flags it replaced
/// (`busy`, `poll_armed`, `end_waits_for_children`, `reload`, `finished`...),
/// so that combinations that make no sense cannot be represented.
#[derive(Debug)]
enum Phase {
    /// Not started yet.
    Created,
    /// Nothing in flight: waiting for news (a child's end, a cancel).
    Idle,
    /// Nothing in flight; a poll of the current generation is asked for.
    PollArmed,
    /// A status change is in flight, or waits to be sent again after the
    /// database refused it.
    Writing(Box<Pending>),
    /// A call into the command's code is running.
    Calling(Step),
    /// The end action is due but waits for children that have not ended:
    /// a parent never ends before its children (oVirt 78ab1ef4249).
    EndWaitsForChildren,
    /// An end attempt failed; the next one starts when [`Timer::EndAttempt`]
    /// fires, and nothing else starts it early.
    EndRetryDue,
    /// The end method's transaction is committing this update.
    CommittingEnd(Box<Pending>),
    /// The end transaction's COMMIT failed: the row is read (again after a
    /// delay, while the database is away) to learn whether it committed.
    /// Busy until then: no second end attempt may start while this one's
    /// commit is in doubt.
    CheckingEnd(Box<InDoubt>),
    /// Reading the row and the children after a restart (or waiting to
    /// read again). Busy: a child's end or a cancel meanwhile is noted,
    /// not acted on without the state.
    Reloading,
    /// Reading the command value back for the end method (or waiting to).
    Fetching,
    /// Stopped after a panic; the supervisor restarts the actor.
    Restarting,
    /// Ended, notified, and [`Effect::Finished`] emitted.
    Finished,
    /// The row vanished while the command was live: nothing more to do.
    Gone,
    /// This host may not act any more (its lease ran out, it was declared
    /// dead, another host owns the command now, or it shut down): no step,
    /// no write, no call, ever again in this actor.
    Fenced,
}

/// A status change in flight.
#[derive(Debug)]
struct Pending {
    update: CommandUpdate,
    encode_parameters: bool,
    then: Then,
}

/// What follows a committed status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// The next step for the committed state.
    Advance,
    /// The row went NOT_STARTED → ACTIVE here: `execute` may run.
    Execute,
    /// `executed = true` is committed: call `on_executed`. (This write is
    /// not retried: a failure fails the command.)
    OnExecuted,
    /// The count of failed polls is committed: the next poll comes after
    /// the retry backoff (or on the usual schedule once the count is 0).
    PollLater,
}

/// An end transaction whose COMMIT failed.
#[derive(Debug)]
struct InDoubt {
    pending: Pending,
    error: String,
    transient: bool,
}

/// Whether the actor holds the command value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    Present,
    /// Taken by a call that panicked: read it back before the end method.
    Lost,
    /// The row's parameters do not decode (the reason is in [`Extra`]).
    Undecodable,
}

/// What a running command keeps of its row: what its decisions and its
/// context read. The parameters as stored, timestamps and job ids are in
/// the database; the live value of the parameters is the command itself.
#[derive(Debug)]
pub(crate) struct LiveRow {
    pub(crate) id: CommandId,
    pub(crate) root_id: CommandId,
    pub(crate) parent_id: Option<CommandId>,
    /// `created_at` in milliseconds since the epoch (8 bytes rather than
    /// chrono's 12: every idle command carries it).
    pub(crate) created_ms: i64,
    pub(crate) command_type: i32,
    pub(crate) status: CommandStatus,
    pub(crate) executed: bool,
    pub(crate) callback_notified: bool,
}

impl LiveRow {
    pub(crate) fn of(entity: &CommandEntity) -> Self {
        Self {
            id: entity.id,
            root_id: entity.root(),
            parent_id: entity.parent_id,
            created_ms: entity.created_at.timestamp_millis(),
            command_type: entity.command_type,
            status: entity.status,
            executed: entity.executed,
            callback_notified: entity.callback_notified,
        }
    }
}

/// What most commands never need, boxed so that it costs an idle command
/// one pointer.
#[derive(Debug, Default)]
struct Extra {
    /// Children in submission order, with what this command knows of them.
    children: Vec<ChildView>,
    /// Serial children this command has asked the coordinator to start.
    started_children: Vec<CommandId>,
    /// Fail without running, for this reason.
    skip: Option<String>,
    /// The message of the last panic, kept across the restart it caused so
    /// that the failure reason says what happened.
    last_panic: Option<String>,
    /// The committed `return_value` (set with SUCCEEDED, so near the end).
    return_value: Option<JsonPayload>,
    /// The committed `failure_reason`.
    failure_reason: Option<String>,
    /// Why the parameters could not be decoded when the row was reloaded.
    undecodable: Option<String>,
    /// The last end attempt's error, while `finalize` runs.
    end_error: Option<String>,
    /// The committed `not_before` (milliseconds since the epoch): no step
    /// starts earlier. A delayed start, or the next try of `execute`.
    not_before_ms: Option<i64>,
    /// The committed `failed_attempts`: transient failures in a row of the
    /// current step.
    failed_attempts: u32,
}

/// `at` in milliseconds since the epoch, rounded up: a step due at `at`
/// never starts before it.
fn ceil_ms(at: DateTime<Utc>) -> i64 {
    let ms = at.timestamp_millis();
    if at.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms.saturating_add(1)
    }
}

/// One command's lifecycle. See the module documentation.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    row: LiveRow,
    phase: Phase,
    /// Children, outcome, skip reason, last panic: `None` for a command
    /// that has none of them.
    extra: Option<Box<Extra>>,
    /// The generation of the last poll asked for; a `PollDue` of another
    /// one is stale.
    /// (16 bits: a poll 65,536 generations old is never still in flight.)
    poll_generation: u16,
    /// End attempts so far in this process (transient failures not
    /// counted). Small counters keep an idle command small.
    end_attempts: u16,
    /// Panics so far in this process.
    restarts: u8,
    /// The database refused the status change in flight this many times in
    /// a row (see [`MAX_WRITE_FAILURES`]).
    write_failures: u8,
    /// Polls so far without news: the next one waits `poll_interval` ×
    /// 2^this, up to `max_poll_interval` (one byte rather than a `Duration`).
    poll_backoff: u8,
    /// The type's rules and three facts, in one byte (see [`Flags`]).
    flags: Flags,
}

impl Lifecycle {
    /// A lifecycle for `row`; `children` are the rows of its children for a
    /// command rebuilt at start-up; `cancelled` for a command born
    /// cancelled (its parent was) or cancelled while no host ran.
    pub(crate) fn new(
        row: &CommandEntity,
        start: StartKind,
        children: Vec<ChildView>,
        rules: TypeRules,
        cancelled: bool,
    ) -> Self {
        let resumed = start == StartKind::Rehydrated;
        let skip = match start {
            StartKind::Skip(reason) => Some(reason),
            StartKind::Fresh | StartKind::Rehydrated => None,
        };
        let has_outcome = row.return_value.is_some() || row.failure_reason.is_some();
        let retrying = row.not_before.is_some() || row.failed_attempts > 0;
        let extra =
            (skip.is_some() || !children.is_empty() || has_outcome || retrying).then(|| {
                let mut extra = Box::new(Extra {
                    skip,
                    return_value: row.return_value.clone(),
                    failure_reason: row.failure_reason.clone(),
                    not_before_ms: row.not_before.map(ceil_ms),
                    failed_attempts: u32::try_from(row.failed_attempts).unwrap_or(0),
                    ..Extra::default()
                });
                for child in children {
                    children::merge(&mut extra.children, row.id, child);
                }
                extra
            });
        Self {
            row: LiveRow::of(row),
            phase: Phase::Created,
            extra,
            poll_generation: 0,
            end_attempts: 0,
            restarts: 0,
            write_failures: 0,
            poll_backoff: 0,
            flags: Flags::of(rules, resumed, cancelled),
        }
    }

    pub(crate) fn row(&self) -> &LiveRow {
        &self.row
    }

    pub(crate) fn id(&self) -> CommandId {
        self.row.id
    }

    /// The children known so far, in submission order.
    pub(crate) fn children(&self) -> &[ChildView] {
        self.extra.as_ref().map_or(&[], |e| &e.children)
    }

    pub(crate) fn return_value(&self) -> Option<&JsonPayload> {
        self.extra.as_ref().and_then(|e| e.return_value.as_ref())
    }

    pub(crate) fn failure_reason(&self) -> Option<&str> {
        self.extra
            .as_ref()
            .and_then(|e| e.failure_reason.as_deref())
    }

    /// End attempts so far (the context shows the next one's number).
    pub(crate) fn end_attempts(&self) -> u32 {
        u32::from(self.end_attempts)
    }

    /// Rebuilt from its row since its status was last committed.
    pub(crate) fn resumed(&self) -> bool {
        self.flags.has(Flags::RESUMED)
    }

    /// A write, a call, a read or a restart is in flight (or waits to be
    /// retried): lifecycle steps never overlap.
    pub(crate) fn is_busy(&self) -> bool {
        matches!(
            self.phase,
            Phase::Writing(_)
                | Phase::Calling(_)
                | Phase::CommittingEnd(_)
                | Phase::CheckingEnd(_)
                | Phase::Reloading
                | Phase::Fetching
                | Phase::Restarting
        )
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished | Phase::Gone | Phase::Fenced)
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Takes `input` at `env.now`; what to do goes into `effects`, in order.
    pub(crate) fn handle(
        &mut self,
        input: Input,
        env: &Env<'_>,
        effects: &mut impl Extend<Effect>,
    ) {
        let mut fx = Sink(effects);
        if !env.may_act && !matches!(input, Input::Restarted) {
            // Nothing acts once the host may not (its lease ran out,
            // another host may run this command now): not
            // even on what was in flight. An end transaction still open is
            // rolled back.
            if let Input::Returned(returned) = &input
                && returned.end_tx
            {
                fx.push(Effect::RollbackEndTx);
            }
            return self.fence();
        }
        match input {
            Input::Started => match self.phase {
                Phase::Created => self.advance(env, &mut fx, false),
                Phase::Restarting => {
                    // Reload first: the command value and the row may have
                    // moved on since this incarnation read them.
                    self.flags.set(Flags::RESUMED, true);
                    self.phase = Phase::Reloading;
                    fx.push(Effect::Reload);
                }
                _ => {}
            },
            Input::Restarted => {
                // Futures and timers died with the old context.
                self.flags.set(Flags::REEVALUATE, false);
                self.poll_backoff = 0;
                if !self.is_finished() {
                    self.phase = Phase::Restarting;
                }
            }
            Input::Reloaded(reloaded) => self.reloaded(*reloaded, env, &mut fx),
            Input::RowVanished => {
                if matches!(self.phase, Phase::Reloading) {
                    warn!(command_id = %self.id(), "row vanished while the command was live; stopping it");
                    self.phase = Phase::Gone;
                }
            }
            Input::Fetched(result) => {
                if !matches!(self.phase, Phase::Fetching) {
                    return;
                }
                self.phase = Phase::Idle;
                match result {
                    Ok(()) => self.flags.set_value(Value::Present),
                    Err(reason) => {
                        self.flags.set_value(Value::Undecodable);
                        self.extra_mut().undecodable = Some(reason);
                    }
                }
                self.advance(env, &mut fx, false);
            }
            Input::RowChecked { ended_and_notified } => {
                self.row_checked(ended_and_notified, env, &mut fx)
            }
            Input::ReadFailed { error } => {
                if matches!(
                    self.phase,
                    Phase::Reloading | Phase::Fetching | Phase::CheckingEnd(_)
                ) {
                    // Still busy while waiting: see `Phase::Reloading`.
                    error!(command_id = %self.id(), error = %error, "cannot read the command's row; retrying");
                    fx.push(Effect::SetTimer {
                        timer: Timer::Read,
                        delay: env.config.max_poll_interval,
                    });
                }
            }
            Input::WriteAcked => self.write_acked(env, &mut fx),
            Input::WriteFailed {
                error,
                fenced: true,
            } => {
                warn!(command_id = %self.id(), error = %error, "status change refused: this host may not act; the command stops here and is rebuilt from its row");
                self.fence();
            }
            Input::WriteFailed { error, .. } => self.write_failed(error, env, &mut fx),
            Input::PollDue { generation } => {
                if matches!(self.phase, Phase::PollArmed)
                    && generation == u32::from(self.poll_generation)
                {
                    self.phase = Phase::Idle;
                    if self.row.status == CommandStatus::NotStarted {
                        // A delayed start (or the next try of execute) is due.
                        self.advance(env, &mut fx, false);
                    } else {
                        self.evaluate(env, &mut fx);
                    }
                }
            }
            Input::TimerFired(timer) => self.timer_fired(timer, &mut fx),
            Input::ChildEnded(child) => {
                let id = self.id();
                children::merge(&mut self.extra_mut().children, id, child);
                if matches!(self.phase, Phase::EndWaitsForChildren) {
                    self.phase = Phase::Idle;
                    self.end_action(&mut fx);
                } else {
                    // Push, not poll: re-evaluate at once.
                    self.evaluate(env, &mut fx);
                }
            }
            Input::Cancel => self.cancel(env, &mut fx),
            Input::Returned(returned) => self.returned(returned, env, &mut fx),
            Input::EndCommitted(result) => self.end_committed(result, env, &mut fx),
        }
    }

    /// Stops acting for good (see [`Phase::Fenced`]).
    fn fence(&mut self) {
        if !matches!(self.phase, Phase::Finished | Phase::Gone | Phase::Fenced) {
            debug!(command_id = %self.id(), "host may not act: command stops here");
            self.phase = Phase::Fenced;
        }
    }

    /// Takes the next lifecycle step for the committed state. Every step
    /// ends by calling this again (or by arming a timer that will).
    /// `may_execute`: the row went NOT_STARTED → ACTIVE in this incarnation.
    fn advance(
        &mut self,
        env: &Env<'_>,
        fx: &mut Sink<'_, impl Extend<Effect>>,
        may_execute: bool,
    ) {
        if self.is_busy() || self.is_finished() {
            return;
        }
        if matches!(self.phase, Phase::EndRetryDue) {
            // The end action keeps its own schedule: nothing starts a retry
            // early (a Cancel once did, running the end method twice).
            return;
        }
        if self.fail_if_cancelled(fx) {
            return;
        }
        self.phase = Phase::Idle;
        let id = self.id();
        match self.row.status {
            CommandStatus::NotStarted => {
                if let Some(reason) = self.extra.as_ref().and_then(|e| e.skip.clone()) {
                    self.write(
                        fx,
                        fail(id, CommandStatus::Failed, reason),
                        false,
                        Then::Advance,
                    );
                } else if let Some(wait) = self.not_yet(env) {
                    // Delayed: one entry in the shared poll timers, like any
                    // idle command's next poll.
                    self.schedule_at(wait, fx);
                } else {
                    let mut update = CommandUpdate::new(id);
                    update.status = Some(CommandStatus::Active);
                    self.write(fx, update, false, Then::Execute);
                }
            }
            CommandStatus::Active if !self.row.executed => {
                if may_execute || self.flags.has(Flags::RERUN) {
                    self.call_execute(fx);
                } else {
                    // oVirt 1f9cf92ddd0 / c01ac673388: nobody knows how far
                    // an interrupted execute got, so the command fails.
                    let reason = match self.extra.as_mut().and_then(|e| e.last_panic.take()) {
                        Some(panic) => panic,
                        None => {
                            "execute was interrupted by a restart before it completed".to_owned()
                        }
                    };
                    let update = fail(id, CommandStatus::ExecutionFailed, reason);
                    self.write(fx, update, false, Then::Advance);
                }
            }
            CommandStatus::Active => self.evaluate(env, fx),
            CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::ExecutionFailed => {
                self.end_action(fx)
            }
            CommandStatus::Unknown => {
                let reason = "status was UNKNOWN when the command was loaded".to_owned();
                self.write(
                    fx,
                    fail(id, CommandStatus::Failed, reason),
                    false,
                    Then::Advance,
                );
            }
            CommandStatus::EndedSuccessfully | CommandStatus::EndedWithFailure => {
                if self.row.callback_notified {
                    debug!(command_id = %id, status = %self.row.status, "command finished");
                    self.phase = Phase::Finished;
                    fx.push(Effect::Finished);
                } else {
                    let mut update = CommandUpdate::new(id);
                    update.notified = Some(true);
                    self.write(fx, update, false, Then::Advance);
                }
            }
        }
    }

    /// A cancelled command that has not reached its outcome fails now.
    fn fail_if_cancelled(&mut self, fx: &mut Sink<'_, impl Extend<Effect>>) -> bool {
        if self.flags.has(Flags::CANCELLED) && self.is_open() {
            debug!(command_id = %self.id(), "cancelled");
            let update = fail(self.id(), CommandStatus::Failed, CANCELLED.to_owned());
            self.write(fx, update, false, Then::Advance);
            true
        } else {
            false
        }
    }

    /// The outcome is not known yet.
    fn is_open(&self) -> bool {
        matches!(
            self.row.status,
            CommandStatus::NotStarted | CommandStatus::Active
        )
    }

    /// Why the command value is missing.
    fn lost_reason(&self) -> String {
        self.extra
            .as_ref()
            .and_then(|e| e.undecodable.clone())
            .unwrap_or_else(|| "the command's state was lost".to_owned())
    }

    fn call_execute(&mut self, fx: &mut Sink<'_, impl Extend<Effect>>) {
        if self.flags.value() != Value::Present {
            let update = fail(
                self.id(),
                CommandStatus::ExecutionFailed,
                self.lost_reason(),
            );
            return self.write(fx, update, false, Then::Advance);
        }
        self.phase = Phase::Calling(Step::Execute);
        fx.push(Effect::Call(Call::Execute));
    }

    /// The poll step: decide from the children, then ask the command.
    fn evaluate(&mut self, env: &Env<'_>, fx: &mut Sink<'_, impl Extend<Effect>>) {
        if self.is_busy() {
            self.flags.set(Flags::REEVALUATE, true);
            return;
        }
        if self.row.status != CommandStatus::Active || !self.row.executed || self.is_finished() {
            return;
        }
        self.flags.set(Flags::REEVALUATE, false);
        if self.fail_if_cancelled(fx) {
            return;
        }
        let id = self.id();
        // The life time runs from the start: a delayed command's (or a
        // retried execute's) clock starts at its `not_before`.
        let started_ms = self
            .extra
            .as_ref()
            .and_then(|e| e.not_before_ms)
            .map_or(self.row.created_ms, |at| at.max(self.row.created_ms));
        let age_ms = env.now.timestamp_millis().saturating_sub(started_ms);
        let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or_default());
        if age > env.life_time {
            let reason = format!("exceeded its life time of {:?}", env.life_time);
            warn!(command_id = %id, "{reason}");
            return self.write(
                fx,
                fail(id, CommandStatus::Failed, reason),
                false,
                Then::Advance,
            );
        }
        // Children first: a parent decides only once every child has
        // *ended* (oVirt 7340c94ef5b: SUCCEEDED is not done).
        if self.flags.has(Flags::SERIAL) {
            self.start_serial_children(false, fx);
        }
        if children::any_open(self.children()) {
            // Children push their ends; the timer is only a safety net, and
            // one already armed will do (re-arming it for every child's end
            // costs a parent a timer per child under a burst).
            if !matches!(self.phase, Phase::PollArmed) {
                self.schedule_poll(env, fx);
            }
            return;
        }
        self.phase = Phase::Idle;
        if let Some(reason) = children::failure(self.children()) {
            return self.write(
                fx,
                fail(id, CommandStatus::Failed, reason),
                false,
                Then::Advance,
            );
        }
        if self.flags.value() != Value::Present {
            let update = fail(id, CommandStatus::Failed, self.lost_reason());
            return self.write(fx, update, false, Then::Advance);
        }
        metrics::counter!(crate::metrics::POLLS).increment(1);
        self.phase = Phase::Calling(Step::Poll);
        fx.push(Effect::Call(Call::Poll));
    }

    /// Serial mode: start the next child when none is running; once one
    /// failed (or the parent itself did), fail the ones not started without
    /// running them.
    fn start_serial_children(
        &mut self,
        parent_failed: bool,
        fx: &mut Sink<'_, impl Extend<Effect>>,
    ) {
        let Some(extra) = self.extra.as_mut() else {
            return;
        };
        for (id, skip) in children::serial_starts(extra, parent_failed) {
            fx.push(Effect::StartChild { id, skip });
        }
    }

    /// How long until the committed `not_before`, when it is in the future.
    fn not_yet(&self, env: &Env<'_>) -> Option<Duration> {
        let at = self.extra.as_ref()?.not_before_ms?;
        let wait = at.saturating_sub(env.now.timestamp_millis());
        u64::try_from(wait)
            .ok()
            .filter(|w| *w > 0)
            .map(Duration::from_millis)
    }

    /// Transient failures in a row of the current step, as committed.
    fn failed_attempts(&self) -> u32 {
        self.extra.as_ref().map_or(0, |e| e.failed_attempts)
    }

    /// Asks for a [`Input::PollDue`] after exactly `delay` (a delayed
    /// start, a retry's backoff); replaces any poll asked for before.
    fn schedule_at(&mut self, delay: Duration, fx: &mut Sink<'_, impl Extend<Effect>>) {
        self.poll_generation = self.poll_generation.wrapping_add(1);
        self.phase = Phase::PollArmed;
        fx.push(Effect::SchedulePoll {
            generation: u32::from(self.poll_generation),
            delay,
        });
    }

    /// The update that records a transient failure of the current step and,
    /// when the policy allows another try, when it comes (`None`: the tries
    /// are used up).
    fn transient_failure(&self, error: &str, env: &Env<'_>) -> (CommandUpdate, Option<Duration>) {
        let failed = self.failed_attempts().saturating_add(1);
        let mut update = CommandUpdate::new(self.id());
        update.retry = Some(Box::new(crate::store::RetryUpdate {
            failed_attempts: i32::try_from(failed).unwrap_or(i32::MAX),
            last_error: Some(updates::storable(error.to_owned())),
            not_before: None,
        }));
        if env.retry.retries_after(failed) {
            let wait = env.retry.backoff(self.id(), failed);
            warn!(command_id = %self.id(), error = %error, attempt = failed,
                max_attempts = env.retry.max_attempts, retry_in = ?wait, "transient error; will try again");
            (update, Some(wait))
        } else {
            (update, None)
        }
    }

    /// Asks for the next poll after the current delay (which then doubles,
    /// up to `max_poll_interval`); replaces any poll asked for before.
    fn schedule_poll(&mut self, env: &Env<'_>, fx: &mut Sink<'_, impl Extend<Effect>>) {
        let config = env.config;
        let delay = config
            .poll_interval
            .saturating_mul(1 << self.poll_backoff)
            .min(config.max_poll_interval);
        if delay < config.max_poll_interval {
            self.poll_backoff = (self.poll_backoff + 1).min(31);
        }
        self.poll_generation = self.poll_generation.wrapping_add(1);
        self.phase = Phase::PollArmed;
        fx.push(Effect::SchedulePoll {
            generation: u32::from(self.poll_generation),
            delay,
        });
    }

    /// The end action for SUCCEEDED / FAILED / EXECUTION_FAILED: the end
    /// method, once every child has ended.
    fn end_action(&mut self, fx: &mut Sink<'_, impl Extend<Effect>>) {
        if self.is_busy() || self.is_finished() || !self.row.status.awaits_end_action() {
            return;
        }
        // A parent ends only after its children ended (oVirt 78ab1ef4249:
        // EXECUTION_FAILED parents with live children). A failed serial
        // parent first fails the children it never started, so the wait is
        // short.
        if self.flags.has(Flags::SERIAL) {
            self.start_serial_children(self.row.status != CommandStatus::Succeeded, fx);
        }
        if children::any_open(self.children()) {
            debug!(command_id = %self.id(), "end action waits for the children to end");
            self.phase = Phase::EndWaitsForChildren;
            return;
        }
        match self.flags.value() {
            Value::Present => {
                let succeeded = self.row.status == CommandStatus::Succeeded;
                self.phase = Phase::Calling(Step::End { succeeded });
                fx.push(Effect::Call(Call::End { succeeded }));
            }
            Value::Lost => {
                // A panic took it and no restart reloaded it (the restart
                // limit was reached): read it back first.
                self.phase = Phase::Fetching;
                fx.push(Effect::FetchCommand);
            }
            Value::Undecodable => {
                // Without the command value no end method can run.
                let reason = format!("end action skipped: {}", self.lost_reason());
                let update = ended(self.id(), false, Some(reason));
                self.write(fx, update, false, Then::Advance);
            }
        }
    }

    /// Hands `update` to the writer; it is applied to the machine's row only
    /// once it is committed.
    fn write(
        &mut self,
        fx: &mut Sink<'_, impl Extend<Effect>>,
        update: CommandUpdate,
        encode_parameters: bool,
        then: Then,
    ) {
        let pending = Pending {
            update,
            encode_parameters,
            then,
        };
        fx.push(self.write_effect(&pending));
        self.phase = Phase::Writing(Box::new(pending));
    }

    fn write_effect(&self, pending: &Pending) -> Effect {
        Effect::Write {
            update: pending.update.clone(),
            encode_parameters: pending.encode_parameters,
            ends: updates::ends(&self.row, &pending.update),
        }
    }

    fn write_acked(&mut self, env: &Env<'_>, fx: &mut Sink<'_, impl Extend<Effect>>) {
        let Phase::Writing(pending) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        self.write_failures = 0;
        let Pending { update, then, .. } = *pending;
        self.apply(update, fx);
        match then {
            Then::Advance => self.advance(env, fx, false),
            Then::Execute => self.advance(env, fx, true),
            Then::PollLater => {
                let failed = self.failed_attempts();
                if self.flags.has(Flags::REEVALUATE) {
                    self.evaluate(env, fx);
                } else if failed > 0 {
                    let wait = env.retry.backoff(self.id(), failed);
                    self.schedule_at(wait, fx);
                } else {
                    self.schedule_poll(env, fx);
                }
            }
            Then::OnExecuted => {
                if self.flags.value() == Value::Present {
                    self.phase = Phase::Calling(Step::OnExecuted);
                    fx.push(Effect::Call(Call::OnExecuted));
                } else {
                    let update = fail(self.id(), CommandStatus::Failed, self.lost_reason());
                    self.write(fx, update, false, Then::Advance);
                }
            }
        }
    }

    fn write_failed(
        &mut self,
        error: String,
        env: &Env<'_>,
        fx: &mut Sink<'_, impl Extend<Effect>>,
    ) {
        let Phase::Writing(pending) = &self.phase else {
            return;
        };
        let id = self.id();
        if pending.then == Then::OnExecuted {
            error!(command_id = %id, error = %error, "executed flag not persisted; failing the command");
            let reason = if self.flags.has(Flags::CANCELLED) {
                CANCELLED.to_owned()
            } else {
                format!("could not record that execute completed: {error}")
            };
            return self.write(
                fx,
                fail(id, CommandStatus::ExecutionFailed, reason),
                false,
                Then::Advance,
            );
        }
        // The writer keeps retrying an unreachable database itself; this is
        // an error of this write alone. Try again later, keep the rest
        // going, but not forever: after a few refusals the command ends
        // with failure instead.
        self.write_failures = self.write_failures.saturating_add(1);
        if self.write_failures >= MAX_WRITE_FAILURES
            && let Some(fallback) = updates::fallback(
                &self.row,
                &pending.update,
                pending.encode_parameters,
                &error,
            )
        {
            error!(command_id = %id, error = %error, attempts = self.write_failures,
                "the database refuses this status change; ending the command with failure instead");
            self.write_failures = 0;
            return self.write(fx, fallback, false, Then::Advance);
        }
        error!(command_id = %id, error = %error, attempt = self.write_failures, "status change not persisted; retrying later");
        fx.push(Effect::SetTimer {
            timer: Timer::RefusedWrite,
            delay: env.config.max_poll_interval,
        });
    }

    /// Reflects a committed update.
    fn apply(&mut self, update: CommandUpdate, fx: &mut Sink<'_, impl Extend<Effect>>) {
        if let Some(status) = update.status
            && status != self.row.status
        {
            debug!(command_id = %self.id(), from = %self.row.status, to = %status, "status committed");
            fx.push(Effect::StatusCommitted {
                from: self.row.status,
                to: status,
            });
            self.row.status = status;
            self.flags.set(Flags::RESUMED, false);
        }
        if let Some(executed) = update.executed {
            self.row.executed = executed;
        }
        if let Some(notified) = update.notified {
            self.row.callback_notified = notified;
        }
        // The parameters: the live value is the command itself.
        if let Some(value) = update.return_value {
            self.extra_mut().return_value = Some(value);
        }
        if let Some(reason) = update.failure_reason {
            self.extra_mut().failure_reason = Some(reason);
        }
        if let Some(retry) = update.retry {
            let extra = self.extra_mut();
            extra.failed_attempts = u32::try_from(retry.failed_attempts).unwrap_or(0);
            if let Some(at) = retry.not_before {
                extra.not_before_ms = Some(ceil_ms(at));
            }
        }
    }

    fn timer_fired(&mut self, timer: Timer, fx: &mut Sink<'_, impl Extend<Effect>>) {
        match (timer, &self.phase) {
            (Timer::EndAttempt, Phase::EndRetryDue) => {
                self.phase = Phase::Idle;
                self.end_action(fx);
            }
            (Timer::RefusedWrite, Phase::Writing(pending)) => {
                let effect = self.write_effect(pending);
                fx.push(effect);
            }
            (Timer::Read, Phase::Reloading) => fx.push(Effect::Reload),
            (Timer::Read, Phase::Fetching) => fx.push(Effect::FetchCommand),
            (Timer::Read, Phase::CheckingEnd(_)) => fx.push(Effect::CheckRow),
            _ => {} // a timer no longer wanted
        }
    }

    fn cancel(&mut self, env: &Env<'_>, fx: &mut Sink<'_, impl Extend<Effect>>) {
        if self.flags.has(Flags::CANCELLED) {
            return;
        }
        self.flags.set(Flags::CANCELLED, true);
        // The whole hierarchy below is cancelled, including children whose
        // rows were committed after the request marked the tree in the
        // database (children submitted later are born cancelled).
        let open = children::open_ids(self.children());
        if !open.is_empty() {
            fx.push(Effect::CancelChildren(open));
        }
        if !self.is_open() || self.is_finished() {
            // The outcome is known: cancellation changes nothing, and the
            // end action keeps its own schedule.
            return;
        }
        if self.is_busy() {
            // A running step sees the flag through its context; once it
            // returns, the command is evaluated at once (not at its next
            // poll) and fails as cancelled.
            self.flags.set(Flags::REEVALUATE, true);
        } else {
            if matches!(self.phase, Phase::PollArmed) {
                self.phase = Phase::Idle;
            }
            self.advance(env, fx, false);
        }
    }

    fn returned(
        &mut self,
        returned: Returned,
        env: &Env<'_>,
        fx: &mut Sink<'_, impl Extend<Effect>>,
    ) {
        let Phase::Calling(step) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        let Returned {
            outcome,
            submitted,
            end_tx,
            store_unavailable,
        } = returned;
        if !submitted.is_empty() {
            let id = self.id();
            children::record_submitted(&mut self.extra_mut().children, id, &submitted);
        }
        let id = self.id();
        match step {
            Step::Execute => match outcome {
                Outcome::Ok | Outcome::Running | Outcome::Succeeded(_) => {
                    let mut update = CommandUpdate::new(id);
                    update.executed = Some(true);
                    if self.failed_attempts() > 0 {
                        // A new step: its failures are counted afresh.
                        update.retry = Some(Box::default());
                    }
                    self.write(fx, update, true, Then::OnExecuted);
                }
                Outcome::Transient(e) if !self.flags.has(Flags::CANCELLED) => {
                    let (mut update, retry_in) = self.transient_failure(&e, env);
                    if let Some(wait) = retry_in {
                        // Back to NOT_STARTED, due after the backoff: a
                        // restart meanwhile finds a command that waits to
                        // start, not one interrupted inside execute.
                        update.status = Some(CommandStatus::NotStarted);
                        let at = env.now + wait;
                        if let Some(retry) = update.retry.as_mut() {
                            retry.not_before =
                                Some(DateTime::from_timestamp_millis(ceil_ms(at)).unwrap_or(at));
                        }
                    } else {
                        let tries = update.retry.as_ref().map_or(0, |r| r.failed_attempts);
                        warn!(command_id = %id, error = %e, tries, "execute failed transiently on every try");
                        update.status = Some(CommandStatus::ExecutionFailed);
                        update.failure_reason = Some(updates::runtime_reason(format!(
                            "execute failed {tries} times in a row (transient errors); last error: {e}"
                        )));
                    }
                    self.write(fx, update, true, Then::Advance);
                }
                Outcome::Panicked(panic) => {
                    error!(command_id = %id, panic = %panic, "execute panicked; restarting the command from its row");
                    self.restart_after_panic(format!("execute panicked: {panic}"), env, fx);
                }
                Outcome::Err(e) | Outcome::Failed(e) | Outcome::Transient(e) => {
                    warn!(command_id = %id, error = %e, "execute failed");
                    let reason = if self.flags.has(Flags::CANCELLED) {
                        CANCELLED.to_owned()
                    } else {
                        e
                    };
                    let update = fail(id, CommandStatus::ExecutionFailed, reason);
                    self.write(fx, update, true, Then::Advance);
                }
            },
            Step::OnExecuted => {
                if let Outcome::Panicked(panic) = outcome {
                    // The hook is informational; a panic in it does not undo
                    // execute.
                    error!(command_id = %id, panic = %panic, "on_executed panicked; ignored");
                }
                // First look right away: quick commands finish without
                // waiting a poll interval.
                self.advance(env, fx, false);
            }
            Step::Poll
                if self.flags.has(Flags::CANCELLED)
                    && matches!(
                        outcome,
                        Outcome::Succeeded(_)
                            | Outcome::Failed(_)
                            | Outcome::Err(_)
                            | Outcome::Transient(_)
                    ) =>
            {
                // Cancelled while the poll ran: the outcome was not known
                // when the cancel came, so the command ends "cancelled"
                // whatever the poll found (as `ctx.is_cancelled()` promises).
                let update = fail(id, CommandStatus::Failed, CANCELLED.to_owned());
                self.write(fx, update, true, Then::Advance);
            }
            Step::Poll => match outcome {
                Outcome::Running | Outcome::Ok if self.failed_attempts() > 0 => {
                    // The poll works again: its failures are counted afresh.
                    let mut update = CommandUpdate::new(id);
                    update.retry = Some(Box::default());
                    self.write(fx, update, false, Then::PollLater);
                }
                Outcome::Transient(e) => {
                    let (mut update, retry_in) = self.transient_failure(&e, env);
                    if retry_in.is_some() {
                        self.write(fx, update, true, Then::PollLater);
                    } else {
                        let tries = update.retry.as_ref().map_or(0, |r| r.failed_attempts);
                        warn!(command_id = %id, error = %e, tries, "poll failed transiently on every try");
                        update.status = Some(CommandStatus::Failed);
                        update.failure_reason = Some(updates::runtime_reason(format!(
                            "poll failed {tries} times in a row (transient errors); last error: {e}"
                        )));
                        self.write(fx, update, true, Then::Advance);
                    }
                }
                Outcome::Running | Outcome::Ok => {
                    if self.flags.has(Flags::REEVALUATE) {
                        self.evaluate(env, fx);
                    } else {
                        self.schedule_poll(env, fx);
                    }
                }
                Outcome::Succeeded(output) => {
                    let mut update = CommandUpdate::new(id);
                    let reset = self.failed_attempts() > 0;
                    match output {
                        Ok(value) => {
                            update.status = Some(CommandStatus::Succeeded);
                            update.return_value = Some(value);
                        }
                        Err(e) => {
                            update = fail(
                                id,
                                CommandStatus::Failed,
                                format!("output does not serialize: {e}"),
                            );
                        }
                    }
                    if reset {
                        // The step ended: its failures are counted afresh.
                        update.retry = Some(Box::default());
                    }
                    self.write(fx, update, true, Then::Advance);
                }
                Outcome::Failed(reason) => {
                    self.write(
                        fx,
                        fail(id, CommandStatus::Failed, reason),
                        true,
                        Then::Advance,
                    );
                }
                Outcome::Err(e) => {
                    // oVirt 449abee7b07: an error in polling fails the
                    // command; it is never polled again.
                    warn!(command_id = %id, error = %e, "poll failed");
                    let update = fail(id, CommandStatus::Failed, format!("poll failed: {e}"));
                    self.write(fx, update, true, Then::Advance);
                }
                Outcome::Panicked(panic) => {
                    error!(command_id = %id, panic = %panic, "poll panicked; restarting the command from its row");
                    self.restart_after_panic(format!("poll panicked: {panic}"), env, fx);
                }
            },
            Step::End { succeeded } => {
                self.end_attempts = self.end_attempts.saturating_add(1);
                let error = match outcome {
                    Outcome::Ok | Outcome::Running | Outcome::Succeeded(_) => None,
                    Outcome::Err(e) | Outcome::Failed(e) | Outcome::Transient(e) => Some(e),
                    Outcome::Panicked(panic) => Some(format!("end method panicked: {panic}")),
                };
                match error {
                    None => {
                        let update = ended(id, succeeded, None);
                        if end_tx {
                            let pending = Pending {
                                update,
                                encode_parameters: true,
                                then: Then::Advance,
                            };
                            fx.push(Effect::CommitEndTx {
                                update: pending.update.clone(),
                                encode_parameters: true,
                            });
                            self.phase = Phase::CommittingEnd(Box::new(pending));
                        } else {
                            self.write(fx, update, true, Then::Advance);
                        }
                    }
                    Some(error) => {
                        if end_tx {
                            // Its writes must not survive the failed attempt.
                            fx.push(Effect::RollbackEndTx);
                        }
                        if store_unavailable {
                            self.retry_end_after_outage(&error, env, fx);
                        } else {
                            self.end_method_failed(error, env, fx);
                        }
                    }
                }
            }
            Step::Finalize => {
                let error = self
                    .extra
                    .as_mut()
                    .and_then(|e| e.end_error.take())
                    .unwrap_or_default();
                if let Outcome::Panicked(panic) = outcome {
                    error!(command_id = %id, panic = %panic, "finalize panicked; ignored");
                }
                let reason = format!("end method failed {} times: {error}", self.end_attempts);
                self.write(fx, ended(id, false, Some(reason)), true, Then::Advance);
            }
        }
    }

    fn reloaded(
        &mut self,
        reloaded: Reloaded,
        env: &Env<'_>,
        fx: &mut Sink<'_, impl Extend<Effect>>,
    ) {
        if !matches!(self.phase, Phase::Reloading) {
            return;
        }
        self.phase = Phase::Idle;
        let Reloaded {
            row,
            children,
            decoded,
        } = reloaded;
        match decoded {
            Ok(()) => self.flags.set_value(Value::Present),
            Err(reason) => {
                self.flags.set_value(Value::Undecodable);
                self.extra_mut().undecodable = Some(reason);
            }
        }
        let live = LiveRow::of(&row);
        if live.status != self.row.status {
            fx.push(Effect::StatusCommitted {
                from: self.row.status,
                to: live.status,
            });
        }
        self.row = live;
        let CommandEntity {
            return_value,
            failure_reason,
            not_before,
            failed_attempts,
            ..
        } = *row;
        let id = self.id();
        let extra = self.extra_mut();
        extra.return_value = return_value;
        extra.failure_reason = failure_reason;
        extra.not_before_ms = not_before.map(ceil_ms);
        extra.failed_attempts = u32::try_from(failed_attempts).unwrap_or(0);
        for child in children {
            children::merge(&mut extra.children, id, child);
        }
        self.advance(env, fx, false);
    }

    fn end_committed(
        &mut self,
        result: Result<(), EndCommitError>,
        env: &Env<'_>,
        fx: &mut Sink<'_, impl Extend<Effect>>,
    ) {
        let Phase::CommittingEnd(pending) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        match result {
            Ok(()) => {
                self.apply(pending.update, fx);
                self.advance(env, fx, false);
            }
            Err(EndCommitError { error, fenced, .. }) if fenced => {
                warn!(command_id = %self.id(), error = %error, "end not committed: another host owns this command now");
                self.fence();
            }
            Err(EndCommitError {
                error, transient, ..
            }) => {
                // A failed COMMIT may still have committed (the answer was
                // lost): the row decides.
                warn!(command_id = %self.id(), error = %error, "commit of the end transaction failed; checking the row");
                self.phase = Phase::CheckingEnd(Box::new(InDoubt {
                    pending: *pending,
                    error,
                    transient,
                }));
                fx.push(Effect::CheckRow);
            }
        }
    }

    fn row_checked(
        &mut self,
        ended_and_notified: bool,
        env: &Env<'_>,
        fx: &mut Sink<'_, impl Extend<Effect>>,
    ) {
        let Phase::CheckingEnd(doubt) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        let InDoubt {
            pending,
            error,
            transient,
        } = *doubt;
        if ended_and_notified {
            // Ended means committed: the end's effects are in, once.
            self.apply(pending.update, fx);
            return self.advance(env, fx, false);
        }
        if self.flags.value() != Value::Present {
            let update = ended(self.id(), false, Some(self.lost_reason()));
            return self.write(fx, update, false, Then::Advance);
        }
        let error = format!("the end could not be committed: {error}");
        if transient {
            self.retry_end_after_outage(&error, env, fx);
        } else {
            self.end_method_failed(error, env, fx);
        }
    }

    /// The end action could not reach the database: try again later without
    /// counting an attempt.
    fn retry_end_after_outage(
        &mut self,
        error: &str,
        env: &Env<'_>,
        fx: &mut Sink<'_, impl Extend<Effect>>,
    ) {
        self.end_attempts = self.end_attempts.saturating_sub(1);
        let delay = env.config.max_poll_interval;
        warn!(command_id = %self.id(), error = %error, retry_in = ?delay,
            "end action could not reach the database; will retry (attempt not counted)");
        self.phase = Phase::EndRetryDue;
        fx.push(Effect::SetTimer {
            timer: Timer::EndAttempt,
            delay,
        });
    }

    /// An end method attempt failed: retry with backoff, or, after the last
    /// attempt, run `finalize` and end with failure.
    fn end_method_failed(
        &mut self,
        error: String,
        env: &Env<'_>,
        fx: &mut Sink<'_, impl Extend<Effect>>,
    ) {
        let config = env.config;
        if u32::from(self.end_attempts) < config.end_attempts.min(u32::from(u16::MAX)) {
            // oVirt 8fe166893fd / 67a84bfb19f: retry, but not forever.
            let delay = config
                .end_retry_delay
                .saturating_mul(1 << self.end_attempts.saturating_sub(1).min(16))
                .min(config.max_poll_interval);
            warn!(command_id = %self.id(), attempt = self.end_attempts, error = %error, retry_in = ?delay, "end method failed; will retry");
            metrics::counter!(crate::metrics::END_RETRIES).increment(1);
            self.phase = Phase::EndRetryDue;
            fx.push(Effect::SetTimer {
                timer: Timer::EndAttempt,
                delay,
            });
            return;
        }
        error!(command_id = %self.id(), attempts = self.end_attempts, error = %error, "end method failed on every attempt; finalizing");
        self.extra_mut().end_error = Some(error.clone());
        self.phase = Phase::Calling(Step::Finalize);
        fx.push(Effect::Call(Call::Finalize {
            error: error.into(),
        }));
    }

    /// A panic in command code: stop, so that the supervisor restarts the
    /// actor, which reloads its state from the database. After too many
    /// restarts the command fails instead.
    fn restart_after_panic(
        &mut self,
        reason: String,
        env: &Env<'_>,
        fx: &mut Sink<'_, impl Extend<Effect>>,
    ) {
        self.restarts = self.restarts.saturating_add(1);
        self.flags.set_value(Value::Lost);
        fx.push(Effect::DropCommand);
        self.extra_mut().last_panic = Some(reason.clone());
        metrics::counter!(crate::metrics::RESTARTS).increment(1);
        if u32::from(self.restarts) > env.config.max_restarts.min(u32::from(u8::MAX - 1)) {
            let status = if self.row.executed {
                CommandStatus::Failed
            } else {
                CommandStatus::ExecutionFailed
            };
            let reason = if self.flags.has(Flags::CANCELLED) && self.is_open() {
                CANCELLED.to_owned()
            } else {
                format!("{reason} (gave up after {} restarts)", self.restarts - 1)
            };
            return self.write(fx, fail(self.id(), status, reason), false, Then::Advance);
        }
        self.phase = Phase::Restarting;
        fx.push(Effect::Stop);
    }
}

/// Boolean facts packed into one byte: a hundred thousand idle commands
/// each carry them.
#[derive(Debug, Clone, Copy)]
struct Flags(u8);

impl Flags {
    /// Children run one after another (the type's rule).
    const SERIAL: u8 = 1;
    /// An interrupted `execute` runs again (the type's rule).
    const RERUN: u8 = 1 << 1;
    /// Cancellation was requested.
    const CANCELLED: u8 = 1 << 2;
    /// A child ended or a cancel came while busy: evaluate again once free.
    const REEVALUATE: u8 = 1 << 3;
    /// Rebuilt from its row since its status was last committed: an end
    /// method may have run in a previous process.
    const RESUMED: u8 = 1 << 4;
    /// Two bits: whether the actor holds the command value ([`Value`]).
    const VALUE_SHIFT: u8 = 5;
    const VALUE_MASK: u8 = 0b11 << Self::VALUE_SHIFT;

    fn of(rules: TypeRules, resumed: bool, cancelled: bool) -> Self {
        let mut flags = Flags(0);
        flags.set(Self::CANCELLED, cancelled);
        flags.set(Self::SERIAL, rules.serial);
        flags.set(Self::RERUN, rules.rerun);
        flags.set(Self::RESUMED, resumed);
        flags
    }

    fn value(self) -> Value {
        match (self.0 & Self::VALUE_MASK) >> Self::VALUE_SHIFT {
            0 => Value::Present,
            1 => Value::Lost,
            _ => Value::Undecodable,
        }
    }

    fn set_value(&mut self, value: Value) {
        let bits = match value {
            Value::Present => 0,
            Value::Lost => 1,
            Value::Undecodable => 2,
        };
        self.0 = (self.0 & !Self::VALUE_MASK) | (bits << Self::VALUE_SHIFT);
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// The caller's effect sink, with a `push` for readability.
struct Sink<'a, E: Extend<Effect>>(&'a mut E);

impl<E: Extend<Effect>> Sink<'_, E> {
    fn push(&mut self, effect: Effect) {
        self.0.extend(std::iter::once(effect));
    }
}
