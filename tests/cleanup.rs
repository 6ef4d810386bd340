//! The cleanup actor against a real PostgreSQL.

mod support;

use std::time::Duration;

use command_coordinator::{CommandStore, OnRootEnd};
use support::commands::{Behaviour, Job, Parent, tag};
use support::{builder, fresh_db, within};

#[actix::test]
async fn cleanup_removes_only_expired_hierarchies_that_ended() {
    let db = fresh_db().await;
    let co = builder(&db)
        .retention(Duration::from_secs(3600))
        .on_root_end(OnRootEnd::KeepForCleanup)
        .start()
        .await
        .unwrap();
    let t = tag();
    let hierarchy = |name: &str| {
        Parent::new(
            &t,
            name,
            vec![
                Job::new(&t, &format!("{name}.a"), Behaviour::Succeed),
                Job::new(&t, &format!("{name}.b"), Behaviour::PollReportsFailure),
            ],
        )
    };
    let old = within("old", co.execute(hierarchy("old"))).await.unwrap();
    let recent = within("recent", co.execute(hierarchy("recent")))
        .await
        .unwrap();
    // A hierarchy that is still running: its child never finishes.
    let running = co
        .submit(Parent::new(
            &t,
            "running",
            vec![Job::new(&t, "running.a", Behaviour::NeverDone)],
        ))
        .await
        .unwrap();
    within("running child", async {
        while co.children(running).await.unwrap().is_empty() {
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // Make "old" and the running one look two hours old.
    for root in [old.id, running] {
        db.sql(&format!(
            "UPDATE {t} SET created_at = created_at - interval '2 hours', \
             updated_at = updated_at - interval '2 hours', \
             ended_at = ended_at - interval '2 hours' \
             WHERE root_command_id = '{root}'",
            t = db.table()
        ))
        .await;
    }

    let removed = co.cleanup_now().await.unwrap();
    assert_eq!(removed, 3, "the old hierarchy: root and two children");
    assert!(!db.store.has_commands_with_root(old.id).await.unwrap());
    assert_eq!(
        co.status(old.id).await.unwrap(),
        None,
        "gone from memory too"
    );
    assert_eq!(
        db.store.hierarchy(recent.id).await.unwrap().entities.len(),
        3
    );
    assert_eq!(db.store.hierarchy(running).await.unwrap().entities.len(), 2);
    // Nothing more to do; the running hierarchy is never touched.
    assert_eq!(co.cleanup_now().await.unwrap(), 0);
    assert!(co.status(running).await.unwrap().is_some());
}
