//! What a submit may ask for beyond "run this now", and transient errors:
//! submitting in the host's own transaction (commit, rollback, a crash
//! between insert and commit), idempotency keys (sequential, concurrent from
//! two hosts, held by an uncommitted transaction, a reply lost on a cut
//! connection), retries of transient errors (counted in the row, also
//! across a `kill -9`), and delayed starts (on time, and after a `kill -9`).
//!
//! The crash cases run a second copy of this test binary as the host to
//! kill (`child_host`, ignored unless a parent starts it): a real process,
//! killed with SIGKILL at a moment the parent has seen.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use chrono::Utc;
use command_coordinator::{
    CommandId, CommandStatus, CommandStore, Coordinator, CoordinatorError, SubmitInTransaction,
    SubmitOptions,
};
use support::commands::{
    Behaviour, Flaky, Job, SLOW_FLAKY_TRIES, SlowFlaky, Timed, count, events, tag,
};
use support::proxy::{Action, store_through_proxy};
use support::{TestDb, builder, builder_over, database_url, fresh_db, within};

/// Longest wait for a row to reach a state (bounded loops only).
const ROW_WAIT: Duration = Duration::from_secs(60);

async fn start(db: &TestDb) -> Coordinator {
    builder(db).start().await.expect("coordinator starts")
}

/// Polls `probe` every 20 ms until it answers `Some`, for at most
/// [`ROW_WAIT`].
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + ROW_WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
}

async fn rows_with_key(db: &TestDb, key: &str) -> Vec<CommandId> {
    let client = db.pool.get().await.unwrap();
    client
        .query(
            &format!(
                "SELECT command_id FROM {} WHERE idempotency_key = $1",
                db.table()
            ),
            &[&key],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| CommandId::from_uuid(r.get(0)))
        .collect()
}

// ---------------------------------------------------------------- keys

#[actix::test]
async fn a_second_submit_with_the_same_key_returns_the_first_command() {
    let db = fresh_db().await;
    let co = start(&db).await;
    let t = tag();
    let key = format!("order-{t}");
    let options = SubmitOptions::new().key(key.clone());
    let first = co
        .submit_with(Job::new(&t, "a", Behaviour::Succeed), options.clone())
        .await
        .unwrap();
    assert!(!first.duplicate);
    let second = co
        .submit_with(Job::new(&t, "b", Behaviour::Succeed), options.clone())
        .await
        .unwrap();
    assert_eq!(second.id, first.id);
    assert!(second.duplicate);
    // Ended, the key still names it (until cleanup removes the row).
    let outcome = within("the keyed command", co.wait_for(first.id))
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    let after = within(
        "a keyed execute",
        co.execute_with(Job::new(&t, "c", Behaviour::Succeed), options),
    )
    .await
    .unwrap();
    assert_eq!(after.id, first.id);
    assert_eq!(count(&t, "execute:a"), 1);
    assert_eq!(count(&t, "execute:b") + count(&t, "execute:c"), 0);
    // Unique per command type: another type may use the same key.
    let other = co
        .submit_with(Flaky::new(&t, 0, 0), SubmitOptions::new().key(key.clone()))
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_ne!(other.id, first.id);
    assert_eq!(rows_with_key(&db, &key).await.len(), 2);
    // Twice at once from one host: most likely in one writer batch, where
    // the second row conflicts with the first of the same statement.
    let twin = format!("twin-{t}");
    let submit = |name: &'static str| {
        let (co, t, twin) = (co.clone(), t.clone(), twin.clone());
        async move {
            co.submit_with(
                Job::new(&t, name, Behaviour::Succeed),
                SubmitOptions::new().key(twin),
            )
            .await
            .unwrap()
        }
    };
    let (x, y) = futures_join2(submit("x"), submit("y")).await;
    assert_eq!(x.id, y.id);
    assert!(x.duplicate != y.duplicate, "{x:?} {y:?}");
    assert_eq!(rows_with_key(&db, &twin).await, vec![x.id]);
    // Keys the database could not hold are refused before anything is written.
    let refused = co
        .submit_with(
            Job::new(&t, "d", Behaviour::Succeed),
            SubmitOptions::new().key(""),
        )
        .await;
    assert!(
        matches!(refused, Err(CoordinatorError::InvalidOptions(_))),
        "{refused:?}"
    );
    co.shutdown().await;
}

