//! `CommandActor`: one supervised actor per persisted command.
//!
//! It owns the command's live state (nothing else touches it: oVirt's
//! concurrent-modification bugs ff5165fb8be and dc96d1c74b5 cannot happen) and
//! drives the lifecycle:
//!
//! ```text
//! NOT_STARTED ─► ACTIVE ─► execute ─► executed=true ─► Poll ... ─► SUCCEEDED/FAILED
//!   ─► EndAction ─► end method ─► ENDED_* + callback_notified ─► parent told ─► gone
//! ```
//!
//! Every status change goes through the [`StoreWriter`](crate::writer::StoreWriter)
//! and is acted on only after its commit was acknowledged. Polls cost no
//! database round trip: children report their end by message
//! ([`ChildCompleted`]), so a parent re-evaluates at once instead of polling
//! its children's rows.
//!
//! User code runs with panics caught. A panic in `execute` or `poll` stops the
//! actor; its `Supervisor` restarts it, the state is reloaded from the
//! database, and after `max_restarts` panics the command fails. Errors fail the
//! command at once; end methods are retried with backoff up to a cap.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use actix::prelude::*;
use chrono::Utc;
use tracing::{Instrument, Span, debug, error, info_span, warn};

use crate::command::{
    ChildExecution, ChildView, Command, CommandContext, CommandError, InterruptedExecute,
    PollOutcome,
};
use crate::coordinator::{ChildStart, Coordinator};
use crate::messages::{Cancel, ChildCompleted, EndAction, Finished, Inspect, Inspection, Poll};
use crate::model::{CommandEntity, CommandId, CommandStatus, JsonPayload};
use crate::panic::CatchUnwind;
use crate::poll_timers::PollTimers;
use crate::store::{CommandUpdate, EndTransaction, Transition};
use crate::writer::OnCommit;

/// The failure reason of a cancelled command.
pub(crate) const CANCELLED: &str = "cancelled";

/// Times the database may refuse one status change (an error that is not an
/// outage: a constraint, a trigger, a value it cannot store) before the
/// command ends with failure instead. Retrying such a write forever left the
/// command, its parent and every waiter hanging.
pub(crate) const MAX_WRITE_FAILURES: u8 = 3;

/// Longest failure reason the runtime writes of its own (user reasons are
/// stored whole; `text` has no limit, but an error chain can be long).
const MAX_RUNTIME_REASON: usize = 4_000;

/// How an actor comes to life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartKind {
    /// Just submitted in this process: its row is NOT_STARTED and it has no
    /// children yet.
    Fresh,
    /// Rebuilt from its row at start-up: its children are read from the store.
    Rehydrated,
    /// A serial parent's child that will not run because an earlier sibling
    /// failed: it fails with this reason without executing.
    Skip(String),
}

/// Everything an actor starts with besides its row and command value.
pub(crate) struct ActorSetup {
    pub(crate) start: StartKind,
    /// The children's rows, for a command rebuilt at start-up.
    pub(crate) children: Vec<ChildView>,
    /// The committed status and the cancellation flag, shared with the
    /// coordinator's live table.
    pub(crate) shared: Rc<LiveCells>,
    /// The parent's address, when it is live here: the child tells it of its
    /// end directly, one mailbox hop instead of two.
    pub(crate) parent: Option<LiveAddr>,
    /// The coordinator's poll timers.
    pub(crate) timers: PollTimers,
}

impl ActorSetup {
    pub(crate) fn new(start: StartKind, status: CommandStatus, timers: PollTimers) -> Self {
        Self {
            timers,
            start,
            children: Vec::new(),
            shared: Rc::new(LiveCells {
                status: Cell::new(status),
                cancelled: Cell::new(false),
            }),
            parent: None,
        }
    }
}

/// What a live command shares, on its arbiter's thread, with the
/// coordinator (which answers `status()` from it without a message) and with
/// running command code (`ctx.is_cancelled()`). One allocation for both.
pub(crate) struct LiveCells {
    /// The committed status.
    pub(crate) status: Cell<CommandStatus>,
    /// Cancellation was requested.
    pub(crate) cancelled: Cell<bool>,
}

/// What the coordinator keeps of a live command: its address, typed inside,
/// used through this small interface. Holding it keeps the actor's mailbox
/// connected, which is what lets its `Supervisor` restart it; dropping it
/// (when the command finished) lets it stop. One boxed address per command
/// (rather than a `Recipient` per message type) keeps live commands small.
pub(crate) trait LiveHandle: Send {
    fn child_completed(&self, msg: ChildCompleted);
    fn poll(&self, generation: u32);
    fn cancel(&self);
    fn inspector(&self) -> Recipient<Inspect>;
    fn clone_handle(&self) -> LiveAddr;
}

pub(crate) type LiveAddr = Box<dyn LiveHandle + Send>;

impl<C: Command> LiveHandle for Addr<CommandActor<C>> {
    fn child_completed(&self, msg: ChildCompleted) {
        self.do_send(msg);
    }

    fn poll(&self, generation: u32) {
        self.do_send(Poll { generation });
    }

    fn cancel(&self) {
        self.do_send(Cancel);
    }

    fn inspector(&self) -> Recipient<Inspect> {
        self.clone().recipient()
    }

    fn clone_handle(&self) -> LiveAddr {
        Box::new(self.clone())
    }
}

/// What most commands never need, boxed so that it costs an idle command one
/// pointer.
#[derive(Default)]
struct Extra {
    /// Children in submission order, with what this command knows of them.
    children: Vec<ChildView>,
    /// Serial children this command has asked the coordinator to start.
    started_children: Vec<CommandId>,
    /// Fail without running, for this reason (a skipped serial child, or one
    /// cancelled before it started).
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
}

/// What a running command keeps of its row: what its steps read, inline in
/// the actor. The rest (the parameters as stored, timestamps, job and step
/// ids) is in the database, where [`Coordinator::get`] reads a row; the live
/// value of the parameters is the command itself, and its output and
/// failure reason are in [`Extra`].
struct LiveRow {
    id: CommandId,
    root_id: CommandId,
    parent_id: Option<CommandId>,
    created_at: chrono::DateTime<Utc>,
    command_type: i32,
    status: CommandStatus,
    executed: bool,
    callback_notified: bool,
}

