//! A connection that stops answering: the store gives up within its query
//! timeout instead of waiting forever, closes the silent connections, and the
//! next operation works on a fresh one. Through `support::proxy`, which can
//! black-hole, cut, or lose one reply of, a live connection to the real
//! PostgreSQL of the tests.

mod support;

use std::time::{Duration, Instant};

use command_coordinator::actors::Transition;
use command_coordinator::{
    CommandEntity, CommandId, CommandStore, DatabaseConfig, JsonPayload, PgStore,
};
use support::proxy::{Action, Proxy, simple_query, upstream_of};
use support::{TestDb, database_url, fresh_db};

/// Short, so that the tests are quick; the defaults are 30 s and 5 s.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// What a timed-out operation may take beyond its timeout (scheduling on 2
/// busy cores, closing the connections).
const SLACK: Duration = Duration::from_millis(2_500);
/// Longer than any bound above: reaching it means "hung", as today's code did.
const HUNG: Duration = Duration::from_secs(60);

fn command() -> CommandEntity {
    CommandEntity::new(CommandId::new(), 1, JsonPayload::encode(&"x").unwrap())
}

/// A proxy to the test server, and a store on `db`'s schema through it.
async fn store_through_proxy(db: &TestDb, pool_size: usize) -> (Proxy, PgStore) {
    let proxy = Proxy::start(upstream_of(&database_url())).await;
    let store = DatabaseConfig::from_url(&proxy.url(&database_url()))
        .unwrap()
        .with_schema(db.config.schema().clone())
        .with_pool_size(pool_size)
        .unwrap()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .unwrap()
        .with_query_timeout(Some(QUERY_TIMEOUT))
        .unwrap()
        .create_store()
        .unwrap();
    (proxy, store)
}

/// Runs `fut`, failing the test if it takes [`HUNG`]; returns its output and
/// how long it took.
async fn timed<F: std::future::Future>(what: &str, fut: F) -> (F::Output, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(HUNG, fut).await {
        Ok(out) => (out, started.elapsed()),
        Err(_) => panic!("{what} hung for {HUNG:?}: no timeout bounded it"),
    }
}

#[actix::test]
async fn a_black_holed_connection_fails_a_write_within_the_query_timeout_then_recovers() {
    let db = fresh_db().await;
    let (proxy, store) = store_through_proxy(&db, 2).await;
    let first = command();
    store
        .save_or_update(&first)
        .await
        .expect("through the proxy");
    // The pool's one connection has carried a statement and its answer.
    let before = proxy
        .wait_for("the first write's traffic", |s| {
            s.accepted == 1 && s.forwarded_to_server > 0 && s.forwarded_to_client > 0
        })
        .await;

    proxy.black_hole();
    let second = command();
    let (result, took) = timed(
        "a write on a black-holed connection",
        store.save_or_update(&second),
    )
    .await;
    let err = result.expect_err("nothing answered, yet the write succeeded");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("query timeout"), "{err}");
    assert!(
        took >= QUERY_TIMEOUT - Duration::from_millis(100) && took <= QUERY_TIMEOUT + SLACK,
        "gave up after {took:?}, the query timeout is {QUERY_TIMEOUT:?}"
    );
    // The write went into the hole on the same connection (not a new one),
    // and the store closed that connection rather than keep it in the pool.
    let after = proxy
        .wait_for("the store to close the silent connection", |s| {
            s.closed_by_client >= 1
        })
        .await;
    assert_eq!(after.accepted, before.accepted, "{after:?}");
    assert!(
        after.dropped_from_client > before.dropped_from_client,
        "{after:?}"
    );

    // New connections work again: the next write uses one and succeeds.
    proxy.forward();
    let (result, took) = timed(
        "a write after the black hole",
        store.save_or_update(&second),
    )
    .await;
    result.expect("a fresh connection");
    assert!(
        took < QUERY_TIMEOUT,
        "{took:?}: met a dead connection again"
    );
    assert!(db.store.get(second.id).await.unwrap().is_some());
    assert!(db.store.get(first.id).await.unwrap().is_some());
}

