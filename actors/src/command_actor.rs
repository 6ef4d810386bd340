//! `CommandActor`: one supervised actor per persisted command, the shell
//! around its [`Lifecycle`].
//!
//! It owns the command's live state (nothing else touches it: oVirt's
//! concurrent-modification bugs ff5165fb8be and dc96d1c74b5 cannot happen):
//!
//! ```text
//! NOT_STARTED ─► ACTIVE ─► execute ─► executed=true ─► poll ... ─► SUCCEEDED/FAILED
//!   ─► end method ─► ENDED_* + callback_notified ─► parent told ─► gone
//! ```
//!
//! Every decision is the [`Lifecycle`]'s, a pure state machine; this actor
//! only turns messages and completed futures into its inputs and performs
//! the effects it returns: writes through the
//! [`StoreWriter`](crate::writer::StoreWriter) (acted on only once
//! committed), calls into the command's code (in [`CommandActor::call`], the
//! one place where they are made, with panics caught), the end
//! transaction's commit and check, timers, and the actor's own restart.
//! Polls cost no database round trip: children report their end by message
//! ([`ChildCompleted`]), so a parent re-evaluates at once instead of polling
//! its children's rows.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use actix::prelude::*;
use chrono::Utc;
use tracing::{Instrument, Span, error, info_span, warn};

use crate::command::{
    ChildExecution, ChildView, Command, CommandContext, CommandError, InterruptedExecute,
    PollOutcome,
};
use crate::coordinator::{ChildStart, Coordinator};
pub(crate) use crate::lifecycle::{CANCELLED, StartKind};
use crate::lifecycle::{
    Call, Effect, EndCommitError, Env, Input, Lifecycle, Outcome, Reloaded, Returned, TypeRules,
};
use crate::messages::{Cancel, ChildCompleted, Finished, Inspect, Inspection, Poll};
use crate::model::{CommandEntity, CommandStatus, JsonPayload};
use crate::panic::CatchUnwind;
use crate::poll_timers::PollTimers;
use crate::store::{CommandUpdate, EndTransaction, Transition};
use crate::writer::OnCommit;

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
                parent_told: Cell::new(false),
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
    /// The writer already told the parent of this command's end, right
    /// after the commit. (Here rather than in the actor: this allocation
    /// has room for it, an idle actor has none.)
    pub(crate) parent_told: Cell<bool>,
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

/// A command's actor. Kept small on purpose: a host may hold a hundred
/// thousand idle ones, and every byte here is in each one's task (rare state
/// is boxed inside the lifecycle, the tracing span exists only when enabled,
/// the effects of a step live on the stack of the step).
pub(crate) struct CommandActor<C: Command> {
    /// The command value; `None` while command code runs with it, or after a
    /// panic until it is reloaded.
    command: Option<C>,
    /// Every lifecycle decision, and the row as last committed.
    life: Lifecycle,
    coordinator: Coordinator,
    /// The coordinator's shared poll timers (no tokio timer per command).
    timers: PollTimers,
    /// The committed status and the cancellation flag, shared with the
    /// coordinator and with every context, so running command code can see
    /// a cancellation.
    shared: Rc<LiveCells>,
    /// The parent's address when it was live at spawn time; taken by the
    /// write that ends the command, whose commit hook tells the parent.
    parent: Option<LiveAddr>,
    /// This command's span, when tracing has it enabled (`None` otherwise:
    /// a disabled `Span` still takes 40 bytes).
    span: Option<Box<Span>>,
}

