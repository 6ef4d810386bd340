//! The runtime against a real PostgreSQL, one scenario per test.

mod support;

use std::time::Duration;

use command_coordinator::{CommandStatus, CommandStore, CoordinatorError, OnRootEnd};
use support::commands::{
    Behaviour, Idempotent, Job, Parent, SerialParent, ShortLived, count, events, tag,
};
use support::{builder, fresh_db, within};

#[actix::test]
async fn a_flat_command_runs_its_whole_lifecycle_and_execute_returns_the_output() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let outcome = within(
        "execute",
        co.execute(Job::new(&t, "a", Behaviour::Succeed).output(42).polls(3)),
    )
    .await
    .unwrap();
    assert!(outcome.succeeded());
    assert_eq!(outcome.output, Some(42));
    assert_eq!(
        events(&t),
        [
            "execute:a",
            "poll:a",
            "poll:a",
            "poll:a",
            "end_successfully(42):a",
            "end_attempt(1):a"
        ]
    );
    let row = db.store.get(outcome.id).await.unwrap().unwrap();
    assert_eq!(row.status, CommandStatus::EndedSuccessfully);
    assert!(row.executed && row.callback_notified && row.ended_at.is_some());
    assert_eq!(row.return_value.unwrap().decode::<u64>().unwrap(), 42);
    // What execute set on the command was persisted with it.
    assert!(
        row.parameters.json().contains("job-of-a"),
        "{}",
        row.parameters.json()
    );
    // Nothing is held in memory for it any more.
    assert_eq!(co.live_count().await.unwrap(), 0);
    assert_eq!(
        co.status(outcome.id).await.unwrap(),
        Some(CommandStatus::EndedSuccessfully)
    );
}

#[actix::test]
async fn submit_persists_not_started_before_it_runs_and_wait_for_sees_the_end() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let id = co
        .submit(Job::new(&t, "a", Behaviour::Succeed).polls(2))
        .await
        .unwrap();
    // The row exists as soon as submit returned.
    assert!(db.store.get(id).await.unwrap().is_some());
    let outcome = within("wait_for", co.wait_for(id)).await.unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedSuccessfully);
    assert_eq!(outcome.decode::<u64>().unwrap().output, Some(1));
    // Waiting again after the end answers from the store.
    let again = co.wait_for(id).await.unwrap();
    assert_eq!(again.status, CommandStatus::EndedSuccessfully);
    assert!(matches!(
        co.wait_for(command_coordinator::CommandId::new()).await,
        Err(CoordinatorError::NotFound(_))
    ));
}

#[actix::test]
async fn a_poll_that_reports_failure_ends_the_command_with_failure() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let outcome = within(
        "execute",
        co.execute(Job::new(&t, "a", Behaviour::PollReportsFailure)),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert_eq!(outcome.failure_reason.as_deref(), Some("merge aborted"));
    assert_eq!(count(&t, "poll:a"), 1);
    assert_eq!(count(&t, "end_with_failure:a"), 1);
    assert!(events(&t).contains(&"reason:a:merge aborted".to_owned()));
}

#[actix::test]
async fn a_poll_error_fails_the_command_and_it_is_never_polled_again() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let outcome = within(
        "execute",
        co.execute(Job::new(&t, "a", Behaviour::PollErrors)),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert!(
        outcome
            .failure_reason
            .unwrap()
            .contains("status query failed")
    );
    actix::clock::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        count(&t, "poll:a"),
        1,
        "oVirt 449abee7b07: never re-invoked"
    );
}

#[actix::test]
async fn a_panic_in_poll_restarts_the_command_from_its_row_and_it_then_succeeds() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let other = co
        .submit(Job::new(&t, "bystander", Behaviour::Succeed).polls(5))
        .await
        .unwrap();
    let outcome = within(
        "execute",
        co.execute(Job::new(&t, "a", Behaviour::PollPanicsOnce).output(7)),
    )
    .await
    .unwrap();
    assert_eq!(outcome.output, Some(7));
    assert_eq!(count(&t, "panicked:a"), 1);
    assert_eq!(
        count(&t, "execute:a"),
        1,
        "execute is not run again after the restart"
    );
    // The panic touched nobody else.
    let bystander = within("bystander", co.wait_for(other)).await.unwrap();
    assert!(bystander.succeeded());
}

