//! PostgreSQL outages under a running coordinator.
//!
//! Each test starts a private PostgreSQL (not the shared test cluster: these
//! tests stop it) on the test thread, which owns it and stops/starts it on
//! request, while the coordinator runs in an actix `System` on a thread of its
//! own. The tests run one at a time (they measure the process's CPU time).

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use command_coordinator::embedded::{EmbeddedOptions, EmbeddedPostgres};
use command_coordinator::{
    Command, CommandContext, CommandError, CommandStatus, Coordinator, CoordinatorError,
    DatabaseConfig, Outcome, PgStore, PgTransaction, PollOutcome, SchemaName, StartError,
};
use serde::{Deserialize, Serialize};
use support::processes::process_cpu_time;
use tokio::sync::oneshot;

/// The tests measure this process's CPU time and take 2 cores' worth of
/// PostgreSQL each: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Panics anywhere in the process (command code included: the runtime
/// catches those, but the hook still sees them).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// End methods holding their end transaction open right now (raised from
/// inside the end method): the tests that cut the database while end
/// methods are in flight wait for this instead of sleeping and hoping.
static IN_END_TRANSACTION: AtomicUsize = AtomicUsize::new(0);

/// Waits until at least `n` end methods hold their transaction open.
async fn until_inside_end_methods(n: usize) {
    let began = Instant::now();
    while IN_END_TRANSACTION.load(Ordering::SeqCst) < n {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "{n} end methods never were inside their transaction at once"
        );
        actix::clock::sleep(Duration::from_millis(2)).await;
    }
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

enum Ctl {
    Stop,
    Start,
    Restart,
}

/// Asks the test thread, which owns the server, to stop or start it.
#[derive(Clone)]
struct Server {
    url: String,
    tx: std::sync::mpsc::Sender<(Ctl, oneshot::Sender<Result<(), String>>)>,
}

impl Server {
    async fn control(&self, ctl: Ctl) {
        let (done, answer) = oneshot::channel();
        self.tx.send((ctl, done)).expect("the test thread listens");
        answer
            .await
            .expect("the test thread answers")
            .expect("server control");
    }

    async fn stop(&self) {
        self.control(Ctl::Stop).await
    }

    async fn start(&self) {
        self.control(Ctl::Start).await
    }

    /// Stop, then start again at once.
    async fn restart(&self) {
        self.control(Ctl::Restart).await
    }

    /// A configuration for a fresh schema on this server.
    fn config(&self) -> DatabaseConfig {
        let schema = SchemaName::new(format!("t_{}", uuid::Uuid::new_v4().simple())).unwrap();
        DatabaseConfig::from_url(&self.url)
            .unwrap()
            .with_schema(schema)
            .with_pool_size(4)
            .unwrap()
    }
}

/// Runs `scenario` in an actix `System` on its own thread, while this thread
/// owns a private PostgreSQL (the server dies with the thread that started
/// it, so it must be this one) and serves the scenario's stop/start requests.
fn with_private_postgres<F, Fut>(scenario: F)
where
    F: FnOnce(Server) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    count_panics();
    let mut pg = EmbeddedPostgres::start(EmbeddedOptions::default()).expect("private PostgreSQL");
    let (tx, requests) = std::sync::mpsc::channel();
    let server = Server { url: pg.url(), tx };
    let system = std::thread::spawn(move || actix::System::new().block_on(scenario(server)));
    // Ends when the scenario is over (every sender dropped).
    for (ctl, done) in requests {
        let result = match ctl {
            Ctl::Stop => pg.stop_server(),
            Ctl::Start => pg.start_server(),
            Ctl::Restart => pg.stop_server().and_then(|()| pg.start_server()),
        };
        let _ = done.send(result.map_err(|e| e.to_string()));
    }
    if let Err(panic) = system.join() {
        std::panic::resume_unwind(panic);
    }
    drop(pg);
}