/// The type's lifecycle choices, as the machine takes them.
fn rules<C: Command>() -> TypeRules {
    TypeRules {
        serial: C::CHILD_EXECUTION == ChildExecution::Serial,
        rerun: C::ON_INTERRUPTED_EXECUTE == InterruptedExecute::Rerun,
    }
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
        let span = (!span.is_disabled()).then(|| Box::new(span));
        Self {
            command: Some(command),
            life: Lifecycle::new(&row, start, children, rules::<C>(), shared.cancelled.get()),
            coordinator,
            timers,
            shared,
            parent,
            span,
        }
    }

    /// This command's span (a disabled one when tracing does not want it).
    fn span(&self) -> Span {
        self.span.as_deref().cloned().unwrap_or_else(Span::none)
    }

    /// Hands `input` to the lifecycle and performs what it answers.
    /// `end_tx` is the end method's transaction when `input` is the end
    /// method's return: the only input whose effects may commit or roll it
    /// back.
    fn step(
        &mut self,
        ctx: &mut Context<Self>,
        input: Input,
        end_tx: Option<Rc<dyn EndTransaction>>,
    ) {
        let _entered = self.span.as_deref().map(Span::enter);
        let config = self.coordinator.config();
        let env = Env {
            now: Utc::now(),
            config,
            life_time: self
                .command
                .as_ref()
                .and_then(Command::life_time)
                .unwrap_or(config.life_time),
            may_act: self.coordinator.may_act(),
            retry: C::RETRY,
        };
        let mut effects = Vec::new();
        self.life.handle(input, &env, &mut effects);
        drop(_entered);
        for effect in effects {
            self.perform(ctx, effect, &end_tx);
        }
    }

    fn perform(
        &mut self,
        ctx: &mut Context<Self>,
        effect: Effect,
        end_tx: &Option<Rc<dyn EndTransaction>>,
    ) {
        match effect {
            Effect::Write {
                update,
                encode_parameters,
                ends,
            } => self.write(ctx, update, encode_parameters, ends),
            Effect::Call(call) => self.call(ctx, call),
            Effect::DropCommand => self.command = None,
            Effect::SchedulePoll { generation, delay } => {
                self.timers.schedule(self.life.id(), generation, delay);
            }
            Effect::SetTimer { timer, delay } => {
                ctx.run_later(delay, move |act, ctx| {
                    act.step(ctx, Input::TimerFired(timer), None)
                });
            }
            Effect::StartChild { id, skip } => {
                self.coordinator.start_child(ChildStart { id, skip });
            }
            Effect::CancelChildren(ids) => self.coordinator.cancel_children(ids),
            Effect::CommitEndTx {
                mut update,
                encode_parameters,
            } => {
                let Some(tx) = end_tx.clone() else {
                    error!(command_id = %self.life.id(), "no end transaction to commit");
                    return;
                };
                if encode_parameters {
                    update.parameters = self.command.as_ref().and_then(encode);
                }
                update.root = Some(self.life.row().root_id);
                let fut = async move { tx.commit(update).await };
                ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
                    let result = result.map_err(|e| EndCommitError {
                        error: e.to_string(),
                        transient: e.is_transient(),
                        fenced: e.is_fenced(),
                    });
                    act.step(ctx, Input::EndCommitted(result), None);
                }));
            }
            Effect::RollbackEndTx => {
                if let Some(tx) = end_tx.clone() {
                    ctx.spawn(
                        async move {
                            if let Err(e) = tx.rollback().await {
                                warn!(error = %e, "rollback of the end transaction failed; the connection is discarded");
                            }
                        }
                        .into_actor(self),
                    );
                }
            }
            Effect::CheckRow => {
                let store = self.coordinator.store().clone();
                let id = self.life.id();
                ctx.spawn(async move { store.get(id).await }.into_actor(self).map(
                    |row, act, ctx| {
                        let input = match row {
                            Ok(row) => Input::RowChecked {
                                ended_and_notified: row
                                    .is_some_and(|r| r.status.is_ended() && r.callback_notified),
                            },
                            Err(e) => Input::ReadFailed {
                                error: e.to_string(),
                            },
                        };
                        act.step(ctx, input, None);
                    },
                ));
            }
            Effect::Reload => self.reload(ctx),
            Effect::FetchCommand => self.fetch_command(ctx),
            Effect::Stop => ctx.stop(),
            Effect::StatusCommitted { from, to } => {
                metrics::counter!(crate::metrics::TRANSITIONS, "status" => to.as_str())
                    .increment(1);
                // Shared with the coordinator (same arbiter, same thread):
                // its `status()` answers from memory without a message per
                // change.
                self.shared.status.set(to);
                metrics::gauge!(crate::metrics::COMMANDS, "status" => from.as_str()).decrement(1.0);
                metrics::gauge!(crate::metrics::COMMANDS, "status" => to.as_str()).increment(1.0);
            }
            Effect::Finished => self.finish(),
        }
    }

    /// Hands `update` to the writer; the lifecycle hears of the commit.
    fn write(
        &mut self,
        ctx: &mut Context<Self>,
        mut update: CommandUpdate,
        encode_parameters: bool,
        ends: bool,
    ) {
        if encode_parameters {
            update.parameters = self.command.as_ref().and_then(encode);
        }
        update.root = Some(self.life.row().root_id);
        let on_commit = if ends { self.end_notice(&update) } else { None };
        let tells_parent = on_commit.is_some();
        let writer = self.coordinator.writer();
        let transition = Transition::Update(update);
        let fut = async move {
            match on_commit {
                Some(hook) => writer.queue(transition, Some(hook)).await,
                None => writer.write(transition).await,
            }
        }
        .instrument(self.span());
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let input = match result {
                Ok(()) => {
                    if tells_parent {
                        act.parent = None;
                        act.shared.parent_told.set(true);
                    }
                    Input::WriteAcked
                }
                Err(e) => Input::WriteFailed {
                    error: e.to_string(),
                    fenced: e.is_fenced(),
                },
            };
            act.step(ctx, input, None);
        }));
    }

    /// When `update` ends this command and its parent is live here: the
    /// message that tells the parent, sent by the writer the moment the
    /// update commits. Sent from there, it does not wait behind the wake-ups
    /// of the rest of the batch (this actor's among them): the parent's
    /// decision is what a tree's latency is made of.
    fn end_notice(&self, update: &CommandUpdate) -> Option<OnCommit> {
        let parent = self.parent.as_ref()?.clone_handle();
        let row = self.life.row();
        let mut msg = ChildCompleted {
            ended: None,
            child: row.id,
            command_type: row.command_type,
            status: update.status.unwrap_or(row.status),
            output: update
                .return_value
                .clone()
                .or_else(|| self.life.return_value().cloned()),
            failure_reason: update
                .failure_reason
                .clone()
                .or_else(|| self.life.failure_reason().map(str::to_owned)),
        };
        Some(Box::new(move |_| {
            msg.ended = Some(std::time::Instant::now());
            parent.child_completed(msg);
        }))
    }

    /// A fresh context for one call into command code.
    fn context(&self, call: &Call) -> CommandContext {
        let row = self.life.row();
        let ends = matches!(call, Call::End { .. } | Call::Finalize { .. });
        CommandContext {
            id: row.id,
            parent_id: row.parent_id,
            root_id: row.root_id,
            command_type: row.command_type,
            serial_children: C::CHILD_EXECUTION == ChildExecution::Serial,
            children: self.life.children().to_vec(),
            // The attempt this call is (`finalize` runs after the last one).
            end_attempt: match call {
                Call::Finalize { .. } => self.life.end_attempts().max(1),
                _ => self.life.end_attempts() + 1,
            },
            coordinator: self.coordinator.clone(),
            submitted: Rc::new(RefCell::new(Vec::new())),
            in_end_method: matches!(call, Call::End { .. }),
            // The end is a command's last step: no children from there.
            may_submit_children: !ends,
            resumed: self.life.resumed(),
            end_tx: RefCell::new(None),
            store_unavailable: Cell::new(false),
            cancelled: self.shared.clone(),
        }
    }

    /// Calls into the command's code: the one place where that happens,
    /// with panics caught. How the call returned goes back to the
    /// lifecycle, with the children it submitted.
    fn call(&mut self, ctx: &mut Context<Self>, call: Call) {
        let Some(mut command) = self.command.take() else {
            // The lifecycle asks for calls only while the value is here.
            error!(command_id = %self.life.id(), ?call, "no command value to call");
            let returned = Returned {
                outcome: Outcome::Panicked("the command's state was lost".to_owned()),
                submitted: Vec::new(),
                end_tx: false,
                store_unavailable: false,
            };
            return self.step(ctx, Input::Returned(returned), None);
        };
        let cctx = self.context(&call);
        // What the end method is given: the committed output (decoded) or
        // the committed reason.
        let output: Option<Result<C::Output, String>> = match call {
            Call::End { succeeded: true } => Some(
                self.life
                    .return_value()
                    .ok_or_else(|| "the command SUCCEEDED but has no return value".to_owned())
                    .and_then(|p| {
                        p.decode()
                            .map_err(|e| format!("return value does not decode: {e}"))
                    }),
            ),
            _ => None,
        };
        let reason = self
            .life
            .failure_reason()
            .map_or_else(|| self.life.row().status.to_string(), str::to_owned);
        let fut = async move {
            let outcome = match call {
                Call::Execute => ok_or_err(CatchUnwind::new(command.execute(&cctx)).await),
                Call::OnExecuted => match CatchUnwind::new(command.on_executed(&cctx)).await {
                    Ok(()) => Outcome::Ok,
                    Err(panic) => Outcome::Panicked(panic),
                },
                Call::Poll => match CatchUnwind::new(command.poll(&cctx)).await {
                    Ok(Ok(PollOutcome::Running)) => Outcome::Running,
                    Ok(Ok(PollOutcome::Succeeded(output))) => {
                        Outcome::Succeeded(JsonPayload::encode(&output).map_err(|e| e.to_string()))
                    }
                    Ok(Ok(PollOutcome::Failed(reason))) => Outcome::Failed(reason),
                    Ok(Err(e)) => error_outcome(e),
                    Err(panic) => Outcome::Panicked(panic),
                },
                Call::End { .. } => match &output {
                    Some(Ok(output)) => {
                        ok_or_err(CatchUnwind::new(command.end_successfully(output, &cctx)).await)
                    }
                    Some(Err(e)) => Outcome::Err(e.clone()),
                    None => {
                        ok_or_err(CatchUnwind::new(command.end_with_failure(&reason, &cctx)).await)
                    }
                },
                Call::Finalize { error } => {
                    let error = CommandError::new(error.into_string());
                    match CatchUnwind::new(command.finalize(&error, &cctx)).await {
                        Ok(()) => Outcome::Ok,
                        Err(panic) => Outcome::Panicked(panic),
                    }
                }
            };
            (command, cctx, outcome)
        }
        .instrument(self.span());
        ctx.spawn(
            fut.into_actor(self)
                .map(|(command, cctx, outcome), act, ctx| {
                    act.command = Some(command);
                    let end_tx = cctx.end_tx.borrow_mut().take();
                    let store_unavailable = cctx.store_unavailable.get()
                        || end_tx.as_ref().is_some_and(|t| t.is_broken());
                    let returned = Returned {
                        outcome,
                        submitted: std::mem::take(&mut *cctx.submitted.borrow_mut()),
                        end_tx: end_tx.is_some(),
                        store_unavailable,
                    };
                    act.step(ctx, Input::Returned(returned), end_tx);
                }),
        );
    }

    /// Reads the command value back from its row (a panic took it and no
    /// restart reloaded it).
    fn fetch_command(&mut self, ctx: &mut Context<Self>) {
        let store = self.coordinator.store().clone();
        let id = self.life.id();
        let fut = async move { store.get(id).await };
        ctx.spawn(fut.into_actor(self).map(|row, act, ctx| {
            let input = match row {
                Ok(Some(row)) => Input::Fetched(match row.parameters.decode() {
                    Ok(command) => {
                        act.command = Some(command);
                        Ok(())
                    }
                    Err(e) => Err(format!("parameters no longer deserialize: {e}")),
                }),
                Ok(None) => Input::Fetched(Err("the row vanished".to_owned())),
                Err(e) => Input::ReadFailed {
                    error: e.to_string(),
                },
            };
            act.step(ctx, input, None);
        }));
    }

    /// After a restart: reads the row and the children again. (Commands
    /// rebuilt at start-up get their children from the bulk load instead.)
    fn reload(&mut self, ctx: &mut Context<Self>) {
        let store = self.coordinator.store().clone();
        let id = self.life.id();
        let fut = async move { (store.get(id).await, store.children(id).await) };
        ctx.spawn(fut.into_actor(self).map(move |(row, children), act, ctx| {
            let input = match (row, children) {
                (Ok(None), _) => Input::RowVanished,
                (Err(e), _) | (_, Err(e)) => Input::ReadFailed {
                    error: e.to_string(),
                },
                (Ok(Some(row)), Ok(loaded)) => {
                    for bad in &loaded.bad_rows {
                        warn!(command_id = %id, child = %bad.command_id, reason = %bad.reason, "unreadable child row");
                    }
                    let decoded = match row.parameters.decode() {
                        Ok(command) => {
                            act.command = Some(command);
                            Ok(())
                        }
                        Err(e) => {
                            act.command = None;
                            Err(format!("parameters no longer deserialize: {e}"))
                        }
                    };
                    Input::Reloaded(Box::new(Reloaded {
                        row: Box::new(row),
                        children: loaded.entities.iter().map(ChildView::from_entity).collect(),
                        decoded,
                    }))
                }
            };
            act.step(ctx, input, None);
        }));
    }

    /// The command ended and that is committed: tell the coordinator (which
    /// tells the parent and the waiters and drops this actor's addresses, so
    /// that it stops).
    fn finish(&mut self) {
        let ended = std::time::Instant::now();
        let row = self.life.row();
        let completion = ChildCompleted {
            ended: Some(ended),
            child: row.id,
            command_type: row.command_type,
            status: row.status,
            output: self.life.return_value().cloned(),
            failure_reason: self.life.failure_reason().map(str::to_owned),
        };
        let parent_id = row.parent_id;
        // Push to the parent first: this is the path its decision waits on.
        // (Usually the writer did, right after the commit.)
        let parent_told = self.shared.parent_told.get()
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
            parent_id,
            command_type: completion.command_type,
            status: completion.status,
            output: completion.output,
            failure_reason: completion.failure_reason,
        });
    }
}

