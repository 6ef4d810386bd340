//! Start-up from rows written with plain SQL: every case a restart can find,
//! with bad rows beside good ones.

mod support;

use command_coordinator::{CommandStatus, CommandStore, CoordinatorError};
use support::commands::{count, events, tag};
use support::rows::{Row, insert, job};
use support::{builder, fresh_db, within};

#[actix::test]
async fn every_start_up_case_gets_its_outcome_and_bad_rows_stay_isolated() {
    let db = fresh_db().await;
    let t = tag();
    let (a, s, f, u, n, e) = (
        job(&t, "active", 1),
        job(&t, "succeeded", 5),
        job(&t, "failed", 0),
        job(&t, "unknown", 0),
        job(&t, "not_started", 3),
        job(&t, "ended", 0),
    );
    let active = Row::new(100, &a, "ACTIVE").executed();
    let mut succeeded = Row::new(100, &s, "SUCCEEDED").executed();
    succeeded.return_value = Some("5");
    let mut failed = Row::new(100, &f, "FAILED").executed();
    failed.reason = Some("disk gone");
    let unknown = Row::new(100, &u, "UNKNOWN").executed();
    let not_started = Row::new(100, &n, "NOT_STARTED");
    let ended = Row::new(100, &e, "ENDED_SUCCESSFULLY").executed();
    let idem_params = format!(r#"{{"tag":"{t}"}}"#);
    let idempotent = Row::new(103, &idem_params, "ACTIVE");

    // Bad rows: each must be left alone while the rest runs.
    let unregistered = Row::new(999, "{}", "ACTIVE").executed();
    let wrong_shape = Row::new(100, r#"{"foo": 1}"#, "ACTIVE").executed();
    let corrupt = Row::new(100, r#"{"tag": "#, "ACTIVE").executed();
    let foreign_status = Row::new(100, &a, "FAILED_RESTARTED").executed();

    for row in [
        &active,
        &succeeded,
        &failed,
        &unknown,
        &not_started,
        &ended,
        &idempotent,
        &unregistered,
        &wrong_shape,
        &corrupt,
        &foreign_status,
    ] {
        insert(&db, row).await;
    }

    let co = builder(&db).start().await.unwrap();
    let outcome = |id| {
        let co = co.clone();
        async move { within("rehydrated command", co.wait_for(id)).await.unwrap() }
    };

    let o = outcome(active.id).await;
    assert_eq!(
        (o.status, o.decode::<u64>().unwrap().output),
        (CommandStatus::EndedSuccessfully, Some(1))
    );
    assert_eq!(
        count(&t, "execute:active"),
        0,
        "polling resumed; execute not re-run"
    );
    assert_eq!(count(&t, "poll:active"), 1);

    let o = outcome(succeeded.id).await;
    assert_eq!(o.status, CommandStatus::EndedSuccessfully);
    assert_eq!(count(&t, "end_successfully(5):succeeded"), 1);
    assert_eq!(count(&t, "poll:succeeded"), 0);

    let o = outcome(failed.id).await;
    assert_eq!(o.status, CommandStatus::EndedWithFailure);
    assert!(events(&t).contains(&"reason:failed:disk gone".to_owned()));

    let o = outcome(unknown.id).await;
    assert_eq!(o.status, CommandStatus::EndedWithFailure);
    assert!(o.failure_reason.unwrap().contains("UNKNOWN"));

    let o = outcome(not_started.id).await;
    assert_eq!(o.decode::<u64>().unwrap().output, Some(3));
    assert_eq!(count(&t, "execute:not_started"), 1);

    let o = outcome(ended.id).await;
    assert_eq!(o.status, CommandStatus::EndedSuccessfully);
    assert!(
        db.store
            .get(ended.id)
            .await
            .unwrap()
            .unwrap()
            .callback_notified
    );
    assert!(
        events(&t).iter().all(|e| !e.ends_with(":ended")),
        "no user code ran for it"
    );

    let o = outcome(idempotent.id).await;
    assert_eq!(
        o.decode::<String>().unwrap().output.as_deref(),
        Some("done again")
    );
    assert_eq!(count(&t, "execute:idempotent"), 1);

    // The bad rows: untouched, reported as not running here.
    for bad in [&unregistered, &wrong_shape] {
        let err = co.wait_for(bad.id).await.unwrap_err();
        assert!(matches!(err, CoordinatorError::NotRunning(_)), "{err}");
    }
    for unreadable in [&corrupt, &foreign_status] {
        let err = co.wait_for(unreadable.id).await.unwrap_err().to_string();
        assert!(
            err.contains(&unreadable.id.to_string()) && err.contains("unreadable row"),
            "{err}"
        );
    }
    let client = db.pool.get().await.unwrap();
    for (bad, status) in [
        (&unregistered, "ACTIVE"),
        (&wrong_shape, "ACTIVE"),
        (&corrupt, "ACTIVE"),
        (&foreign_status, "FAILED_RESTARTED"),
    ] {
        let row = client
            .query_one(
                &format!(
                    "SELECT status, callback_notified FROM {} WHERE command_id = $1",
                    db.table()
                ),
                &[bad.id.as_uuid()],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), status);
        assert!(!row.get::<_, bool>(1));
    }
    assert_eq!(co.live_count().await.unwrap(), 0);
}

#[actix::test]
async fn a_child_interrupted_in_execute_fails_and_its_parent_learns_it() {
    let db = fresh_db().await;
    let t = tag();
    let parent_params = format!(r#"{{"tag":"{t}","name":"p","children":[],"sub_parents":[]}}"#);
    let parent = Row::new(101, &parent_params, "ACTIVE").executed();
    let c1 = job(&t, "c1", 1);
    let interrupted = Row::new(100, &c1, "ACTIVE").child_of(&parent);
    let c2 = job(&t, "c2", 2);
    let healthy = Row::new(100, &c2, "ACTIVE").executed().child_of(&parent);
    for row in [&parent, &interrupted, &healthy] {
        insert(&db, row).await;
    }
    let co = builder(&db).start().await.unwrap();
    let o = within("parent", co.wait_for(parent.id)).await.unwrap();
    assert_eq!(
        o.status,
        CommandStatus::EndedWithFailure,
        "oVirt 01cdf530ceb: the parent does not wait forever"
    );
    let child = db.store.get(interrupted.id).await.unwrap().unwrap();
    assert_eq!(child.status, CommandStatus::EndedWithFailure);
    assert!(!child.executed);
    assert!(child.failure_reason.unwrap().contains("interrupted"));
    assert_eq!(count(&t, "execute:c1"), 0, "never re-executed");
    assert_eq!(count(&t, "end_with_failure:c1"), 1);
    assert!(
        o.failure_reason
            .unwrap()
            .contains(&interrupted.id.to_string())
    );
    // The healthy sibling still finished normally.
    assert_eq!(
        db.store.get_status(healthy.id).await.unwrap(),
        Some(CommandStatus::EndedSuccessfully)
    );
}

#[actix::test]
async fn a_rehydrated_parent_reads_outputs_of_children_that_ended_before_the_restart() {
    let db = fresh_db().await;
    let t = tag();
    let parent_params = format!(r#"{{"tag":"{t}","name":"p","children":[],"sub_parents":[]}}"#);
    let parent = Row::new(101, &parent_params, "ACTIVE").executed();
    let done_params = job(&t, "done", 40);
    let mut done = Row::new(100, &done_params, "ENDED_SUCCESSFULLY")
        .executed()
        .child_of(&parent);
    done.notified = true;
    done.return_value = Some("40");
    let running_params = job(&t, "running", 2);
    let running = Row::new(100, &running_params, "ACTIVE")
        .executed()
        .child_of(&parent);
    for row in [&parent, &done, &running] {
        insert(&db, row).await;
    }
    let co = builder(&db).start().await.unwrap();
    let o = within("parent", co.wait_for(parent.id)).await.unwrap();
    assert_eq!(o.decode::<u64>().unwrap().output, Some(42));
    assert_eq!(count(&t, "end_successfully(42):p"), 1);
}

#[actix::test]
async fn a_serial_parent_resumes_with_its_next_child_after_a_restart() {
    let db = fresh_db().await;
    let t = tag();
    let parent_params = format!(r#"{{"tag":"{t}","children":[]}}"#);
    let parent = Row::new(102, &parent_params, "ACTIVE").executed();
    let first_params = job(&t, "first", 1);
    let mut first = Row::new(100, &first_params, "ENDED_SUCCESSFULLY")
        .executed()
        .child_of(&parent);
    first.notified = true;
    first.return_value = Some("1");
    let second_params = job(&t, "second", 10);
    let second = Row::new(100, &second_params, "NOT_STARTED").child_of(&parent);
    insert(&db, &parent).await;
    insert(&db, &first).await;
    insert(&db, &second).await;
    let third_params = job(&t, "third", 100);
    let third = Row::new(100, &third_params, "NOT_STARTED").child_of(&parent);
    insert(&db, &third).await;

    let co = builder(&db).start().await.unwrap();
    let o = within("serial parent", co.wait_for(parent.id))
        .await
        .unwrap();
    assert_eq!(o.decode::<u64>().unwrap().output, Some(111));
    let order: Vec<String> = events(&t)
        .into_iter()
        .filter(|e| e.starts_with("execute:"))
        .collect();
    assert_eq!(order, ["execute:second", "execute:third"]);
}

#[actix::test]
async fn an_execution_failed_row_runs_its_failure_end_with_the_stored_reason_and_nothing_else() {
    let db = fresh_db().await;
    let t = tag();
    let params = job(&t, "x", 1);
    let mut row = Row::new(100, &params, "EXECUTION_FAILED");
    row.reason = Some("host unreachable");
    insert(&db, &row).await;

    let co = builder(&db).start().await.unwrap();
    let o = within("execution-failed row", co.wait_for(row.id))
        .await
        .unwrap();
    assert_eq!(o.status, CommandStatus::EndedWithFailure);
    assert_eq!(o.failure_reason.as_deref(), Some("host unreachable"));
    assert_eq!(count(&t, "end_with_failure:x"), 1);
    assert!(events(&t).contains(&"reason:x:host unreachable".to_owned()));
    assert_eq!(count(&t, "execute:x"), 0, "execute is not run again");
    assert_eq!(count(&t, "poll:x"), 0, "a failed command is not polled");
    let stored = db.store.get(row.id).await.unwrap().unwrap();
    assert!(stored.callback_notified);
    assert!(!stored.executed);
}

#[actix::test]
async fn a_child_ended_but_not_notified_is_marked_notified_at_start_up_and_its_parent_learns_its_output()
 {
    let db = fresh_db().await;
    let t = tag();
    let parent_params = format!(r#"{{"tag":"{t}","name":"p","children":[],"sub_parents":[]}}"#);
    let parent = Row::new(101, &parent_params, "ACTIVE").executed();
    let child_params = job(&t, "c", 7);
    // The previous host committed the child's end and died before the
    // notification: its end method ran and must not run again.
    let mut child = Row::new(100, &child_params, "ENDED_SUCCESSFULLY")
        .executed()
        .child_of(&parent);
    child.return_value = Some("7");
    insert(&db, &parent).await;
    insert(&db, &child).await;

    let co = builder(&db).start().await.unwrap();
    let o = within("parent", co.wait_for(parent.id)).await.unwrap();
    assert_eq!(o.status, CommandStatus::EndedSuccessfully);
    assert_eq!(o.decode::<u64>().unwrap().output, Some(7));
    assert_eq!(count(&t, "end_successfully(7):p"), 1);
    assert!(
        events(&t).iter().all(|e| !e.ends_with(":c")),
        "no code of the ended child ran again: {:?}",
        events(&t)
    );
    let stored = db.store.get(child.id).await.unwrap().unwrap();
    assert_eq!(stored.status, CommandStatus::EndedSuccessfully);
    assert!(stored.callback_notified, "marked notified at start-up");
}

#[actix::test]
async fn a_rehydrated_succeeded_or_failed_parent_runs_its_end_only_after_its_unfinished_children() {
    let db = fresh_db().await;
    let t = tag();
    let parent_params =
        |name: &str| format!(r#"{{"tag":"{t}","name":"{name}","children":[],"sub_parents":[]}}"#);
    let (ok_params, failed_params) = (parent_params("ok"), parent_params("failed"));
    let mut succeeded = Row::new(101, &ok_params, "SUCCEEDED").executed();
    succeeded.return_value = Some("5");
    let mut failed = Row::new(101, &failed_params, "FAILED").executed();
    failed.reason = Some("gave up");
    // Each has a child still running (two polls to go) when the host starts.
    let (c1, c2) = (job(&t, "c1", 1), job(&t, "c2", 2));
    let c1 = c1.replace(r#""polls_needed":1"#, r#""polls_needed":2"#);
    let c2 = c2.replace(r#""polls_needed":1"#, r#""polls_needed":2"#);
    let child_of_succeeded = Row::new(100, &c1, "ACTIVE").executed().child_of(&succeeded);
    let child_of_failed = Row::new(100, &c2, "ACTIVE").executed().child_of(&failed);
    for row in [&succeeded, &failed, &child_of_succeeded, &child_of_failed] {
        insert(&db, row).await;
    }

    let co = builder(&db).start().await.unwrap();
    let o = within("succeeded parent", co.wait_for(succeeded.id))
        .await
        .unwrap();
    assert_eq!(o.status, CommandStatus::EndedSuccessfully);
    let o = within("failed parent", co.wait_for(failed.id))
        .await
        .unwrap();
    assert_eq!(o.status, CommandStatus::EndedWithFailure);
    assert_eq!(o.failure_reason.as_deref(), Some("gave up"));

    let events = events(&t);
    let at = |event: &str| {
        events
            .iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("{event} missing from {events:?}"))
    };
    assert!(
        at("end_successfully(1):c1") < at("end_successfully(5):ok"),
        "the succeeded parent ended before its child: {events:?}"
    );
    assert!(
        at("end_successfully(2):c2") < at("end_with_failure:failed"),
        "the failed parent ended before its child: {events:?}"
    );
    assert_eq!(count(&t, "end_successfully(5):ok"), 1);
    assert_eq!(count(&t, "end_with_failure:failed"), 1);
    for child in [&child_of_succeeded, &child_of_failed] {
        let stored = db.store.get(child.id).await.unwrap().unwrap();
        assert_eq!(stored.status, CommandStatus::EndedSuccessfully);
    }
}
