//! The bad-rows corpus: rows written with plain SQL before start-up, each beside
//! healthy rows. Every bad row gets its documented outcome (see
//! docs/operations.md), the healthy rows all finish, and nothing crashes.

mod support;

use command_coordinator::{CommandId, CommandStatus, CommandStore, CoordinatorError};
use support::commands::{count, tag};
use support::rows::{Row, insert, job};
use support::{TestDb, builder, fresh_db, within};

async fn status_of(db: &TestDb, id: CommandId) -> (Option<String>, bool) {
    let client = db.pool.get().await.unwrap();
    let row = client
        .query_one(
            &format!(
                "SELECT status, coalesce(callback_notified, false) FROM {} WHERE command_id = $1",
                db.table()
            ),
            &[id.as_uuid()],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[actix::test]
async fn every_bad_row_gets_its_outcome_and_the_healthy_rows_finish() {
    let db = fresh_db().await;
    let t = tag();
    let healthy_params: Vec<String> = (0..5).map(|i| job(&t, &format!("healthy{i}"), i)).collect();
    let healthy: Vec<Row> = healthy_params
        .iter()
        .map(|p| Row::new(100, p, "ACTIVE").executed())
        .collect();

    // Isolated: left exactly as they are, logged with their id.
    let corrupt_json = Row::new(100, r#"{"tag": "x", "#, "ACTIVE").executed();
    let wrong_shape = Row::new(100, r#"{"disk": 7}"#, "ACTIVE").executed();
    let a = job(&t, "unregistered", 0);
    let unregistered = Row::new(4242, &a, "ACTIVE").executed();
    let b = job(&t, "future_status", 0);
    let future_status = Row::new(100, &b, "PAUSED_BY_OPERATOR").executed();
    let c = job(&t, "null_status", 0);
    let mut null_status = Row::new(100, &c, "ACTIVE").executed();
    null_status.status = None;
    let d = job(&t, "cycle_a", 0);
    let mut cycle_a = Row::new(100, &d, "ACTIVE").executed();
    let e = job(&t, "cycle_b", 0);
    let cycle_b = Row::new(100, &e, "ACTIVE").executed().child_of(&cycle_a);
    cycle_a.parent = Some(cycle_b.id);
    let f = job(&t, "own_parent", 0);
    let mut own_parent = Row::new(100, &f, "ACTIVE").executed();
    own_parent.parent = Some(own_parent.id);

    // Run normally.
    let g = job(&t, "orphan", 0);
    let mut orphan = Row::new(100, &g, "ACTIVE").executed();
    orphan.parent = Some(CommandId::new()); // that parent row does not exist
    let big = format!(
        r#"{{"tag":"{t}","name":"big","behaviour":"Succeed","polls_needed":1,"output":9,"started_job":"job-of-big","padding":"{}"}}"#,
        "x".repeat(10 << 20)
    );
    let big_row = Row::new(100, &big, "ACTIVE").executed();
    let h = job(&t, "wrong_root", 0);
    let mut wrong_root = Row::new(100, &h, "ACTIVE").executed();
    wrong_root.root = Some(healthy[0].id); // a root that is not its root

    for row in healthy.iter().chain([
        &corrupt_json,
        &wrong_shape,
        &unregistered,
        &future_status,
        &null_status,
        &cycle_a,
        &cycle_b,
        &own_parent,
        &orphan,
        &big_row,
        &wrong_root,
    ]) {
        insert(&db, row).await;
    }

    let co = builder(&db)
        .start()
        .await
        .expect("start-up survives the corpus");

    for row in healthy.iter().chain([&orphan, &big_row, &wrong_root]) {
        let outcome = within("a runnable row", co.wait_for(row.id)).await.unwrap();
        assert_eq!(
            outcome.status,
            CommandStatus::EndedSuccessfully,
            "{}",
            row.id
        );
    }
    assert_eq!(count(&t, "end_successfully(9):big"), 1);

    for (row, status) in [
        (&corrupt_json, Some("ACTIVE")),
        (&wrong_shape, Some("ACTIVE")),
        (&unregistered, Some("ACTIVE")),
        (&future_status, Some("PAUSED_BY_OPERATOR")),
        (&null_status, None),
        (&cycle_a, Some("ACTIVE")),
        (&cycle_b, Some("ACTIVE")),
        (&own_parent, Some("ACTIVE")),
    ] {
        assert_eq!(
            status_of(&db, row.id).await,
            (status.map(str::to_owned), false),
            "isolated row {} must be left as it was",
            row.id
        );
        match co.wait_for(row.id).await {
            Err(CoordinatorError::NotRunning(_)) => {}
            Err(CoordinatorError::Store(e)) => {
                assert!(e.to_string().contains("unreadable row"), "{e}")
            }
            other => panic!("{}: {other:?}", row.id),
        }
    }
    for name in ["cycle_a", "cycle_b", "own_parent", "unregistered"] {
        assert_eq!(count(&t, &format!("poll:{name}")), 0, "{name} never ran");
    }
    assert_eq!(co.live_count().await.unwrap(), 0);
    // The store still lists everything else while the bad rows are present.
    let listed = db.store.commands_with_callback_enabled().await.unwrap();
    assert_eq!(listed.bad_rows.len(), 3, "{:?}", listed.bad_rows);
}