impl LiveRow {
    fn of(entity: &CommandEntity) -> Self {
        Self {
            id: entity.id,
            root_id: entity.root(),
            parent_id: entity.parent_id,
            created_at: entity.created_at,
            command_type: entity.command_type,
            status: entity.status,
            executed: entity.executed,
            callback_notified: entity.callback_notified,
        }
    }
}

/// A command's actor. Kept small on purpose: a host may hold a hundred
/// thousand idle ones, and every byte here is in each one's task (the row is
/// boxed, the tracing span exists only when enabled, rare state is boxed).
pub(crate) struct CommandActor<C: Command> {
    /// The command value; `None` while command code runs with it, or after a
    /// panic until it is reloaded.
    command: Option<C>,
    /// The row as last committed, what of it a running command needs.
    row: LiveRow,
    /// Children, skip reason, last panic: `None` for a command that has none.
    extra: Option<Box<Extra>>,
    coordinator: Coordinator,
    /// Polls so far without news: the next one waits `poll_interval` ×
    /// 2^this, up to `max_poll_interval` (one byte rather than a `Duration`).
    poll_backoff: u8,
    /// The coordinator's shared poll timers (no tokio timer per command).
    timers: PollTimers,
    /// The generation of the last poll asked for; a `Poll` of another one is
    /// stale.
    poll_generation: u32,
    /// A poll is asked for and still wanted.
    poll_armed: bool,
    /// The committed status and the cancellation flag, shared with the
    /// coordinator and with every context, so running command code can see
    /// a cancellation.
    shared: Rc<LiveCells>,
    /// The parent's address when it was live at spawn time.
    parent: Option<LiveAddr>,
    /// This command's span, when tracing has it enabled (`None` otherwise:
    /// a disabled `Span` still takes 40 bytes).
    span: Option<Box<Span>>,
    end_attempts: u32,
    restarts: u32,
    /// The database refused the status change in flight this many times in
    /// a row (see [`MAX_WRITE_FAILURES`]).
    write_failures: u8,
    /// True while a write or a call into command code is in flight; lifecycle
    /// steps never overlap.
    busy: bool,
    /// A child ended while busy: evaluate again once free.
    reevaluate: bool,
    /// `execute` may run in this incarnation (the row went NOT_STARTED →
    /// ACTIVE here, or the type opted into re-running).
    may_execute: bool,
    /// The restart after a panic must reload from the database first.
    reload: bool,
    /// Rebuilt from its row since its status was last committed: an end
    /// method may have run in a previous process.
    resumed: bool,
    /// The writer already told the parent of this command's end, right
    /// after the commit.
    parent_told: bool,
    /// The end action is due but waits for children that have not ended: a
    /// parent never ends before its children (oVirt 78ab1ef4249).
    end_waits_for_children: bool,
    finished: bool,
}

impl<C: Command> CommandActor<C> {
    pub(crate) fn new(
        command: C,
        row: Box<CommandEntity>,
        setup: ActorSetup,
        coordinator: Coordinator,
    ) -> Self {
        let ActorSetup {
            start,
            children,
            shared,
            parent,
            timers,
        } = setup;
        let span = info_span!(
            "command",
            id = %row.id,
            r#type = row.command_type,
            parent = row.parent_id.map(tracing::field::display),
            root = %row.root(),
        );
        let has_outcome = row.return_value.is_some() || row.failure_reason.is_some();
        let live_row = LiveRow::of(&row);
        let CommandEntity {
            return_value,
            failure_reason,
            ..
        } = *row;
        let span = (!span.is_disabled()).then(|| Box::new(span));
        let resumed = start == StartKind::Rehydrated;
        let skip = match start {
            StartKind::Skip(reason) => Some(reason),
            StartKind::Fresh | StartKind::Rehydrated => None,
        };
        let extra = (skip.is_some() || !children.is_empty() || has_outcome).then(|| {
            Box::new(Extra {
                children,
                skip,
                return_value,
                failure_reason,
                ..Extra::default()
            })
        });
        Self {
            command: Some(command),
            row: live_row,
            extra,
            coordinator,
            poll_backoff: 0,
            timers,
            poll_generation: 0,
            poll_armed: false,
            shared,
            parent,
            span,
            end_attempts: 0,
            restarts: 0,
            write_failures: 0,
            busy: false,
            reevaluate: false,
            may_execute: false,
            reload: false,
            resumed,
            parent_told: false,
            end_waits_for_children: false,
            finished: false,
        }
    }

    /// The children known so far, in submission order.
    fn children(&self) -> &[ChildView] {
        self.extra.as_ref().map_or(&[], |e| &e.children)
    }

    fn return_value(&self) -> Option<&JsonPayload> {
        self.extra.as_ref().and_then(|e| e.return_value.as_ref())
    }

