//! The guarantees at their edges: end methods that try to submit children,
//! cancellations that race with new children, with a running poll or with an
//! end retry, parameters that do not survive their own row. Each scenario
//! failed on the code before its fix (see docs/guide.md for the rules).
//!
//! Faults are placed by events: a command records what it reached, and the
//! test waits for that record (or opens a gate the command waits at) before
//! it acts.

mod support;

use std::time::{Duration, Instant};

use command_coordinator::{
    CancelOutcome, Command, CommandContext, CommandError, CommandStatus, CommandStore,
    CoordinatorError, PollOutcome,
};
use serde::{Deserialize, Serialize};
use support::commands::{Behaviour, Job, WaitsForCancel, count, events, record, tag};
use support::gates::{mark, open, pass, time_of};
use support::{builder, fresh_db, within};

/// Waits (bounded) until `event` was recorded under `tag`.
async fn until_recorded(t: &str, event: &str) {
    within(event, async {
        while count(t, event) == 0 {
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// An end method (and `finalize`) that tries to submit a child.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EndSubmitter {
    tag: String,
    /// End attempts that fail (after trying to submit).
    end_fails: u32,
}

impl EndSubmitter {
    async fn try_submit(&self, ctx: &CommandContext, at: &str) {
        let child = Job::new(&self.tag, "late child", Behaviour::Succeed);
        match ctx.submit_child(child).await {
            Ok(_) => record(&self.tag, format!("{at}: child accepted")),
            Err(CoordinatorError::ChildFromEndMethod { .. }) => {
                record(&self.tag, format!("{at}: child refused"))
            }
            Err(e) => record(&self.tag, format!("{at}: other error {e}")),
        }
    }
}

impl Command for EndSubmitter {
    const COMMAND_TYPE: i32 = 300;
    type Output = u64;

    async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
        Ok(PollOutcome::Succeeded(7))
    }

    async fn end_successfully(
        &mut self,
        _: &u64,
        ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        self.try_submit(ctx, &format!("end {}", ctx.end_attempt()))
            .await;
        if ctx.end_attempt() <= self.end_fails {
            return Err(CommandError::new("end failed"));
        }
        Ok(())
    }

    async fn finalize(&mut self, _: &CommandError, ctx: &CommandContext) {
        self.try_submit(ctx, "finalize").await;
    }
}

/// An end method that always fails, recording when each attempt ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EndFails {
    tag: String,
}

impl Command for EndFails {
    const COMMAND_TYPE: i32 = 301;
    type Output = ();

    async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }

    async fn end_successfully(&mut self, _: &(), ctx: &CommandContext) -> Result<(), CommandError> {
        let event = format!("end attempt {}", ctx.end_attempt());
        mark(format!("{}:{event}", self.tag));
        record(&self.tag, event);
        Err(CommandError::new("end fails"))
    }
}

/// A parent whose `execute` waits at a gate, then submits a child that runs
/// until it is cancelled.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GatedParent {
    tag: String,
}

impl Command for GatedParent {
    const COMMAND_TYPE: i32 = 302;
    type Output = ();

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        record(&self.tag, "execute started");
        pass(&format!("{}:execute", self.tag)).await;
        ctx.submit_child(WaitsForCancel {
            tag: self.tag.clone(),
        })
        .await
        .map_err(|e| CommandError::new(e.to_string()))?;
        record(&self.tag, "child submitted");
        Ok(())
    }

    async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }
}

/// A command whose poll runs until it sees the cancellation, then reports
/// that it is still running.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PollSeesCancel {
    tag: String,
}

impl Command for PollSeesCancel {
    const COMMAND_TYPE: i32 = 303;
    type Output = ();

    async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, ctx: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        record(&self.tag, "poll started");
        for _ in 0..2_000 {
            if ctx.is_cancelled() {
                mark(format!("{}:saw cancel", self.tag));
                record(&self.tag, "poll saw the cancellation");
                break;
            }
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
        Ok(PollOutcome::Running)
    }
}

/// Parameters with a float: NaN is written as `null` and does not read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FloatParams {
    ratio: f64,
}

impl Command for FloatParams {
    const COMMAND_TYPE: i32 = 304;
    type Output = ();

    async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }
}

/// A field that is never written and has no default: the row cannot be
/// read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(dead_code)] // read only through serde
struct SkipsAField {
    name: String,
    #[serde(skip_serializing)]
    token: String,
}

impl Command for SkipsAField {
    const COMMAND_TYPE: i32 = 305;
    type Output = ();

    async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }
}

fn edge_builder(db: &support::TestDb) -> command_coordinator::CoordinatorBuilder {
    builder(db)
        .register::<EndSubmitter>()
        .register::<EndFails>()
        .register::<GatedParent>()
        .register::<PollSeesCancel>()
        .register::<FloatParams>()
        .register::<SkipsAField>()
}

