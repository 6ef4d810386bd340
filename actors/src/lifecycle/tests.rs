//! Property tests of the lifecycle: random interleavings of commit acks,
//! write refusals, in-doubt commits, child ends (duplicate and stale ones
//! too), cancels, panics, restarts and timer firings, against a model of
//! the committed row, checking after every step the invariants that the
//! README and the guide promise.
//!
//! A fastrand generator with a printed seed rather than `proptest`: one
//! small dev-dependency, and a failing case is replayed exactly with
//! `LIFECYCLE_SEED=<seed> cargo test -p command-coordinator-actors lifecycle`.
//! `LIFECYCLE_CASES` sets how many cases run (default 20,000).

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::config::RuntimeConfig;
use crate::model::{CommandEntity, CommandId, CommandStatus, JsonPayload};

/// What the world knows of one child.
#[derive(Debug, Clone)]
struct WorldChild {
    id: CommandId,
    status: CommandStatus,
    /// Running (a parallel child at once; a serial one once its parent
    /// started it, or once cancelled: the coordinator fails a parked child).
    started: bool,
    /// Its serial parent started it.
    parent_started: bool,
    /// Its serial parent started it to fail without running.
    skipped: bool,
    /// It will fail ("cancelled", or skipped by its serial parent).
    doomed: bool,
}

/// An operation the machine asked for, not answered yet.
#[derive(Debug, Clone)]
enum Op {
    Write(CommandUpdate),
    Call(Call),
    CommitEndTx(CommandUpdate),
    CheckRow,
    Reload,
    Fetch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Poll(u32),
    Set(Timer),
}

/// The committed row, as the database has it.
#[derive(Debug, Clone)]
struct Row {
    status: CommandStatus,
    executed: bool,
    notified: bool,
    failure_reason: Option<String>,
    return_value: bool,
    failed_attempts: i32,
    not_before: Option<DateTime<Utc>>,
}

struct World {
    seed: u64,
    rng: fastrand::Rng,
    config: RuntimeConfig,
    rules: TypeRules,
    life_time: Duration,
    id: CommandId,
    created_at: DateTime<Utc>,
    now: DateTime<Utc>,
    machine: Lifecycle,
    row: Row,
    children: Vec<WorldChild>,
    /// Child news on its way to the parent's mailbox (in any order).
    mailbox: Vec<ChildView>,
    op: Option<Op>,
    timers: Vec<(DateTime<Utc>, TimerKind)>,
    /// The end transaction opened by the end call in flight.
    cancel_requested: bool,
    /// The outcome was decided (an outcome write was asked for) before the
    /// cancel came: the cancel may not change it.
    outcome_before_cancel: bool,
    executes: u32,
    /// Counted failed end attempts in this incarnation.
    counted_end_failures: u32,
    end_effects: u32,
    poll_errored: bool,
    finished: u32,
    /// The end tx of the end call in flight commits or rolls back.
    end_tx_open: bool,
    trace: Vec<String>,
    /// Faults allowed (false: fair scheduling, every answer a success).
    faults: bool,
    /// The last end transaction's COMMIT was refused (not an outage).
    commit_refused: bool,
    /// The host holds its lock (false: another host may run the command).
    may_act: bool,
    /// The type's retry policy (none, or a few tries).
    retry: crate::retry::RetryPolicy,
    /// Transient errors `execute` returned: each may be followed by a try.
    transient_executes: u32,
}

fn config() -> RuntimeConfig {
    RuntimeConfig {
        poll_interval: Duration::from_secs(1),
        max_poll_interval: Duration::from_secs(10),
        end_attempts: 3,
        end_retry_delay: Duration::from_secs(1),
        max_restarts: 2,
        ..RuntimeConfig::default()
    }
}