/// An error of command code, transient or not, as the lifecycle takes it.
fn error_outcome(error: CommandError) -> Outcome {
    if error.is_transient() {
        Outcome::Transient(error.to_string())
    } else {
        Outcome::Err(error.to_string())
    }
}

fn ok_or_err(result: Result<Result<(), CommandError>, String>) -> Outcome {
    match result {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => error_outcome(e),
        Err(panic) => Outcome::Panicked(panic),
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

impl<C: Command> Actor for CommandActor<C> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.step(ctx, Input::Started, None);
    }
}

impl<C: Command> Supervised for CommandActor<C> {
    fn restarting(&mut self, ctx: &mut Self::Context) {
        // Spawned futures and timers were dropped with the old context.
        tracing::debug!(command_id = %self.life.id(), "command actor restarting");
        self.step(ctx, Input::Restarted, None);
    }
}

impl<C: Command> Handler<Poll> for CommandActor<C> {
    type Result = ();

    fn handle(&mut self, poll: Poll, ctx: &mut Self::Context) {
        self.step(
            ctx,
            Input::PollDue {
                generation: poll.generation,
            },
            None,
        );
    }
}

impl<C: Command> Handler<ChildCompleted> for CommandActor<C> {
    type Result = ();

    fn handle(&mut self, msg: ChildCompleted, ctx: &mut Self::Context) {
        if let Some(ended) = msg.ended {
            metrics::histogram!(crate::metrics::CHILD_TO_PARENT_SECONDS)
                .record(ended.elapsed().as_secs_f64());
        }
        let child = ChildView {
            id: msg.child,
            command_type: msg.command_type,
            status: msg.status,
            output: msg.output,
            failure_reason: msg.failure_reason,
        };
        self.step(ctx, Input::ChildEnded(child), None);
    }
}