    fn failure_reason(&self) -> Option<&str> {
        self.extra
            .as_ref()
            .and_then(|e| e.failure_reason.as_deref())
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// This command's span (a disabled one when tracing does not want it).
    fn span(&self) -> Span {
        self.span.as_deref().cloned().unwrap_or_else(Span::none)
    }

    fn id(&self) -> CommandId {
        self.row.id
    }

    /// A fresh context for one call into command code.
    fn context(&self) -> CommandContext {
        CommandContext {
            id: self.row.id,
            parent_id: self.row.parent_id,
            root_id: self.row.root_id,
            command_type: self.row.command_type,
            serial_children: C::CHILD_EXECUTION == ChildExecution::Serial,
            children: self.children().to_vec(),
            end_attempt: self.end_attempts + 1,
            coordinator: self.coordinator.clone(),
            submitted: Rc::new(RefCell::new(Vec::new())),
            in_end_method: false,
            may_submit_children: true,
            resumed: self.resumed,
            end_tx: RefCell::new(None),
            store_unavailable: std::cell::Cell::new(false),
            cancelled: self.shared.clone(),
        }
    }

    /// A cancelled command that has not reached its outcome fails now.
    fn fail_if_cancelled(&mut self, ctx: &mut Context<Self>) -> bool {
        let open = matches!(
            self.row.status,
            CommandStatus::NotStarted | CommandStatus::Active
        );
        if self.shared.cancelled.get() && open {
            debug!(command_id = %self.id(), "cancelled");
            self.commit(
                ctx,
                fail(self.id(), CommandStatus::Failed, CANCELLED.to_owned()),
            );
            true
        } else {
            false
        }
    }

    /// Takes the next lifecycle step for the committed state. Every step ends
    /// by calling this again (or by arming a timer that will).
    fn advance(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.finished || self.fenced() {
            return;
        }
        let _entered = self.span().entered();
        if self.fail_if_cancelled(ctx) {
            return;
        }
        let status = self.row.status;
        match status {
            CommandStatus::NotStarted => {
                if let Some(reason) = self.extra.as_ref().and_then(|e| e.skip.clone()) {
                    self.commit(ctx, fail(self.id(), CommandStatus::Failed, reason));
                } else {
                    self.may_execute = true;
                    let mut update = CommandUpdate::new(self.id());
                    update.status = Some(CommandStatus::Active);
                    self.commit(ctx, update);
                }
            }
            CommandStatus::Active if !self.row.executed => {
                if self.may_execute || C::ON_INTERRUPTED_EXECUTE == InterruptedExecute::Rerun {
                    self.may_execute = false;
                    self.run_execute(ctx);
                } else {
                    // oVirt 1f9cf92ddd0 / c01ac673388: nobody knows how far an
                    // interrupted execute got, so the command fails.
                    let reason = match self.extra.as_mut().and_then(|e| e.last_panic.take()) {
                        Some(panic) => panic,
                        None => {
                            "execute was interrupted by a restart before it completed".to_owned()
                        }
                    };
                    self.commit(ctx, fail(self.id(), CommandStatus::ExecutionFailed, reason));
                }
            }
            CommandStatus::Active => self.evaluate(ctx),
            CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::ExecutionFailed => {
                ctx.notify(EndAction);
            }
            CommandStatus::Unknown => {
                let reason = "status was UNKNOWN when the command was loaded".to_owned();
                self.commit(ctx, fail(self.id(), CommandStatus::Failed, reason));
            }
            CommandStatus::EndedSuccessfully | CommandStatus::EndedWithFailure => {
                if self.row.callback_notified {
                    self.finish();
                } else {
                    let mut update = CommandUpdate::new(self.id());
                    update.notified = Some(true);
                    self.commit(ctx, update);
                }
            }
        }
    }

    /// Hands `update` to the writer; applies it to the in-memory row only once
    /// it is committed, then advances.
    fn commit(&mut self, ctx: &mut Context<Self>, update: CommandUpdate) {
        self.busy = true;
        let writer = self.coordinator.writer().clone();
        let transition = Transition::Update(update.clone());
        let on_commit = self.end_notice(&update);
        let tells_parent = on_commit.is_some();
        let fut = writer.queue(transition, on_commit).instrument(self.span());
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.busy = false;
            match result {
                Ok(()) => {
                    act.write_failures = 0;
                    if tells_parent {
                        act.parent = None;
                        act.parent_told = true;
                    }
                    act.committed(ctx, update)
                }
                Err(e) if e.is_fenced() => act.stop_acting(&e),
                Err(e) => {
                    // The writer keeps retrying an unreachable database itself;
                    // this is an error of this write alone. Try again later,
                    // keep the rest going, but not forever: after a few
                    // refusals the command ends with failure instead.
                    act.write_failures = act.write_failures.saturating_add(1);
                    let update = if act.write_failures >= MAX_WRITE_FAILURES
                        && let Some(fallback) = act.fallback(&update, &e)
                    {
                        error!(command_id = %act.id(), error = %e, attempts = act.write_failures,
                            "the database refuses this status change; ending the command with failure instead");
                        act.write_failures = 0;
                        act.busy = false;
                        return act.commit(ctx, fallback);
                    } else {
                        update
                    };
                    error!(command_id = %act.id(), error = %e, attempt = act.write_failures, "status change not persisted; retrying later");
                    act.busy = true;
                    let delay = act.coordinator.config().max_poll_interval;
                    ctx.run_later(delay, move |act, ctx| {
                        act.busy = false;
                        act.commit(ctx, update);
                    });
                }
            }
        }));
    }

    /// True when this actor may not act any more (its host lost the host
    /// lock, or shut down): it then stops for good, taking no step and
    /// calling no command code. Whichever host holds the lock rebuilds the
    /// command from its row.
    fn fenced(&mut self) -> bool {
        if self.coordinator.may_act() {
            return false;
        }
        if !self.finished {
            debug!(command_id = %self.id(), "host may not act: command stops here");
            self.finished = true;
        }
        true
    }

    /// A write was refused because this host may not act: stop for good.
    fn stop_acting(&mut self, error: &dyn std::fmt::Display) {
        warn!(command_id = %self.id(), error = %error, "status change refused: this host may not act; the command stops here and is rebuilt from its row");
        self.finished = true;
    }

    /// The smallest update that still takes the command towards its end
    /// when the database keeps refusing `update`: no parameters, no output,
    /// only a status and a reason of our own that any database stores. A
    /// change that was to end the command ends it with failure; any earlier
    /// one fails it (its end method then runs as for any failure). `None`
    /// when `update` is that smallest update already.
    fn fallback(
        &self,
        update: &CommandUpdate,
        error: &dyn std::fmt::Display,
    ) -> Option<CommandUpdate> {
        let target = update.status.unwrap_or(self.row.status);
        let ends = target.is_ended() || update.notified == Some(true);
        let status = if ends {
            CommandStatus::EndedWithFailure
        } else if self.row.executed || update.executed == Some(true) {
            CommandStatus::Failed
        } else {
            CommandStatus::ExecutionFailed
        };
        let reason = runtime_reason(format!(
            "the database refused to record this command's status change to {target} \
             {MAX_WRITE_FAILURES} times: {error}"
        ));
        let minimal = update.parameters.is_none()
            && update.return_value.is_none()
            && update.executed.is_none()
            && update.status == Some(status);
        if minimal {
            return None;
        }
        let mut fallback = CommandUpdate::new(self.id());
        fallback.status = Some(status);
        fallback.notified = ends.then_some(true);
        fallback.failure_reason = Some(reason);
        Some(fallback)
    }

    /// When `update` ends this command and its parent is live here: the
    /// message that tells the parent, sent by the writer the moment the
    /// update commits. Sent from there, it does not wait behind the wake-ups
    /// of the rest of the batch (this actor's among them): the parent's
    /// decision is what a tree's latency is made of.
    fn end_notice(&self, update: &CommandUpdate) -> Option<OnCommit> {
        let parent = self.parent.as_ref()?;
        let status = update.status.unwrap_or(self.row.status);
        let notified = update.notified.unwrap_or(self.row.callback_notified);
        if !(status.is_ended() && notified) {
            return None;
        }
        let parent = parent.clone_handle();
        let mut msg = ChildCompleted {
            ended: None,
            child: self.id(),
            command_type: self.row.command_type,
            status,
            output: update
                .return_value
                .clone()
                .or_else(|| self.return_value().cloned()),
            failure_reason: update
                .failure_reason
                .clone()
                .or_else(|| self.failure_reason().map(str::to_owned)),
        };
        Some(Box::new(move |_| {
            msg.ended = Some(std::time::Instant::now());
            parent.child_completed(msg);
        }))
    }

    /// `update` is committed: reflect it and take the next step.
    fn committed(&mut self, ctx: &mut Context<Self>, update: CommandUpdate) {
        self.applied(update);
        self.advance(ctx);
    }

    /// Reflects a committed update in memory and tells the coordinator.
    fn applied(&mut self, update: CommandUpdate) {
        if let Some(status) = update.status
            && status != self.row.status
        {
            debug!(command_id = %self.id(), from = %self.row.status, to = %status, "status committed");
            self.row.status = status;
            self.resumed = false;
            metrics::counter!(crate::metrics::TRANSITIONS, "status" => status.as_str())
                .increment(1);
            // Shared with the coordinator (same arbiter, same thread): its
            // `status()` answers from memory without a message per change.
            let previous = self.shared.status.replace(status);
            metrics::gauge!(crate::metrics::COMMANDS, "status" => previous.as_str()).decrement(1.0);
            metrics::gauge!(crate::metrics::COMMANDS, "status" => status.as_str()).increment(1.0);
        }
        if let Some(executed) = update.executed {
            self.row.executed = executed;
        }
        if let Some(notified) = update.notified {
            self.row.callback_notified = notified;
        }
        // The parameters: the live value is `self.command`.
        if let Some(value) = update.return_value {
            self.extra_mut().return_value = Some(value);
        }
        if let Some(reason) = update.failure_reason {
            self.extra_mut().failure_reason = Some(reason);
        }
    }

    /// The command value, rebuilt from the last persisted parameters if a
    /// panic took it.
    fn take_command(&mut self) -> Result<C, String> {
        self.command.take().ok_or_else(|| {
            self.extra
                .as_ref()
                .and_then(|e| e.undecodable.clone())
                .unwrap_or_else(|| "the command's state was lost".to_owned())
        })
    }

    fn run_execute(&mut self, ctx: &mut Context<Self>) {
        let mut command = match self.take_command() {
            Ok(c) => c,
            Err(reason) => {
                return self.commit(ctx, fail(self.id(), CommandStatus::ExecutionFailed, reason));
            }
        };
        self.busy = true;
        let cctx = self.context();
        let submitted = cctx.submitted.clone();
        let fut = async move {
            let result = CatchUnwind::new(command.execute(&cctx)).await;
            (command, result)
        }
        .instrument(self.span());
        ctx.spawn(fut.into_actor(self).map(move |(command, result), act, ctx| {
            act.busy = false;
            act.record_submitted(&submitted.borrow());
            match result {
                Ok(Ok(())) => {
                    let mut update = CommandUpdate::new(act.id());
                    update.executed = Some(true);
                    update.parameters = encode(&command);
                    act.command = Some(command);
                    act.busy = true;
                    let writer = act.coordinator.writer().clone();
                    let transition = Transition::Update(update.clone());
                    ctx.spawn(async move { writer.write(transition).await }.into_actor(act).map(
                        move |result, act, ctx| match result {
                            Ok(()) => {
                                act.applied(update);
                                act.run_on_executed(ctx);
                            }
                            Err(e) if e.is_fenced() => {
                                act.busy = false;
                                act.stop_acting(&e);
                            }
                            Err(e) => {
                                act.busy = false;
                                error!(command_id = %act.id(), error = %e, "executed flag not persisted; failing the command");
                                let reason = format!("could not record that execute completed: {e}");
                                act.commit(ctx, fail(act.id(), CommandStatus::ExecutionFailed, reason));
                            }
                        },
                    ));
                }
                Ok(Err(e)) => {
                    warn!(command_id = %act.id(), error = %e, "execute failed");
                    let reason = if act.shared.cancelled.get() {
                        CANCELLED.to_owned()
                    } else {
                        e.to_string()
                    };
                    let mut update = fail(act.id(), CommandStatus::ExecutionFailed, reason);
                    update.parameters = encode(&command);
                    act.command = Some(command);
                    act.commit(ctx, update);
                }
                Err(panic) => {
                    error!(command_id = %act.id(), panic = %panic, "execute panicked; restarting the command from its row");
                    drop(command);
                    act.restart_after_panic(ctx, format!("execute panicked: {panic}"));
                }
            }
        }));
    }

    fn run_on_executed(&mut self, ctx: &mut Context<Self>) {
        let mut command = match self.take_command() {
            Ok(c) => c,
            Err(reason) => {
                self.busy = false;
                return self.commit(ctx, fail(self.id(), CommandStatus::Failed, reason));
            }
        };
        let cctx = self.context();
        let submitted = cctx.submitted.clone();
        let fut = async move {
            let result = CatchUnwind::new(command.on_executed(&cctx)).await;
            (command, result)
        }
        .instrument(self.span());
        ctx.spawn(fut.into_actor(self).map(move |(command, result), act, ctx| {
            act.busy = false;
            act.record_submitted(&submitted.borrow());
            if let Err(panic) = result {
                // The hook is informational; a panic in it does not undo execute.
                error!(command_id = %act.id(), panic = %panic, "on_executed panicked; ignored");
            }
            act.command = Some(command);
            // First look right away: quick commands finish without waiting a poll interval.
            act.advance(ctx);
        }));
    }

    fn record_submitted(&mut self, submitted: &[(CommandId, i32)]) {
        for &(id, command_type) in submitted {
            if !self.children().iter().any(|c| c.id == id) {
                self.extra_mut().children.push(ChildView {
                    id,
                    command_type,
                    status: CommandStatus::NotStarted,
                    output: None,
                    failure_reason: None,
                });
            }
        }
    }

    /// The poll step: decide from the children, then ask the command.
    fn evaluate(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            self.reevaluate = true;
            return;
        }
        if self.fenced() {
            return;
        }
        if self.row.status != CommandStatus::Active || !self.row.executed || self.finished {
            return;
        }
        self.reevaluate = false;
        if self.fail_if_cancelled(ctx) {
            return;
        }
        let life = self
            .command
            .as_ref()
            .and_then(Command::life_time)
            .unwrap_or(self.coordinator.config().life_time);
        let age = (Utc::now() - self.row.created_at)
            .to_std()
            .unwrap_or_default();
        if age > life {
            let reason = format!("exceeded its life time of {life:?}");
            warn!(command_id = %self.id(), "{reason}");
            return self.commit(ctx, fail(self.id(), CommandStatus::Failed, reason));
        }

        // Children first: a parent decides only once every child has *ended*
        // (oVirt 7340c94ef5b: SUCCEEDED is not done).
        if C::CHILD_EXECUTION == ChildExecution::Serial {
            self.start_serial_children(false);
        }
        if self.children().iter().any(|c| !c.status.is_ended()) {
            // Children push their ends; the timer is only a safety net, and
            // one already armed will do (re-arming it for every child's end
            // costs a parent a timer per child under a burst).
            if !self.poll_armed {
                self.schedule_poll();
            }
            return;
        }
        self.poll_armed = false;
        if let Some(failed) = self
            .children()
            .iter()
            .find(|c| c.status == CommandStatus::EndedWithFailure)
        {
            let reason = format!(
                "child {} failed: {}",
                failed.id,
                failed
                    .failure_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            );
            return self.commit(ctx, fail(self.id(), CommandStatus::Failed, reason));
        }

        let mut command = match self.take_command() {
            Ok(c) => c,
            Err(reason) => return self.commit(ctx, fail(self.id(), CommandStatus::Failed, reason)),
        };
        self.busy = true;
        let cctx = self.context();
        let submitted = cctx.submitted.clone();
        metrics::counter!(crate::metrics::POLLS).increment(1);
        let fut = async move {
            let result = CatchUnwind::new(command.poll(&cctx)).await;
            (command, result)
        }
        .instrument(self.span());
        ctx.spawn(fut.into_actor(self).map(move |(command, result), act, ctx| {
            act.busy = false;
            act.record_submitted(&submitted.borrow());
            match result {
                Ok(Ok(PollOutcome::Running)) => {
                    act.command = Some(command);
                    if act.reevaluate {
                        act.evaluate(ctx);
                    } else {
                        act.schedule_poll();
                    }
                }
                Ok(Ok(PollOutcome::Succeeded(output))) => {
                    let mut update = CommandUpdate::new(act.id());
                    update.status = Some(CommandStatus::Succeeded);
                    update.parameters = encode(&command);
                    match JsonPayload::encode(&output) {
                        Ok(value) => update.return_value = Some(value),
                        Err(e) => {
                            update.status = Some(CommandStatus::Failed);
                            update.failure_reason = Some(format!("output does not serialize: {e}"));
                        }
                    }
                    act.command = Some(command);
                    act.commit(ctx, update);
                }
                Ok(Ok(PollOutcome::Failed(reason))) => {
                    let mut update = fail(act.id(), CommandStatus::Failed, reason);
                    update.parameters = encode(&command);
                    act.command = Some(command);
                    act.commit(ctx, update);
                }
                Ok(Err(e)) => {
                    // oVirt 449abee7b07: an error in polling fails the command;
                    // it is never polled again.
                    warn!(command_id = %act.id(), error = %e, "poll failed");
                    let mut update = fail(act.id(), CommandStatus::Failed, format!("poll failed: {e}"));
                    update.parameters = encode(&command);
                    act.command = Some(command);
                    act.commit(ctx, update);
                }
                Err(panic) => {
                    error!(command_id = %act.id(), panic = %panic, "poll panicked; restarting the command from its row");
                    drop(command);
                    act.restart_after_panic(ctx, format!("poll panicked: {panic}"));
                }
            }
        }));
    }

    /// Serial mode: start the next child when none is running; once one
    /// failed (or the parent itself did), fail the ones not started without
    /// running them.
    fn start_serial_children(&mut self, parent_failed: bool) {
        let failed = parent_failed
            || self
                .children()
                .iter()
                .any(|c| c.status == CommandStatus::EndedWithFailure);
        let running = self
            .children()
            .iter()
            .any(|c| !c.status.is_ended() && self.is_started(c));
        let waiting: Vec<CommandId> = self
            .children()
            .iter()
            .filter(|c| !self.is_started(c))
            .map(|c| c.id)
            .collect();
        if failed {
            for id in waiting {
                self.extra_mut().started_children.push(id);
                self.coordinator.start_child(ChildStart {
                    id,
                    skip: Some("not run: an earlier child of its serial parent failed".into()),
                });
            }
        } else if !running && let Some(&next) = waiting.first() {
            self.extra_mut().started_children.push(next);
            self.coordinator.start_child(ChildStart {
                id: next,
                skip: None,
            });
        }
    }

    fn is_started(&self, child: &ChildView) -> bool {
        child.status != CommandStatus::NotStarted
            || self
                .extra
                .as_ref()
                .is_some_and(|e| e.started_children.contains(&child.id))
    }

    /// Asks for the next poll after the current delay (which then doubles,
    /// up to `max_poll_interval`); replaces any poll asked for before.
    fn schedule_poll(&mut self) {
        let config = self.coordinator.config();
        let delay = config
            .poll_interval
            .saturating_mul(1 << self.poll_backoff)
            .min(config.max_poll_interval);
        if delay < config.max_poll_interval {
            self.poll_backoff = (self.poll_backoff + 1).min(31);
        }
        self.poll_generation = self.poll_generation.wrapping_add(1);
        self.poll_armed = true;
        self.timers.schedule(self.id(), self.poll_generation, delay);
    }

    /// Runs the end method for SUCCEEDED / FAILED / EXECUTION_FAILED.
    fn run_end_action(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.finished || !self.row.status.awaits_end_action() || self.fenced() {
            return;
        }
        // A parent ends only after its children ended (oVirt 78ab1ef4249:
        // EXECUTION_FAILED parents with live children). A failed serial parent
        // first fails the children it never started, so the wait is short.
        if C::CHILD_EXECUTION == ChildExecution::Serial {
            self.start_serial_children(self.row.status != CommandStatus::Succeeded);
        }
        if self.children().iter().any(|c| !c.status.is_ended()) {
            debug!(command_id = %self.id(), "end action waits for the children to end");
            self.end_waits_for_children = true;
            return;
        }
        self.end_waits_for_children = false;
        if self.command.is_none() && self.extra.as_ref().is_none_or(|e| e.undecodable.is_none()) {
            return self.fetch_command(ctx);
        }
        let mut command = match self.take_command() {
            Ok(c) => c,
            Err(reason) => {
                // Without the command value no end method can run: finalize.
                let update = ended(
                    self.id(),
                    false,
                    Some(format!("end action skipped: {reason}")),
                );
                return self.commit(ctx, update);
            }
        };
        self.busy = true;
        let succeeded = self.row.status == CommandStatus::Succeeded;
        let output: Option<Result<C::Output, String>> = succeeded.then(|| {
            self.return_value()
                .ok_or_else(|| "the command SUCCEEDED but has no return value".to_owned())
                .and_then(|p| {
                    p.decode()
                        .map_err(|e| format!("return value does not decode: {e}"))
                })
        });
        let reason = self
            .failure_reason()
            .map_or_else(|| self.row.status.to_string(), str::to_owned);
        let mut cctx = self.context();
        cctx.in_end_method = true;
        cctx.may_submit_children = false;
        let fut = async move {
            let result = match &output {
                Some(Ok(output)) => CatchUnwind::new(command.end_successfully(output, &cctx)).await,
                Some(Err(e)) => Ok(Err(CommandError::new(e.clone()))),
                None => CatchUnwind::new(command.end_with_failure(&reason, &cctx)).await,
            };
            let result = result.unwrap_or_else(|panic| {
                Err(CommandError::new(format!("end method panicked: {panic}")))
            });
            (command, cctx, result)
        }
        .instrument(self.span());
        ctx.spawn(fut.into_actor(self).map(move |(command, cctx, result), act, ctx| {
            act.busy = false;
            act.end_attempts += 1;
            let tx = cctx.end_tx.borrow_mut().take();
            match result {
                Ok(()) => {
                    let mut update = ended(act.id(), succeeded, None);
                    update.parameters = encode(&command);
                    act.command = Some(command);
                    match tx {
                        Some(tx) => act.commit_end_in_transaction(ctx, tx, update, cctx),
                        None => act.commit(ctx, update),
                    }
                }
                Err(e) => {
                    // The database, not the end method, failed: that attempt
                    // does not count, or an outage would use up all of them.
                    let unavailable = cctx.store_unavailable.get()
                        || tx.as_ref().is_some_and(|t| t.is_broken());
                    if let Some(tx) = tx {
                        // Its writes must not survive the failed attempt.
                        ctx.spawn(
                            async move {
                                if let Err(e) = tx.rollback().await {
                                    warn!(error = %e, "rollback of the end transaction failed; the connection is discarded");
                                }
                            }
                            .into_actor(act),
                        );
                    }
                    if unavailable {
                        act.retry_end_after_outage(ctx, command, &e);
                    } else {
                        act.end_method_failed(ctx, command, cctx, e);
                    }
                }
            }
        }));
    }

    /// The end action could not reach the database: try again later without
    /// counting an attempt.
    fn retry_end_after_outage(
        &mut self,
        ctx: &mut Context<Self>,
        command: C,
        error: &dyn std::fmt::Display,
    ) {
        self.end_attempts = self.end_attempts.saturating_sub(1);
        self.command = Some(command);
        let delay = self.coordinator.config().max_poll_interval;
        warn!(command_id = %self.id(), error = %error, retry_in = ?delay,
            "end action could not reach the database; will retry (attempt not counted)");
        ctx.notify_later(EndAction, delay);
    }

    /// An end method attempt failed: retry with backoff, or, after the last
    /// attempt, run `finalize` and end with failure.
    fn end_method_failed(
        &mut self,
        ctx: &mut Context<Self>,
        command: C,
        mut cctx: CommandContext,
        error: CommandError,
    ) {
        let config = self.coordinator.config();
        if self.end_attempts < config.end_attempts {
            // oVirt 8fe166893fd / 67a84bfb19f: retry, but not forever.
            let delay = config
                .end_retry_delay
                .saturating_mul(1 << (self.end_attempts - 1).min(16))
                .min(config.max_poll_interval);
            warn!(command_id = %self.id(), attempt = self.end_attempts, error = %error, retry_in = ?delay, "end method failed; will retry");
            metrics::counter!(crate::metrics::END_RETRIES).increment(1);
            self.command = Some(command);
            ctx.notify_later(EndAction, delay);
            return;
        }
        error!(command_id = %self.id(), attempts = self.end_attempts, error = %error, "end method failed on every attempt; finalizing");
        self.busy = true;
        cctx.in_end_method = false;
        let mut command = command;
        let fut = async move {
            let _ = CatchUnwind::new(command.finalize(&error, &cctx)).await;
            (command, error)
        };
        ctx.spawn(fut.into_actor(self).map(|(command, e), act, ctx| {
            act.busy = false;
            let reason = format!("end method failed {} times: {e}", act.end_attempts);
            let mut update = ended(act.id(), false, Some(reason));
            update.parameters = encode(&command);
            act.command = Some(command);
            act.commit(ctx, update);
        }));
    }

    /// Commits the end in the end method's own transaction, so its writes and
    /// the end are one atomic step. A failed COMMIT may still have committed
    /// (the answer was lost), so the row decides: ended means committed;
    /// otherwise the attempt counts as failed and is retried.
    fn commit_end_in_transaction(
        &mut self,
        ctx: &mut Context<Self>,
        tx: Rc<dyn EndTransaction>,
        update: CommandUpdate,
        cctx: CommandContext,
    ) {
        self.busy = true;
        let pending = update.clone();
        let fut = async move { tx.commit(pending).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.busy = false;
            match result {
                Ok(()) => act.committed(ctx, update),
                Err(e) => {
                    warn!(command_id = %act.id(), error = %e, "commit of the end transaction failed; checking the row");
                    act.verify_end_commit(ctx, update, cctx, e.to_string(), e.is_transient());
                }
            }
        }));
    }

    fn verify_end_commit(
        &mut self,
        ctx: &mut Context<Self>,
        update: CommandUpdate,
        cctx: CommandContext,
        error: String,
        transient: bool,
    ) {
        self.busy = true;
        let store = self.coordinator.store().clone();
        let id = self.id();
        ctx.spawn(async move { store.get(id).await }.into_actor(self).map(
            move |row, act, ctx| {
                act.busy = false;
                match row {
                    Ok(Some(row)) if row.status.is_ended() && row.callback_notified => {
                        act.committed(ctx, update)
                    }
                    Ok(_) => {
                        let command = match act.take_command() {
                            Ok(c) => c,
                            Err(reason) => {
                                let update = ended(act.id(), false, Some(reason));
                                return act.commit(ctx, update);
                            }
                        };
                        let e = CommandError::new(format!("the end could not be committed: {error}"));
                        if transient {
                            act.retry_end_after_outage(ctx, command, &e);
                        } else {
                            act.end_method_failed(ctx, command, cctx, e);
                        }
                    }
                    Err(e) => {
                        // Still unreachable: look again later.
                        let delay = act.coordinator.config().max_poll_interval;
                        warn!(command_id = %act.id(), error = %e, "cannot read the row yet; retrying");
                        // Busy until then: no second end attempt may start
                        // while this one's commit is in doubt.
                        act.busy = true;
                        ctx.run_later(delay, move |act, ctx| {
                            act.busy = false;
                            act.verify_end_commit(ctx, update, cctx, error, transient)
                        });
                    }
                }
            },
        ));
    }

    /// A panic in command code: stop, so that the `Supervisor` restarts this
    /// actor, which reloads its state from the database. After too many
    /// restarts the command fails instead.
    fn restart_after_panic(&mut self, ctx: &mut Context<Self>, reason: String) {
        self.restarts += 1;
        self.extra_mut().last_panic = Some(reason.clone());
        metrics::counter!(crate::metrics::RESTARTS).increment(1);
        if self.restarts > self.coordinator.config().max_restarts {
            let status = if self.row.executed {
                CommandStatus::Failed
            } else {
                CommandStatus::ExecutionFailed
            };
            let reason = format!("{reason} (gave up after {} restarts)", self.restarts - 1);
            return self.commit(ctx, fail(self.id(), status, reason));
        }
        self.reload = true;
        ctx.stop();
    }

    /// The command value was consumed by a call that panicked and no restart
    /// reloaded it (the restart limit was reached): reads it back from the
    /// row, then takes the step again.
    fn fetch_command(&mut self, ctx: &mut Context<Self>) {
        self.busy = true;
        let store = self.coordinator.store().clone();
        let id = self.id();
        let fut = async move { store.get(id).await };
        ctx.spawn(fut.into_actor(self).map(move |row, act, ctx| {
            act.busy = false;
            let undecodable = match row {
                Ok(Some(row)) => match row.parameters.decode() {
                    Ok(command) => {
                        act.command = Some(command);
                        None
                    }
                    Err(e) => Some(format!("parameters no longer deserialize: {e}")),
                },
                Ok(None) => Some("the row vanished".to_owned()),
                Err(e) => {
                    error!(command_id = %id, error = %e, "cannot read the command's parameters; retrying");
                    let delay = act.coordinator.config().max_poll_interval;
                    act.busy = true;
                    ctx.run_later(delay, move |act, ctx| {
                        act.busy = false;
                        act.fetch_command(ctx);
                    });
                    return;
                }
            };
            if undecodable.is_some() {
                act.extra_mut().undecodable = undecodable;
            }
            act.advance(ctx);
        }));
    }

    /// After a restart: reloads the row and the children from the store,
    /// then advances. (Commands rebuilt at start-up get their children from
    /// the bulk load instead.)
    fn reload(&mut self, ctx: &mut Context<Self>) {
        self.busy = true;
        let store = self.coordinator.store().clone();
        let id = self.id();
        let fut = async move { (store.get(id).await, store.children(id).await) };
        ctx.spawn(fut.into_actor(self).map(move |(row, children), act, ctx| {
            act.busy = false;
            match row {
                Ok(Some(row)) => {
                    match row.parameters.decode() {
                        Ok(command) => act.command = Some(command),
                        Err(e) => {
                            act.command = None;
                            act.extra_mut().undecodable =
                                Some(format!("parameters no longer deserialize: {e}"));
                        }
                    }
                    act.row = LiveRow::of(&row);
                    let extra = act.extra_mut();
                    extra.return_value = row.return_value;
                    extra.failure_reason = row.failure_reason;
                }
                Ok(None) => {
                    warn!(command_id = %id, "row vanished while the command was live; stopping it");
                    act.finished = true;
                    return;
                }
                Err(e) => {
                    error!(command_id = %id, error = %e, "cannot reload the command; retrying");
                    let delay = act.coordinator.config().max_poll_interval;
                    // Busy until then: a child's end or a cancel arriving
                    // meanwhile is noted, not acted on without the state.
                    act.busy = true;
                    ctx.run_later(delay, move |act, ctx| {
                        act.busy = false;
                        act.reload(ctx)
                    });
                    return;
                }
            }
            match children {
                Ok(loaded) => {
                    for bad in &loaded.bad_rows {
                        warn!(command_id = %id, child = %bad.command_id, reason = %bad.reason, "unreadable child row");
                    }
                    for child in loaded.entities {
                        act.merge_child(ChildCompleted {
                            ended: None,
                            child: child.id,
                            command_type: child.command_type,
                            status: child.status,
                            output: child.return_value,
                            failure_reason: child.failure_reason,
                        });
                    }
                }
                Err(e) => {
                    error!(command_id = %id, error = %e, "cannot load the children; retrying");
                    let delay = act.coordinator.config().max_poll_interval;
                    // Busy until then: a child's end or a cancel arriving
                    // meanwhile is noted, not acted on without the state.
                    act.busy = true;
                    ctx.run_later(delay, move |act, ctx| {
                        act.busy = false;
                        act.reload(ctx)
                    });
                    return;
                }
            }
            act.advance(ctx);
        }));
    }

    /// Records what is known of a child, never moving it backwards (a
    /// ChildCompleted may arrive before the store's older view of it).
    fn merge_child(&mut self, news: ChildCompleted) {
        if news.child == self.id() {
            return; // a corrupt self-parent row: never its own child
        }
        let children = &mut self.extra_mut().children;
        match children.iter_mut().find(|c| c.id == news.child) {
            Some(child) => {
                if child.status.is_ended() && !news.status.is_ended() {
                    return;
                }
                child.status = news.status;
                child.output = news.output.or(child.output.take());
                child.failure_reason = news.failure_reason.or(child.failure_reason.take());
            }
            None => children.push(ChildView {
                id: news.child,
                command_type: news.command_type,
                status: news.status,
                output: news.output,
                failure_reason: news.failure_reason,
            }),
        }
    }

    /// The command ended and that is committed: tell the coordinator (which
    /// tells the parent and the waiters and drops this actor's addresses, so
    /// that it stops).
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        debug!(command_id = %self.id(), status = %self.row.status, "command finished");
        let ended = std::time::Instant::now();
        let completion = ChildCompleted {
            ended: Some(ended),
            child: self.id(),
            command_type: self.row.command_type,
            status: self.row.status,
            output: self.return_value().cloned(),
            failure_reason: self.failure_reason().map(str::to_owned),
        };
        // Push to the parent first: this is the path its decision waits on.
        // (Usually the writer did, right after the commit.)
        let parent_told = self.parent_told
            || match self.parent.take() {
                Some(parent) => {
                    parent.child_completed(completion.clone());
                    true
                }
                None => false,
            };
        self.coordinator.finished(Finished {
            ended,
            parent_told,
            id: completion.child,
            parent_id: self.row.parent_id,
            command_type: completion.command_type,
            status: completion.status,
            output: completion.output,
            failure_reason: completion.failure_reason,
        });
    }
}