#[actix::test]
async fn concurrent_submits_with_the_same_keys_from_two_hosts_make_one_command_each() {
    let db = fresh_db().await;
    let a = start(&db).await;
    let b = start(&db).await;
    let t = tag();
    const KEYS: usize = 40;
    let submit_all = |co: Coordinator, who: &'static str| {
        let t = t.clone();
        async move {
            let mut ids = Vec::new();
            let submits = (0..KEYS).map(|i| {
                let co = co.clone();
                let t = t.clone();
                async move {
                    co.submit_with(
                        Job::new(&t, &format!("{who}{i}"), Behaviour::Succeed),
                        SubmitOptions::new().key(format!("{t}-{i}")),
                    )
                    .await
                    .unwrap()
                }
            });
            for s in futures_join(submits).await {
                ids.push(s);
            }
            ids
        }
    };
    let (from_a, from_b) =
        futures_join2(submit_all(a.clone(), "a"), submit_all(b.clone(), "b")).await;
    for i in 0..KEYS {
        let (x, y) = (from_a[i], from_b[i]);
        assert_eq!(x.id, y.id, "key {i}: both hosts answer the same command");
        assert!(
            x.duplicate != y.duplicate,
            "key {i}: exactly one of the two inserted ({x:?}, {y:?})"
        );
        assert_eq!(rows_with_key(&db, &format!("{t}-{i}")).await, vec![x.id]);
        let outcome = within("a keyed command", a.wait_for(x.id)).await.unwrap();
        assert!(outcome.succeeded());
    }
    let executes = events(&t)
        .iter()
        .filter(|e| e.starts_with("execute:"))
        .count();
    assert_eq!(executes, KEYS, "one command ran per key: {:?}", events(&t));
    a.shutdown().await;
    b.shutdown().await;
}

