//! The load benchmark: how fast the coordinator runs commands, compared with
//! what PostgreSQL itself allows (`bench/ceiling.sh`). Results and targets are
//! in `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release --example load -- flat      [--commands 20000]
//! cargo run --release --example load -- tree      [--parents 1000 --children 10]
//! cargo run --release --example load -- rehydrate [--commands 100000]
//! cargo run --release --example load -- idle      [--commands 100000 --seconds 20]
//! cargo run --release --example load -- cleanup   [--expired 1000000 --commands 20000]
//! cargo run --release --example load -- flat --hosts 3   # 3 hosts (threads) on one schema
//! cargo run --release --example load -- adopt     [--hierarchies 10000 --lease-s 10]
//! ```
//!
//! Options valid with every mode: `--database-url URL` (else a private,
//! *durable* embedded PostgreSQL: fsync and synchronous commit stay on, as on a
//! real server), `--json-only`, `--timeout-s` (each mode is aborted after it),
//! `--with-ceiling` (runs `bench/ceiling.sh` against the same server before
//! the mode and reports the ratio to its batched figure) or
//! `--ceiling-batched X` (a ceiling measured elsewhere).
//!
//! Every mode works in a fresh schema `load_<mode>_<random>`, so runs never see
//! each other's rows. A progress bar is drawn when stdout is a terminal; the
//! last line on stdout is always one JSON object with every figure of the
//! mode (or `{"mode":..,"error":..}` when it failed), for scripts.
//!
//! Command state the runtime does not persist (timestamps for latencies, poll
//! counters) lives in process-wide statics: command values are serde data and
//! rebuilt by the runtime, so they cannot carry an `Instant` or a counter.

use std::cell::Cell;
use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use clap::{Args, Parser, Subcommand};
use command_coordinator::actors::config::{DEFAULT_CLEANUP_BATCH, DEFAULT_CLEANUP_PAUSE};
use command_coordinator::deadpool_postgres::Pool;
use command_coordinator::embedded::{EmbeddedOptions, EmbeddedPostgres};
use command_coordinator::{
    CleanupConfig, Command, CommandContext, CommandError, CommandId, Coordinator,
    CoordinatorBuilder, DatabaseConfig, PgStore, PollOutcome, RuntimeConfig, SchemaName, migrate,
};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

type BoxError = Box<dyn Error>;

/// Linux reports process CPU time in /proc in USER_HZ ticks, which is 100 on
/// every architecture Linux supports today (it is part of the ABI).
const CLOCK_TICKS_PER_S: f64 = 100.0;
/// Commands run before a timed flat or tree run, so that pool connections
/// are open and statements prepared before the clock starts.
const WARM_UP_COMMANDS: usize = 500;
/// Retention of the cleanup mode's coordinator; its expired rows ended 30
/// days ago.
const CLEANUP_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often waiting loops look at their counters: small next to every
/// figure measured, and cheap (one atomic load).
const CHECK_EVERY: Duration = Duration::from_millis(2);

/// Load benchmark of the command coordinator (see docs/benchmarks.md).
#[derive(Parser, Debug)]
#[command(name = "load")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct Common {
    /// PostgreSQL URL (default: a private durable embedded cluster, deleted at exit).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Print only the final JSON line.
    #[arg(long, global = true)]
    json_only: bool,
    /// Abort the mode after this many seconds.
    #[arg(long, global = true, default_value_t = 600)]
    timeout_s: u64,
    /// Connections in the coordinator's pool.
    #[arg(long, global = true, default_value_t = 8)]
    pool_size: usize,
    /// Run bench/ceiling.sh against the same server before the mode and
    /// report the ratio to its batched figure (for `cleanup`:
    /// bench/cleanup_ceiling.sh, its figures prefixed `pg_alone_`).
    #[arg(long, global = true)]
    with_ceiling: bool,
    /// The batched pgbench ceiling in lifecycles/s, measured elsewhere.
    #[arg(long, global = true, value_name = "X", conflicts_with = "with_ceiling")]
    ceiling_batched: Option<f64>,
    /// Keep the benchmark's schema on an external database (it is dropped by default).
    #[arg(long, global = true)]
    keep_schema: bool,
    /// Writer batches committing at once (`WriterConfig::max_in_flight`).
    #[arg(long, global = true, default_value_t = command_coordinator::actors::writer::DEFAULT_MAX_IN_FLIGHT)]
    writer_lanes: usize,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Independent no-op commands executed concurrently: lifecycles/s.
    Flat {
        #[arg(long, default_value_t = 20_000)]
        commands: usize,
        /// Hosts sharing the schema, each a coordinator with its own pool
        /// on its own thread (an arbiter of its own, as a process would
        /// have), each running its share: aggregate lifecycles/s.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
        hosts: u32,
        /// Every command with an idempotency key (`execute_with`): one
        /// insert and commit per submit instead of the writer's batches.
        #[arg(long, conflicts_with = "hosts")]
        keyed: bool,
    },
    /// A host's heartbeat stops with N hierarchies unfinished: time until
    /// another host declared it dead and every hierarchy runs again.
    Adopt {
        #[arg(long, default_value_t = 10_000)]
        hierarchies: usize,
        /// The lease, in seconds (the library's default is 10).
        #[arg(long, default_value_t = 10)]
        lease_s: u64,
    },
    /// Parents with children: latency from the last child's end to the parent's decision.
    Tree {
        #[arg(long, default_value_t = 1_000)]
        parents: usize,
        #[arg(long, default_value_t = 10)]
        children: u32,
    },
    /// Unfinished rows rebuilt by a starting coordinator: time until every one polled.
    Rehydrate {
        #[arg(long, default_value_t = 100_000)]
        commands: usize,
    },
    /// Commands that stay running with 1 s polls: CPU, database traffic, memory per actor.
    Idle {
        #[arg(long, default_value_t = 100_000)]
        commands: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Submits awaiting their commit at once, as a host feeding work in
        /// steadily has (0: all N spawned at once, so that RSS also holds
        /// what the allocator keeps of N concurrent host tasks).
        #[arg(long, default_value_t = 1_000)]
        submit_window: usize,
    },
    /// Cleanup of expired rows while a flat load runs: rows/s and the flat slowdown.
    Cleanup {
        #[arg(long, default_value_t = 1_000_000)]
        expired: usize,
        #[arg(long, default_value_t = 20_000)]
        commands: usize,
        /// Hierarchies per cleanup statement (library default).
        #[arg(long, default_value_t = DEFAULT_CLEANUP_BATCH)]
        cleanup_batch: u32,
        /// Pause between cleanup batches in ms (library default).
        #[arg(long, default_value_t = DEFAULT_CLEANUP_PAUSE.as_millis() as u64)]
        cleanup_pause_ms: u64,
    },
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Flat { .. } => "flat",
            Mode::Adopt { .. } => "adopt",
            Mode::Tree { .. } => "tree",
            Mode::Rehydrate { .. } => "rehydrate",
            Mode::Idle { .. } => "idle",
            Mode::Cleanup { .. } => "cleanup",
        }
    }
}