#[actix::test]
async fn a_writer_batch_gives_up_once_and_its_retry_does_not_meet_another_dead_connection() {
    let db = fresh_db().await;
    let host = support::join_host(&db).await;
    let (proxy, store) = store_through_proxy(&db, 3).await;
    // Three idle connections in the pool, all of which will go silent.
    {
        let held = [
            store.pool().get().await.unwrap(),
            store.pool().get().await.unwrap(),
            store.pool().get().await.unwrap(),
        ];
        for client in &held {
            client.simple_query("SELECT 1").await.unwrap();
        }
    }
    proxy
        .wait_for("three connections with traffic", |s| {
            s.accepted == 3 && s.forwarded_to_client > 0
        })
        .await;

    proxy.black_hole();
    let batch = vec![Transition::Insert(Box::new(command()))];
    let (result, took) = timed(
        "a writer batch on a black-holed connection",
        store.apply(host, &batch),
    )
    .await;
    assert!(result.expect_err("no answer").is_transient());
    assert!(took <= QUERY_TIMEOUT + SLACK, "{took:?}");
    // All three silent connections were closed, not only the one used.
    proxy
        .wait_for("every silent connection closed", |s| {
            s.closed_by_client == 3
        })
        .await;

    // The writer's retry, once the network is back, commits at once.
    proxy.forward();
    let (result, took) = timed("the retried batch", store.apply(host, &batch)).await;
    result.expect("the retry commits");
    assert!(
        took < QUERY_TIMEOUT,
        "{took:?}: the retry met a dead connection"
    );
    let Transition::Insert(inserted) = &batch[0] else {
        unreachable!()
    };
    assert!(db.store.get(inserted.id).await.unwrap().is_some());
}

#[actix::test]
async fn a_new_connection_into_a_black_hole_fails_within_the_connect_timeout() {
    let db = fresh_db().await;
    let (proxy, store) = store_through_proxy(&db, 2).await;
    // Accepted by the proxy, and nothing behind it: TCP connects, the
    // PostgreSQL start-up never completes.
    proxy.black_hole();
    let (result, took) = timed(
        "a first connection into a black hole",
        store.get(CommandId::new()),
    )
    .await;
    assert!(result.expect_err("no server").is_transient());
    assert!(took <= CONNECT_TIMEOUT + SLACK, "{took:?}");
    assert!(proxy.stats().accepted >= 1);
}

#[actix::test]
async fn a_cut_connection_fails_at_once() {
    let db = fresh_db().await;
    let (proxy, store) = store_through_proxy(&db, 1).await;
    store.save_or_update(&command()).await.unwrap();
    proxy
        .wait_for("the first write's answer", |s| s.forwarded_to_client > 0)
        .await;
    proxy.cut();
    proxy.wait_for("the cut", |s| s.closed == 1).await;
    let (result, took) = timed(
        "a write on a cut connection",
        store.save_or_update(&command()),
    )
    .await;
    assert!(result.expect_err("closed").is_transient());
    assert!(
        took < QUERY_TIMEOUT,
        "{took:?}: a closed socket is noticed at once"
    );
}

/// The proxy's armed trigger, as tests of in-doubt commits use it: the
/// server commits, the client never hears so.
#[actix::test]
async fn an_armed_proxy_loses_the_reply_to_a_commit_that_committed() {
    let db = fresh_db().await;
    let (proxy, store) = store_through_proxy(&db, 1).await;
    let e = command();
    let mut client = store.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(
        &format!(
            "INSERT INTO {} (command_id, command_type, command_parameters, command_params_class, \
             created_at, status) VALUES ($1, 1, '\"x\"', 'x', now(), 'NOT_STARTED')",
            db.table()
        ),
        &[e.id.as_uuid()],
    )
    .await
    .unwrap();
    let mut trigger = proxy.arm(&simple_query("COMMIT"), Action::Cut);
    assert!(!trigger.fired());
    let err = tx.commit().await.expect_err("the reply was lost");
    assert!(err.is_closed() || err.code().is_none(), "{err}");
    let connection = trigger.wait().await;
    assert_eq!(connection, 1);
    // Committed all the same.
    assert!(db.store.get(e.id).await.unwrap().is_some());
    // Out of the pool for good: returned, it could be handed out again
    // before its closed socket is noticed.
    drop(deadpool_postgres::Object::take(client));

    // Black-hole variant: the client waits, the server has committed.
    proxy.forward();
    let e = command();
    let mut client = store.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(
        &format!(
            "INSERT INTO {} (command_id, command_type, command_parameters, command_params_class, \
             created_at, status) VALUES ($1, 1, '\"x\"', 'x', now(), 'NOT_STARTED')",
            db.table()
        ),
        &[e.id.as_uuid()],
    )
    .await
    .unwrap();
    let mut trigger = proxy.arm(&simple_query("COMMIT"), Action::BlackHole);
    let commit = tokio::time::timeout(QUERY_TIMEOUT, tx.commit()).await;
    assert!(commit.is_err(), "the reply should never come: {commit:?}");
    trigger.wait().await;
    assert!(db.store.get(e.id).await.unwrap().is_some());
    let stats = proxy.stats();
    assert!(stats.dropped_from_server > 0, "{stats:?}");
}
