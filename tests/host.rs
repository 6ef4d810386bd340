//! The host around the commands: a clean shutdown that hands the work over, a
//! lease that runs out and comes back, and end transactions that may not starve the writer.

mod support;

use std::time::{Duration, Instant};

use command_coordinator::{
    Command, CommandContext, CommandError, CommandStatus, CommandStore, CoordinatorError, PgStore,
    PgTransaction, PollOutcome,
};
use serde::{Deserialize, Serialize};
use support::commands::{Behaviour, Job, count, record, tag};
use support::gates::{open_n, pass, until};
use support::{builder, fresh_db, within};

#[actix::test]
async fn after_shutdown_nothing_is_accepted_timers_stop_and_a_new_coordinator_takes_over() {
    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let done = within(
        "a job",
        co.execute(Job::new(&t, "done", Behaviour::Succeed)),
    )
    .await
    .unwrap();
    assert!(done.succeeded());
    let stuck = co
        .submit(Job::new(&t, "stuck", Behaviour::NeverDone))
        .await
        .unwrap();
    until("the stuck job is polled", || count(&t, "poll:stuck") >= 2).await;
    // How often it is polled on this machine, now: the quiet window below
    // is measured in polls, not in a fixed time.
    let period = poll_period(|| count(&t, "poll:stuck")).await;

    within("shutdown", co.shutdown()).await;
    let after = co.submit(Job::new(&t, "late", Behaviour::Succeed)).await;
    assert!(matches!(after, Err(CoordinatorError::Stopped)), "{after:?}");
    let after = co.execute(Job::new(&t, "late", Behaviour::Succeed)).await;
    assert!(matches!(after, Err(CoordinatorError::Stopped)), "{after:?}");
    assert!(!co.is_acting());
    // Its timers stopped: no poll in the time ten polls took before.
    let polls = count(&t, "poll:stuck");
    actix::clock::sleep(quiet_window(period)).await;
    assert_eq!(count(&t, "poll:stuck"), polls, "polled after shutdown");

    // The host left: a new coordinator on the schema, in this process,
    // adopts what was left at once (no lease to wait for).
    let store = PgStore::new(db.pool.clone(), db.config.schema().clone());
    let began = Instant::now();
    let second = support::builder_over(store).start().await.unwrap();
    assert!(began.elapsed() < Duration::from_secs(5));
    assert_eq!(second.live_count().await.unwrap(), 1, "the stuck job");
    until("the stuck job is polled by the new host", || {
        count(&t, "poll:stuck") > polls
    })
    .await;
    let again = within(
        "a job on the new host",
        second.execute(Job::new(&t, "again", Behaviour::Succeed)),
    )
    .await
    .unwrap();
    assert!(again.succeeded());
    second.cancel(stuck).await.unwrap();
    within("stuck job cancelled", second.wait_for(stuck))
        .await
        .unwrap();
    second.shutdown().await;
}

/// Runs until the test releases it, then succeeds; records its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    tag: String,
}

impl Command for Held {
    const COMMAND_TYPE: i32 = 320;
    type Output = ();

    async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        record(&self.tag, "poll");
        // Released by the test (per tag: the tests of this file run at once).
        Ok(if count(&self.tag, "release") > 0 {
            PollOutcome::Succeeded(())
        } else {
            PollOutcome::Running
        })
    }

    async fn end_successfully(&mut self, _: &(), _: &CommandContext) -> Result<(), CommandError> {
        record(&self.tag, "end");
        Ok(())
    }
}

#[actix::test]
async fn a_host_whose_lease_runs_out_stops_acting_until_it_has_heartbeats_again_then_rebuilds() {
    let db = fresh_db().await;
    let co = builder(&db).register::<Held>().start().await.unwrap();
    let t = tag();
    let id = co.submit(Held { tag: t.clone() }).await.unwrap();
    until("the command is polled", || count(&t, "poll") >= 1).await;
    let period = poll_period(|| count(&t, "poll")).await;
    assert!(co.is_acting());

    // The host's row in the registry is locked: its heartbeats wait, and
    // none is acknowledged (a stalled database, a network that drops
    // them).
    let hosts = format!("{}.command_hosts", db.config.schema().quoted());
    let mut blocker = db.pool.get().await.unwrap();
    let tx = blocker.transaction().await.unwrap();
    tx.execute(
        &format!("SELECT 1 FROM {hosts} WHERE host_id = $1 FOR UPDATE"),
        &[co.host_id().as_uuid()],
    )
    .await
    .unwrap();
    let watcher = db.pool.get().await.unwrap();
    until_sql(&watcher, "a heartbeat waits for the row", "command_hosts").await;

    // The lease runs out: the host stops acting.
    until("the host stops acting", || !co.is_acting()).await;
    // The command could now succeed; a host without a lease must not take
    // the step (another host may be running it).
    record(&t, "release");
    let polls = count(&t, "poll");
    actix::clock::sleep(quiet_window(period)).await;
    assert_eq!(count(&t, "poll"), polls, "polled without a lease");
    assert_eq!(count(&t, "end"), 0, "ended without a lease");
    assert_eq!(
        db.store.get(id).await.unwrap().unwrap().status,
        CommandStatus::Active
    );

    // Heartbeats go through again: the host rebuilds the command from its
    // row, and ends it once.
    tx.rollback().await.unwrap();
    until("the host acts again", || co.is_acting()).await;
    let outcome = within("the rebuilt command", co.wait_for(id))
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(count(&t, "end"), 1);
    co.shutdown().await;
}