impl<C: Command> Handler<Cancel> for CommandActor<C> {
    type Result = ();

    fn handle(&mut self, _: Cancel, ctx: &mut Self::Context) {
        // Seen at once by running command code (`ctx.is_cancelled()`).
        self.shared.cancelled.set(true);
        self.step(ctx, Input::Cancel, None);
    }
}

impl<C: Command> Handler<Inspect> for CommandActor<C> {
    type Result = Inspection;

    fn handle(&mut self, _: Inspect, _: &mut Self::Context) -> Inspection {
        Inspection {
            children: self.life.children().iter().map(|c| c.id).collect(),
        }
    }
}

#[cfg(test)]
mod size {
    /// An idle command costs its actor's size in every one of a hundred
    /// thousand tasks: the lifecycle must not make it bigger than the
    /// flags it replaced (168 bytes for a command of two `u32`s).
    #[test]
    fn an_idle_actor_stays_small() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Small {
            polls: u32,
            seen: u32,
        }
        impl crate::Command for Small {
            const COMMAND_TYPE: i32 = 1;
            type Output = u32;
            async fn execute(
                &mut self,
                _: &crate::CommandContext,
            ) -> Result<(), crate::CommandError> {
                Ok(())
            }
            async fn poll(
                &mut self,
                _: &crate::CommandContext,
            ) -> Result<crate::PollOutcome<u32>, crate::CommandError> {
                Ok(crate::PollOutcome::Running)
            }
        }
        let size = std::mem::size_of::<super::CommandActor<Small>>();
        assert!(size <= 168, "the command actor grew to {size} bytes");
    }
}
