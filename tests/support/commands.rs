//! Command types for the runtime tests. They record what the runtime calls
//! in a global journal, by a per-test tag, so tests can assert on it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;

use command_coordinator::{
    ChildExecution, Command, CommandContext, CommandError, InterruptedExecute, PollOutcome,
};
use serde::{Deserialize, Serialize};

static JOURNAL: Mutex<Option<HashMap<String, Vec<String>>>> = Mutex::new(None);

/// Records `event` under `tag`.
pub fn record(tag: &str, event: impl Into<String>) {
    let mut journal = JOURNAL.lock().unwrap_or_else(|p| p.into_inner());
    journal
        .get_or_insert_with(HashMap::new)
        .entry(tag.to_owned())
        .or_default()
        .push(event.into());
}

/// Every event recorded under `tag`, in order.
pub fn events(tag: &str) -> Vec<String> {
    let journal = JOURNAL.lock().unwrap_or_else(|p| p.into_inner());
    journal
        .as_ref()
        .and_then(|j| j.get(tag).cloned())
        .unwrap_or_default()
}

/// How many times `event` was recorded under `tag`.
pub fn count(tag: &str, event: &str) -> usize {
    events(tag).iter().filter(|e| *e == event).count()
}

/// A fresh tag for one test.
pub fn tag() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What a [`Job`] does when the runtime calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Behaviour {
    Succeed,
    PollReportsFailure,
    PollErrors,
    PollPanicsOnce,
    PollPanicsAlways,
    ExecuteErrors,
    ExecutePanics,
    EndFailsTimes(u32),
    EndAlwaysFails,
    NeverDone,
}

/// A leaf command: done after `polls_needed` polls, with `output`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub tag: String,
    pub name: String,
    pub behaviour: Behaviour,
    pub polls_needed: u32,
    pub output: u64,
    /// Set by execute: proves the state after execute is persisted.
    pub started_job: Option<String>,
}

impl Job {
    pub fn new(tag: &str, name: &str, behaviour: Behaviour) -> Self {
        Self {
            tag: tag.to_owned(),
            name: name.to_owned(),
            behaviour,
            polls_needed: 1,
            output: 1,
            started_job: None,
        }
    }

    pub fn output(mut self, output: u64) -> Self {
        self.output = output;
        self
    }

    pub fn polls(mut self, polls: u32) -> Self {
        self.polls_needed = polls;
        self
    }

    fn ev(&self, what: &str) {
        record(&self.tag, format!("{what}:{}", self.name));
    }
}

impl Command for Job {
    const COMMAND_TYPE: i32 = 100;
    type Output = u64;

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        self.ev("execute");
        match self.behaviour {
            Behaviour::ExecuteErrors => Err(CommandError::new("cannot reach the host")),
            Behaviour::ExecutePanics => panic!("execute blew up"),
            _ => {
                self.started_job = Some(format!("job-of-{}", self.name));
                Ok(())
            }
        }
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
        self.ev("poll");
        assert_eq!(
            self.started_job.as_deref(),
            Some(format!("job-of-{}", self.name).as_str()),
            "state set by execute is kept"
        );
        let polls = count(&self.tag, &format!("poll:{}", self.name)) as u32;
        match self.behaviour {
            Behaviour::PollReportsFailure => Ok(PollOutcome::Failed("merge aborted".into())),
            Behaviour::PollErrors => Err(CommandError::new("status query failed")),
            Behaviour::PollPanicsOnce
                if count(&self.tag, &format!("panicked:{}", self.name)) == 0 =>
            {
                self.ev("panicked");
                panic!("poll blew up once")
            }
            Behaviour::PollPanicsAlways => {
                self.ev("panicked");
                panic!("poll blows up every time")
            }
            Behaviour::NeverDone => Ok(PollOutcome::Running),
            _ if polls < self.polls_needed => Ok(PollOutcome::Running),
            _ => Ok(PollOutcome::Succeeded(self.output)),
        }
    }

    async fn end_successfully(
        &mut self,
        output: &u64,
        ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        self.ev(&format!("end_successfully({output})"));
        self.end_attempt(ctx)
    }

    async fn end_with_failure(
        &mut self,
        reason: &str,
        ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        self.ev("end_with_failure");
        record(&self.tag, format!("reason:{}:{reason}", self.name));
        self.end_attempt(ctx)
    }

    async fn finalize(&mut self, error: &CommandError, _ctx: &CommandContext) {
        self.ev(&format!("finalize({error})"));
    }
}