#[actix::test]
async fn a_poll_that_always_panics_fails_after_the_restart_limit() {
    let db = fresh_db().await;
    let co = builder(&db).max_restarts(2).start().await.unwrap();
    let t = tag();
    let outcome = within(
        "execute",
        co.execute(Job::new(&t, "a", Behaviour::PollPanicsAlways)),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert_eq!(count(&t, "panicked:a"), 3, "first run + 2 restarts");
    let reason = outcome.failure_reason.unwrap();
    assert!(
        reason.contains("poll panicked") && reason.contains("gave up after 2 restarts"),
        "{reason}"
    );
    assert_eq!(count(&t, "end_with_failure:a"), 1);
}

#[actix::test]
async fn an_execute_error_or_panic_is_an_execution_failure_and_the_failure_end_runs() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let errored = co.execute(Job::new(&t, "err", Behaviour::ExecuteErrors));
    let panicked = co.execute(Job::new(&t, "panic", Behaviour::ExecutePanics));
    let errored = within("errored", errored).await.unwrap();
    let panicked = within("panicked", panicked).await.unwrap();
    for outcome in [&errored, &panicked] {
        assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
        let row = db.store.get(outcome.id).await.unwrap().unwrap();
        assert!(!row.executed);
    }
    assert_eq!(
        errored.failure_reason.as_deref(),
        Some("cannot reach the host")
    );
    // The panic restarted the actor from its row, which said "not executed".
    assert_eq!(
        panicked.failure_reason.as_deref(),
        Some("execute panicked: execute blew up")
    );
    assert_eq!(count(&t, "execute:panic"), 1, "execute is never run twice");
    assert_eq!(count(&t, "poll:err") + count(&t, "poll:panic"), 0);
    assert_eq!(count(&t, "end_with_failure:err"), 1);
    assert_eq!(count(&t, "end_with_failure:panic"), 1);
}

#[actix::test]
async fn an_end_method_failing_twice_is_retried_and_then_succeeds() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let outcome = within(
        "execute",
        co.execute(Job::new(&t, "a", Behaviour::EndFailsTimes(2))),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedSuccessfully);
    let attempts: Vec<_> = events(&t)
        .into_iter()
        .filter(|e| e.starts_with("end_attempt"))
        .collect();
    assert_eq!(
        attempts,
        ["end_attempt(1):a", "end_attempt(2):a", "end_attempt(3):a"]
    );
}

#[actix::test]
async fn an_end_method_that_always_fails_gives_up_after_the_cap_and_finalizes() {
    let db = fresh_db().await;
    let co = builder(&db).end_attempts(3).start().await.unwrap();
    let t = tag();
    let outcome = within(
        "execute",
        co.execute(Job::new(&t, "a", Behaviour::EndAlwaysFails)),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert_eq!(
        events(&t)
            .iter()
            .filter(|e| e.starts_with("end_attempt"))
            .count(),
        3
    );
    assert_eq!(count(&t, "finalize(end always fails):a"), 1);
    assert!(
        outcome
            .failure_reason
            .unwrap()
            .contains("end method failed 3 times")
    );
    let row = db.store.get(outcome.id).await.unwrap().unwrap();
    assert!(row.callback_notified);
}

#[actix::test]
async fn a_command_past_its_life_time_fails() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let outcome = within("execute", co.execute(ShortLived { tag: t.clone() }))
        .await
        .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert!(
        outcome
            .failure_reason
            .unwrap()
            .contains("exceeded its life time")
    );
    assert!(count(&t, "poll") >= 1);
}

#[actix::test]
async fn a_parent_with_three_children_reads_their_outputs_and_ends_after_them() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let children = vec![
        Job::new(&t, "c1", Behaviour::Succeed).output(1).polls(3),
        Job::new(&t, "c2", Behaviour::Succeed).output(20),
        Job::new(&t, "c3", Behaviour::EndFailsTimes(1)).output(300),
    ];
    let outcome = within("parent", co.execute(Parent::new(&t, "p", children)))
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.output, Some(321));
    let ev = events(&t);
    let parent_end = ev
        .iter()
        .position(|e| e == "end_successfully(321):p")
        .unwrap();
    for child in ["c1", "c2", "c3"] {
        let child_end = ev
            .iter()
            .rposition(|e| e.starts_with("end_attempt") && e.ends_with(&format!(":{child}")))
            .unwrap();
        assert!(
            child_end < parent_end,
            "child {child} ended after its parent: {ev:?}"
        );
    }
    let kids = co.children(outcome.id).await.unwrap();
    assert_eq!(kids.len(), 3);
    for kid in kids {
        let row = db.store.get(kid).await.unwrap().unwrap();
        assert_eq!(row.parent_id, Some(outcome.id));
        assert_eq!(row.root_id, Some(outcome.id));
        assert_eq!(row.status, CommandStatus::EndedSuccessfully);
    }
}