/// `join_all` without a futures dependency: actix runs them concurrently.
async fn futures_join<F: std::future::Future + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: 'static,
{
    let handles: Vec<_> = futs.map(actix::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

async fn futures_join2<A, B>(a: A, b: B) -> (A::Output, B::Output)
where
    A: std::future::Future + 'static,
    B: std::future::Future + 'static,
    A::Output: 'static,
    B::Output: 'static,
{
    let (a, b) = (actix::spawn(a), actix::spawn(b));
    (a.await.expect("task"), b.await.expect("task"))
}

/// Waits until a backend of this database waits on a lock (the second
/// keyed insert on the first one's index entry).
async fn until_a_backend_waits_on_a_lock(db: &TestDb) {
    let client = db.pool.get().await.unwrap();
    until("the second insert to wait for the first", || {
        let client = &client;
        async move {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND query LIKE '%idempotency_key%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (n > 0).then_some(())
        }
    })
    .await;
}

async fn a_keyed_submit_in_waits_for_the_uncommitted_holder(commit: bool) {
    let db = fresh_db().await;
    let co = start(&db).await;
    let t = tag();
    let key = format!("k-{t}");
    let mut first_client = db.pool.get().await.unwrap();
    let first_tx = first_client.transaction().await.unwrap();
    let first = co
        .submit_in_with(
            &first_tx,
            Job::new(&t, "first", Behaviour::Succeed),
            SubmitOptions::new().key(key.clone()),
        )
        .await
        .unwrap();
    assert!(!first.duplicate);
    let second = {
        let (co, pool, t, key) = (co.clone(), db.pool.clone(), t.clone(), key.clone());
        actix::spawn(async move {
            let mut client = pool.get().await.unwrap();
            let tx = client.transaction().await.unwrap();
            let submitted = co
                .submit_in_with(
                    &tx,
                    Job::new(&t, "second", Behaviour::Succeed),
                    SubmitOptions::new().key(key),
                )
                .await
                .unwrap();
            tx.commit().await.unwrap();
            submitted
        })
    };
    until_a_backend_waits_on_a_lock(&db).await;
    assert!(
        !second.is_finished(),
        "the second submit waits for the first"
    );
    if commit {
        first_tx.commit().await.unwrap();
    } else {
        first_tx.rollback().await.unwrap();
    }
    let second = within("the second submit", second).await.unwrap();
    let rows = rows_with_key(&db, &key).await;
    if commit {
        assert_eq!(second.id, first.id);
        assert!(second.duplicate);
    } else {
        assert_ne!(second.id, first.id);
        assert!(
            !second.duplicate,
            "the first rolled back: the second is new"
        );
    }
    assert_eq!(rows, vec![second.id]);
    let outcome = within("the keyed command", co.wait_for(second.id))
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    let ran = if commit {
        "execute:first"
    } else {
        "execute:second"
    };
    assert_eq!(count(&t, ran), 1, "{:?}", events(&t));
    assert_eq!(
        events(&t)
            .iter()
            .filter(|e| e.starts_with("execute:"))
            .count(),
        1
    );
    co.shutdown().await;
}

#[actix::test]
async fn a_keyed_submit_in_waits_for_an_uncommitted_holder_and_answers_it_once_committed() {
    a_keyed_submit_in_waits_for_the_uncommitted_holder(true).await;
}

#[actix::test]
async fn a_keyed_submit_in_waits_for_an_uncommitted_holder_and_inserts_when_it_rolls_back() {
    a_keyed_submit_in_waits_for_the_uncommitted_holder(false).await;
}

/// The keyed insert reaches the server and commits; the connection is cut
/// before its reply comes back. The submit retries with the same id, finds
/// its own row, and answers it as new: one row, one run.
#[actix::test]
async fn a_keyed_submit_whose_reply_is_lost_is_retried_into_the_same_command() {
    let db = fresh_db().await;
    let (proxy, store) = store_through_proxy(&db).await;
    let co = builder_over(store).start().await.unwrap();
    let t = tag();
    let key = format!("cut-{t}");
    // The key travels in the insert's Bind message: the proxy forwards it,
    // then cuts the connection before the reply.
    let mut lost = proxy.arm(key.as_bytes(), Action::Cut);
    let submitted = within(
        "a keyed submit whose reply is lost",
        co.submit_with(
            Job::new(&t, "once", Behaviour::Succeed),
            SubmitOptions::new().key(key.clone()),
        ),
    )
    .await
    .expect("the retry finds the row: the submit succeeds");
    lost.wait().await;
    assert!(!submitted.duplicate, "its own row, not another's");
    assert_eq!(rows_with_key(&db, &key).await, vec![submitted.id]);
    let outcome = within("the command", co.wait_for(submitted.id))
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(count(&t, "execute:once"), 1);
    // And a caller that retries on its own gets the same command.
    let again = co
        .submit_with(
            Job::new(&t, "again", Behaviour::Succeed),
            SubmitOptions::new().key(key),
        )
        .await
        .unwrap();
    assert_eq!(again.id, submitted.id);
    assert!(again.duplicate);
    co.shutdown().await;
}

// ------------------------------------------------ the host's transaction

async fn orders_table(db: &TestDb) -> String {
    let orders = format!("{}.orders", db.config.schema().quoted());
    db.sql(&format!(
        "CREATE TABLE {orders} (id bigserial PRIMARY KEY, item text NOT NULL, command uuid)"
    ))
    .await;
    orders
}

#[actix::test]
async fn a_command_submitted_in_the_host_transaction_starts_once_it_commits() {
    let db = fresh_db().await;
    let orders = orders_table(&db).await;
    let co = start(&db).await;
    let t = tag();
    let mut client = db.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let submitted = co
        .submit_in(&tx, Job::new(&t, "ship", Behaviour::Succeed))
        .await
        .unwrap();
    tx.execute(
        &format!("INSERT INTO {orders} (item, command) VALUES ('book', $1)"),
        &[submitted.id.as_uuid()],
    )
    .await
    .unwrap();
    // Not committed: invisible to everyone else, and nothing runs.
    assert_eq!(db.store.get(submitted.id).await.unwrap(), None);
    tx.commit().await.unwrap();
    let outcome = within("the committed command", co.wait_for(submitted.id))
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(count(&t, "execute:ship"), 1);
    let row = db.store.get(submitted.id).await.unwrap().unwrap();
    assert_eq!(row.owner, Some(co.host_id()));
    co.shutdown().await;
}

#[actix::test]
async fn a_command_submitted_in_a_rolled_back_transaction_never_exists() {
    let db = fresh_db().await;
    let orders = orders_table(&db).await;
    let co = start(&db).await;
    let t = tag();
    let mut client = db.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(&format!("INSERT INTO {orders} (item) VALUES ('book')"), &[])
        .await
        .unwrap();
    let doomed = co
        .submit_in(&tx, Job::new(&t, "doomed", Behaviour::Succeed))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // A later transactional submit goes through the same claim: once it
    // ran, the rolled-back one would have been claimed too.
    let tx = client.transaction().await.unwrap();
    let later = co
        .submit_in(&tx, Job::new(&t, "later", Behaviour::Succeed))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let outcome = within("the later command", co.wait_for(later.id))
        .await
        .unwrap();
    assert!(outcome.succeeded());
    assert_eq!(db.store.get(doomed.id).await.unwrap(), None);
    assert_eq!(count(&t, "execute:doomed"), 0);
    assert!(matches!(
        co.wait_for(doomed.id).await,
        Err(CoordinatorError::NotFound(_))
    ));
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {orders}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    co.shutdown().await;
}

/// With notifications, the commit's notice wakes the claim: the command
/// starts well before the next host check.
#[actix::test]
async fn with_notifications_a_committed_command_starts_at_once() {
    let db = fresh_db().await;
    let store = command_coordinator::PgStore::new(db.pool.clone(), db.config.schema().clone())
        .with_notifications(&db.config);
    let co = builder_over(store)
        .heartbeat_interval(Duration::from_secs(2))
        .lease(Duration::from_secs(20))
        .host_check_interval(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let t = tag();
    // The listener subscribes in the background: a first command proves
    // it listens (it may also be claimed by the first host check).
    for name in ["warm-up", "timed"] {
        let mut client = db.pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let submitted = co
            .submit_in(&tx, Job::new(&t, name, Behaviour::Succeed))
            .await
            .unwrap();
        let committed = std::time::Instant::now();
        tx.commit().await.unwrap();
        within("the notified command", co.wait_for(submitted.id))
            .await
            .unwrap();
        let took = committed.elapsed();
        if name == "timed" {
            assert!(
                took < Duration::from_secs(5),
                "started {took:?} after the commit: the notice did not wake the claim"
            );
        }
    }
    co.shutdown().await;
}

// ------------------------------------------------------------- retries

#[actix::test]
async fn transient_errors_of_execute_and_poll_are_retried_with_backoff_and_counted() {
    let db = fresh_db().await;
    let co = start(&db).await;
    let t = tag();
    let outcome = within("a flaky command", co.execute(Flaky::new(&t, 2, 2)))
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.output, Some(3), "execute ran three times");
    let times = |what: &str| -> Vec<i64> {
        events(&t)
            .iter()
            .filter(|e| e.starts_with(what))
            .map(|e| e.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let executes = times("execute ");
    let polls = times("poll ");
    assert_eq!(executes.len(), 3, "{:?}", events(&t));
    assert_eq!(polls.len(), 3, "{:?}", events(&t));
    // The waits of the policy: 100 ms, then 200 ms (no jitter).
    for (tries, waits) in [(&executes, [100, 200]), (&polls, [100, 200])] {
        for (i, wait) in waits.iter().enumerate() {
            let gap = tries[i + 1] - tries[i];
            assert!(
                gap >= *wait,
                "try {} came {gap} ms after the one before it",
                i + 2
            );
        }
    }
    let row = db.store.get(outcome.id).await.unwrap().unwrap();
    assert_eq!(row.failed_attempts, 0, "the step succeeded: counted afresh");
    assert_eq!(row.last_error.as_deref(), Some("503 (poll 2)"));
    co.shutdown().await;
}

#[actix::test]
async fn transient_errors_fail_the_command_once_the_tries_are_used_up() {
    let db = fresh_db().await;
    let co = start(&db).await;
    let t = tag();
    let poll = within(
        "a poll failing every try",
        co.execute(Flaky::new(&t, 0, 99)),
    )
    .await
    .unwrap();
    assert_eq!(poll.status, CommandStatus::EndedWithFailure);
    let reason = poll.failure_reason.clone().unwrap();
    assert!(
        reason.contains("poll failed 4 times in a row") && reason.contains("503 (poll 4)"),
        "{reason}"
    );
    let row = db.store.get(poll.id).await.unwrap().unwrap();
    assert_eq!(row.failed_attempts, 4);
    let t2 = tag();
    let execute = within(
        "an execute failing every try",
        co.execute(Flaky::new(&t2, 99, 0)),
    )
    .await
    .unwrap();
    assert_eq!(execute.status, CommandStatus::EndedWithFailure);
    assert!(
        execute
            .failure_reason
            .as_deref()
            .unwrap()
            .contains("execute failed 4 times in a row"),
        "{execute:?}"
    );
    assert_eq!(
        events(&t2)
            .iter()
            .filter(|e| e.starts_with("execute "))
            .count(),
        4
    );
    co.shutdown().await;
}

/// The host dies between two tries of `execute`; the host that adopts the
/// command continues the count from the row instead of starting over.
#[actix::test]
async fn retry_counts_survive_a_kill_9() {
    let db = fresh_db().await;
    let t = tag();
    let (mut child, id) = spawn_child(&db, "retry", &t);
    let table = db.table();
    // The moment: two tries failed, the third not begun (the row waits
    // for its not_before, 800 ms away).
    let client = db.pool.get().await.unwrap();
    until("two failed tries in the row", || {
        let client = &client;
        let table = &table;
        async move {
            let row = client
                .query_one(
                    &format!(
                        "SELECT failed_attempts, status, not_before > now() FROM {table} \
                         WHERE command_id = $1"
                    ),
                    &[id.as_uuid()],
                )
                .await
                .unwrap();
            let (failed, status, waiting): (i32, String, Option<bool>) =
                (row.get(0), row.get(1), row.get(2));
            (failed == 2 && status == "NOT_STARTED" && waiting == Some(true)).then_some(())
        }
    })
    .await;
    kill_9(&mut child);
    let row = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (row.failed_attempts, row.status),
        (2, CommandStatus::NotStarted),
        "the kill landed between the second and third tries"
    );
    assert_eq!(row.last_error.as_deref(), Some("service unavailable"));
    let co = start(&db).await;
    let outcome = within("the adopted command", co.wait_for(id))
        .await
        .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    let reason = outcome.failure_reason.unwrap();
    assert!(
        reason.contains(&format!("execute failed {SLOW_FLAKY_TRIES} times in a row")),
        "{reason}"
    );
    assert_eq!(
        count(&t, "execute"),
        (SLOW_FLAKY_TRIES - 2) as usize,
        "this host ran only the tries left"
    );
    co.shutdown().await;
}

// -------------------------------------------------------- delayed start

fn execute_times(t: &str) -> Vec<i64> {
    events(t)
        .iter()
        .filter_map(|e| e.strip_prefix("execute "))
        .map(|ms| ms.parse().unwrap())
        .collect()
}

#[actix::test]
async fn a_delayed_command_starts_on_time() {
    let db = fresh_db().await;
    let co = start(&db).await;
    let t = tag();
    let at = Utc::now() + chrono::Duration::milliseconds(1_500);
    let id = co.submit_at(at, Timed { tag: t.clone() }).await.unwrap();
    let row = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(row.status, CommandStatus::NotStarted);
    assert_eq!(
        row.not_before.map(|t| t.timestamp_millis()),
        Some(at.timestamp_millis())
    );
    let outcome = within("the delayed command", co.wait_for(id))
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    let started = execute_times(&t)[0];
    let late = started - at.timestamp_millis();
    assert!(late >= 0, "started {} ms early", -late);
    assert!(late < 500, "started {late} ms late");
    // A delayed command that is cancelled fails without running.
    let t2 = tag();
    let later = co
        .submit_with(
            Timed { tag: t2.clone() },
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    co.cancel(later.id).await.unwrap();
    let cancelled = within("the cancelled delayed command", co.wait_for(later.id))
        .await
        .unwrap();
    assert_eq!(cancelled.failure_reason.as_deref(), Some("cancelled"));
    assert!(execute_times(&t2).is_empty());
    co.shutdown().await;
}

/// The host that submitted a delayed command dies before its time; the one
/// that adopts it starts it at that time, not earlier, once.
#[actix::test]
async fn a_delayed_command_survives_a_kill_9_and_starts_at_its_time() {
    let db = fresh_db().await;
    let t = tag();
    let (mut child, id) = spawn_child(&db, "delayed", &t);
    kill_9(&mut child);
    let row = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(row.status, CommandStatus::NotStarted);
    let at = row.not_before.expect("a delayed row");
    assert!(at > Utc::now(), "killed before its time");
    let co = start(&db).await;
    let outcome = within("the adopted delayed command", co.wait_for(id))
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    let starts = execute_times(&t);
    assert_eq!(starts.len(), 1);
    let late = starts[0] - at.timestamp_millis();
    assert!(late >= 0, "started {} ms early", -late);
    assert!(late < 2_000, "started {late} ms late");
    co.shutdown().await;
}

// ------------------------------------------------------------- crashes

/// The host dies holding an open transaction with a submitted command: the
/// server rolls it back, the command never exists, and its key is free.
#[actix::test]
async fn a_host_killed_between_insert_and_commit_leaves_no_command() {
    let db = fresh_db().await;
    let t = tag();
    let (mut child, id) = spawn_child(&db, "submit_in", &t);
    // Inserted, not committed: invisible.
    assert_eq!(db.store.get(id).await.unwrap(), None);
    kill_9(&mut child);
    let co = start(&db).await;
    // The same key: the insert waits for the dead transaction's end (the
    // server notices the closed connection), then finds the key free.
    let submitted = within(
        "a submit with the dead transaction's key",
        co.submit_with(
            Job::new(&t, "after", Behaviour::Succeed),
            SubmitOptions::new().key(format!("crash-{t}")),
        ),
    )
    .await
    .unwrap();
    assert!(
        !submitted.duplicate,
        "the dead transaction's row never committed"
    );
    assert_ne!(submitted.id, id);
    assert_eq!(db.store.get(id).await.unwrap(), None);
    within("the new command", co.wait_for(submitted.id))
        .await
        .unwrap();
    co.shutdown().await;
}

fn kill_9(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// Starts this test binary as `child_host` in `mode`, and reads the id it
/// prints once the moment its parent targets has come.
fn spawn_child(db: &TestDb, mode: &str, t: &str) -> (Child, CommandId) {
    let log = support::processes::temp_dir("child-host").join("stderr.log");
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "child_host",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("DATABASE_URL", database_url())
    .env("CC_CHILD_SCHEMA", db.config.schema().as_str())
    .env("CC_CHILD_MODE", mode)
    .env("CC_CHILD_TAG", t)
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log).expect("the child's log"));
    support::processes::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("start the child host");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // After libtest's "test child_host ... " on the same line.
            if let Some((_, id)) = line.split_once("CHILD ID ") {
                let _ = tx.send(id.trim().parse::<CommandId>().expect("an id"));
                return;
            }
        }
    });
    let id = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "the child host did not report its command; its log:\n{}",
                support::processes::log_tail(&log, 40)
            )
        });
    (child, id)
}