fn rank(status: CommandStatus) -> u8 {
    match status {
        CommandStatus::Unknown => 0,
        CommandStatus::NotStarted => 1,
        CommandStatus::Active => 2,
        CommandStatus::Failed | CommandStatus::ExecutionFailed | CommandStatus::Succeeded => 3,
        CommandStatus::EndedSuccessfully | CommandStatus::EndedWithFailure => 4,
    }
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let rules = TypeRules {
            serial: rng.bool(),
            rerun: rng.u8(..4) == 0,
        };
        let id = CommandId::new();
        let created_at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let skip = rng.u8(..20) == 0;
        let row = Row {
            status: CommandStatus::NotStarted,
            executed: false,
            notified: false,
            failure_reason: None,
            return_value: false,
            failed_attempts: 0,
            not_before: None,
        };
        let retry = if rng.bool() {
            crate::retry::RetryPolicy::exponential(3)
        } else {
            crate::retry::RetryPolicy::NONE
        };
        let mut world = Self {
            seed,
            life_time: if rng.u8(..10) == 0 {
                Duration::from_secs(60)
            } else {
                Duration::from_secs(24 * 3600)
            },
            rng,
            config: config(),
            rules,
            id,
            created_at,
            now: created_at,
            machine: Lifecycle::new(
                &entity(id, created_at, &row),
                StartKind::Fresh,
                Vec::new(),
                rules,
                false,
            ),
            row,
            children: Vec::new(),
            mailbox: Vec::new(),
            op: None,
            timers: Vec::new(),
            cancel_requested: false,
            outcome_before_cancel: false,
            executes: 0,
            counted_end_failures: 0,
            end_effects: 0,
            poll_errored: false,
            finished: 0,
            end_tx_open: false,
            trace: Vec::new(),
            faults: true,
            commit_refused: false,
            may_act: true,
            retry,
            transient_executes: 0,
        };
        if skip {
            world.machine = Lifecycle::new(
                &entity(id, created_at, &world.row),
                StartKind::Skip("not run: skipped".into()),
                Vec::new(),
                rules,
                false,
            );
        }
        world
    }

    fn fail(&self, what: &str) -> ! {
        let tail: Vec<&String> = self.trace.iter().rev().take(40).rev().collect();
        panic!(
            "lifecycle invariant broken: {what}\nseed {} (replay: LIFECYCLE_SEED={} cargo test -p command-coordinator-actors lifecycle)\nrules {:?}\nrow {:?}\nchildren {:?}\nlast steps:\n{}",
            self.seed,
            self.seed,
            self.rules,
            self.row,
            self.children,
            tail.iter()
                .map(|s| format!("  {s}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    fn check(&self, ok: bool, what: &str) {
        if !ok {
            self.fail(what);
        }
    }

    /// Feeds `input` to the machine and takes its effects.
    fn feed(&mut self, input: Input) {
        self.trace.push(format!("{input:?}"));
        let config = self.config.clone();
        let env = Env {
            now: self.now,
            config: &config,
            life_time: self.life_time,
            may_act: self.may_act,
            retry: self.retry,
        };
        let mut effects = Vec::new();
        let was_finished = self.finished > 0;
        self.machine.handle(input, &env, &mut effects);
        for effect in effects {
            self.trace.push(format!("  -> {effect:?}"));
            self.check(!was_finished, "an effect after Finished");
            self.effect(effect);
        }
    }

    fn start_op(&mut self, op: Op) {
        self.check(self.op.is_none(), "two writes or calls in flight at once");
        self.op = Some(op);
    }

    fn timer(&mut self, delay: Duration, kind: TimerKind) {
        let due = self.now + chrono::Duration::from_std(delay).unwrap();
        self.timers.push((due, kind));
    }

    fn effect(&mut self, effect: Effect) {
        if !self.may_act {
            self.check(
                !matches!(
                    effect,
                    Effect::Write { .. } | Effect::Call(_) | Effect::CommitEndTx { .. }
                ),
                "acted while the host may not (lease lost, declared dead)",
            );
        }
        match effect {
            Effect::Write { update, .. } => {
                self.check(update.id == self.id, "a write for another command");
                if let Some(status) = update.status
                    && status.awaits_end_action()
                    && self.is_open()
                    && !self.cancel_requested
                {
                    self.outcome_before_cancel = true;
                }
                self.start_op(Op::Write(update));
            }
            Effect::Call(call) => {
                self.check_call(&call);
                self.start_op(Op::Call(call));
            }
            Effect::DropCommand => {}
            Effect::SchedulePoll { generation, delay } => {
                self.check(
                    !(self.cancel_requested && self.is_open()),
                    "a cancelled command waits for its next poll instead of failing at once",
                );
                self.timer(delay, TimerKind::Poll(generation))
            }
            Effect::SetTimer { timer, delay } => self.timer(delay, TimerKind::Set(timer)),
            Effect::StartChild { id, skip } => {
                self.check(self.rules.serial, "a parallel child started by its parent");
                let child = self.children.iter_mut().find(|c| c.id == id);
                let Some(child) = child else {
                    self.fail("an unknown child started");
                };
                if child.status.is_ended() {
                    // Failed already (cancelled while parked): the
                    // coordinator has nothing left to start.
                    return;
                }
                if child.parent_started {
                    self.fail("a serial child started twice");
                }
                child.parent_started = true;
                child.started = true;
                if skip.is_none() {
                    child.status = CommandStatus::Active;
                }
                child.skipped = skip.is_some();
                child.doomed |= skip.is_some();
                let running = self
                    .children
                    .iter()
                    .filter(|c| c.parent_started && !c.skipped && !c.status.is_ended())
                    .count();
                self.check(running <= 1, "two serial children running at once");
            }
            Effect::CancelChildren(ids) => {
                for id in ids {
                    if let Some(child) = self.children.iter_mut().find(|c| c.id == id) {
                        child.doomed = true;
                        child.started = true;
                    }
                }
            }
            Effect::CommitEndTx { update, .. } => {
                self.check(self.end_tx_open, "a commit without an end transaction");
                self.end_tx_open = false;
                self.start_op(Op::CommitEndTx(update));
            }
            Effect::RollbackEndTx => {
                self.check(self.end_tx_open, "a rollback without an end transaction");
                self.end_tx_open = false;
            }
            Effect::CheckRow => self.start_op(Op::CheckRow),
            Effect::Reload => self.start_op(Op::Reload),
            Effect::FetchCommand => self.start_op(Op::Fetch),
            Effect::Stop => {
                // The supervisor restarts the actor: timers of the old
                // context die; the coordinator's poll timers do not.
                self.timers.retain(|(_, k)| matches!(k, TimerKind::Poll(_)));
                self.trace.push("supervisor restart".into());
                self.feed(Input::Restarted);
                self.feed(Input::Started);
            }
            Effect::StatusCommitted { to, .. } => {
                self.check(
                    to == self.row.status,
                    "a status reported that is not committed",
                );
            }
            Effect::Finished => {
                self.finished += 1;
                self.check(self.finished == 1, "Finished twice");
                self.check(
                    self.row.status.is_ended() && self.row.notified,
                    "Finished before ENDED_* and notified were committed",
                );
                self.check(
                    self.children.iter().all(|c| c.status.is_ended()),
                    "a parent finished before its children",
                );
                if self.cancel_requested && !self.outcome_before_cancel {
                    self.check(
                        self.row.status == CommandStatus::EndedWithFailure,
                        "a command cancelled before its outcome did not fail",
                    );
                }
            }
        }
    }

    fn is_open(&self) -> bool {
        matches!(
            self.row.status,
            CommandStatus::NotStarted | CommandStatus::Active
        )
    }

    fn check_call(&mut self, call: &Call) {
        let children_ended = self.children.iter().all(|c| c.status.is_ended());
        match call {
            Call::Execute => {
                self.check(!self.cancel_requested, "execute called after a cancel");
                self.executes += 1;
                self.check(
                    self.executes <= 1 + self.transient_executes || self.rules.rerun,
                    "execute ran twice for a type that does not opt into re-running",
                );
                self.check(
                    self.row.not_before.is_none_or(|at| self.now >= at),
                    "execute before its not_before",
                );
                self.check(
                    self.row.status == CommandStatus::Active && !self.row.executed,
                    "execute outside ACTIVE, not executed",
                );
            }
            Call::OnExecuted => self.check(
                self.row.executed,
                "on_executed before executed was committed",
            ),
            Call::Poll => {
                self.check(!self.cancel_requested, "poll called after a cancel");
                self.check(children_ended, "poll while a child has not ended");
                self.check(
                    self.children
                        .iter()
                        .all(|c| c.status != CommandStatus::EndedWithFailure),
                    "poll while a child failed",
                );
                self.check(!self.poll_errored, "poll again after a poll error");
                self.check(
                    self.row.status == CommandStatus::Active && self.row.executed,
                    "poll outside ACTIVE and executed",
                );
            }
            Call::End { succeeded } => {
                self.check(children_ended, "the end method before every child ended");
                self.check(
                    !(self.row.status.is_ended() && self.row.notified),
                    "the end method after the end was committed",
                );
                self.check(
                    self.row.status.awaits_end_action(),
                    "the end method without an outcome",
                );
                self.check(
                    *succeeded == (self.row.status == CommandStatus::Succeeded),
                    "the wrong end method",
                );
                self.check(
                    self.counted_end_failures < self.config.end_attempts,
                    "more end attempts than end_attempts",
                );
            }
            Call::Finalize { .. } => {
                self.check(children_ended, "finalize before every child ended");
                self.check(
                    self.counted_end_failures == self.config.end_attempts,
                    "finalize before the attempts ran out",
                );
            }
        }
    }

    /// Applies a committed update to the row, checking that statuses only
    /// move forward.
    fn commit(&mut self, update: &CommandUpdate) {
        if self.row.status.is_ended() && self.row.notified {
            // The writer leaves an ended and notified row alone.
            return;
        }
        if let Some(status) = update.status {
            if status.awaits_end_action() && self.cancel_requested && !self.outcome_before_cancel {
                let reason = update.failure_reason.as_deref().unwrap_or("");
                self.check(
                    reason == CANCELLED || reason.starts_with("the database refused"),
                    &format!("a command cancelled before its outcome failed with {reason:?}"),
                );
            }
            let (from, to) = (rank(self.row.status), rank(status));
            let retry = self.row.status == CommandStatus::Active
                && status == CommandStatus::NotStarted
                && !self.row.executed
                && update
                    .retry
                    .as_ref()
                    .is_some_and(|r| r.not_before.is_some());
            self.check(
                to > from || status == self.row.status || retry,
                &format!("status moved from {} to {status}", self.row.status),
            );
            self.row.status = status;
        }
        if let Some(executed) = update.executed {
            self.row.executed = executed;
        }
        if let Some(notified) = update.notified {
            self.row.notified = notified;
        }
        if let Some(retry) = &update.retry {
            let failed = retry.failed_attempts;
            self.check(
                failed >= 0 && failed as u32 <= self.retry.max_attempts,
                "more transient failures in a row than the policy's tries",
            );
            self.row.failed_attempts = failed;
            if retry.not_before.is_some() {
                self.row.not_before = retry.not_before;
            }
        }
        if update.failure_reason.is_some() {
            self.row.failure_reason = update.failure_reason.clone();
        }
        if update.return_value.is_some() {
            self.row.return_value = true;
        }
        self.check(
            !self.row.status.is_ended() || self.row.notified,
            "ENDED_* committed without notified",
        );
    }

    fn pick<T: Copy>(&mut self, choices: &[(u32, T)]) -> T {
        let total: u32 = choices.iter().map(|c| c.0).sum();
        let mut n = self.rng.u32(..total);
        for &(weight, choice) in choices {
            if n < weight {
                return choice;
            }
            n -= weight;
        }
        unreachable!("weights cover the range")
    }

    /// Children the call in flight submits.
    fn submitted(&mut self) -> Vec<(CommandId, i32)> {
        let n = if self.faults { self.rng.usize(..3) } else { 0 };
        let n = if self.rng.u8(..3) == 0 { n } else { 0 };
        (0..n)
            .map(|_| {
                let id = CommandId::new();
                self.children.push(WorldChild {
                    id,
                    status: if self.rules.serial {
                        CommandStatus::NotStarted
                    } else {
                        CommandStatus::Active
                    },
                    started: !self.rules.serial || self.cancel_requested,
                    parent_started: false,
                    skipped: false,
                    doomed: self.cancel_requested,
                });
                (id, 7)
            })
            .collect()
    }

    /// Answers the operation in flight.
    fn answer(&mut self) {
        let Some(op) = self.op.take() else { return };
        let faults = self.faults;
        match op {
            Op::Write(update) => {
                #[derive(Clone, Copy)]
                enum W {
                    Ack,
                    Refused,
                    InDoubt,
                }
                let w = if faults {
                    self.pick(&[(8, W::Ack), (2, W::Refused), (1, W::InDoubt)])
                } else {
                    W::Ack
                };
                if !self.may_act {
                    // The writer refuses what a fenced host writes.
                    return self.feed(Input::WriteFailed {
                        error: "this host may not write".into(),
                        fenced: true,
                    });
                }
                match w {
                    W::Ack => {
                        self.commit(&update);
                        self.feed(Input::WriteAcked);
                    }
                    W::InDoubt => {
                        // The COMMIT's answer was lost: the writer tries again
                        // and finds it done (it leaves an ended row alone).
                        self.commit(&update);
                        self.commit(&update);
                        self.feed(Input::WriteAcked);
                    }
                    W::Refused => self.feed(Input::WriteFailed {
                        error: "value too long".into(),
                        fenced: false,
                    }),
                }
            }
            Op::Call(call) => self.answer_call(call),
            Op::CommitEndTx(update) => {
                #[derive(Clone, Copy)]
                enum C {
                    Ok,
                    Transient,
                    InDoubt,
                    Refused,
                }
                let c = if faults {
                    self.pick(&[
                        (6, C::Ok),
                        (1, C::Transient),
                        (2, C::InDoubt),
                        (1, C::Refused),
                    ])
                } else {
                    C::Ok
                };
                let applies = matches!(c, C::Ok | C::InDoubt);
                // The guard: an ended and notified row is left alone (0 rows:
                // rolled back, the effects not applied).
                let guarded = self.row.status.is_ended() && self.row.notified;
                if applies && !guarded {
                    self.end_effects += 1;
                    self.check(self.end_effects <= 1, "the end's effects committed twice");
                    self.commit(&update);
                }
                let result = match c {
                    C::Ok if !guarded => Ok(()),
                    C::Ok | C::Refused => Err(EndCommitError {
                        error: "refused".into(),
                        transient: false,
                        fenced: false,
                    }),
                    C::Transient | C::InDoubt => Err(EndCommitError {
                        error: "connection lost".into(),
                        transient: true,
                        fenced: false,
                    }),
                };
                self.commit_refused = matches!(&result, Err(e) if !e.transient);
                self.feed(Input::EndCommitted(result));
            }
            Op::CheckRow => {
                if faults && self.rng.u8(..4) == 0 {
                    self.feed(Input::ReadFailed {
                        error: "unreachable".into(),
                    });
                } else {
                    let ended_and_notified = self.row.status.is_ended() && self.row.notified;
                    if !ended_and_notified && self.commit_refused {
                        // A commit the database refused fails the attempt.
                        self.counted_end_failures += 1;
                    }
                    self.feed(Input::RowChecked { ended_and_notified });
                }
            }
            Op::Reload => {
                if faults && self.rng.u8(..4) == 0 {
                    self.feed(Input::ReadFailed {
                        error: "unreachable".into(),
                    });
                } else {
                    let decoded = if faults && self.rng.u8(..20) == 0 {
                        Err("parameters no longer deserialize".to_owned())
                    } else {
                        Ok(())
                    };
                    let reloaded = Reloaded {
                        row: Box::new(entity(self.id, self.created_at, &self.row)),
                        children: self.child_rows(),
                        decoded,
                    };
                    self.feed(Input::Reloaded(Box::new(reloaded)));
                }
            }
            Op::Fetch => {
                if faults && self.rng.u8(..4) == 0 {
                    self.feed(Input::ReadFailed {
                        error: "unreachable".into(),
                    });
                } else {
                    self.feed(Input::Fetched(Ok(())));
                }
            }
        }
    }

    fn answer_call(&mut self, call: Call) {
        let faults = self.faults;
        let panic = faults && self.rng.u8(..12) == 0;
        let mut returned = Returned {
            outcome: Outcome::Ok,
            submitted: Vec::new(),
            end_tx: false,
            store_unavailable: false,
        };
        match call {
            Call::Execute => {
                returned.submitted = self.submitted();
                returned.outcome = if panic {
                    Outcome::Panicked("boom".into())
                } else if faults && self.rng.u8(..6) == 0 {
                    Outcome::Err("no".into())
                } else if faults && self.rng.u8(..4) == 0 {
                    self.transient_executes += 1;
                    Outcome::Transient("busy".into())
                } else {
                    Outcome::Ok
                };
            }
            Call::OnExecuted => {
                returned.submitted = self.submitted();
                if panic {
                    returned.outcome = Outcome::Panicked("boom".into());
                }
            }
            Call::Poll => {
                returned.submitted = self.submitted();
                returned.outcome = if panic {
                    Outcome::Panicked("boom".into())
                } else if !faults {
                    Outcome::Succeeded(Ok(JsonPayload::encode(&1u32).unwrap()))
                } else {
                    match self.rng.u8(..12) {
                        10 | 11 => Outcome::Transient("timeout".into()),
                        0..=3 => Outcome::Running,
                        4..=6 => Outcome::Succeeded(Ok(JsonPayload::encode(&1u32).unwrap())),
                        7 => Outcome::Succeeded(Err("NaN".into())),
                        8 => Outcome::Failed("it broke".into()),
                        _ => {
                            self.poll_errored = !self.cancel_requested;
                            Outcome::Err("poll error".into())
                        }
                    }
                };
            }
            Call::End { .. } => {
                returned.end_tx = self.rng.bool();
                self.end_tx_open = returned.end_tx;
                let roll = if faults { self.rng.u8(..10) } else { 0 };
                match roll {
                    0..=4 => {}
                    5 | 6 => {
                        self.counted_end_failures += 1;
                        returned.outcome = Outcome::Err("end failed".into());
                    }
                    7 => {
                        returned.outcome = Outcome::Err("database away".into());
                        returned.store_unavailable = true;
                    }
                    8 => {
                        self.counted_end_failures += 1;
                        returned.outcome = Outcome::Panicked("boom".into());
                    }
                    _ => {
                        // The connection under the transaction broke.
                        returned.end_tx = true;
                        self.end_tx_open = true;
                        returned.store_unavailable = true;
                        returned.outcome = Outcome::Err("connection broke".into());
                    }
                }
            }
            Call::Finalize { .. } => {
                if panic {
                    returned.outcome = Outcome::Panicked("boom".into());
                }
            }
        }
        let expect_finalize = self.may_act
            && matches!(call, Call::End { .. })
            && matches!(returned.outcome, Outcome::Err(_) | Outcome::Panicked(_))
            && !returned.store_unavailable
            && self.counted_end_failures == self.config.end_attempts;
        let expect_retry = self.may_act
            && matches!(call, Call::End { .. })
            && matches!(returned.outcome, Outcome::Err(_) | Outcome::Panicked(_))
            && !expect_finalize;
        self.feed(Input::Returned(returned));
        if expect_finalize {
            self.check(
                matches!(self.op, Some(Op::Call(Call::Finalize { .. }))),
                "the last end attempt failed but finalize did not run",
            );
        }
        if expect_retry {
            self.check(
                self.timers
                    .iter()
                    .any(|(_, k)| *k == TimerKind::Set(Timer::EndAttempt)),
                "a failed end attempt without a retry",
            );
        }
    }

    fn child_rows(&self) -> Vec<ChildView> {
        self.children
            .iter()
            .map(|c| ChildView {
                id: c.id,
                command_type: 7,
                status: c.status,
                output: None,
                failure_reason: None,
            })
            .collect()
    }

    /// A started child that has not ended ends now.
    fn end_a_child(&mut self) -> bool {
        let open: Vec<usize> = (0..self.children.len())
            .filter(|&i| self.children[i].started && !self.children[i].status.is_ended())
            .collect();
        if open.is_empty() {
            return false;
        }
        let i = open[self.rng.usize(..open.len())];
        let fails = self.children[i].doomed || (self.faults && self.rng.u8(..5) == 0);
        let child = &mut self.children[i];
        child.status = if fails {
            CommandStatus::EndedWithFailure
        } else {
            CommandStatus::EndedSuccessfully
        };
        let news = ChildView {
            id: child.id,
            command_type: 7,
            status: child.status,
            output: None,
            failure_reason: fails.then(|| "cancelled".to_owned()),
        };
        if self.faults && self.rng.u8(..4) == 0 {
            self.mailbox.push(news.clone()); // a duplicate
        }
        self.mailbox.push(news);
        true
    }

    /// Fires the earliest timer (advancing the clock to it).
    fn fire_timer(&mut self) -> bool {
        if self.timers.is_empty() {
            return false;
        }
        let i = (0..self.timers.len())
            .min_by_key(|&i| self.timers[i].0)
            .unwrap();
        let (due, kind) = self.timers.remove(i);
        if due > self.now {
            self.now = due;
        }
        match kind {
            TimerKind::Poll(generation) => self.feed(Input::PollDue { generation }),
            TimerKind::Set(timer) => self.feed(Input::TimerFired(timer)),
        }
        true
    }

    /// The host process dies and a new one rebuilds the command from its
    /// committed row.
    fn crash(&mut self) {
        self.trace.push("CRASH".into());
        if let Some(op) = self.op.take() {
            // Whatever was in flight may or may not have committed.
            match op {
                Op::Write(update) if self.rng.bool() => self.commit(&update),
                Op::CommitEndTx(update)
                    if self.rng.bool() && !(self.row.status.is_ended() && self.row.notified) =>
                {
                    self.end_effects += 1;
                    self.check(self.end_effects <= 1, "the end's effects committed twice");
                    self.commit(&update);
                }
                _ => {}
            }
        }
        self.end_tx_open = false;
        // A poll error that was never committed died with the process: the
        // new one polls again.
        self.poll_errored &= !self.is_open();
        self.timers.clear();
        self.mailbox.clear();
        self.counted_end_failures = 0;
        if self.row.status.is_ended() && self.row.notified {
            // Not rebuilt: the coordinator loads unfinished commands only.
            // Its end is committed; the waiters of the old process are gone
            // with it, and a new one reads the row.
            self.finished += 1;
            return;
        }
        self.machine = Lifecycle::new(
            &entity(self.id, self.created_at, &self.row),
            StartKind::Rehydrated,
            self.child_rows(),
            self.rules,
            // Cancellations are recorded in the database and honoured at
            // start-up.
            self.cancel_requested,
        );
        for child in &mut self.children {
            if child.status == CommandStatus::NotStarted {
                // Parked again by the new process: its serial parent starts
                // (or skips) it anew; a cancelled one the coordinator fails.
                child.parent_started = false;
                child.skipped = false;
                child.started = self.cancel_requested;
                child.doomed = self.cancel_requested;
            } else if !child.status.is_ended() && self.cancel_requested {
                child.doomed = true;
            }
        }
        self.feed(Input::Started);
    }

    /// One random event; false when none is possible.
    fn random_step(&mut self) -> bool {
        #[derive(Clone, Copy)]
        enum E {
            Answer,
            Timer,
            ChildEnds,
            Deliver,
            Stale,
            StalePoll,
            Cancel,
            Crash,
            LockLost,
        }
        let e = self.pick(&[
            (10, E::Answer),
            (4, E::Timer),
            (3, E::ChildEnds),
            (4, E::Deliver),
            (1, E::Stale),
            (1, E::StalePoll),
            (1, E::Cancel),
            (1, E::Crash),
            (1, E::LockLost),
        ]);
        match e {
            E::Answer if self.op.is_some() => self.answer(),
            E::Timer if !self.timers.is_empty() => {
                self.fire_timer();
            }
            E::ChildEnds => return self.end_a_child() || self.progress(),
            E::Deliver if !self.mailbox.is_empty() => {
                let i = self.rng.usize(..self.mailbox.len());
                let news = self.mailbox.swap_remove(i);
                self.feed(Input::ChildEnded(news));
            }
            E::Stale if !self.children.is_empty() => {
                // An old view of a child (a row read before its end).
                let i = self.rng.usize(..self.children.len());
                let child = &self.children[i];
                let status = if child.status.is_ended() && child.started {
                    CommandStatus::Active
                } else {
                    child.status
                };
                let news = ChildView {
                    id: child.id,
                    command_type: 7,
                    status,
                    output: None,
                    failure_reason: None,
                };
                self.feed(Input::ChildEnded(news));
            }
            E::StalePoll => {
                let generation = self.rng.u32(..4);
                self.feed(Input::PollDue { generation });
            }
            E::Cancel if !self.cancel_requested => {
                self.cancel_requested = true;
                self.outcome_before_cancel |= !self.is_open();
                self.feed(Input::Cancel);
            }
            E::Crash => self.crash(),
            E::LockLost if self.may_act => {
                self.trace.push("RIGHT TO ACT LOST".into());
                self.may_act = false;
            }
            _ => return self.progress(),
        }
        true
    }

    /// Under fair scheduling: answer what is in flight, deliver news, end
    /// children, fire timers; false when nothing is left to happen.
    fn progress(&mut self) -> bool {
        if !self.may_act && self.op.is_none() {
            // The lock is held again: a new epoch rebuilds every command
            // from the database, as after a crash.
            self.trace.push("ACTING AGAIN".into());
            self.may_act = true;
            self.crash();
        } else if self.op.is_some() {
            self.answer();
        } else if !self.mailbox.is_empty() {
            let news = self.mailbox.remove(0);
            self.feed(Input::ChildEnded(news));
        } else if self.end_a_child() {
        } else if !self.fire_timer() {
            return false;
        }
        true
    }

    fn done(&self) -> bool {
        self.finished > 0
    }
}

fn entity(id: CommandId, created_at: DateTime<Utc>, row: &Row) -> CommandEntity {
    let mut entity = CommandEntity::new(id, 1, JsonPayload::encode(&0u32).unwrap());
    entity.created_at = created_at;
    entity.status = row.status;
    entity.executed = row.executed;
    entity.callback_notified = row.notified;
    entity.failure_reason = row.failure_reason.clone();
    entity.return_value = row
        .return_value
        .then(|| JsonPayload::encode(&1u32).unwrap());
    entity.failed_attempts = row.failed_attempts;
    entity.not_before = row.not_before;
    entity
}

/// What the cases exercised, so that the test cannot pass without having
/// tested anything.
#[derive(Debug, Default)]
struct Coverage {
    steps: u64,
    crashes: u64,
    supervisor_restarts: u64,
    finalized: u64,
    in_doubt_commits_found_committed: u64,
    refused_writes_replaced: u64,
    cancelled: u64,
    children: u64,
    serial_skips: u64,
    fenced: u64,
    execute_retries: u64,
    poll_retries: u64,
    retries_used_up: u64,
}

/// Runs one case: random steps, then fair scheduling until the command
/// finishes, which it must within a bounded number of steps.
fn run_case(seed: u64, coverage: &mut Coverage) {
    let mut world = World::new(seed);
    world.feed(Input::Started);
    let random_steps = world.rng.usize(..400);
    for _ in 0..random_steps {
        if world.done() {
            break;
        }
        if !world.random_step() && !world.done() {
            world.fail("stuck: nothing in flight, no timer, no news, and not finished");
        }
    }
    world.faults = false;
    world.trace.push("-- fair scheduling from here --".into());
    for _ in 0..2_000 {
        if world.done() {
            break;
        }
        if !world.progress() {
            world.fail("stuck: nothing in flight, no timer, no news, and not finished");
        }
    }
    world.check(world.done(), "not finished within 2,000 fair steps");
    coverage.steps += world.trace.iter().filter(|t| !t.starts_with(' ')).count() as u64;
    let saw = |what: &str| world.trace.iter().any(|t| t.contains(what));
    coverage.crashes += u64::from(saw("CRASH"));
    coverage.supervisor_restarts += u64::from(saw("supervisor restart"));
    coverage.finalized += u64::from(saw("Call(Finalize"));
    coverage.in_doubt_commits_found_committed +=
        u64::from(saw("RowChecked { ended_and_notified: true }"));
    coverage.refused_writes_replaced += u64::from(saw("the database refused"));
    coverage.cancelled += u64::from(world.row.failure_reason.as_deref() == Some(CANCELLED));
    coverage.children += u64::from(!world.children.is_empty());
    coverage.serial_skips += u64::from(saw("not run: an earlier child"));
    coverage.fenced += u64::from(saw("RIGHT TO ACT LOST"));
    coverage.execute_retries += u64::from(saw(
        "status: Some(NotStarted), executed: None, notified: None",
    ));
    coverage.poll_retries += u64::from(
        world
            .trace
            .iter()
            .any(|t| t.contains("Transient(\"timeout\")")),
    ) * u64::from(world.retry.max_attempts > 1);
    coverage.retries_used_up += u64::from(saw("times in a row (transient errors)"));
    world.check(world.finished == 1, "Finished more than once");
    world.check(
        world.row.status.is_ended() && world.row.notified,
        "finished without ENDED_* and notified",
    );
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("LIFECYCLE_SEED") {
        return vec![seed.parse().expect("LIFECYCLE_SEED is a number")];
    }
    let cases: u64 = std::env::var("LIFECYCLE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let base = fastrand::u64(..);
    eprintln!("lifecycle property test: seeds {base}.. ({cases} cases)");
    (0..cases).map(|i| base.wrapping_add(i)).collect()
}

#[test]
fn every_interleaving_keeps_the_invariants_and_ends_the_command() {
    let mut coverage = Coverage::default();
    for seed in seeds() {
        run_case(seed, &mut coverage);
    }
    eprintln!("{coverage:?}");
    if std::env::var("LIFECYCLE_SEED").is_err() {
        let Coverage {
            steps,
            crashes,
            supervisor_restarts,
            finalized,
            in_doubt_commits_found_committed,
            refused_writes_replaced,
            cancelled,
            children,
            serial_skips,
            fenced,
            execute_retries,
            poll_retries,
            retries_used_up,
        } = coverage;
        for (what, n) in [
            ("steps", steps),
            ("crashes", crashes),
            ("supervisor restarts", supervisor_restarts),
            ("finalize", finalized),
            (
                "in-doubt commits found committed",
                in_doubt_commits_found_committed,
            ),
            ("refused writes replaced", refused_writes_replaced),
            ("cancelled commands", cancelled),
            ("commands with children", children),
            ("serial children skipped", serial_skips),
            ("lease losses", fenced),
            ("execute retried after a transient error", execute_retries),
            ("poll retried after a transient error", poll_retries),
            ("tries used up", retries_used_up),
        ] {
            assert!(n > 0, "no case exercised {what}: {coverage:?}");
        }
    }
}