#[actix::test]
async fn one_failing_child_makes_the_parent_end_with_failure() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let children = vec![
        Job::new(&t, "ok", Behaviour::Succeed).polls(4),
        Job::new(&t, "bad", Behaviour::PollReportsFailure),
    ];
    let outcome = within("parent", co.execute(Parent::new(&t, "p", children)))
        .await
        .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    let reason = outcome.failure_reason.unwrap();
    assert!(reason.contains("failed: merge aborted"), "{reason}");
    // The parent waited for the healthy child to end too.
    assert_eq!(count(&t, "end_attempt(1):ok"), 1);
    assert_eq!(count(&t, "end_with_failure:p"), 1);
}

#[actix::test]
async fn three_levels_end_bottom_up_with_one_root() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let mut root = Parent::new(
        &t,
        "root",
        vec![Job::new(&t, "leaf0", Behaviour::Succeed).output(1)],
    );
    root.sub_parents = vec![
        Parent::new(
            &t,
            "mid1",
            vec![Job::new(&t, "leaf1", Behaviour::Succeed).output(10)],
        ),
        Parent::new(
            &t,
            "mid2",
            vec![
                Job::new(&t, "leaf2", Behaviour::Succeed)
                    .output(100)
                    .polls(3),
                Job::new(&t, "leaf3", Behaviour::Succeed).output(1000),
            ],
        ),
    ];
    let outcome = within("root", co.execute(root)).await.unwrap();
    assert_eq!(outcome.output, Some(1111));
    let tree = db.store.hierarchy(outcome.id).await.unwrap();
    assert_eq!(tree.entities.len(), 7);
    assert!(tree.entities.iter().all(|e| e.root_id == Some(outcome.id)));
    assert!(
        tree.entities
            .iter()
            .all(|e| e.status == CommandStatus::EndedSuccessfully)
    );
    let ev = events(&t);
    let pos = |e: &str| {
        ev.iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("{e} missing: {ev:?}"))
    };
    assert!(pos("end_successfully(1100):mid2") < pos("end_successfully(1111):root"));
    assert!(pos("end_successfully(10):mid1") < pos("end_successfully(1111):root"));
}

#[actix::test]
async fn serial_children_run_one_after_another_in_order() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let children = (0..4)
        .map(|i| {
            Job::new(&t, &format!("s{i}"), Behaviour::Succeed)
                .output(i)
                .polls(2)
        })
        .collect();
    let outcome = within(
        "serial",
        co.execute(SerialParent {
            tag: t.clone(),
            children,
            fail_execute: false,
        }),
    )
    .await
    .unwrap();
    assert_eq!(outcome.output, Some(6));
    let ev: Vec<String> = events(&t)
        .into_iter()
        .filter(|e| e.starts_with("execute:") || e.starts_with("end_attempt"))
        .collect();
    let expected: Vec<String> = (0..4)
        .flat_map(|i| [format!("execute:s{i}"), format!("end_attempt(1):s{i}")])
        .collect();
    assert_eq!(ev, expected);
}

#[actix::test]
async fn a_failing_serial_child_skips_the_rest_and_fails_the_parent() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let children = vec![
        Job::new(&t, "s0", Behaviour::Succeed),
        Job::new(&t, "s1", Behaviour::PollReportsFailure),
        Job::new(&t, "s2", Behaviour::Succeed),
    ];
    let outcome = within(
        "serial",
        co.execute(SerialParent {
            tag: t.clone(),
            children,
            fail_execute: false,
        }),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert_eq!(count(&t, "execute:s2"), 0, "never ran");
    assert_eq!(count(&t, "end_with_failure:s2"), 1, "but was ended");
    let kids = co.children(outcome.id).await.unwrap();
    for kid in kids {
        assert!(db.store.get_status(kid).await.unwrap().unwrap().is_ended());
    }
}