fn encode<C: Command>(command: &C) -> Option<JsonPayload> {
    match JsonPayload::encode(command) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(error = %e, "command state does not serialize; keeping the last persisted parameters");
            None
        }
    }
}

fn fail(id: CommandId, status: CommandStatus, reason: String) -> CommandUpdate {
    let mut update = CommandUpdate::new(id);
    update.status = Some(status);
    update.failure_reason = Some(storable(reason));
    update
}

/// ENDED_* and callback_notified in one transition.
fn ended(id: CommandId, succeeded: bool, reason: Option<String>) -> CommandUpdate {
    let mut update = CommandUpdate::new(id);
    update.status = Some(if succeeded {
        CommandStatus::EndedSuccessfully
    } else {
        CommandStatus::EndedWithFailure
    });
    update.notified = Some(true);
    update.failure_reason = reason.map(storable);
    update
}

/// A failure reason PostgreSQL can store: `text` refuses the NUL character,
/// which a reason taken from an external system may carry (it is written as
/// U+FFFD instead). Every reason passes through here, so no user-supplied
/// reason can make a status change fail forever.
pub(crate) fn storable(reason: String) -> String {
    if reason.contains('\0') {
        reason.replace('\0', "\u{FFFD}")
    } else {
        reason
    }
}

/// A reason of the runtime's own, storable and of bounded length.
fn runtime_reason(reason: String) -> String {
    let mut reason = storable(reason);
    if reason.len() > MAX_RUNTIME_REASON {
        let mut cut = MAX_RUNTIME_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

impl<C: Command> Actor for CommandActor<C> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.reload {
            self.reload = false;
            self.resumed = true;
            self.reload(ctx);
        } else {
            // A rebuilt command got its children's rows with the bulk load at
            // start-up: no query of its own.
            self.advance(ctx);
        }
    }
}