impl Job {
    fn end_attempt(&self, ctx: &CommandContext) -> Result<(), CommandError> {
        self.ev(&format!("end_attempt({})", ctx.end_attempt()));
        match self.behaviour {
            Behaviour::EndFailsTimes(n) if ctx.end_attempt() <= n => {
                Err(CommandError::new("end failed"))
            }
            Behaviour::EndAlwaysFails => Err(CommandError::new("end always fails")),
            _ => Ok(()),
        }
    }
}

/// A parent: submits its children in `execute`, succeeds with the sum of
/// their outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parent {
    pub tag: String,
    pub name: String,
    pub children: Vec<Job>,
    pub sub_parents: Vec<Parent>,
    /// Fail `execute` after submitting the children.
    #[serde(default)]
    pub fail_execute: bool,
}

impl Parent {
    pub fn new(tag: &str, name: &str, children: Vec<Job>) -> Self {
        Self {
            tag: tag.to_owned(),
            name: name.to_owned(),
            children,
            sub_parents: Vec::new(),
            fail_execute: false,
        }
    }
}

impl Command for Parent {
    const COMMAND_TYPE: i32 = 101;
    type Output = u64;

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        record(&self.tag, format!("execute:{}", self.name));
        for child in &self.children {
            ctx.submit_child(child.clone()).await?;
        }
        for sub in &self.sub_parents {
            ctx.submit_child(sub.clone()).await?;
        }
        if self.fail_execute {
            return Err(CommandError::new(
                "execute failed after submitting children",
            ));
        }
        Ok(())
    }

    async fn poll(&mut self, ctx: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
        let jobs: u64 = ctx.child_outputs::<Job>()?.iter().sum();
        let subs: u64 = ctx.child_outputs::<Parent>()?.iter().sum();
        Ok(PollOutcome::Succeeded(jobs + subs))
    }

    async fn end_successfully(
        &mut self,
        output: &u64,
        _ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        record(
            &self.tag,
            format!("end_successfully({output}):{}", self.name),
        );
        Ok(())
    }

    async fn end_with_failure(
        &mut self,
        reason: &str,
        _ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        record(&self.tag, format!("end_with_failure:{}", self.name));
        record(&self.tag, format!("reason:{}:{reason}", self.name));
        Ok(())
    }
}

/// A parent whose children run one after another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SerialParent {
    pub tag: String,
    pub children: Vec<Job>,
    /// Fail `execute` after submitting the children.
    #[serde(default)]
    pub fail_execute: bool,
}

impl Command for SerialParent {
    const COMMAND_TYPE: i32 = 102;
    const CHILD_EXECUTION: ChildExecution = ChildExecution::Serial;
    type Output = u64;

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        for child in &self.children {
            ctx.submit_child(child.clone()).await?;
        }
        if self.fail_execute {
            return Err(CommandError::new(
                "execute failed after submitting children",
            ));
        }
        Ok(())
    }

    async fn poll(&mut self, ctx: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
        Ok(PollOutcome::Succeeded(
            ctx.child_outputs::<Job>()?.iter().sum(),
        ))
    }
}

/// A command whose `execute` is idempotent: re-run after an interruption.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Idempotent {
    pub tag: String,
}

impl Command for Idempotent {
    const COMMAND_TYPE: i32 = 103;
    const ON_INTERRUPTED_EXECUTE: InterruptedExecute = InterruptedExecute::Rerun;
    type Output = String;

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        record(&self.tag, "execute:idempotent");
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<String>, CommandError> {
        Ok(PollOutcome::Succeeded("done again".into()))
    }
}

/// A command with a short life time that never finishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShortLived {
    pub tag: String,
}

impl Command for ShortLived {
    const COMMAND_TYPE: i32 = 104;
    type Output = ();

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        record(&self.tag, "poll");
        Ok(PollOutcome::Running)
    }

    async fn end_with_failure(
        &mut self,
        reason: &str,
        _ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        record(&self.tag, format!("end_with_failure:{reason}"));
        Ok(())
    }

    fn life_time(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(300))
    }
}

/// A command whose end method writes a row of its own through the end
/// transaction: the effect must exist exactly once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Effectful {
    pub tag: String,
    /// `schema.table` of the effects table.
    pub table: String,
    /// The first end attempt writes its row and then fails.
    pub fail_first_end: bool,
    /// `execute` asks for a transaction (which it may not).
    pub tx_in_execute: bool,
}