// ---------------------------------------------------------------------------
// The benchmark's command types
// ---------------------------------------------------------------------------

/// Flat and cleanup modes: a command that does nothing and succeeds on its
/// first poll, so that only the coordinator's own cost is measured.
#[derive(Debug, Serialize, Deserialize)]
struct Noop {
    i: u32,
}

impl Command for Noop {
    const COMMAND_TYPE: i32 = 901;
    type Output = ();

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }
}

/// When each tree parent's last child ran its end method, by parent id.
static LAST_CHILD_END: LazyLock<Mutex<HashMap<CommandId, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
/// Tree mode: last child's end method → parent's poll, in microseconds.
static DECISION_US: LazyLock<Mutex<Histogram<u64>>> = LazyLock::new(|| {
    Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"))
});

/// Tree mode: submits its children in `execute`; its `poll` (called by the
/// runtime only once every child has ended) is the parent's decision.
#[derive(Debug, Serialize, Deserialize)]
struct TreeParent {
    children: u32,
}

impl Command for TreeParent {
    const COMMAND_TYPE: i32 = 902;
    type Output = u32;

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        // One after another, as a host typically writes it (live_merge does).
        for i in 0..self.children {
            ctx.submit_child(TreeChild { i }).await?;
        }
        Ok(())
    }

    async fn poll(&mut self, ctx: &CommandContext) -> Result<PollOutcome<u32>, CommandError> {
        let now = Instant::now();
        if let Some(last_end) = LAST_CHILD_END.lock().unwrap().remove(&ctx.id()) {
            let us = now.saturating_duration_since(last_end).as_micros() as u64;
            DECISION_US.lock().unwrap().saturating_record(us.max(1));
        }
        Ok(PollOutcome::Succeeded(self.children))
    }
}

/// Tree mode: succeeds on its first poll; its end method stamps the time for
/// its parent (the latest stamp of all siblings is kept).
#[derive(Debug, Serialize, Deserialize)]
struct TreeChild {
    i: u32,
}

impl Command for TreeChild {
    const COMMAND_TYPE: i32 = 903;
    type Output = ();

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }

    async fn end_successfully(&mut self, _: &(), ctx: &CommandContext) -> Result<(), CommandError> {
        if let Some(parent) = ctx.parent_id() {
            let now = Instant::now();
            LAST_CHILD_END
                .lock()
                .unwrap()
                .entry(parent)
                .and_modify(|t| *t = (*t).max(now))
                .or_insert(now);
        }
        Ok(())
    }
}

/// Probes whose first poll happened (rehydrate, idle).
static FIRST_POLLS: AtomicUsize = AtomicUsize::new(0);
/// Every poll of a probe (idle).
static POLLS: AtomicUsize = AtomicUsize::new(0);

/// Rehydrate and idle modes: never finishes (always `Running`), so that no
/// write follows its polls; counts its first poll once, and every poll.
#[derive(Debug, Serialize, Deserialize)]
struct Probe {
    i: u64,
    /// Not persisted: a rebuilt probe has not polled yet.
    #[serde(skip)]
    polled: bool,
}

impl Command for Probe {
    const COMMAND_TYPE: i32 = 904;
    type Output = ();

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        POLLS.fetch_add(1, Ordering::Relaxed);
        if !self.polled {
            self.polled = true;
            FIRST_POLLS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(PollOutcome::Running)
    }
}

/// Idle mode's reference: the smallest possible actix actor.
struct Bare;

impl Actor for Bare {
    type Context = actix::Context<Self>;
}

// ---------------------------------------------------------------------------
// Running a mode
// ---------------------------------------------------------------------------

/// What a mode measured: `figures` go into the JSON line, `lines` are shown
/// to people as they are produced.
#[derive(Default)]
struct Report {
    figures: Map<String, Value>,
}

impl Report {
    fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.insert(key.to_owned(), value.into());
    }
}

/// Everything a mode needs: its database (a fresh schema), how to talk to
/// people, and its deadline.
struct Bench {
    config: DatabaseConfig,
    pool: Pool,
    schema: SchemaName,
    json_only: bool,
    terminal: bool,
    deadline: tokio::time::Instant,
    timeout: Duration,
    writer_lanes: usize,
}

impl Bench {
    /// A coordinator builder over this mode's schema with every bench type.
    fn builder(&self) -> CoordinatorBuilder {
        self.builder_for(&self.schema)
    }

    /// A coordinator builder over another schema, with every bench type.
    fn builder_for(&self, schema: &SchemaName) -> CoordinatorBuilder {
        Coordinator::builder(PgStore::new(self.pool.clone(), schema.clone()))
            .config(self.config())
            .register::<Noop>()
            .register::<TreeParent>()
            .register::<TreeChild>()
            .register::<Probe>()
    }

    /// The library's defaults, with the writer lanes of `--writer-lanes`.
    fn config(&self) -> RuntimeConfig {
        let mut config = RuntimeConfig::default();
        config.writer.max_in_flight = self.writer_lanes;
        config
    }

    fn table(&self) -> String {
        format!("{}.command_entities", self.schema.quoted())
    }

    fn say(&self, line: impl AsRef<str>) {
        if !self.json_only {
            println!("{}", line.as_ref());
        }
    }