/// Fails the test instead of hanging.
async fn within<F: Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    match actix::clock::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// A leaf whose simulated job ends `duration_ms` after `execute`; its end
/// methods write one row into `table` through the end transaction, then (with
/// `end_hold_ms`) hold it open that long and run a second statement in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Timed {
    label: String,
    duration_ms: u64,
    fails: bool,
    end_hold_ms: u64,
    table: String,
    started_at: Option<DateTime<Utc>>,
}

impl Timed {
    fn new(label: String, duration_ms: u64, fails: bool, table: &str) -> Self {
        Self {
            label,
            duration_ms,
            fails,
            end_hold_ms: 0,
            table: table.to_owned(),
            started_at: None,
        }
    }

    async fn effect(&self, kind: &str, ctx: &CommandContext) -> Result<(), CommandError> {
        if self.table.is_empty() {
            return Ok(());
        }
        let tx = ctx.transaction::<PgTransaction>().await?;
        tx.execute(
            &format!(
                "INSERT INTO {} (command_id, kind) VALUES ($1, $2)",
                self.table
            ),
            &[ctx.id().as_uuid(), &kind],
        )
        .await?;
        if self.end_hold_ms > 0 {
            // Work that takes a while, then a second statement.
            IN_END_TRANSACTION.fetch_add(1, Ordering::SeqCst);
            actix::clock::sleep(Duration::from_millis(self.end_hold_ms)).await;
            IN_END_TRANSACTION.fetch_sub(1, Ordering::SeqCst);
            tx.execute(
                &format!(
                    "UPDATE {} SET kind = kind WHERE command_id = $1",
                    self.table
                ),
                &[ctx.id().as_uuid()],
            )
            .await?;
        }
        Ok(())
    }
}

impl Command for Timed {
    const COMMAND_TYPE: i32 = 301;
    type Output = u64;

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        self.started_at = Some(Utc::now());
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
        let started = self
            .started_at
            .ok_or_else(|| CommandError::new("no start recorded"))?;
        let elapsed = (Utc::now() - started).num_milliseconds();
        Ok(if elapsed < self.duration_ms as i64 {
            PollOutcome::Running
        } else if self.fails {
            PollOutcome::Failed(format!("{} failed as planned", self.label))
        } else {
            PollOutcome::Succeeded(self.duration_ms)
        })
    }

    async fn end_successfully(
        &mut self,
        _: &u64,
        ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        self.effect("succeeded", ctx).await
    }

    async fn end_with_failure(
        &mut self,
        _: &str,
        ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        self.effect("failed", ctx).await
    }
}

/// A parent of `Timed` children; succeeds with the sum of their durations.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Group {
    label: String,
    children: Vec<Timed>,
}

impl Command for Group {
    const COMMAND_TYPE: i32 = 302;
    type Output = u64;

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        for child in &self.children {
            ctx.submit_child(child.clone()).await?;
        }
        Ok(())
    }

    async fn poll(&mut self, ctx: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
        Ok(PollOutcome::Succeeded(
            ctx.child_outputs::<Timed>()?.iter().sum(),
        ))
    }
}

/// Migrates the schema, creates its effects table, starts a coordinator.
async fn start(
    config: &DatabaseConfig,
    end_retry_delay: Duration,
    max_poll_interval: Duration,
) -> (
    Coordinator,
    command_coordinator::deadpool_postgres::Pool,
    String,
) {
    let pool = config.create_pool().unwrap();
    command_coordinator::migrate(&pool, config.schema())
        .await
        .unwrap();
    let table = format!("{}.effects", config.schema().quoted());
    pool.get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE {table} (command_id uuid NOT NULL, kind text NOT NULL)"
        ))
        .await
        .unwrap();
    let co = Coordinator::builder(PgStore::new(pool.clone(), config.schema().clone()))
        .register::<Timed>()
        .register::<Group>()
        .poll_interval(Duration::from_millis(20))
        .max_poll_interval(max_poll_interval)
        .end_retry_delay(end_retry_delay)
        .start()
        .await
        .expect("coordinator");
    (co, pool, table)
}