impl Command for Effectful {
    const COMMAND_TYPE: i32 = 105;
    type Output = ();

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        if self.tx_in_execute {
            ctx.transaction::<command_coordinator::PgTransaction>()
                .await?;
        }
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }

    async fn end_successfully(&mut self, _: &(), ctx: &CommandContext) -> Result<(), CommandError> {
        let tx = ctx
            .transaction::<command_coordinator::PgTransaction>()
            .await?;
        let attempt = ctx.end_attempt() as i32;
        tx.execute(
            &format!(
                "INSERT INTO {} (command_id, attempt) VALUES ($1, $2)",
                self.table
            ),
            &[ctx.id().as_uuid(), &attempt],
        )
        .await?;
        record(&self.tag, format!("effect written, attempt {attempt}"));
        if self.fail_first_end && attempt == 1 {
            return Err(CommandError::new("failed after writing its effect"));
        }
        Ok(())
    }
}

/// A command that is polled `polls` times and then succeeds: for memory tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Poller {
    pub polls: u32,
    #[serde(default)]
    pub seen: u32,
}

impl Command for Poller {
    const COMMAND_TYPE: i32 = 106;
    type Output = u32;

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<u32>, CommandError> {
        self.seen += 1;
        if self.seen >= self.polls {
            Ok(PollOutcome::Succeeded(self.seen))
        } else {
            Ok(PollOutcome::Running)
        }
    }
}

/// A command whose `execute` runs until it sees the cancellation signal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitsForCancel {
    pub tag: String,
}

impl Command for WaitsForCancel {
    const COMMAND_TYPE: i32 = 107;
    type Output = ();

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        record(&self.tag, "execute started");
        for _ in 0..1_000 {
            if ctx.is_cancelled() {
                record(&self.tag, "saw the cancellation");
                return Err(CommandError::new("stopped early"));
            }
            actix::clock::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Running)
    }
}

/// Milliseconds since the epoch, for journal entries that tests time.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A command whose `execute` and `poll` fail transiently a given number of
/// times before they succeed. `executes` is part of the parameters, which
/// the runtime stores with every transient failure of `execute`: the count
/// of tries survives a restart, as the retry policy's count does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flaky {
    pub tag: String,
    pub execute_failures: u32,
    pub poll_failures: u32,
    #[serde(default)]
    pub executes: u32,
    #[serde(default)]
    pub polls: u32,
}

impl Flaky {
    pub fn new(tag: &str, execute_failures: u32, poll_failures: u32) -> Self {
        Self {
            tag: tag.to_owned(),
            execute_failures,
            poll_failures,
            executes: 0,
            polls: 0,
        }
    }
}

/// [`Flaky`]'s policy: 4 tries of each step, 100 ms then 200 ms, 400 ms.
pub const FLAKY_RETRY: command_coordinator::RetryPolicy =
    command_coordinator::RetryPolicy::exponential(4)
        .initial_backoff(std::time::Duration::from_millis(100))
        .max_backoff(std::time::Duration::from_millis(400))
        .without_jitter();

impl Command for Flaky {
    const COMMAND_TYPE: i32 = 108;
    const RETRY: command_coordinator::RetryPolicy = FLAKY_RETRY;
    type Output = u32;

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        self.executes += 1;
        record(&self.tag, format!("execute {} {}", self.executes, now_ms()));
        if self.executes <= self.execute_failures {
            return Err(CommandError::transient(format!(
                "connection refused (try {})",
                self.executes
            )));
        }
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<u32>, CommandError> {
        self.polls += 1;
        record(&self.tag, format!("poll {} {}", self.polls, now_ms()));
        if self.polls <= self.poll_failures {
            return Err(CommandError::transient(format!(
                "503 (poll {})",
                self.polls
            )));
        }
        Ok(PollOutcome::Succeeded(self.executes))
    }
}

/// A command whose `execute` always fails transiently, with waits long
/// enough (0.4 s, 0.8 s, 1.6 s, 2 s, 2 s) for a test to kill its host
/// between two tries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowFlaky {
    pub tag: String,
}

pub const SLOW_FLAKY_TRIES: u32 = 6;

impl Command for SlowFlaky {
    const COMMAND_TYPE: i32 = 109;
    const RETRY: command_coordinator::RetryPolicy =
        command_coordinator::RetryPolicy::exponential(SLOW_FLAKY_TRIES)
            .initial_backoff(std::time::Duration::from_millis(400))
            .max_backoff(std::time::Duration::from_secs(2))
            .without_jitter();
    type Output = ();

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        record(&self.tag, "execute");
        Err(CommandError::transient("service unavailable"))
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }
}

/// A command that records when its `execute` ran (for delayed starts).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timed {
    pub tag: String,
}

impl Command for Timed {
    const COMMAND_TYPE: i32 = 110;
    type Output = i64;

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        record(&self.tag, format!("execute {}", now_ms()));
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<i64>, CommandError> {
        Ok(PollOutcome::Succeeded(now_ms()))
    }
}
