//! A host process for crash torture: `tests/torture.rs` runs it, kills it with
//! SIGKILL at random moments, starts it again, and finally checks the rows it
//! left in PostgreSQL.
//!
//! ```text
//! cargo run --example torture_host -- --database-url $URL --schema torture_1 \
//!     --hierarchies 200 --children 3 --seed 42
//! ```
//!
//! Workload: `--hierarchies` `TortureRoot` commands (type 201), each submitting
//! `--children` `TortureChild` commands (type 202) in its `execute`, with short
//! sleeps between the submits so that kills land inside `execute`. A child's
//! `execute` sleeps 0–30 ms (more kills inside `execute`), then records in its
//! own fields a simulated job: its start time, a duration of 10–300 ms and
//! whether it fails (about 10 %), both derived from (seed, seq, index). Its
//! `poll` compares the wall clock with that record, so a job keeps its schedule
//! across restarts. A root succeeds with the sum of its children's outputs.
//! Both types keep the default interrupted-execute policy: a command killed
//! inside `execute` fails with `EXECUTION_FAILED`.
//!
//! Every end method (success and failure, both types) writes one row into
//! `<schema>.torture_effects` through the end transaction
//! (`ctx.transaction::<PgTransaction>()`), which commits together with the
//! command's end: the table has no unique constraint, so an end action that ran
//! twice would show as two rows.
//!
//! The host is restartable at any point:
//!
//! 1. It migrates the schema, creates `torture_effects`, and once per schema
//!    (a marker row in `torture_meta`, in the same transaction) inserts 3,000
//!    pre-aged junk rows (type 999, ended 30 days ago) for the cleanup actor.
//! 2. It starts the coordinator, which rebuilds whatever a killed predecessor
//!    left unfinished. Cleanup runs every 300 ms with the default retention
//!    (7 days), so it removes the junk rows and nothing of the workload.
//! 3. It submits a `TortureRoot` for every seq in `0..N` that has no row yet
//!    (one query lists the seqs already present, so re-submission after a kill
//!    is idempotent), at most `--window` unfinished hierarchies at a time.
//! 4. It waits for every root with `wait_for` (roots that ended in an earlier
//!    run are answered from the store), printing progress lines, then waits
//!    (at most 30 s) until cleanup removed the junk rows, prints `ALL ENDED`
//!    and exits 0.

use std::cell::Cell;
use std::collections::HashMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use command_coordinator::deadpool_postgres::Pool;
use command_coordinator::{
    Command, CommandContext, CommandError, CommandId, Coordinator, DatabaseConfig, PgStore,
    PgTransaction, PollOutcome, SchemaName, migrate,
};
use serde::{Deserialize, Serialize};

/// Command type numbers (never reuse them).
const ROOT_TYPE: i32 = 201;
const CHILD_TYPE: i32 = 202;
/// Rows for the cleanup actor: ended 30 days ago, never part of the workload.
const JUNK_TYPE: i32 = 999;
const JUNK_ROWS: i64 = 3_000;
/// How long the host waits, once every root ended, for cleanup to remove the
/// junk rows.
const JUNK_WAIT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    name = "torture_host",
    about = "Crash-torture host for the command coordinator"
)]
struct Args {
    /// PostgreSQL URL.
    #[arg(long, value_name = "URL")]
    database_url: String,
    /// Schema holding command_entities and torture_effects.
    #[arg(long)]
    schema: String,
    /// Number of TortureRoot hierarchies.
    #[arg(long, default_value_t = 200)]
    hierarchies: u32,
    /// TortureChild commands per root.
    #[arg(long, default_value_t = 3)]
    children: u32,
    /// Seed of the children's simulated jobs (durations, failures).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// First poll interval in milliseconds (backs off up to 4×).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    poll_ms: u64,
    /// Most hierarchies unfinished at once.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
    /// The name of this host in the registry (several hosts may share the
    /// schema: `tests/hosts.rs`).
    #[arg(long)]
    host_name: Option<String>,
    /// This host submits the seqs `s` with `s % n == i` (`i/n`); several
    /// hosts on one schema split the workload this way.
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    shard: (u32, u32),
    /// Lease in milliseconds (default: the library's).
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Heartbeat interval in milliseconds (default: the library's).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// End methods keep their transaction open 0..=this many milliseconds
    /// after writing their effect, so that a stop or kill lands inside it.
    #[arg(long, default_value_t = 0)]
    end_hold_ms: u64,
    /// Once this host's shard ended, stay (adopting other hosts' work)
    /// until SIGTERM.
    #[arg(long)]
    linger: bool,
}

fn parse_shard(s: &str) -> Result<(u32, u32), String> {
    let (i, n) = s.split_once('/').ok_or("expected i/n")?;
    let i: u32 = i.parse().map_err(|e| format!("{e}"))?;
    let n: u32 = n.parse().map_err(|e| format!("{e}"))?;
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 <= i < n"));
    }
    Ok((i, n))
}