/// The host a crash test kills: run by [`spawn_child`] only.
#[actix::test]
#[ignore = "a child process of the crash tests (started by spawn_child)"]
async fn child_host() {
    let schema = std::env::var("CC_CHILD_SCHEMA").expect("started by spawn_child");
    let mode = std::env::var("CC_CHILD_MODE").unwrap();
    let t = std::env::var("CC_CHILD_TAG").unwrap();
    let config = command_coordinator::DatabaseConfig::from_url(&database_url())
        .unwrap()
        .with_schema(command_coordinator::SchemaName::new(schema).unwrap())
        .with_pool_size(4)
        .unwrap();
    let pool = config.create_pool().unwrap();
    let store = command_coordinator::PgStore::new(pool.clone(), config.schema().clone());
    let co = builder_over(store).start().await.unwrap();
    let id = match mode.as_str() {
        "retry" => co.submit(SlowFlaky { tag: t }).await.unwrap(),
        "delayed" => {
            let at = Utc::now() + chrono::Duration::seconds(8);
            co.submit_at(at, Timed { tag: t }).await.unwrap()
        }
        "submit_in" => {
            let mut client = pool.get().await.unwrap();
            let tx = client.transaction().await.unwrap();
            let submitted = co
                .submit_in_with(
                    &tx,
                    Job::new(&t, "never", Behaviour::Succeed),
                    SubmitOptions::new().key(format!("crash-{t}")),
                )
                .await
                .unwrap();
            println!("CHILD ID {}", submitted.id);
            // Killed here, the transaction open.
            actix::clock::sleep(Duration::from_secs(120)).await;
            panic!("the parent did not kill this host");
        }
        other => panic!("unknown child mode {other}"),
    };
    println!("CHILD ID {id}");
    actix::clock::sleep(Duration::from_secs(120)).await;
    panic!("the parent did not kill this host");
}