/// Every command of the schema, with its number of effect rows.
async fn effects_per_command(
    pool: &command_coordinator::deadpool_postgres::Pool,
    table: &str,
    effects: &str,
) -> Vec<(uuid::Uuid, String, bool, i64)> {
    pool.get()
        .await
        .unwrap()
        .query(
            &format!(
                "SELECT c.command_id, c.status, c.callback_notified, count(e.command_id) \
                 FROM {table} c LEFT JOIN {effects} e USING (command_id) \
                 WHERE c.command_type = 301 GROUP BY 1, 2, 3"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn expected_status(fails: bool) -> CommandStatus {
    if fails {
        CommandStatus::EndedWithFailure
    } else {
        CommandStatus::EndedSuccessfully
    }
}

/// A command's `execute` in flight: its status and failure reason.
type Running = tokio::task::JoinHandle<Result<(CommandStatus, Option<String>), CoordinatorError>>;

/// Submits jobs ending before, during and after an outage that starts at
/// about 500 ms and lasts 3 s (a fifth of them failing), and groups of
/// three; returns each one's expected failure and its running `execute`.
fn workload(co: &Coordinator, effects: &str) -> Vec<(bool, Running)> {
    let mut running = Vec::new();
    for i in 0..40u64 {
        let job = Timed::new(format!("job {i}"), 100 + i * 130, i % 5 == 3, effects);
        let fails = job.fails;
        let co = co.clone();
        running.push((
            fails,
            actix::spawn(
                async move { co.execute(job).await.map(|o| (o.status, o.failure_reason)) },
            ),
        ));
    }
    for g in 0..4u64 {
        let children: Vec<Timed> = (0..3u64)
            .map(|c| {
                Timed::new(
                    format!("group {g} child {c}"),
                    300 + g * 900 + c * 200,
                    g == 2 && c == 1,
                    effects,
                )
            })
            .collect();
        let fails = children.iter().any(|c| c.fails);
        let group = Group {
            label: format!("group {g}"),
            children,
        };
        let co = co.clone();
        running.push((
            fails,
            actix::spawn(async move {
                co.execute(group)
                    .await
                    .map(|o| (o.status, o.failure_reason))
            }),
        ));
    }
    running
}

/// Waits for every command of `running` and checks its outcome.
async fn expect_outcomes(running: Vec<(bool, Running)>) {
    for (i, (fails, task)) in running.into_iter().enumerate() {
        let (status, reason) = within(
            "a command running across the outage",
            Duration::from_secs(30),
            task,
        )
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("command {i}: {e}"));
        assert_eq!(
            status,
            expected_status(fails),
            "command {i}: failure reason {reason:?}"
        );
    }
}

/// Every command ended, was delivered, and has exactly one end effect.
async fn expect_one_effect_each(
    pool: &command_coordinator::deadpool_postgres::Pool,
    table: &str,
    effects: &str,
    commands: usize,
) {
    let rows = effects_per_command(pool, table, effects).await;
    assert_eq!(rows.len(), commands, "command rows");
    for (id, status, notified, effects) in rows {
        assert!(status.starts_with("ENDED_") && notified, "{id}: {status}");
        assert_eq!(effects, 1, "{id} ({status}) has {effects} end effects");
    }
}

/// (a) The server is stopped for 3 s in the middle of a workload: every
/// command finishes afterwards with its planned outcome and one end effect,
/// nothing panics, and nothing spins while the database is away.
#[test]
fn a_three_second_outage_mid_workload_loses_nothing_and_does_not_spin() {
    with_private_postgres(|server| async move {
        let panics_before = PANICS.load(Ordering::SeqCst);
        let config = server.config();
        let (co, pool, effects) = start(
            &config,
            Duration::from_millis(50),
            Duration::from_millis(200),
        )
        .await;
        let table = format!("{}.command_entities", config.schema().quoted());
        let running = workload(&co, &effects);
        actix::clock::sleep(Duration::from_millis(500)).await;

        server.stop().await;
        let outage = Instant::now();
        let cpu_before = process_cpu_time();
        actix::clock::sleep(Duration::from_secs(3)).await;
        let cpu = process_cpu_time() - cpu_before;
        let window = outage.elapsed();
        server.start().await;

        println!("outage of {window:?}: {cpu:?} of CPU used by the process");
        expect_outcomes(running).await;
        expect_one_effect_each(&pool, &table, &effects, 52).await;
        assert!(
            cpu < window / 2,
            "the process used {cpu:?} of CPU during the {window:?} outage: a busy loop?"
        );
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            panics_before,
            "something panicked (see the output above)"
        );
        co.shutdown().await;
    });
}

/// Rows of the schema whose parameters carry `label`.
async fn rows_labelled(config: &DatabaseConfig, label: &str) -> i64 {
    let pool = config.create_pool().unwrap();
    pool.get()
        .await
        .unwrap()
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.command_entities \
                 WHERE command_parameters::jsonb->>'label' = $1",
                config.schema().quoted()
            ),
            &[&label],
        )
        .await
        .unwrap()
        .get(0)
}

