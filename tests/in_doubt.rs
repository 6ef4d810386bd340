//! Writes whose reply is lost: the server committed, the client never heard.
//! Through `support::proxy`, armed to let one message through and drop the
//! server's answer to it (then close the connection).

mod support;

use std::time::Duration;

use command_coordinator::Coordinator;
use support::commands::{Behaviour, Job, count, tag};
use support::proxy::{Action, store_through_proxy};
use support::{fresh_db, within};

/// The insert of a new command commits, but its reply is lost: `submit`
/// must not report a failure for a row that exists (the caller would submit
/// again, or give up on work that will run). The writer retries it; the
/// retry finds the row and succeeds; the command runs once.
#[actix::test]
async fn a_submit_whose_commit_reply_is_lost_succeeds_and_runs_once() {
    let db = fresh_db().await;
    let (proxy, store) = store_through_proxy(&db).await;
    let co = Coordinator::builder(store)
        .register::<Job>()
        .poll_interval(Duration::from_millis(10))
        .max_poll_interval(Duration::from_millis(40))
        .start()
        .await
        .unwrap();
    let t = tag();
    // The insert's parameters carry the tag: the proxy fires on the message
    // that binds them, i.e. on the insert itself.
    let mut lost = proxy.arm(t.as_bytes(), Action::Cut);
    let result = within(
        "a submit whose reply is lost",
        co.execute(Job::new(&t, "once", Behaviour::Succeed)),
    )
    .await;
    lost.wait().await;
    let outcome = result.expect("the row exists: the submit must not fail");
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(count(&t, "execute:once"), 1);
    let client = db.pool.get().await.unwrap();
    let rows: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE command_parameters LIKE '%' || $1 || '%'",
                db.table()
            ),
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    co.shutdown().await;
}
