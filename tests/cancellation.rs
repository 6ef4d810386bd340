//! Cancelling hierarchies: through the API, through the database (as the CLI
//! does), of a child only, of an ended command, and while no host runs.

mod support;

use std::time::Duration;

use command_coordinator::{CancelOutcome, CommandStatus, CommandStore};
use support::commands::{Behaviour, Job, Parent, WaitsForCancel, count, events, tag};
use support::{builder, fresh_db, within};

fn stuck(t: &str, name: &str) -> Job {
    Job::new(t, name, Behaviour::NeverDone)
}

/// Waits until the command has children (its execute ran).
async fn children_of(
    co: &command_coordinator::Coordinator,
    id: command_coordinator::CommandId,
    n: usize,
) {
    within("children", async {
        while co.children(id).await.unwrap().len() < n {
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[actix::test]
async fn cancelling_a_running_three_level_hierarchy_ends_every_command_with_failure() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let mut root = Parent::new(&t, "root", vec![stuck(&t, "leaf0")]);
    root.sub_parents = vec![Parent::new(
        &t,
        "mid",
        vec![stuck(&t, "leaf1"), stuck(&t, "leaf2")],
    )];
    let id = co.submit(root).await.unwrap();
    children_of(&co, id, 2).await;
    let mid = co.children(id).await.unwrap()[1];
    children_of(&co, mid, 2).await;

    assert_eq!(
        co.cancel(id).await.unwrap(),
        CancelOutcome::Requested { commands: 5 }
    );
    let outcome = within("cancelled root", co.wait_for(id)).await.unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert_eq!(outcome.failure_reason.as_deref(), Some("cancelled"));
    let tree = db.store.hierarchy(id).await.unwrap();
    assert_eq!(tree.entities.len(), 5);
    for e in &tree.entities {
        assert_eq!(e.status, CommandStatus::EndedWithFailure, "{}", e.id);
        assert_eq!(e.failure_reason.as_deref(), Some("cancelled"), "{}", e.id);
    }
    // The parents' end methods saw it.
    assert!(events(&t).contains(&"reason:root:cancelled".to_owned()));
    assert!(events(&t).contains(&"reason:mid:cancelled".to_owned()));
    assert_eq!(co.live_count().await.unwrap(), 0);
}

#[actix::test]
async fn cancelling_a_child_only_fails_it_and_its_parent_sees_why() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let id = co
        .submit(Parent::new(
            &t,
            "p",
            vec![
                stuck(&t, "doomed"),
                Job::new(&t, "fine", Behaviour::Succeed),
            ],
        ))
        .await
        .unwrap();
    children_of(&co, id, 2).await;
    let doomed = co.children(id).await.unwrap()[0];
    assert_eq!(
        co.cancel(doomed).await.unwrap(),
        CancelOutcome::Requested { commands: 1 }
    );
    let outcome = within("parent", co.wait_for(id)).await.unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    let reason = outcome.failure_reason.unwrap();
    assert!(
        reason.contains(&doomed.to_string()) && reason.ends_with("failed: cancelled"),
        "{reason}"
    );
    assert_eq!(
        count(&t, "end_attempt(1):fine"),
        1,
        "the sibling ended normally"
    );
}

#[actix::test]
async fn cancelling_an_ended_command_changes_nothing_and_says_so() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let done = within("job", co.execute(Job::new(&t, "a", Behaviour::Succeed)))
        .await
        .unwrap();
    assert_eq!(
        co.cancel(done.id).await.unwrap(),
        CancelOutcome::AlreadyEnded(CommandStatus::EndedSuccessfully)
    );
    assert_eq!(
        co.cancel(command_coordinator::CommandId::new())
            .await
            .unwrap(),
        CancelOutcome::NotFound
    );
    let row = db.store.get(done.id).await.unwrap().unwrap();
    assert_eq!(row.status, CommandStatus::EndedSuccessfully);
}

#[actix::test]
async fn running_code_sees_the_cancellation_and_stops_early() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let id = co.submit(WaitsForCancel { tag: t.clone() }).await.unwrap();
    within("execute to start", async {
        while count(&t, "execute started") == 0 {
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    co.cancel(id).await.unwrap();
    let outcome = within("cancelled", co.wait_for(id)).await.unwrap();
    assert_eq!(outcome.failure_reason.as_deref(), Some("cancelled"));
    assert_eq!(count(&t, "saw the cancellation"), 1);
}

#[actix::test]
async fn a_cancellation_written_to_the_database_is_picked_up_by_a_running_host() {
    let db = fresh_db().await;
    let co = builder(&db)
        .cancel_check_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let t = tag();
    let id = co.submit(stuck(&t, "a")).await.unwrap();
    // What the CLI does: write the request, no message to this process.
    assert_eq!(
        db.store.request_cancel(id).await.unwrap(),
        CancelOutcome::Requested { commands: 1 }
    );
    let outcome = within("cancelled by the database", co.wait_for(id))
        .await
        .unwrap();
    assert_eq!(outcome.failure_reason.as_deref(), Some("cancelled"));
}

#[actix::test]
async fn a_cancellation_requested_while_no_host_runs_is_honoured_at_start_up() {
    let db = fresh_db().await;
    let t = tag();
    // Rows a previous host left: a running root whose children were submitted.
    let root = command_coordinator::CommandEntity::new(
        command_coordinator::CommandId::new(),
        101,
        command_coordinator::JsonPayload::encode(&Parent::new(&t, "p", vec![])).unwrap(),
    );
    let mut root = root;
    root.status = CommandStatus::Active;
    root.executed = true;
    let mut child = command_coordinator::CommandEntity::new(
        command_coordinator::CommandId::new(),
        100,
        command_coordinator::JsonPayload::encode(&{
            let mut j = stuck(&t, "c");
            j.started_job = Some("job-of-c".into());
            j
        })
        .unwrap(),
    )
    .with_parent(&root);
    child.status = CommandStatus::Active;
    child.executed = true;
    db.store.save_or_update(&root).await.unwrap();
    db.store.save_or_update(&child).await.unwrap();
    assert_eq!(
        db.store.request_cancel(root.id).await.unwrap(),
        CancelOutcome::Requested { commands: 2 }
    );

    let co = builder(&db).start().await.unwrap();
    let outcome = within("root", co.wait_for(root.id)).await.unwrap();
    assert_eq!(outcome.failure_reason.as_deref(), Some("cancelled"));
    assert_eq!(
        count(&t, "poll:c"),
        0,
        "the cancelled child was never polled again"
    );
    assert_eq!(
        db.store
            .get(child.id)
            .await
            .unwrap()
            .unwrap()
            .failure_reason
            .as_deref(),
        Some("cancelled")
    );
}

/// The once-a-second check for requested cancellations looks only at
/// commands not yet notified: it does not grow with every past cancellation
/// (its partial index dropped ended rows only when cleanup removed them).
#[actix::test]
async fn the_cancellation_check_does_not_visit_past_cancellations() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    for i in 0..20 {
        let id = co.submit(stuck(&t, &format!("s{i}"))).await.unwrap();
        co.cancel(id).await.unwrap();
        within("cancelled", co.wait_for(id)).await.unwrap();
    }
    let client = db.pool.get().await.unwrap();
    client
        .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .await
        .unwrap();
    let plan: serde_json::Value = client
        .query_one(
            &format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) SELECT command_id FROM {} \
                 WHERE cancel_requested_at IS NOT NULL AND callback_notified IS NOT TRUE \
                   AND status NOT IN ('ENDED_SUCCESSFULLY', 'ENDED_WITH_FAILURE')",
                db.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let node = &plan[0]["Plan"];
    let text = plan.to_string();
    assert!(
        node["Index Name"] == "idx_command_entities_cancel_requested",
        "the check uses the partial index: {text}"
    );
    let visited = node["Actual Rows"].as_f64().unwrap()
        + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
    assert_eq!(visited, 0.0, "past cancellations visited: {text}");
}