    /// A progress bar on stdout when it is a terminal, hidden otherwise.
    fn progress(&self, len: u64, what: &str) -> ProgressBar {
        let target = if self.terminal && !self.json_only {
            ProgressDrawTarget::stdout()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar
    }

    /// Runs `f`, failing when the mode's deadline passes first.
    async fn within<F: Future>(&self, what: &str, f: F) -> Result<F::Output, BoxError> {
        tokio::time::timeout_at(self.deadline, f)
            .await
            .map_err(|_| {
                format!(
                    "{what}: timed out (the mode's limit is {} s, --timeout-s)",
                    self.timeout.as_secs()
                )
                .into()
            })
    }

    /// Waits until `counter` reaches `target` (ticking `bar`); `false` when the
    /// deadline passed first.
    async fn wait_for_count(
        &self,
        counter: &AtomicUsize,
        target: usize,
        bar: &ProgressBar,
    ) -> bool {
        loop {
            let n = counter.load(Ordering::Relaxed);
            bar.set_position(n as u64);
            if n >= target {
                return true;
            }
            if tokio::time::Instant::now() >= self.deadline {
                return false;
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }

    /// One statement on a pooled connection; returns the rows affected.
    async fn execute_sql(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, BoxError> {
        let client = self.pool.get().await?;
        Ok(self.within(sql, client.execute(sql, params)).await??)
    }
}

use command_coordinator::tokio_postgres;

#[actix::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let mode = cli.mode.name();
    // Kept alive until the end of main: dropping it stops the cluster. Started
    // here, on the main thread, which outlives it (see EmbeddedPostgres).
    let mut embedded: Option<EmbeddedPostgres> = None;
    match run(cli, &mut embedded).await {
        Ok(figures) => {
            println!("{}", Value::Object(figures));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("load: {mode}: {e}");
            println!("{}", json!({ "mode": mode, "error": e.to_string() }));
            ExitCode::FAILURE
        }
    }
}

/// Sets up the database, the ceiling and the mode's schema, runs the mode and
/// returns the JSON figures.
async fn run(
    cli: Cli,
    embedded: &mut Option<EmbeddedPostgres>,
) -> Result<Map<String, Value>, BoxError> {
    let common = cli.common;
    let (url, embedded_db) = match &common.database_url {
        Some(url) => (url.clone(), false),
        None => {
            // Durable: fsync and synchronous_commit on, as a real server runs.
            let pg = embedded.insert(EmbeddedPostgres::start(EmbeddedOptions { durable: true })?);
            if matches!(cli.mode, Mode::Idle { .. }) {
                // Idle mode counts statements, which needs the extension
                // preloaded; only this mode pays for it.
                if let Err(e) = preload_pg_stat_statements(pg).await {
                    tracing::warn!(error = %e, "pg_stat_statements not available; statements/s will be null");
                }
            }
            (pg.url(), true)
        }
    };

    let mut out = Map::new();
    out.insert("mode".into(), cli.mode.name().into());
    // Other processes share the machine: record how busy it was.
    if let Some(load) = load_average() {
        out.insert("loadavg_1m_before".into(), load.into());
    }
    out.insert(
        "database".into(),
        if embedded_db {
            "embedded-durable"
        } else {
            "external"
        }
        .into(),
    );

    // Cleanup's yardstick is what deleting costs PostgreSQL alone.
    let cleanup_ceiling = match (&cli.mode, common.with_ceiling) {
        (Mode::Cleanup { .. }, true) => {
            Some(run_script("cleanup_ceiling.sh", &url, common.json_only)?)
        }
        _ => None,
    };
    let ceiling = match (common.with_ceiling, common.ceiling_batched) {
        _ if cleanup_ceiling.is_some() => None,
        (true, _) => Some(run_ceiling(&url, common.json_only)?),
        (false, Some(batched)) => Some(Ceiling {
            batched,
            single: None,
        }),
        (false, None) => None,
    };

    let schema = SchemaName::new(format!(
        "load_{}_{:08x}",
        cli.mode.name(),
        fastrand::u32(..)
    ))?;
    let config = DatabaseConfig::from_url(&url)?
        .with_schema(schema.clone())
        .with_pool_size(common.pool_size)?;
    let timeout = Duration::from_secs(common.timeout_s);
    let bench = Bench {
        config: config.clone(),
        pool: config.create_pool()?,
        schema,
        json_only: common.json_only,
        terminal: std::io::stdout().is_terminal(),
        deadline: tokio::time::Instant::now() + timeout,
        timeout,
        writer_lanes: common.writer_lanes,
    };
    bench.say(format!(
        "load {}: schema {}, {} database",
        cli.mode.name(),
        bench.schema,
        if embedded_db {
            "embedded durable"
        } else {
            "external"
        }
    ));

    let report = match cli.mode {
        Mode::Flat {
            commands,
            hosts: 1,
            keyed,
        } => flat(&bench, commands, keyed).await?,
        Mode::Flat {
            commands, hosts, ..
        } => flat_hosts(&bench, commands, hosts).await?,
        Mode::Adopt {
            hierarchies,
            lease_s,
        } => adopt(&bench, hierarchies, Duration::from_secs(lease_s)).await?,
        Mode::Tree { parents, children } => tree(&bench, parents, children).await?,
        Mode::Rehydrate { commands } => rehydrate(&bench, commands).await?,
        Mode::Idle {
            commands,
            seconds,
            submit_window,
        } => idle(&bench, commands, seconds, submit_window).await?,
        Mode::Cleanup {
            expired,
            commands,
            cleanup_batch,
            cleanup_pause_ms,
        } => {
            let cleanup = CleanupConfig {
                batch: cleanup_batch,
                pause: Duration::from_millis(cleanup_pause_ms),
                retention: CLEANUP_RETENTION,
                ..CleanupConfig::default()
            };
            self::cleanup(&bench, expired, commands, cleanup).await?
        }
    };
    out.extend(report.figures);
    if let Some(Value::Object(db)) = cleanup_ceiling {
        for (key, value) in db {
            out.insert(format!("pg_alone_{key}"), value);
        }
    }

    if let Some(ceiling) = ceiling {
        out.insert("ceiling_lifecycles_per_s".into(), ceiling.batched.into());
        if let Some(single) = ceiling.single {
            out.insert("ceiling_single_lifecycles_per_s".into(), single.into());
        }
        if let Some(ours) = out.get("lifecycles_per_s").and_then(Value::as_f64) {
            let ratio = round_to(ours / ceiling.batched, 3);
            bench.say(format!(
                "ratio to the batched ceiling ({:.0}/s): {ratio}",
                ceiling.batched
            ));
            out.insert("ratio_to_ceiling".into(), ratio.into());
        }
    }

    if !embedded_db && !common.keep_schema {
        // Leave no benchmark rows behind on someone's server.
        let client = bench.pool.get().await?;
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", bench.schema.quoted()))
            .await?;
    }
    Ok(out)
}

/// Restarts the embedded server with `shared_preload_libraries =
/// 'pg_stat_statements'`, so that the idle mode can count statements.
async fn preload_pg_stat_statements(pg: &mut EmbeddedPostgres) -> Result<(), BoxError> {
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
    actix::spawn(connection);
    client
        .batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .await?;
    drop(client);
    pg.stop_server()?;
    pg.start_server()?;
    Ok(())
}

/// The pgbench ceiling, in lifecycles/s.
struct Ceiling {
    batched: f64,
    single: Option<f64>,
}

/// Runs `bash bench/ceiling.sh URL` (before the mode, so that the two do not
/// compete for the machine) and reads its last stdout line.
fn run_ceiling(url: &str, json_only: bool) -> Result<Ceiling, BoxError> {
    let v = run_script("ceiling.sh", url, json_only)?;
    let get = |k: &str| v.get(k).and_then(Value::as_f64);
    Ok(Ceiling {
        batched: get("batched_lifecycles_per_s").ok_or("no batched_lifecycles_per_s")?,
        single: get("single_lifecycles_per_s"),
    })
}

/// Runs `bash bench/<script> URL` and returns the JSON of its last line.
fn run_script(script: &str, url: &str, json_only: bool) -> Result<Value, BoxError> {
    let script = format!("{}/bench/{script}", env!("CARGO_MANIFEST_DIR"));
    if !json_only {
        println!("running {script} (pgbench)");
    }
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg(url)
        .stderr(if json_only {
            std::process::Stdio::null()
        } else {
            std::process::Stdio::inherit()
        })
        .output()?;
    if !output.status.success() {
        return Err(format!("{script} failed ({})", output.status).into());
    }
    let stdout = String::from_utf8(output.stdout)?;
    let last = stdout
        .lines()
        .last()
        .ok_or_else(|| format!("{script} printed nothing"))?;
    Ok(serde_json::from_str(last)?)
}

// ---------------------------------------------------------------------------
// The modes
// ---------------------------------------------------------------------------

/// Throughput of independent commands: `N` concurrent `execute`s of a no-op,
/// timed from the first submit to the last outcome. Each lifecycle costs the
/// runtime 5 writes (insert, ACTIVE, executed, SUCCEEDED, ENDED), so this is
/// what group commit is for; the ceiling is pgbench's batched figure.
async fn flat(bench: &Bench, commands: usize, keyed: bool) -> Result<Report, BoxError> {
    let coordinator = bench.within("start", bench.builder().start()).await??;
    warm_up(bench, &coordinator).await?;
    let bar = bench.progress(commands as u64, "flat");
    let round = flat_round(bench, &coordinator, commands, keyed, &bar).await?;
    bar.finish_and_clear();
    coordinator.shutdown().await;

    let rate = round.rate();
    bench.say(format!(
        "flat: {} lifecycles in {:.3} s = {rate:.0} lifecycles/s ({} failed)",
        round.count,
        round.elapsed.as_secs_f64(),
        round.failed
    ));
    let mut report = Report::default();
    report.set("commands", commands);
    report.set("keyed", keyed);
    report.set("seconds", round3(round.elapsed.as_secs_f64()));
    report.set("failed", round.failed);
    report.set("lifecycles_per_s", round_to(rate, 0));
    Ok(report)
}

/// Flat with `hosts` coordinators on one schema, each on a thread of its
/// own with its own pool and actix system (what separate processes would
/// have), started together after each warmed up; the aggregate rate is all
/// lifecycles over the time from the first start to the last end.
async fn flat_hosts(bench: &Bench, commands: usize, hosts: u32) -> Result<Report, BoxError> {
    bench
        .within("migrate", migrate(&bench.pool, &bench.schema))
        .await??;
    let share = commands / hosts as usize;
    let ready = std::sync::Arc::new(std::sync::Barrier::new(hosts as usize + 1));
    let go = std::sync::Arc::new(std::sync::Barrier::new(hosts as usize + 1));
    let mut threads = Vec::new();
    for h in 0..hosts {
        let (config, ready, go) = (bench.config.clone(), ready.clone(), go.clone());
        let (schema, lanes, timeout) = (bench.schema.clone(), bench.writer_lanes, bench.timeout);
        threads.push(std::thread::spawn(
            move || -> Result<(Instant, Instant, usize), String> {
                actix::System::new().block_on(async move {
                    let host = Bench {
                        pool: config.create_pool().map_err(|e| e.to_string())?,
                        config,
                        schema,
                        json_only: true,
                        terminal: false,
                        deadline: tokio::time::Instant::now() + timeout,
                        timeout,
                        writer_lanes: lanes,
                    };
                    let coordinator = host
                        .builder()
                        .host_name(format!("bench-{h}"))
                        .start()
                        .await
                        .map_err(|e| e.to_string())?;
                    warm_up(&host, &coordinator)
                        .await
                        .map_err(|e| e.to_string())?;
                    ready.wait();
                    go.wait();
                    let start = Instant::now();
                    let round =
                        flat_round(&host, &coordinator, share, false, &ProgressBar::hidden())
                            .await
                            .map_err(|e| e.to_string())?;
                    coordinator.shutdown().await;
                    Ok((start, start + round.elapsed, round.failed))
                })
            },
        ));
    }
    ready.wait();
    go.wait();
    let mut first = None::<Instant>;
    let mut last = None::<Instant>;
    let mut failed = 0;
    for thread in threads {
        let (start, end, f) = thread.join().map_err(|_| "a host thread panicked")??;
        first = Some(first.map_or(start, |x| x.min(start)));
        last = Some(last.map_or(end, |x| x.max(end)));
        failed += f;
    }
    let elapsed = last.unwrap() - first.unwrap();
    let total = share * hosts as usize;
    let rate = total as f64 / elapsed.as_secs_f64();
    bench.say(format!(
        "flat on {hosts} hosts: {total} lifecycles in {:.3} s = {rate:.0} lifecycles/s ({failed} failed)",
        elapsed.as_secs_f64()
    ));
    let mut report = Report::default();
    report.set("hosts", hosts);
    report.set("commands", total);
    report.set("seconds", round3(elapsed.as_secs_f64()));
    report.set("failed", failed);
    report.set("lifecycles_per_s", round_to(rate, 0));
    Ok(report)
}

/// Adoption: a host (only its registry row: no process) owns `n` unfinished
/// probes; its heartbeat stops when they are written. An adopting host that
/// has had heartbeats for a full lease already declares it dead and adopts
/// them: the time from the last heartbeat to every probe polled again, and
/// the adoption rate once it was declared dead.
async fn adopt(bench: &Bench, n: usize, lease: Duration) -> Result<Report, BoxError> {
    bench
        .within("migrate", migrate(&bench.pool, &bench.schema))
        .await??;
    FIRST_POLLS.store(0, Ordering::Relaxed);
    let _adopter = bench
        .within(
            "start",
            bench
                .builder()
                .lease(lease)
                .heartbeat_interval((lease / 5).min(Duration::from_secs(2)))
                .host_check_interval((lease / 10).min(Duration::from_secs(1)))
                .host_name("adopter")
                .poll_interval(Duration::from_secs(600))
                .max_poll_interval(Duration::from_secs(600))
                .start(),
        )
        .await??;
    // Its own heartbeats must have run for a full lease before it judges.
    bench.say(format!(
        "adopt: the adopter has heartbeats for a lease ({lease:?})"
    ));
    tokio::time::sleep(lease).await;
    let hosts = format!("{}.command_hosts", bench.schema.quoted());
    let victim = uuid::Uuid::new_v4();
    let client = bench.pool.get().await?;
    let tx_start = Instant::now();
    client.batch_execute("BEGIN").await?;
    client
        .execute(
            &format!("INSERT INTO {hosts} (host_id, name) VALUES ($1, 'victim')"),
            &[&victim],
        )
        .await?;
    client
        .execute(
            &format!(
                "INSERT INTO {} (command_id, command_type, root_command_id, command_parameters, \
                   command_params_class, created_at, updated_at, status, callback_enabled, \
                   callback_notified, executed, owner_host, owner_epoch) \
                 SELECT id, $2, id, json_build_object('i', i)::text, $3, now(), now(), 'ACTIVE', \
                   true, false, true, $4, 1 \
                 FROM (SELECT gen_random_uuid() AS id, i FROM generate_series(1, $1::bigint) i) g",
                bench.table()
            ),
            &[
                &(n as i64),
                &Probe::COMMAND_TYPE,
                &std::any::type_name::<Probe>(),
                &victim,
            ],
        )
        .await?;
    // The heartbeat it will never renew: written last, when the rows are.
    client
        .execute(
            &format!("UPDATE {hosts} SET heartbeat_at = now() WHERE host_id = $1"),
            &[&victim],
        )
        .await?;
    client.batch_execute("COMMIT").await?;
    let last_beat = Instant::now();
    bench.say(format!(
        "adopt: {n} unfinished hierarchies of a host whose heartbeat stops now ({:.1} s to write)",
        tx_start.elapsed().as_secs_f64()
    ));
    let bar = bench.progress(n as u64, "adopted and polled");
    let mut declared = None;
    loop {
        if declared.is_none() {
            let state: String = client
                .query_one(
                    &format!("SELECT state FROM {hosts} WHERE host_id = $1"),
                    &[&victim],
                )
                .await?
                .get(0);
            if state == "dead" {
                declared = Some(last_beat.elapsed());
            }
        }
        let polled = FIRST_POLLS.load(Ordering::Relaxed);
        bar.set_position(polled as u64);
        if polled >= n || tokio::time::Instant::now() >= bench.deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_and_clear();
    let all = last_beat.elapsed();
    let polled = FIRST_POLLS.load(Ordering::Relaxed);
    let declared = declared.unwrap_or(all);
    let rate = n as f64 / (all - declared).as_secs_f64().max(1e-3);
    bench.say(format!(
        "adopt: declared dead {:.2} s after its last heartbeat; all {polled} of {n} running again \
         after {:.2} s (lease {lease:?}; target ≤ lease + 3 s); {rate:.0} adopted commands/s",
        declared.as_secs_f64(),
        all.as_secs_f64()
    ));
    let mut report = Report::default();
    report.set("hierarchies", n);
    report.set("polled", polled);
    report.set("lease_s", lease.as_secs());
    report.set("declared_dead_s", round3(declared.as_secs_f64()));
    report.set("all_running_s", round3(all.as_secs_f64()));
    report.set("adopted_per_s", round_to(rate, 0));
    Ok(report)
}

/// Push latency in hierarchies: `P` parents each submitting `C` children; the
/// time from the last child's end method to the parent's poll is the cost of
/// the child's ENDED commit, the coordinator routing `ChildCompleted`, and the
/// parent's evaluation. Also reports lifecycles/s over all `P × (C + 1)`
/// commands.
async fn tree(bench: &Bench, parents: usize, children: u32) -> Result<Report, BoxError> {
    // The runtime's own histogram of the push path: a child's end committed →
    // its parent handling it. (This binary runs one mode per process, so the
    // global recorder is this mode's alone.)
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    let coordinator = bench.within("start", bench.builder().start()).await??;
    warm_up(bench, &coordinator).await?;
    DECISION_US.lock().unwrap().reset();
    LAST_CHILD_END.lock().unwrap().clear();

    let bar = bench.progress(parents as u64, "parents");
    let start = Instant::now();
    let last = Rc::new(Cell::new(start));
    let tasks: Vec<_> = (0..parents)
        .map(|_| {
            let coordinator = coordinator.clone();
            let (last, bar) = (last.clone(), bar.clone());
            actix::spawn(async move {
                let outcome = coordinator.execute(TreeParent { children }).await;
                last.set(last.get().max(Instant::now()));
                bar.inc(1);
                matches!(outcome, Ok(o) if o.succeeded())
            })
        })
        .collect();
    let mut failed = 0usize;
    for task in tasks {
        if !bench.within("tree", task).await?? {
            failed += 1;
        }
    }
    let elapsed = last.get() - start;
    bar.finish_and_clear();
    coordinator.shutdown().await;

    let hist = DECISION_US.lock().unwrap().clone();
    let total = parents * (children as usize + 1);
    let rate = total as f64 / elapsed.as_secs_f64();
    bench.say(format!(
        "tree: {parents} × {children}: {total} lifecycles in {:.3} s = {rate:.0}/s ({failed} parents failed)",
        elapsed.as_secs_f64()
    ));
    bench.say(format!(
        "last child end → parent decision: p50 {} µs, p99 {} µs, max {} µs ({} parents measured)",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
        hist.len()
    ));
    // Push latency: every child's end (committed) → its parent handling it,
    // from the runtime's `child_to_parent_seconds` histogram.
    let mut push = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() == command_coordinator::actors::metrics::CHILD_TO_PARENT_SECONDS
            && let metrics_util::debugging::DebugValue::Histogram(values) = value
        {
            for seconds in values {
                push.saturating_record(((seconds.into_inner() * 1e6) as u64).max(1));
            }
        }
    }
    bench.say(format!(
        "child end committed → parent handles it (push): p50 {} µs, p99 {} µs, max {} µs ({} children)",
        push.value_at_quantile(0.5),
        push.value_at_quantile(0.99),
        push.max(),
        push.len()
    ));
    let mut report = Report::default();
    report.set("parents", parents);
    report.set("children", children);
    report.set("push_p50_us", push.value_at_quantile(0.5));
    report.set("push_p99_us", push.value_at_quantile(0.99));
    report.set("push_max_us", push.max());
    report.set("seconds", round3(elapsed.as_secs_f64()));
    report.set("failed_parents", failed);
    report.set("lifecycles_per_s", round_to(rate, 0));
    report.set("decisions_measured", hist.len());
    report.set("p50_us", hist.value_at_quantile(0.5));
    report.set("p99_us", hist.value_at_quantile(0.99));
    report.set("max_us", hist.max());
    Ok(report)
}

/// Restart recovery: `N` unfinished rows (ACTIVE, executed) written straight
/// into the table, then a fresh coordinator is started, which rebuilds every
/// one of them; the clock runs from before `start()` until every probe polled
/// once. The probes answer `Running` and poll again only after 60 s, so the
/// figure holds rebuilding and the first poll, and no write.
async fn rehydrate(bench: &Bench, commands: usize) -> Result<Report, BoxError> {
    bench
        .within("migrate", migrate(&bench.pool, &bench.schema))
        .await??;
    let insert_start = Instant::now();
    let rows = bench
        .execute_sql(
            &format!(
                "INSERT INTO {} (command_id, command_type, root_command_id, command_parameters, \
                   command_params_class, created_at, updated_at, status, callback_enabled, \
                   callback_notified, executed) \
                 SELECT id, $2, id, json_build_object('i', i)::text, $3, now(), now(), 'ACTIVE', \
                   true, false, true \
                 FROM (SELECT gen_random_uuid() AS id, i FROM generate_series(1, $1::bigint) i) g",
                bench.table()
            ),
            &[
                &(commands as i64),
                &Probe::COMMAND_TYPE,
                &std::any::type_name::<Probe>(),
            ],
        )
        .await?;
    bench
        .execute_sql(&format!("ANALYZE {}", bench.table()), &[])
        .await?;
    bench.say(format!(
        "rehydrate: {rows} unfinished rows written in {:.1} s",
        insert_start.elapsed().as_secs_f64()
    ));

    FIRST_POLLS.store(0, Ordering::Relaxed);
    let bar = bench.progress(commands as u64, "polled");
    let start = Instant::now();
    let _coordinator = bench
        .within(
            "start",
            bench
                .builder()
                .poll_interval(Duration::from_secs(60))
                .max_poll_interval(Duration::from_secs(60))
                .start(),
        )
        .await??;
    let started = start.elapsed();
    let completed = bench.wait_for_count(&FIRST_POLLS, commands, &bar).await;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let polled = FIRST_POLLS.load(Ordering::Relaxed);

    let mut report = Report::default();
    report.set("commands", commands);
    report.set("completed", completed);
    report.set("polled", polled);
    report.set("start_returned_s", round3(started.as_secs_f64()));
    report.set(
        "rehydrated_per_s",
        round_to(polled as f64 / elapsed.as_secs_f64(), 0),
    );
    if completed {
        bench.say(format!(
            "rehydrate: {commands} commands rebuilt and polled in {:.3} s (start() returned after {:.3} s)",
            elapsed.as_secs_f64(),
            started.as_secs_f64()
        ));
        report.set("rehydrate_s", round3(elapsed.as_secs_f64()));
    } else {
        bench.say(format!(
            "rehydrate: TIMED OUT after {:.0} s with {polled} of {commands} polled",
            elapsed.as_secs_f64()
        ));
        report.set("rehydrate_s", Value::Null);
        report.set("timed_out_after_s", round3(elapsed.as_secs_f64()));
    }
    Ok(report)
}

/// The cost of commands that just wait: `N` probes polled every second
/// (`poll_interval = max_poll_interval = 1 s`), answering `Running`. Over a
/// window of `T` seconds: process CPU, the database's commits (a poll must not
/// cost a statement), memory per idle actor, and the same memory figure for
/// `N` bare actix actors as the floor any actor-per-command design pays.
async fn idle(
    bench: &Bench,
    commands: usize,
    seconds: u64,
    submit_window: usize,
) -> Result<Report, BoxError> {
    let coordinator = bench
        .within(
            "start",
            bench
                .builder()
                .poll_interval(Duration::from_secs(1))
                .max_poll_interval(Duration::from_secs(1))
                .start(),
        )
        .await??;

    // The reference first: N trivial actors, kept alive to the end, so that
    // the idle commands' memory below is fresh memory too. Every baseline is
    // taken after trimming the heap, so that memory freed earlier (start-up)
    // and released by a later trim cannot make a delta look smaller.
    trim_heap();
    let rss_before_bare = vm_rss_bytes()?;
    let bare: Vec<Addr<Bare>> = (0..commands).map(|_| Bare.start()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await; // let them start
    let bare_rss = (vm_rss_bytes()?.saturating_sub(rss_before_bare)) as f64 / commands as f64;
    bench.say(format!(
        "idle: {commands} bare actix actors: {bare_rss:.0} bytes RSS each"
    ));

    FIRST_POLLS.store(0, Ordering::Relaxed);
    trim_heap();
    let rss_before = vm_rss_bytes()?;
    let bar = bench.progress(commands as u64, "running");
    let start = Instant::now();
    let failures = Rc::new(Cell::new(0usize));
    // With a window, at most that many submits wait for their commit at once
    // (a host feeding work in steadily); without, all N are spawned at once.
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(if submit_window == 0 {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        submit_window
    }));
    for i in 0..commands {
        let coordinator = coordinator.clone();
        let failures = failures.clone();
        let permit = window.clone().acquire_owned().await?;
        actix::spawn(async move {
            let _permit = permit;
            if coordinator
                .submit(Probe {
                    i: i as u64,
                    polled: false,
                })
                .await
                .is_err()
            {
                failures.set(failures.get() + 1);
            }
        });
    }
    if !bench.wait_for_count(&FIRST_POLLS, commands, &bar).await {
        return Err(format!(
            "only {} of {commands} idle commands polled before the deadline",
            FIRST_POLLS.load(Ordering::Relaxed)
        )
        .into());
    }
    bar.finish_and_clear();
    let ramp = start.elapsed();
    // Let the last writes and their buffers settle before measuring memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_per_actor = (vm_rss_bytes()?.saturating_sub(rss_before)) as f64 / commands as f64;
    // The same after handing the allocator's free memory back: what the
    // actors hold, without what the ramp (submits, write batches) left behind.
    let trimmed = trim_heap();
    let rss_per_actor_trimmed =
        (vm_rss_bytes()?.saturating_sub(rss_before)) as f64 / commands as f64;
    bench.say(format!(
        "idle: {commands} commands running after {:.1} s; {rss_per_actor:.0} bytes RSS each \
         ({rss_per_actor_trimmed:.0} after malloc_trim)",
        ramp.as_secs_f64()
    ));

    // The measurement window.
    let client = bench.pool.get().await?;
    let statements_available = client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .is_ok()
        && db_statements(&client).await.is_some();
    let cpu0 = process_cpu_seconds()?;
    let db0 = db_counters(&client).await?;
    let st0 = db_statements(&client).await;
    let polls0 = POLLS.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let window_bar = bench.progress(seconds, "window");
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        window_bar.inc(1);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = process_cpu_seconds()?;
    let polls1 = POLLS.load(Ordering::Relaxed);
    let db1 = db_counters(&client).await?;
    let st1 = db_statements(&client).await;
    window_bar.finish_and_clear();

    let cpu_percent = (cpu1 - cpu0) / wall * 100.0;
    let commits_per_s = (db1.commits - db0.commits) as f64 / wall;
    let rows_per_s = (db1.rows_written - db0.rows_written) as f64 / wall;
    let polls_per_s = (polls1 - polls0) as f64 / wall;
    let statements_per_s = match (st0, st1) {
        (Some(a), Some(b)) if statements_available => Some((b - a) as f64 / wall),
        _ => None,
    };
    bench.say(format!(
        "idle window {wall:.1} s: {polls_per_s:.0} polls/s, CPU {cpu_percent:.1} % of one core, \
         {commits_per_s:.1} commits/s, {rows_per_s:.1} rows written/s, statements/s {}",
        statements_per_s.map_or(
            "n/a (pg_stat_statements not loaded)".to_owned(),
            |s| format!("{s:.1}")
        )
    ));
    drop(bare);

    let mut report = Report::default();
    report.set("commands", commands);
    report.set("seconds", seconds);
    report.set("submit_failures", failures.get());
    report.set("submit_window", submit_window);
    report.set("ramp_s", round3(ramp.as_secs_f64()));
    report.set("polls_per_s", round_to(polls_per_s, 0));
    report.set("cpu_percent", round_to(cpu_percent, 1));
    report.set("commits_per_s", round_to(commits_per_s, 1));
    report.set("rows_written_per_s", round_to(rows_per_s, 1));
    report.set(
        "statements_per_s",
        statements_per_s.map_or(Value::Null, |s| round_to(s, 1).into()),
    );
    report.set("rss_per_actor_bytes", round_to(rss_per_actor, 0));
    report.set(
        "rss_per_actor_after_trim_bytes",
        if trimmed {
            round_to(rss_per_actor_trimmed, 0).into()
        } else {
            Value::Null
        },
    );
    report.set("bare_actor_rss_bytes", round_to(bare_rss, 0));
    Ok(report)
}

/// Cleanup under load: `R` expired ended roots (ended one second apart from
/// 30 days ago on, so 1 M of them span 11.6 days, all past the retention of
/// 7 days) are written straight into the table; a flat run of `N` commands is
/// measured first without cleanup, then `cleanup_now()` runs while flat
/// rounds of `N` keep going. Reports the cleanup's rows/s and the flat rate
/// during cleanup as a fraction of the first one.
/// Writes `expired` ended roots (ended one second apart from 30 days ago on)
/// into a freshly migrated `schema`.
async fn write_expired(bench: &Bench, schema: &SchemaName, expired: usize) -> Result<(), BoxError> {
    bench
        .within("migrate", migrate(&bench.pool, schema))
        .await??;
    let table = format!("{}.command_entities", schema.quoted());
    let insert_start = Instant::now();
    let rows = bench
        .execute_sql(
            &format!(
                "INSERT INTO {table} (command_id, command_type, root_command_id, command_parameters, \
                   command_params_class, created_at, updated_at, ended_at, status, \
                   callback_enabled, callback_notified, executed, return_value, return_value_class) \
                 SELECT id, $2, id, '{{\"i\":0}}', $3, ended - interval '1 minute', ended, ended, \
                   'ENDED_SUCCESSFULLY', true, true, true, 'null', '()' \
                 FROM (SELECT gen_random_uuid() AS id, \
                         now() - interval '30 days' + i * interval '1 second' AS ended \
                       FROM generate_series(1, $1::bigint) i) g"
            ),
            &[
                &(expired as i64),
                &Noop::COMMAND_TYPE,
                &std::any::type_name::<Noop>(),
            ],
        )
        .await?;
    bench.execute_sql(&format!("ANALYZE {table}"), &[]).await?;
    bench.say(format!(
        "cleanup: {rows} expired ended roots written into {} in {:.1} s",
        schema.as_str(),
        insert_start.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn cleanup(
    bench: &Bench,
    expired: usize,
    commands: usize,
    cleanup: CleanupConfig,
) -> Result<Report, BoxError> {
    write_expired(bench, &bench.schema, expired).await?;

    let batch = cleanup.batch;
    let pause_ms = cleanup.pause.as_millis() as u64;
    let config = RuntimeConfig {
        cleanup,
        ..bench.config()
    };
    let coordinator = bench
        .within("start", bench.builder().config(config).start())
        .await??;
    warm_up(bench, &coordinator).await?;

    let bar = bench.progress(commands as u64, "flat alone");
    let alone = flat_round(bench, &coordinator, commands, false, &bar).await?;
    bar.finish_and_clear();
    bench.say(format!(
        "cleanup: flat without cleanup: {:.0} lifecycles/s",
        alone.rate()
    ));

    // Cleanup in the background; flat rounds until it is done.
    let cleanup_end: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
    let cleanup_start = Instant::now();
    let task = {
        let coordinator = coordinator.clone();
        let cleanup_end = cleanup_end.clone();
        actix::spawn(async move {
            let removed = coordinator.cleanup_now().await;
            cleanup_end.set(Some(Instant::now()));
            removed
        })
    };
    let mut during: Vec<FlatRound> = Vec::new();
    let mut first_round: Option<FlatRound> = None;
    while cleanup_end.get().is_none() {
        let bar = bench.progress(commands as u64, "flat+cleanup");
        let round = flat_round(bench, &coordinator, commands, false, &bar).await?;
        bar.finish_and_clear();
        match cleanup_end.get() {
            // Ended inside the cleanup: counts.
            None => during.push(round),
            Some(_) if during.is_empty() && first_round.is_none() => first_round = Some(round),
            Some(_) => {}
        }
    }
    let removed = bench.within("cleanup", task).await??;
    let removed = removed?;
    let cleanup_s = (cleanup_end.get().expect("set when done") - cleanup_start).as_secs_f64();
    coordinator.shutdown().await;

    // Flat rounds wholly inside the cleanup; if the cleanup was shorter than
    // one round, the one that overlapped it (flagged as partial).
    let full_overlap = !during.is_empty();
    let rounds: Vec<FlatRound> = if full_overlap {
        during
    } else {
        first_round.into_iter().collect()
    };
    let count: usize = rounds.iter().map(|r| r.count).sum();
    let time: f64 = rounds.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let during_rate = count as f64 / time;

    // The control: the same rounds without cleanup, from the same start (a
    // fresh schema with the same expired rows). Each round adds its rows, so
    // a first round on the fresh table alone would flatter "without cleanup".
    let control = SchemaName::new(format!("{}_control", bench.schema.as_str()))?;
    write_expired(bench, &control, expired).await?;
    let coordinator = bench
        .within(
            "start control",
            bench
                .builder_for(&control)
                .config(RuntimeConfig {
                    cleanup: CleanupConfig {
                        // Never during the control.
                        interval: Duration::from_secs(24 * 3600),
                        ..CleanupConfig::default()
                    },
                    ..bench.config()
                })
                .start(),
        )
        .await??;
    warm_up(bench, &coordinator).await?;
    let mut control_count = 0;
    let mut control_time = 0.0;
    for _ in 0..rounds.len().max(1) {
        let bar = bench.progress(commands as u64, "flat, control");
        let round = flat_round(bench, &coordinator, commands, false, &bar).await?;
        bar.finish_and_clear();
        control_count += round.count;
        control_time += round.elapsed.as_secs_f64();
    }
    coordinator.shutdown().await;
    bench
        .execute_sql(&format!("DROP SCHEMA {} CASCADE", control.quoted()), &[])
        .await?;
    let control_rate = control_count as f64 / control_time;
    let ratio = during_rate / control_rate;
    let rows_per_s = removed as f64 / cleanup_s;
    bench.say(format!(
        "cleanup: removed {removed} rows in {cleanup_s:.2} s = {rows_per_s:.0} rows/s \
         (batch {batch}, pause {pause_ms} ms)"
    ));
    bench.say(format!(
        "cleanup: flat during cleanup {during_rate:.0} lifecycles/s over {} round(s){} = {:.0} % of {:.0}/s \
         (the same rounds without cleanup)",
        rounds.len(),
        if full_overlap {
            ""
        } else {
            " (partial overlap)"
        },
        ratio * 100.0,
        control_rate
    ));

    let mut report = Report::default();
    report.set("expired", expired);
    report.set("commands", commands);
    report.set("cleanup_batch", batch);
    report.set("cleanup_pause_ms", pause_ms);
    report.set("removed", removed);
    report.set("cleanup_s", round3(cleanup_s));
    report.set("cleanup_rows_per_s", round_to(rows_per_s, 0));
    report.set("lifecycles_per_s", round_to(control_rate, 0));
    report.set("lifecycles_per_s_first_round", round_to(alone.rate(), 0));
    report.set("lifecycles_per_s_during_cleanup", round_to(during_rate, 0));
    report.set("flat_rounds_during_cleanup", rounds.len());
    report.set("flat_full_overlap", full_overlap);
    report.set("flat_ratio_during_cleanup", round_to(ratio, 3));
    Ok(report)
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// One timed flat run.
struct FlatRound {
    count: usize,
    failed: usize,
    elapsed: Duration,
}

impl FlatRound {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
}

/// `n` no-op commands, each `execute`d in its own task, all at once; timed
/// from the first submit to the last outcome.
/// `keyed`: every command with an idempotency key (`execute_with`).
async fn flat_round(
    bench: &Bench,
    coordinator: &Coordinator,
    n: usize,
    keyed: bool,
    bar: &ProgressBar,
) -> Result<FlatRound, BoxError> {
    let start = Instant::now();
    let last = Rc::new(Cell::new(start));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let coordinator = coordinator.clone();
            let (last, bar) = (last.clone(), bar.clone());
            let key = keyed.then(|| format!("{run}-{i}"));
            actix::spawn(async move {
                let command = Noop { i: i as u32 };
                let outcome = match key {
                    Some(key) => {
                        let options = command_coordinator::SubmitOptions::new().key(key);
                        coordinator.execute_with(command, options).await
                    }
                    None => coordinator.execute(command).await,
                };
                last.set(last.get().max(Instant::now()));
                bar.inc(1);
                matches!(outcome, Ok(o) if o.succeeded())
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        if !bench.within("flat", task).await?? {
            failed += 1;
        }
    }
    Ok(FlatRound {
        count: n,
        failed,
        elapsed: last.get() - start,
    })
}

/// A small untimed flat run: opens the pool's connections and prepares the
/// writer's statements before anything is timed.
async fn warm_up(bench: &Bench, coordinator: &Coordinator) -> Result<(), BoxError> {
    let round = flat_round(
        bench,
        coordinator,
        WARM_UP_COMMANDS,
        false,
        &ProgressBar::hidden(),
    )
    .await?;
    if round.failed > 0 {
        return Err(format!("{} warm-up commands failed", round.failed).into());
    }
    Ok(())
}

/// The process's resident set size, from /proc/self/status (`VmRSS`).
fn vm_rss_bytes() -> Result<u64, BoxError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed VmRSS line")?
        .parse()?;
    Ok(kib * 1024)
}

/// Returns the allocator's free memory to the kernel (glibc's `malloc_trim`),
/// so that RSS shows what is live; `false` where there is no such call.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() -> bool {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim only releases free memory of glibc's allocator
    // (which Rust's global allocator uses here); any pad is valid.
    unsafe { malloc_trim(0) };
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> bool {
    false
}

/// CPU time (user + system) this process used so far, from /proc/self/stat.
fn process_cpu_seconds() -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces: count
    // fields after its closing parenthesis, where field 3 (state) is index 0,
    // so utime (field 14) is index 11 and stime (field 15) index 12.
    let rest = &stat[stat.rfind(')').ok_or("malformed /proc/self/stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("no stime")?.parse()?;
    Ok((utime + stime) as f64 / CLOCK_TICKS_PER_S)
}

/// The 1-minute load average (/proc/loadavg), when readable.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Cumulative counters of this database from pg_stat_database.
struct DbCounters {
    commits: i64,
    rows_written: i64,
}

async fn db_counters(client: &tokio_postgres::Client) -> Result<DbCounters, BoxError> {
    // Statistics are read from a snapshot per transaction; each query here is
    // its own transaction, so it sees fresh counters (PostgreSQL 15 flushes
    // other backends' counters at least about once a second).
    let row = client
        .query_one(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted \
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok(DbCounters {
        commits: row.get(0),
        rows_written: row.get(1),
    })
}

/// Calls of all statements in this database, when pg_stat_statements is
/// loaded (shared_preload_libraries); `None` otherwise.
async fn db_statements(client: &tokio_postgres::Client) -> Option<i64> {
    client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .ok()
        .map(|row| row.get(0))
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

fn round3(x: f64) -> f64 {
    round_to(x, 3)
}
