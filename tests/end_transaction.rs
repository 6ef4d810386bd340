//! End methods' database effects commit together with the command's end:
//! exactly once, however often the end method runs.

mod support;

use command_coordinator::{CommandStatus, CommandStore, Coordinator, DatabaseConfig, PgStore};
use support::commands::{Behaviour, Effectful, Job, events, tag};
use support::{builder, fresh_db, url_as, within};

async fn effects_table(db: &support::TestDb) -> String {
    let table = format!("{}.effects", db.config.schema().quoted());
    db.sql(&format!(
        "CREATE TABLE {table} (command_id uuid NOT NULL, attempt int NOT NULL)"
    ))
    .await;
    table
}

#[actix::test]
async fn a_failed_end_attempt_leaves_no_effect_and_the_retry_writes_it_once() {
    let db = fresh_db().await;
    let table = effects_table(&db).await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let outcome = within(
        "effectful",
        co.execute(Effectful {
            tag: t.clone(),
            table: table.clone(),
            fail_first_end: true,
            tx_in_execute: false,
        }),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedSuccessfully);
    assert_eq!(
        events(&t),
        ["effect written, attempt 1", "effect written, attempt 2"]
    );
    let client = db.pool.get().await.unwrap();
    let rows = client
        .query(
            &format!("SELECT attempt FROM {table} WHERE command_id = $1"),
            &[outcome.id.as_uuid()],
        )
        .await
        .unwrap();
    let attempts: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(attempts, [2], "the first attempt's write was rolled back");
    let row = db.store.get(outcome.id).await.unwrap().unwrap();
    assert!(row.callback_notified);
}

#[actix::test]
async fn many_commands_with_end_transactions_each_write_exactly_one_effect() {
    let db = fresh_db().await;
    let table = effects_table(&db).await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let mut running = Vec::new();
    for i in 0..200 {
        let co = co.clone();
        let cmd = Effectful {
            tag: t.clone(),
            table: table.clone(),
            fail_first_end: i % 3 == 0,
            tx_in_execute: false,
        };
        running.push(actix::spawn(async move { co.execute(cmd).await }));
    }
    for r in running {
        assert!(within("effectful", r).await.unwrap().unwrap().succeeded());
    }
    let client = db.pool.get().await.unwrap();
    let (rows, distinct): (i64, i64) = {
        let r = client
            .query_one(
                &format!("SELECT count(*), count(DISTINCT command_id) FROM {table}"),
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((rows, distinct), (200, 200));
}

#[actix::test]
async fn a_transaction_outside_an_end_method_is_refused() {
    let db = fresh_db().await;
    let table = effects_table(&db).await;
    let co = builder(&db).start().await.unwrap();
    let outcome = within(
        "effectful",
        co.execute(Effectful {
            tag: tag(),
            table,
            fail_first_end: false,
            tx_in_execute: true,
        }),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, CommandStatus::EndedWithFailure);
    assert!(
        outcome
            .failure_reason
            .unwrap()
            .contains("only available in end methods")
    );
}

#[actix::test]
async fn the_runtime_needs_only_dml_rights_once_migrations_ran() {
    let db = fresh_db().await; // migrated by the owner
    let schema = db.config.schema().clone();
    let role = format!("r_{}", uuid::Uuid::new_v4().simple());
    db.sql(&format!(
        "CREATE ROLE {role} LOGIN; \
         GRANT USAGE ON SCHEMA {s} TO {role}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.command_entities, {s}.command_hosts \
             TO {role};",
        s = schema.quoted()
    ))
    .await;
    let config = DatabaseConfig::from_url(&url_as(&role))
        .unwrap()
        .with_schema(schema);
    let store =
        PgStore::new(config.create_pool().unwrap(), config.schema().clone()).without_migrations();
    let co = Coordinator::builder(store.clone())
        .register::<Job>()
        .poll_interval(std::time::Duration::from_millis(10))
        .start()
        .await
        .expect("a DML-only role can run the coordinator");
    let t = tag();
    let outcome = within("job", co.execute(Job::new(&t, "a", Behaviour::Succeed)))
        .await
        .unwrap();
    assert!(outcome.succeeded());
    assert_eq!(co.cleanup_now().await.unwrap(), 0);
    // And the same role could not have migrated: migrations need another role.
    let err = command_coordinator::migrate(store.pool(), config.schema())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

/// A lost COMMIT reply: the end's first attempt is still open (holding the
/// row) when a second attempt writes its effect and tries to commit the same
/// end. The second waits for the row, then must find the command ended and
/// roll back, effect included.
#[actix::test]
async fn a_second_end_attempt_after_an_in_doubt_commit_applies_nothing() {
    use command_coordinator::actors::{CommandUpdate, EndTransaction, Transition};
    use command_coordinator::{CommandEntity, CommandId, JsonPayload};
    let db = fresh_db().await;
    let table = effects_table(&db).await;
    let id = CommandId::new();
    let mut entity = CommandEntity::new(id, 1, JsonPayload::encode(&()).unwrap());
    entity.status = CommandStatus::Succeeded;
    entity.executed = true;
    let host = support::join_host(&db).await;
    db.store
        .apply(host, &[Transition::Insert(Box::new(entity))])
        .await
        .unwrap();

    // The first attempt: its end is written, its COMMIT not answered yet.
    let first = db.pool.get().await.unwrap();
    first.batch_execute("BEGIN").await.unwrap();
    first
        .execute(
            &format!(
                "UPDATE {} SET status = 'ENDED_SUCCESSFULLY', callback_notified = true \
                 WHERE command_id = $1",
                db.table()
            ),
            &[id.as_uuid()],
        )
        .await
        .unwrap();
    let first_pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // The second attempt, as the runtime runs it.
    let tx = db.store.begin_end_transaction(host).await.unwrap();
    let tx: std::rc::Rc<dyn EndTransaction> = tx.into();
    let pg = tx
        .clone()
        .as_any_rc()
        .downcast::<command_coordinator::PgTransaction>()
        .unwrap();
    pg.execute(
        &format!("INSERT INTO {table} (command_id, attempt) VALUES ($1, 2)"),
        &[id.as_uuid()],
    )
    .await
    .unwrap();
    let mut end = CommandUpdate::new(id);
    end.status = Some(CommandStatus::EndedSuccessfully);
    end.notified = Some(true);
    let second = actix::spawn({
        let tx = tx.clone();
        async move { tx.commit(end).await }
    });

    // Wait until the second attempt is blocked behind the first's row lock.
    let watcher = db.pool.get().await.unwrap();
    within("the second attempt waits for the row", async {
        loop {
            let blocked: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE $1 = ANY(pg_blocking_pids(pid))",
                    &[&first_pid],
                )
                .await
                .unwrap()
                .get(0);
            if blocked > 0 {
                break;
            }
            actix::clock::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    first.batch_execute("COMMIT").await.unwrap();

    let result = within("second attempt", second).await.unwrap();
    assert!(result.is_err(), "the second attempt committed: {result:?}");
    let effects: i64 = watcher
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(effects, 0, "the second attempt's effect was applied");
    let row = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(row.status, CommandStatus::EndedSuccessfully);
    assert!(row.callback_notified);
}