impl<C: Command> Supervised for CommandActor<C> {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Spawned futures and timers were dropped with the old context.
        self.busy = false;
        self.poll_armed = false;
        self.reevaluate = false;
        self.poll_backoff = 0;
        debug!(command_id = %self.id(), restarts = self.restarts, "command actor restarting");
    }
}

impl<C: Command> Handler<Poll> for CommandActor<C> {
    type Result = ();

    fn handle(&mut self, poll: Poll, ctx: &mut Self::Context) {
        if !self.poll_armed || poll.generation != self.poll_generation {
            return; // a poll no longer wanted
        }
        self.poll_armed = false;
        self.evaluate(ctx);
    }
}

impl<C: Command> Handler<ChildCompleted> for CommandActor<C> {
    type Result = ();

    fn handle(&mut self, msg: ChildCompleted, ctx: &mut Self::Context) {
        if let Some(ended) = msg.ended {
            metrics::histogram!(crate::metrics::CHILD_TO_PARENT_SECONDS)
                .record(ended.elapsed().as_secs_f64());
        }
        self.merge_child(msg);
        if self.end_waits_for_children {
            self.run_end_action(ctx);
        } else {
            // Push, not poll: re-evaluate at once.
            self.evaluate(ctx);
        }
    }
}

impl<C: Command> Handler<Cancel> for CommandActor<C> {
    type Result = ();