/// `"<schema>".torture_effects`, set once at start.
static EFFECTS_TABLE: OnceLock<String> = OnceLock::new();
/// `--end-hold-ms`.
static END_HOLD_MS: OnceLock<u64> = OnceLock::new();

fn effects_table() -> &'static str {
    EFFECTS_TABLE.get().expect("effects table set at start")
}

/// Writes the end action's effect row in the end transaction: it commits
/// together with the command's end, or not at all.
async fn write_effect(ctx: &CommandContext, kind: &str, seq: u32) -> Result<(), CommandError> {
    let tx = ctx.transaction::<PgTransaction>().await?;
    tx.execute(
        &format!(
            "INSERT INTO {} (command_id, kind, seq) VALUES ($1, $2, $3)",
            effects_table()
        ),
        &[ctx.id().as_uuid(), &kind, &(seq as i32)],
    )
    .await?;
    // Held open a moment: a stop or kill of this process then finds
    // end transactions in flight.
    let hold = END_HOLD_MS.get().copied().unwrap_or(0);
    if hold > 0 {
        jitter(hold).await;
    }
    Ok(())
}

/// A pause of 0..=`max_ms` milliseconds, so that kills land inside `execute`.
async fn jitter(max_ms: u64) {
    actix::clock::sleep(Duration::from_millis(fastrand::u64(0..=max_ms))).await;
}

#[derive(Debug, Serialize, Deserialize)]
struct TortureRoot {
    seq: u32,
    children: u32,
    seed: u64,
}

impl Command for TortureRoot {
    const COMMAND_TYPE: i32 = ROOT_TYPE;
    type Output = u64;

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        for index in 0..self.children {
            jitter(5).await;
            ctx.submit_child(TortureChild {
                seq: self.seq,
                index,
                seed: self.seed,
                job: None,
            })
            .await?;
        }
        Ok(())
    }

    async fn poll(&mut self, ctx: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
        // Called only once every child ended successfully.
        Ok(PollOutcome::Succeeded(
            ctx.child_outputs::<TortureChild>()?.iter().sum(),
        ))
    }

    async fn end_successfully(
        &mut self,
        _: &u64,
        ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        write_effect(ctx, "succeeded", self.seq).await
    }

    async fn end_with_failure(
        &mut self,
        _: &str,
        ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        write_effect(ctx, "failed", self.seq).await
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TortureChild {
    seq: u32,
    index: u32,
    seed: u64,
    /// Recorded by `execute`, persisted with `executed = true`.
    job: Option<Job>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    started_at: DateTime<Utc>,
    duration_ms: u64,
    fails: bool,
}

/// splitmix64: a deterministic job per (seed, seq, index).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl TortureChild {
    fn job_plan(&self) -> (u64, bool) {
        let h = mix(self.seed ^ mix(((self.seq as u64) << 32) | self.index as u64));
        let duration_ms = 10 + h % 291; // 10..=300
        let fails = (h >> 32).is_multiple_of(10); // about 10 %
        (duration_ms, fails)
    }
}