#[actix::test]
async fn an_end_method_cannot_submit_children_and_its_parent_ends_with_none() {
    let db = fresh_db().await;
    let co = edge_builder(&db).start().await.unwrap();
    let t = tag();
    let outcome = within(
        "end submitter",
        co.execute(EndSubmitter {
            tag: t.clone(),
            end_fails: 0,
        }),
    )
    .await
    .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(events(&t), vec!["end 1: child refused"]);
    assert!(co.children(outcome.id).await.unwrap().is_empty());
    assert!(db.store.child_ids(outcome.id).await.unwrap().is_empty());
}

#[actix::test]
async fn retried_end_attempts_and_finalize_submit_no_children_either() {
    let db = fresh_db().await;
    let co = edge_builder(&db).end_attempts(2).start().await.unwrap();

    // The first attempt fails, the second succeeds: no duplicate children.
    let t = tag();
    let outcome = within(
        "retried end",
        co.execute(EndSubmitter {
            tag: t.clone(),
            end_fails: 1,
        }),
    )
    .await
    .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(
        events(&t),
        vec!["end 1: child refused", "end 2: child refused"]
    );
    assert!(db.store.child_ids(outcome.id).await.unwrap().is_empty());

    // Every attempt fails: finalize cannot submit one either.
    let t = tag();
    let outcome = within(
        "finalized end",
        co.execute(EndSubmitter {
            tag: t.clone(),
            end_fails: 5,
        }),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert_eq!(
        events(&t),
        vec![
            "end 1: child refused",
            "end 2: child refused",
            "finalize: child refused"
        ]
    );
    assert!(db.store.child_ids(outcome.id).await.unwrap().is_empty());
}

#[actix::test]
async fn a_child_submitted_after_its_parent_was_cancelled_is_born_cancelled() {
    let db = fresh_db().await;
    let co = edge_builder(&db).start().await.unwrap();
    let t = tag();
    let id = co.submit(GatedParent { tag: t.clone() }).await.unwrap();
    // The parent is inside execute, with no child yet: the request marks
    // the parent alone in the database.
    until_recorded(&t, "execute started").await;
    assert_eq!(
        co.cancel(id).await.unwrap(),
        CancelOutcome::Requested { commands: 1 }
    );
    open(&format!("{t}:execute"));
    until_recorded(&t, "child submitted").await;

    // The child (which runs until cancelled) never hears of a request made
    // before it existed unless it is born cancelled; its parent would wait.
    let outcome = within("cancelled parent", co.wait_for(id)).await.unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert_eq!(outcome.failure_reason.as_deref(), Some("cancelled"));
    let tree = db.store.hierarchy(id).await.unwrap();
    assert_eq!(tree.entities.len(), 2);
    let child = tree.entities.iter().find(|e| e.id != id).unwrap();
    assert_eq!(child.status, CommandStatus::EndedWithFailure);
    assert_eq!(child.failure_reason.as_deref(), Some("cancelled"));
    assert_eq!(count(&t, "execute started"), 1, "the parent ran once");
}

#[actix::test]
async fn a_cancel_that_arrives_during_poll_ends_the_command_at_once_not_at_its_next_poll() {
    let db = fresh_db().await;
    // The next poll would be 5 s away.
    let co = edge_builder(&db)
        .poll_interval(Duration::from_secs(5))
        .max_poll_interval(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let t = tag();
    let id = co.submit(PollSeesCancel { tag: t.clone() }).await.unwrap();
    until_recorded(&t, "poll started").await;
    co.cancel(id).await.unwrap();
    let outcome = within("cancelled command", co.wait_for(id)).await.unwrap();
    let saw = time_of(&format!("{t}:saw cancel")).expect("the poll saw the cancellation");
    let took = saw.elapsed();
    assert_eq!(outcome.failure_reason.as_deref(), Some("cancelled"));
    assert!(
        took < Duration::from_secs(2),
        "ended {took:?} after the poll returned; the next poll was 5 s away"
    );
    assert_eq!(count(&t, "poll started"), 1);
}

#[actix::test]
async fn a_cancel_during_an_end_retry_does_not_start_the_end_method_early() {
    let db = fresh_db().await;
    let co = edge_builder(&db)
        .end_attempts(2)
        .end_retry_delay(Duration::from_secs(2))
        .max_poll_interval(Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    let t = tag();
    let id = co.submit(EndFails { tag: t.clone() }).await.unwrap();
    until_recorded(&t, "end attempt 1").await;
    // The outcome (SUCCEEDED) is known: the request is stored, and must not
    // start the end method again before its retry delay.
    co.cancel(id).await.unwrap();
    let outcome = within("ended", co.wait_for(id)).await.unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert_eq!(
        count(&t, "end attempt 2"),
        1,
        "two attempts in all: {:?}",
        events(&t)
    );
    assert_eq!(count(&t, "end attempt 3"), 0);
    let first = time_of(&format!("{t}:end attempt 1")).unwrap();
    let second = time_of(&format!("{t}:end attempt 2")).unwrap();
    assert!(
        second - first >= Duration::from_millis(1_900),
        "the retry came {:?} after the first attempt, before its 2 s delay",
        second - first
    );
}

#[actix::test]
async fn parameters_that_do_not_read_back_are_refused_before_anything_is_written() {
    let db = fresh_db().await;
    let co = edge_builder(&db).start().await.unwrap();
    let started = Instant::now();
    let nan = co.execute(FloatParams { ratio: f64::NAN }).await;
    assert!(
        matches!(nan, Err(CoordinatorError::Serialization { .. })),
        "{nan:?}"
    );
    let skipped = co
        .submit(SkipsAField {
            name: "a".into(),
            token: "secret".into(),
        })
        .await;
    let message = skipped.unwrap_err().to_string();
    assert!(message.contains("decode back"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let client = db.pool.get().await.unwrap();
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}", db.table()), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "a refused submit leaves no row");
    // A float that reads back is fine.
    let fine = within("fine", co.execute(FloatParams { ratio: 0.5 }))
        .await
        .unwrap();
    assert!(fine.succeeded());
}

/// An output type whose name is longer than the `return_value_class` column.
type Deep = Option<
    Option<
        Option<Option<Option<Option<Option<Option<Option<Option<Option<Option<Option<u8>>>>>>>>>>>,
    >,
>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LongOutputName;

impl Command for LongOutputName {
    const COMMAND_TYPE: i32 = 306;
    type Output = Deep;

    async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<Deep>, CommandError> {
        Ok(PollOutcome::Succeeded(Some(Some(Some(Some(Some(Some(
            Some(Some(Some(Some(Some(Some(Some(7))))))),
        ))))))))
    }
}

/// A failure reason with a NUL character, which PostgreSQL's `text` refuses.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NulReason;

impl Command for NulReason {
    const COMMAND_TYPE: i32 = 307;
    type Output = ();

    async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Failed("disk \0 gone".into()))
    }
}

/// A command whose success the database refuses (a trigger, in the test).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refused {
    tag: String,
}

impl Command for Refused {
    const COMMAND_TYPE: i32 = 308;
    type Output = ();

    async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }

    async fn end_with_failure(
        &mut self,
        reason: &str,
        _: &CommandContext,
    ) -> Result<(), CommandError> {
        record(&self.tag, format!("end_with_failure: {reason}"));
        Ok(())
    }
}

