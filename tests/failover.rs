//! PostgreSQL failover under load: a primary with a synchronous streaming
//! standby (`pg_basebackup -R`), two hosts connected to both through a
//! multi-host URL with `target_session_attrs=read-write`. Once commands are
//! ending, the primary is killed with SIGKILL and the standby promoted: the
//! hosts carry on against it, every command ends, and every end effect
//! (written through the end transaction into a table without a unique
//! constraint) is there exactly once, on the new primary.

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use command_coordinator::embedded::{EmbeddedOptions, EmbeddedPostgres};
use command_coordinator::tokio_postgres::{Client, NoTls, connect};
use command_coordinator::{Coordinator, DatabaseConfig, PgStore, SchemaName};
use support::commands::Effectful;

const COMMANDS: usize = 240;
/// Commands in flight at once per host.
const WINDOW: usize = 12;

async fn client(url: &str) -> Client {
    let (client, connection) = connect(url, NoTls).await.expect("connect");
    actix::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_promoted_standby_takes_over_and_nothing_is_lost_or_done_twice() {
    // This thread owns both servers (they die with the thread that started
    // them) and kills the primary when the scenario asks.
    // Durable: the tests' usual `synchronous_commit=off` acknowledges a
    // commit before the standby has it, and a failover then loses it.
    let mut primary = EmbeddedPostgres::start(EmbeddedOptions { durable: true }).expect("primary");
    let standby = primary.start_standby().expect("standby");
    let primary_url = primary.url();
    let standby_url = standby.url();
    let both = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let (kill, kill_requests) = mpsc::channel::<mpsc::Sender<()>>();
    let scenario = std::thread::spawn(move || {
        actix::System::new().block_on(scenario(primary_url, standby_url, both, kill))
    });
    for done in kill_requests {
        primary.kill_server().expect("kill the primary");
        let _ = done.send(());
    }
    scenario.join().expect("the scenario");
    drop(standby);
}

async fn scenario(
    primary: String,
    standby: String,
    both: String,
    kill: mpsc::Sender<mpsc::Sender<()>>,
) {
    // Synchronous replication: what a host saw committed is on the standby.
    let p = client(&primary).await;
    until("the standby streams", async || {
        p.query_one("SELECT count(*) FROM pg_stat_replication", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    p.batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        .await
        .unwrap();
    p.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    until("replication is synchronous", async || {
        p.query_opt(
            "SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'",
            &[],
        )
        .await
        .unwrap()
        .is_some()
    })
    .await;

    let schema = SchemaName::new(format!("t_{}", uuid::Uuid::new_v4().simple())).unwrap();
    let config = DatabaseConfig::from_url(&both)
        .unwrap()
        .with_schema(schema.clone())
        .with_pool_size(4)
        .unwrap();
    let pool = config.create_pool().unwrap();
    command_coordinator::migrate(&pool, &schema).await.unwrap();
    let effects = format!("{}.effects", schema.quoted());
    p.batch_execute(&format!(
        "CREATE TABLE {effects} (command_id uuid NOT NULL, attempt int NOT NULL)"
    ))
    .await
    .unwrap();
    let host = |name: &'static str| {
        support::builder_over(
            PgStore::new(config.create_pool().unwrap(), schema.clone()).with_notifications(&config),
        )
        .lease(Duration::from_secs(3))
        .heartbeat_interval(Duration::from_millis(200))
        .host_check_interval(Duration::from_millis(100))
        .host_name(name)
        .start()
    };
    let a = host("a").await.expect("host a");
    let b = host("b").await.expect("host b");

    // A stream of commands on both hosts, WINDOW at a time on each.
    let t = support::commands::tag();
    let mut runners = Vec::new();
    for (index, co) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (t, effects) = (t.clone(), effects.clone());
        runners.push(actix::spawn(run_stream(co, index, t, effects)));
    }

    // Once commands are ending: the primary dies, the standby is promoted.
    until("commands end on the primary", async || {
        p.query_one(&format!("SELECT count(*) FROM {effects}"), &[])
            .await
            .map(|r| r.get::<_, i64>(0) >= 40)
            .unwrap_or(false)
    })
    .await;
    let before: i64 = p
        .query_one(&format!("SELECT count(*) FROM {effects}"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        (before as usize) < COMMANDS * 3 / 4,
        "the failover must come mid-load: {before} of {COMMANDS} already ended"
    );
    let (done, killed) = mpsc::channel();
    kill.send(done).unwrap();
    tokio::task::spawn_blocking(move || killed.recv().unwrap())
        .await
        .unwrap();
    let failover = Instant::now();
    let s = client(&standby).await;
    s.query_one("SELECT pg_promote()", &[]).await.unwrap();
    println!(
        "primary killed, standby promoted after {:?}",
        failover.elapsed()
    );
    drop(kill);

    let mut ended = 0;
    for runner in runners {
        ended += runner.await.unwrap();
    }
    assert_eq!(ended, COMMANDS, "commands that ended successfully");
    println!(
        "every command ended {:?} after the failover",
        failover.elapsed()
    );

    // On the new primary: every command ended once, one effect each, no
    // host was declared dead by the failover.
    let t_rows = format!("{}.command_entities", schema.quoted());
    let rows: i64 = s
        .query_one(
            &format!(
                "SELECT count(*) FROM {t_rows} WHERE status = 'ENDED_SUCCESSFULLY' \
                 AND callback_notified"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, COMMANDS, "rows ended and notified");
    let bad: Vec<(uuid::Uuid, i64)> = s
        .query(
            &format!(
                "SELECT e.command_id, count(f.command_id) FROM {t_rows} e \
                 LEFT JOIN {effects} f USING (command_id) \
                 GROUP BY 1 HAVING count(f.command_id) <> 1"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        bad.is_empty(),
        "commands without exactly one effect: {bad:?}"
    );
    let dead: i64 = s
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.command_hosts WHERE state = 'dead'",
                schema.quoted()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "a host was declared dead because of the failover");
    a.shutdown().await;
    b.shutdown().await;
}

/// Executes this host's half of the commands, WINDOW at a time; returns how
/// many ended successfully.
async fn run_stream(co: Coordinator, index: usize, tag: String, effects: String) -> usize {
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let mut tasks = Vec::new();
    for _ in (index..COMMANDS).step_by(2) {
        let permit = window.clone().acquire_owned().await.unwrap();
        let command = Effectful {
            tag: tag.clone(),
            table: effects.clone(),
            fail_first_end: false,
            tx_in_execute: false,
        };
        let co = co.clone();
        tasks.push(actix::spawn(async move {
            let outcome = co.execute(command).await;
            drop(permit);
            outcome
        }));
        // A command every few milliseconds: the stream spans the failover.
        actix::clock::sleep(Duration::from_millis(15)).await;
    }
    let mut ended = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(outcome) if outcome.succeeded() => ended += 1,
            other => panic!("a command across the failover: {other:?}"),
        }
    }
    ended
}