    fn handle(&mut self, _: Cancel, ctx: &mut Self::Context) {
        if self.shared.cancelled.replace(true) {
            return;
        }
        // The whole hierarchy below is cancelled, including children whose
        // rows were committed after the request marked the tree in the
        // database (children submitted later are born cancelled).
        let open_children: Vec<CommandId> = self
            .children()
            .iter()
            .filter(|c| !c.status.is_ended())
            .map(|c| c.id)
            .collect();
        if !open_children.is_empty() {
            self.coordinator.cancel_children(open_children);
        }
        if !matches!(
            self.row.status,
            CommandStatus::NotStarted | CommandStatus::Active
        ) {
            // The outcome is known: cancellation changes nothing, and the end
            // action keeps its own schedule (a retry waiting for its delay
            // must not be started early).
            return;
        }
        if self.busy {
            // A running step sees the flag through its context; once it
            // returns, the command is evaluated at once (not at its next
            // poll) and fails as cancelled.
            self.reevaluate = true;
        } else {
            self.poll_armed = false;
            self.advance(ctx);
        }
    }
}

impl<C: Command> Handler<EndAction> for CommandActor<C> {
    type Result = ();

    fn handle(&mut self, _: EndAction, ctx: &mut Self::Context) {
        self.run_end_action(ctx);
    }
}

impl<C: Command> Handler<Inspect> for CommandActor<C> {
    type Result = Inspection;

    fn handle(&mut self, _: Inspect, _: &mut Self::Context) -> Inspection {
        Inspection {
            children: self.children().iter().map(|c| c.id).collect(),
        }
    }
}