/// Fails the test after `limit` instead of hanging (these hung forever).
async fn bounded<F: std::future::Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    match actix::clock::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not end within {limit:?}"),
    }
}

#[actix::test]
async fn values_the_database_cannot_store_do_not_hang_the_command() {
    let db = fresh_db().await;
    let co = edge_builder(&db)
        .register::<LongOutputName>()
        .register::<NulReason>()
        .start()
        .await
        .unwrap();
    let limit = Duration::from_secs(15);

    let long = bounded("a long output type name", limit, co.execute(LongOutputName))
        .await
        .unwrap();
    assert!(long.succeeded(), "{long:?}");
    let deep = long.output.unwrap();
    assert_eq!(
        deep.and_then(|d| d)
            .and_then(|d| d)
            .and_then(|d| d)
            .and_then(|d| d),
        Some(Some(Some(Some(Some(Some(Some(Some(Some(7)))))))))
    );
    let row = db.store.get(long.id).await.unwrap().unwrap();
    assert_eq!(
        row.return_value.unwrap().class().chars().count(),
        command_coordinator::actors::model::MAX_CLASS_CHARS
    );

    let nul = bounded("a NUL in a failure reason", limit, co.execute(NulReason))
        .await
        .unwrap();
    assert_eq!(nul.status, CommandStatus::EndedWithFailure);
    assert_eq!(nul.failure_reason.as_deref(), Some("disk \u{FFFD} gone"));
}

#[actix::test]
async fn a_status_change_the_database_keeps_refusing_ends_the_command_with_failure() {
    let db = fresh_db().await;
    let schema = db.config.schema().quoted();
    db.sql(&format!(
        "CREATE FUNCTION {schema}.refuse_success() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.command_type = 308 AND NEW.status = 'SUCCEEDED' THEN \
             RAISE EXCEPTION 'success of a Refused command is refused'; \
           END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_success BEFORE UPDATE ON {} \
         FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_success();",
        db.table()
    ))
    .await;
    let co = edge_builder(&db)
        .register::<Refused>()
        .start()
        .await
        .unwrap();
    let t = tag();
    // A command beside it, in the same batches, is not held up.
    let beside = co.submit(Job::new(&t, "beside", Behaviour::Succeed));
    let refused = bounded(
        "a refused status change",
        Duration::from_secs(15),
        co.execute(Refused { tag: t.clone() }),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, CommandStatus::EndedWithFailure);
    let reason = refused.failure_reason.unwrap();
    assert!(
        reason.contains("refused to record") && reason.contains("is refused"),
        "{reason}"
    );
    assert_eq!(
        events(&t)
            .iter()
            .filter(|e| e.starts_with("end_with_failure: the database refused"))
            .count(),
        1,
        "{:?}",
        events(&t)
    );
    let beside = co.wait_for(beside.await.unwrap()).await.unwrap();
    assert!(beside.succeeded());
}