#[actix::test]
async fn a_hierarchy_can_be_removed_as_its_root_ends() {
    let db = fresh_db().await;
    let co = builder(&db)
        .on_root_end(OnRootEnd::Remove)
        .start()
        .await
        .unwrap();
    let t = tag();
    let outcome = within(
        "parent",
        co.execute(Parent::new(
            &t,
            "p",
            vec![Job::new(&t, "c", Behaviour::Succeed)],
        )),
    )
    .await
    .unwrap();
    assert!(outcome.succeeded());
    within("removal", async {
        while db.store.has_commands_with_root(outcome.id).await.unwrap() {
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[actix::test]
async fn an_unregistered_type_is_refused_at_submit() {
    let db = fresh_db().await;
    let co = command_coordinator::Coordinator::builder(db.store.clone())
        .register::<Job>()
        .start()
        .await
        .unwrap();
    let err = co.submit(Idempotent { tag: tag() }).await.unwrap_err();
    assert!(
        matches!(
            err,
            CoordinatorError::UnregisteredType {
                command_type: 103,
                ..
            }
        ),
        "{err}"
    );
}

#[actix::test]
async fn a_thousand_parents_with_ten_children_each_end_exactly_once() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let mut futures = Vec::new();
    for p in 0..1_000 {
        let children = (0..10)
            .map(|c| Job::new(&t, &format!("{p}.{c}"), Behaviour::Succeed).output(1))
            .collect();
        let co = co.clone();
        let parent = Parent::new(&t, &format!("p{p}"), children);
        futures.push(actix::spawn(async move { co.execute(parent).await }));
    }
    let mut total = 0;
    for f in futures {
        let outcome = within("parents", f).await.unwrap().unwrap();
        assert!(outcome.succeeded());
        total += outcome.output.unwrap();
    }
    assert_eq!(total, 10_000);
    for p in 0..1_000 {
        assert_eq!(
            count(&t, &format!("end_successfully(10):p{p}")),
            1,
            "parent p{p}"
        );
    }
    assert_eq!(co.live_count().await.unwrap(), 0);
}

#[actix::test]
async fn a_coordinator_of_a_single_host_version_keeps_a_new_host_from_starting() {
    let db = fresh_db().await;
    // What versions before V6 held on their schema while running.
    let old = db.pool.get().await.unwrap();
    old.execute(
        "SELECT pg_advisory_lock($1, hashtext($2))",
        &[&0x4343_0002_i32, &db.config.schema().as_str()],
    )
    .await
    .unwrap();
    let err = builder(&db).start().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("older version (one host per schema)"),
        "{err}"
    );
}

#[actix::test]
async fn a_parent_whose_execute_fails_ends_only_after_its_running_children() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let mut parent = Parent::new(
        &t,
        "p",
        vec![
            Job::new(&t, "c1", Behaviour::Succeed).polls(4),
            Job::new(&t, "c2", Behaviour::Succeed).polls(2),
        ],
    );
    parent.fail_execute = true;
    let outcome = within("parent", co.execute(parent)).await.unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert_eq!(
        outcome.failure_reason.as_deref(),
        Some("execute failed after submitting children")
    );
    let ev = events(&t);
    let parent_end = ev.iter().position(|e| e == "end_with_failure:p").unwrap();
    for child in ["c1", "c2"] {
        let child_end = ev
            .iter()
            .position(|e| e == &format!("end_attempt(1):{child}"))
            .unwrap();
        assert!(
            child_end < parent_end,
            "oVirt 78ab1ef4249: child {child} outlived its parent: {ev:?}"
        );
    }
}

#[actix::test]
async fn a_serial_parent_whose_execute_fails_fails_its_children_without_running_them() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let children = (0..3)
        .map(|i| Job::new(&t, &format!("s{i}"), Behaviour::Succeed))
        .collect();
    let outcome = within(
        "serial parent",
        co.execute(SerialParent {
            tag: t.clone(),
            children,
            fail_execute: true,
        }),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    for i in 0..3 {
        assert_eq!(count(&t, &format!("execute:s{i}")), 0);
        assert_eq!(count(&t, &format!("end_with_failure:s{i}")), 1);
    }
    assert_eq!(co.live_count().await.unwrap(), 0, "nothing left parked");
}