/// The time between two polls, as observed now (over three polls): on a
/// slow machine polls come slower, and a window that proves "no more polls"
/// must grow with them.
async fn poll_period(polls: impl Fn() -> usize) -> Duration {
    let from = polls();
    let began = Instant::now();
    until("three more polls", || polls() >= from + 3).await;
    began.elapsed() / 3
}

/// A window in which ten polls would have come (at least 300 ms).
fn quiet_window(period: Duration) -> Duration {
    (period * 10).max(Duration::from_millis(300))
}

/// Waits until a statement on `table` waits for a lock.
async fn until_sql(client: &deadpool_postgres::Object, what: &str, table: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let pattern = format!("%{table}%");
    loop {
        let waiting: bool = client
            .query_one(
                "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) \
                 FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()",
                &[&pattern],
            )
            .await
            .unwrap()
            .get(0);
        if waiting {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
}

/// An end method that holds its end transaction open until the test lets
/// it go.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HoldsEndTransaction {
    tag: String,
}

impl Command for HoldsEndTransaction {
    const COMMAND_TYPE: i32 = 321;
    type Output = ();

    async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }

    async fn end_successfully(&mut self, _: &(), ctx: &CommandContext) -> Result<(), CommandError> {
        let tx = ctx.transaction::<PgTransaction>().await?;
        record(&self.tag, "transaction open");
        pass(&self.tag).await;
        tx.execute("SELECT 1", &[])
            .await
            .map_err(|e| CommandError::new(e.to_string()))?;
        Ok(())
    }
}

#[actix::test]
async fn end_transactions_cannot_take_the_connections_the_writer_needs() {
    // A pool of 4 connections, and more end methods than that holding their
    // transaction open.
    let db = fresh_db().await;
    let co = builder(&db)
        .register::<HoldsEndTransaction>()
        .start()
        .await
        .unwrap();
    let t = tag();
    let mut holders = Vec::new();
    for _ in 0..6 {
        holders.push(
            co.submit(HoldsEndTransaction { tag: t.clone() })
                .await
                .unwrap(),
        );
    }
    until("end transactions are open", || {
        count(&t, "transaction open") >= 2
    })
    .await;
    // Status changes and submits still go through.
    let job = within(
        "a job while end methods hold transactions",
        co.execute(Job::new(&t, "meanwhile", Behaviour::Succeed)),
    )
    .await
    .unwrap();
    assert!(job.succeeded());
    open_n(&t, holders.len());
    for id in holders {
        let outcome = within("a holder", co.wait_for(id)).await.unwrap();
        assert!(outcome.succeeded(), "{outcome:?}");
    }
    assert_eq!(count(&t, "transaction open"), 6);
    co.shutdown().await;
}