impl Command for TortureChild {
    const COMMAND_TYPE: i32 = CHILD_TYPE;
    /// The job's duration: the root sums them.
    type Output = u64;

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        jitter(30).await;
        let (duration_ms, fails) = self.job_plan();
        self.job = Some(Job {
            started_at: Utc::now(),
            duration_ms,
            fails,
        });
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
        let Some(job) = &self.job else {
            return Ok(PollOutcome::Failed("no job recorded".into()));
        };
        let elapsed = (Utc::now() - job.started_at).num_milliseconds();
        Ok(if elapsed < job.duration_ms as i64 {
            PollOutcome::Running
        } else if job.fails {
            PollOutcome::Failed(format!("job {}/{} failed", self.seq, self.index))
        } else {
            PollOutcome::Succeeded(job.duration_ms)
        })
    }

    async fn end_successfully(
        &mut self,
        _: &u64,
        ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        write_effect(ctx, "succeeded", self.seq).await
    }

    async fn end_with_failure(
        &mut self,
        _: &str,
        ctx: &CommandContext,
    ) -> Result<(), CommandError> {
        write_effect(ctx, "failed", self.seq).await
    }
}

#[actix::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("torture_host: cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let coordinator: Rc<std::cell::RefCell<Option<Coordinator>>> = Rc::default();
    let linger = args.linger;
    let result = tokio::select! {
        result = run(args, coordinator.clone()) => match result {
            Ok(()) if linger => {
                println!("SHARD ENDED: lingering until SIGTERM");
                term.recv().await;
                Ok(())
            }
            other => other,
        },
        _ = term.recv() => {
            println!("SIGTERM");
            Ok(())
        }
    };
    // Graceful: the other hosts adopt this one's work at once.
    let running = coordinator.borrow_mut().take();
    if let Some(coordinator) = running {
        coordinator.shutdown().await;
        println!("SHUT DOWN");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("torture_host: {}", command_coordinator::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

async fn run(
    args: Args,
    running: Rc<std::cell::RefCell<Option<Coordinator>>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let schema = SchemaName::new(args.schema.clone())?;
    let config = DatabaseConfig::from_url(&args.database_url)?.with_schema(schema.clone());
    let pool = config.create_pool()?;
    migrate(&pool, &schema).await?;
    EFFECTS_TABLE
        .set(format!("{}.torture_effects", schema.quoted()))
        .expect("set once");
    let junk = prepare_tables(&pool, &schema).await?;
    if junk > 0 {
        println!("inserted {junk} pre-aged junk rows for cleanup");
    }

    END_HOLD_MS.set(args.end_hold_ms).expect("set once");
    let poll = Duration::from_millis(args.poll_ms);
    let store = PgStore::new(pool.clone(), schema.clone()).with_notifications(&config);
    let mut builder = Coordinator::builder(store)
        .register::<TortureRoot>()
        .register::<TortureChild>()
        .poll_interval(poll)
        .max_poll_interval(poll * 4)
        .end_retry_delay(poll)
        .cleanup_interval(Duration::from_millis(300));
    if let Some(name) = &args.host_name {
        builder = builder.host_name(name.clone());
    }
    if let Some(ms) = args.heartbeat_ms {
        builder = builder.heartbeat_interval(Duration::from_millis(ms));
    }
    if let Some(ms) = args.lease_ms {
        builder = builder
            .lease(Duration::from_millis(ms))
            .host_check_interval(Duration::from_millis((ms / 10).max(50)));
    }
    let coordinator = builder.start().await?;
    *running.borrow_mut() = Some(coordinator.clone());
    println!(
        "coordinator started after {} ms as host {}: {} commands rebuilt",
        started.elapsed().as_millis(),
        coordinator.host_id(),
        coordinator.live_count().await?
    );

    let table = format!("{}.command_entities", schema.quoted());
    let existing: HashMap<u32, CommandId> = pool
        .get()
        .await?
        .query(
            &format!(
                "SELECT (command_parameters::jsonb->>'seq')::int, command_id FROM {table} \
                 WHERE command_type = $1"
            ),
            &[&ROOT_TYPE],
        )
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0) as u32,
                CommandId::from(r.get::<_, uuid::Uuid>(1)),
            )
        })
        .collect();
    println!(
        "{} of {} roots already submitted",
        existing.len(),
        args.hierarchies
    );

    // At most `window` hierarchies in flight; each task submits (unless the
    // root exists) and waits for its root.
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(args.window as usize));
    let ended = Rc::new(Cell::new(0u32));
    let succeeded = Rc::new(Cell::new(0u32));
    let errors: Rc<std::cell::RefCell<Vec<String>>> = Rc::default();
    let (shard, shards) = args.shard;
    let mine = (0..args.hierarchies)
        .filter(|seq| seq % shards == shard)
        .count() as u32;
    let mut tasks = Vec::with_capacity(mine as usize);
    let progress = actix::spawn(progress(ended.clone(), mine));
    for seq in (0..args.hierarchies).filter(|seq| seq % shards == shard) {
        if !errors.borrow().is_empty() {
            break;
        }
        let permit = window.clone().acquire_owned().await?;
        let coordinator = coordinator.clone();
        let known = existing.get(&seq).copied();
        let root = TortureRoot {
            seq,
            children: args.children,
            seed: args.seed,
        };
        let (ended, succeeded, errors) = (ended.clone(), succeeded.clone(), errors.clone());
        tasks.push(actix::spawn(async move {
            let id = match known {
                Some(id) => Ok(id),
                None => coordinator.submit(root).await,
            };
            let outcome = match id {
                Ok(id) => coordinator.wait_for(id).await,
                Err(e) => Err(e),
            };
            drop(permit);
            match outcome {
                Ok(outcome) => {
                    ended.set(ended.get() + 1);
                    if outcome.succeeded() {
                        succeeded.set(succeeded.get() + 1);
                    }
                }
                Err(e) => errors.borrow_mut().push(format!("root {seq}: {e}")),
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    progress.abort();
    if let Some(first) = errors.borrow().first() {
        return Err(format!(
            "{} roots did not end; first: {first}",
            errors.borrow().len()
        )
        .into());
    }
    println!("ended {}/{mine} hierarchies", ended.get());

    // Cleanup's own timer removes the junk rows; wait for it, boundedly.
    let deadline = Instant::now() + JUNK_WAIT;
    loop {
        let left: i64 = pool
            .get()
            .await?
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE command_type = $1"),
                &[&JUNK_TYPE],
            )
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("cleanup left {left} junk rows after {JUNK_WAIT:?}").into());
        }
        println!("waiting for cleanup: {left} junk rows left");
        actix::clock::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "ALL ENDED: {} hierarchies, {} succeeded, {} failed, run took {} ms",
        ended.get(),
        succeeded.get(),
        ended.get() - succeeded.get(),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Creates the effects and marker tables; inserts the junk rows once per
/// schema. Returns how many junk rows this call inserted.
async fn prepare_tables(
    pool: &Pool,
    schema: &SchemaName,
) -> Result<u64, Box<dyn std::error::Error>> {
    let s = schema.quoted();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Several hosts start at once on one schema (tests/hosts.rs): two
    // concurrent CREATE TABLE IF NOT EXISTS of one table collide in the
    // catalog, so the first takes the lock and the others find the tables.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&0x4343_0099_i32, &schema.as_str()],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {s}.torture_effects \
             (command_id uuid NOT NULL, kind text NOT NULL, seq int NOT NULL); \
         CREATE TABLE IF NOT EXISTS {s}.torture_meta (marker text PRIMARY KEY);"
    ))
    .await?;
    let fresh = tx
        .execute(
            &format!(
                "INSERT INTO {s}.torture_meta (marker) VALUES ('junk inserted') \
                 ON CONFLICT DO NOTHING"
            ),
            &[],
        )
        .await?;
    let mut inserted = 0;
    if fresh == 1 {
        inserted = tx
            .execute(
                &format!(
                    "INSERT INTO {s}.command_entities (command_id, command_type, root_command_id, \
                         parent_command_id, command_parameters, command_params_class, created_at, \
                         updated_at, ended_at, status, callback_enabled, callback_notified, executed) \
                     SELECT id, $1, id, NULL, '{{}}', 'torture::Junk', \
                         now() - interval '30 days', now() - interval '30 days', \
                         now() - interval '30 days', 'ENDED_SUCCESSFULLY', true, true, true \
                     FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $2::bigint)) g"
                ),
                &[&JUNK_TYPE, &JUNK_ROWS],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// A progress line whenever the count changed, at most every 500 ms.
async fn progress(ended: Rc<Cell<u32>>, total: u32) {
    let mut last = u32::MAX;
    loop {
        actix::clock::sleep(Duration::from_millis(500)).await;
        let now = ended.get();
        if now != last {
            println!("ended {now}/{total} hierarchies");
            last = now;
        }
    }
}