/// (a, submit) A restart of PostgreSQL fails nothing: a `submit` issued
/// while the server is down waits for it (up to `submit_wait`) and then
/// succeeds, and so do the children that running parents submit meanwhile;
/// every hierarchy ends as it would have without the outage. A submit whose
/// wait runs out fails with a clear, transient error and leaves no row.
#[test]
fn a_submit_during_a_short_outage_waits_for_the_database_and_one_that_outlasts_its_wait_fails_cleanly()
 {
    with_private_postgres(|server| async move {
        let config = server.config();
        let (co, _pool, effects) = start(
            &config,
            Duration::from_millis(50),
            Duration::from_millis(200),
        )
        .await;

        // Running hierarchies, whose parents submit children during the
        // outage too.
        let running = workload(&co, &effects);
        server.stop().await;
        let co2 = co.clone();
        let during = Timed::new("submitted during the outage".into(), 10, false, &effects);
        let submit = actix::spawn(async move {
            let began = Instant::now();
            let result = co2.execute(during).await;
            (began.elapsed(), result)
        });
        // The outage lasts 2 s whatever the submit does.
        actix::clock::sleep(Duration::from_secs(2)).await;
        assert!(
            !submit.is_finished(),
            "a submit during a short outage must wait for the database, not fail: {:?}",
            submit.await
        );
        server.start().await;
        let (took, result) = within("the waiting submit", Duration::from_secs(60), submit)
            .await
            .unwrap();
        let outcome = result.expect("the submit rode out the restart");
        assert!(outcome.succeeded(), "{outcome:?}");
        assert!(took >= Duration::from_secs(2), "{took:?}");
        expect_outcomes(running).await;
        co.shutdown().await;

        // A wait shorter than the outage: the submit fails, and no row is left.
        let short = Coordinator::builder(PgStore::new(
            config.create_pool().unwrap(),
            config.schema().clone(),
        ))
        .register::<Timed>()
        .register::<Group>()
        .submit_wait(Duration::from_secs(1))
        .start()
        .await
        .expect("second coordinator");
        server.stop().await;
        let began = Instant::now();
        let result = short
            .submit(Timed::new("given up".into(), 10, false, &effects))
            .await;
        let took = began.elapsed();
        server.start().await;
        match &result {
            Err(CoordinatorError::Store(e)) if e.is_transient() => {
                assert!(e.to_string().contains("stayed unreachable"), "{e}")
            }
            other => panic!("expected a transient store error, got {other:?}"),
        }
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(10),
            "gave up after {took:?}; the wait was 1 s"
        );
        // Removal of a possibly committed attempt runs once the database is back.
        short.shutdown().await;
        assert_eq!(rows_labelled(&config, "given up").await, 0);
    });
}