/// Two hosts with notifications, polling made useless (every two minutes):
/// a cancellation sent from one reaches the command on the other at once,
/// and so does the end of a command the other waits for.
#[actix::test]
async fn cancellations_and_ends_reach_another_host_by_notice_not_by_polling() {
    let db = fresh_db().await;
    let never = Duration::from_secs(120);
    let host = |name: &'static str| {
        support::builder_over(
            PgStore::new(db.pool.clone(), db.config.schema().clone())
                .with_notifications(&db.config),
        )
        .register::<Held>()
        .cancel_check_interval(never)
        .remote_wait_interval(never)
        .host_name(name)
        .start()
    };
    let a = host("a").await.unwrap();
    let b = host("b").await.unwrap();
    let channel = format!("cc:{}", db.config.schema().as_str());
    let mut heard = Listener::new(&channel).await;
    let watcher = db.pool.get().await.unwrap();
    until_listening(&watcher, &channel, 3).await;

    // A cancellation from b, of a command running on a.
    let t = tag();
    let id = a
        .submit(support::commands::WaitsForCancel { tag: t.clone() })
        .await
        .unwrap();
    until("execute runs on a", || count(&t, "execute started") == 1).await;
    let sent = Instant::now();
    b.cancel(id).await.unwrap();
    until("a sees the cancellation", || {
        count(&t, "saw the cancellation") == 1
    })
    .await;
    let took = sent.elapsed();
    println!("a cancellation from another host arrived after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "{took:?}: polling, not a notice"
    );

    // b waits for a command of a's; its end is announced to b.
    let held = a.submit(Held { tag: t.clone() }).await.unwrap();
    until("it runs on a", || count(&t, "poll") >= 1).await;
    let waiting = actix::spawn({
        let b = b.clone();
        async move { b.wait_for(held).await }
    });
    heard.until(&format!("wait:{held}")).await;
    record(&t, "release");
    let ended = Instant::now();
    let outcome = within("b's wait", waiting).await.unwrap().unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    println!(
        "an end on another host reached the waiter after {:?}",
        ended.elapsed()
    );
    assert!(ended.elapsed() < Duration::from_secs(5));
    heard.until(&format!("end:{held}")).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Waits until `n` sessions listen on `channel`.
async fn until_listening(client: &deadpool_postgres::Object, channel: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let statement = format!("LISTEN \"{channel}\"");
    loop {
        let listening: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1",
                &[&statement],
            )
            .await
            .unwrap()
            .get(0);
        if listening >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} listeners never came");
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
}

/// The test's own ears on the hosts' channel.
struct Listener {
    _client: command_coordinator::tokio_postgres::Client,
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    heard: Vec<String>,
}

impl Listener {
    async fn new(channel: &str) -> Self {
        use command_coordinator::tokio_postgres::{AsyncMessage, NoTls, connect};
        let (client, mut connection) = connect(&support::database_url(), NoTls).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        actix::spawn(async move {
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let AsyncMessage::Notification(n) = message
                    && tx.send(n.payload().to_owned()).is_err()
                {
                    break;
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .unwrap();
        Self {
            _client: client,
            rx,
            heard: Vec::new(),
        }
    }

    async fn until(&mut self, payload: &str) {
        within(&format!("the notice {payload}"), async {
            while !self.heard.iter().any(|p| p == payload) {
                let p = self.rx.recv().await.expect("the listener runs");
                self.heard.push(p);
            }
        })
        .await;
    }
}

/// A host that places new hierarchies on the less loaded of two hosts: with
/// itself busy, they go to the other, which claims and runs them, and the
/// caller's `execute()` on the first still gets each outcome.
#[actix::test]
async fn a_busy_host_places_new_hierarchies_on_an_idle_one_and_its_caller_gets_the_outcome() {
    let db = fresh_db().await;
    let store =
        || PgStore::new(db.pool.clone(), db.config.schema().clone()).with_notifications(&db.config);
    let front = support::builder_over(store())
        .register::<Held>()
        .placement(command_coordinator::Placement::LeastLoaded)
        .host_name("front")
        .start()
        .await
        .unwrap();
    let worker = support::builder_over(store())
        .register::<Held>()
        .host_name("worker")
        .start()
        .await
        .unwrap();
    // The front end is busy (placement counts live commands).
    let t = tag();
    for _ in 0..30 {
        front.submit(Held { tag: t.clone() }).await.unwrap();
    }
    until("the front end's commands run", || count(&t, "poll") >= 30).await;

    // New hierarchies go to the worker, sooner or later (each is placed on
    // the lesser of two random hosts).
    let mut on_worker = Vec::new();
    let mut placed = 0;
    let began = Instant::now();
    while on_worker.is_empty() {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "nothing was placed on the worker"
        );
        let u = tag();
        record(&u, "release");
        let outcome = within("a placed hierarchy", front.execute(Held { tag: u.clone() }))
            .await
            .unwrap();
        assert!(outcome.succeeded(), "{outcome:?}");
        placed += 1;
        let row = db.store.get(outcome.id).await.unwrap().unwrap();
        if row.owner == Some(worker.host_id()) {
            on_worker.push(outcome.id);
        } else {
            assert_eq!(row.owner, Some(front.host_id()));
        }
    }
    println!("{placed} hierarchies submitted until one ran on the worker");
    // Claimed (epoch 1), run once there.
    let client = db.pool.get().await.unwrap();
    let offered: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {} WHERE owner_epoch = 0", db.table()),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(offered, 0, "hierarchies offered and never claimed");
    record(&t, "release");
    front.shutdown().await;
    worker.shutdown().await;
}