/// (b) The server restarts while end methods hold their transactions open:
/// every command still ends once, with exactly one effect row.
#[test]
fn a_restart_during_end_transactions_keeps_every_end_effect_exactly_once() {
    with_private_postgres(|server| async move {
        let config = server.config();
        // End retries get more time (0.5 s, then 1 s each) than a restart
        // takes: this test is about exactly-once, not the retry budget.
        let (co, pool, effects) =
            start(&config, Duration::from_millis(500), Duration::from_secs(1)).await;
        let table = format!("{}.command_entities", config.schema().quoted());
        let mut running = Vec::new();
        for i in 0..40u64 {
            let mut job = Timed::new(format!("job {i}"), 50 + i * 25, i % 4 == 1, &effects);
            job.end_hold_ms = 200 + (i % 5) * 100;
            let fails = job.fails;
            let co = co.clone();
            running.push((
                fails,
                actix::spawn(
                    async move { co.execute(job).await.map(|o| (o.status, o.failure_reason)) },
                ),
            ));
        }
        // Jobs end between 50 ms and 1 s and hold their end transaction for
        // 200–600 ms: restart once end methods are inside their end
        // transaction (the share of the pool of 4 connections that the
        // writer leaves bounds how many at once).
        until_inside_end_methods(2).await;
        server.restart().await;
        expect_outcomes(running).await;
        expect_one_effect_each(&pool, &table, &effects, 40).await;
        co.shutdown().await;
    });
}

/// (a, end methods) The database goes away while end methods are inside
/// their end transaction, for longer than the end-retry budget (5 attempts,
/// 50 ms doubling, capped at 200 ms: under 1 s): the outage is the store's,
/// not the end method's, so it must not use up the attempts and turn the
/// commands' planned outcomes into "end method failed 5 times".
#[test]
fn an_outage_during_end_methods_does_not_use_up_their_attempts() {
    with_private_postgres(|server| async move {
        let config = server.config();
        let (co, pool, effects) = start(
            &config,
            Duration::from_millis(50),
            Duration::from_millis(200),
        )
        .await;
        let table = format!("{}.command_entities", config.schema().quoted());
        let mut running = Vec::new();
        for i in 0..10u64 {
            // All end by 300 ms and hold their end transaction for 1 s.
            let mut job = Timed::new(format!("job {i}"), 50 + i * 25, i % 4 == 1, &effects);
            job.end_hold_ms = 1_000;
            let fails = job.fails;
            let co = co.clone();
            running.push((
                fails,
                actix::spawn(
                    async move { co.execute(job).await.map(|o| (o.status, o.failure_reason)) },
                ),
            ));
        }
        // Cut the database once end methods are inside their end
        // transaction (the share of the pool of 4 connections that the
        // writer leaves bounds how many at once).
        until_inside_end_methods(2).await;
        server.stop().await;
        actix::clock::sleep(Duration::from_secs(2)).await;
        server.start().await;
        expect_outcomes(running).await;
        expect_one_effect_each(&pool, &table, &effects, 10).await;
        co.shutdown().await;
    });
}

/// (c) A coordinator started while the database is down fails with a clear,
/// transient error instead of hanging; once the database is back it starts.
#[test]
fn starting_while_the_database_is_down_fails_fast_and_clearly() {
    with_private_postgres(|server| async move {
        let config = server.config();
        server.stop().await;
        let began = Instant::now();
        let pool = config.create_pool().unwrap();
        let result = within(
            "start() with the database down",
            Duration::from_secs(30),
            Coordinator::builder(PgStore::new(pool.clone(), config.schema().clone()))
                .register::<Timed>()
                .start(),
        )
        .await;
        let took = began.elapsed();
        match result {
            Err(StartError::Store(e)) if e.is_transient() => {
                assert!(
                    e.to_string().contains("unavailable"),
                    "the error should say the database is unavailable: {e}"
                );
            }
            Err(other) => panic!("expected a transient store error, got: {other}"),
            Ok(_) => panic!("start() succeeded with the database down"),
        }
        println!("start() with the database down failed after {took:?}");
        assert!(
            took < Duration::from_secs(15),
            "start() took {took:?} to fail"
        );

        server.start().await;
        let co = within(
            "start() with the database back",
            Duration::from_secs(30),
            Coordinator::builder(PgStore::new(pool, config.schema().clone()))
                .register::<Timed>()
                .start(),
        )
        .await
        .expect("start() once the database is back");
        let outcome: Outcome<u64> = within(
            "a command after the database came back",
            Duration::from_secs(30),
            co.execute(Timed::new("after".into(), 1, false, "")),
        )
        .await
        .unwrap();
        assert!(outcome.succeeded(), "{outcome:?}");
    });
}

/// (f) Two hosts on one schema; the server stays down for three leases:
/// both stop acting when their lease runs out, neither declares the other
/// dead when the database is back (each needs a full lease of its own
/// heartbeats before it judges anyone, and by then the other has renewed
/// its own), nothing is adopted, and every command finishes once, on the
/// host that ran it.
#[test]
fn an_outage_longer_than_the_lease_stops_both_hosts_and_neither_adopts_the_other() {
    with_private_postgres(|server| async move {
        let lease = Duration::from_secs(2);
        let config = server.config();
        let (first, pool, effects) = start(
            &config,
            Duration::from_millis(50),
            Duration::from_millis(200),
        )
        .await;
        // `start` gave the first host the default lease; both get a short
        // one here.
        first.shutdown().await;
        let host = |name: &'static str| {
            Coordinator::builder(PgStore::new(pool.clone(), config.schema().clone()))
                .register::<Timed>()
                .register::<Group>()
                .poll_interval(Duration::from_millis(20))
                .max_poll_interval(Duration::from_millis(200))
                .end_retry_delay(Duration::from_millis(50))
                .lease(lease)
                .heartbeat_interval(Duration::from_millis(200))
                .host_check_interval(Duration::from_millis(100))
                .host_name(name)
                .start()
        };
        let a = host("a").await.expect("host a");
        let b = host("b").await.expect("host b");
        let table = format!("{}.command_entities", config.schema().quoted());
        let hosts = format!("{}.command_hosts", config.schema().quoted());
        let mut running = workload(&a, &effects);
        running.extend(workload(&b, &effects));
        for co in [&a, &b] {
            within("work on both hosts", Duration::from_secs(30), async {
                while co.live_count().await.unwrap() == 0 {
                    actix::clock::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
        }

        server.stop().await;
        let down = Instant::now();
        within("both hosts stop acting", lease * 3, async {
            while a.is_acting() || b.is_acting() {
                actix::clock::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let stopped_after = down.elapsed();
        // Down for three leases in all.
        actix::clock::sleep((lease * 3).saturating_sub(down.elapsed())).await;
        server.start().await;
        within("both hosts act again", Duration::from_secs(30), async {
            while !(a.is_acting() && b.is_acting()) {
                actix::clock::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        println!(
            "outage of {:?}: both hosts stopped acting after {stopped_after:?}",
            lease * 3
        );
        expect_outcomes(running).await;
        expect_one_effect_each(&pool, &table, &effects, 104).await;
        let client = pool.get().await.unwrap();
        let dead: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {hosts} WHERE state = 'dead'"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(dead, 0, "a host was declared dead because of the outage");
        let moved: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE owner_epoch > 1"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(moved, 0, "rows were adopted because of the outage");
        a.shutdown().await;
        b.shutdown().await;
    });
}
