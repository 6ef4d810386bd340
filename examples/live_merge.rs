//! LiveMerge, the coordinator's main demo: `RemoveSnapshot` commands, each
//! merging several disks through `Merge` child commands, as oVirt's
//! RemoveSnapshot / LiveMerge does.
//!
//! ```text
//! cargo run --example live_merge                              # 5 snapshots × 3 disks, throwaway PostgreSQL
//! cargo run --example live_merge -- --parents 10 --fail-rate 0.5
//! cargo run --example live_merge -- --help
//! ```
//!
//! Each `RemoveSnapshot` (command type 1) submits `--children` `Merge`
//! children (command type 2) in its `execute`. A `Merge`'s `execute` "starts a
//! block job": it records the job's start time, its duration (200–1500 ms)
//! and whether it will fail (chance `--fail-rate`) in its own fields, which
//! the coordinator persists with the command once `execute` returned. Its
//! `poll` compares the wall clock with that record, so a job keeps its
//! schedule across a restart of the process. The parent, polled once every
//! merge ended successfully, succeeds with the sum of the merged bytes; a
//! failed merge fails its parent.
//!
//! While the commands run, a live tree of their statuses is redrawn when
//! stdout is a terminal (a progress line per second otherwise). The last line
//! is `ended: N succeeded, M failed`, counted over the `RemoveSnapshot`
//! hierarchies. The exit status is 0 once every hierarchy ended, whatever its
//! outcome.
//!
//! Without `--database-url` (or `DATABASE_URL`) the demo runs against a
//! throwaway PostgreSQL cluster, deleted at exit. With a persistent database
//! it shows what the coordinator is for, surviving a crash:
//!
//! ```text
//! cargo run --example live_merge -- --database-url $URL --parents 50
//! # kill it mid-way with SIGKILL (kill -9 <pid>): no shutdown code runs
//! cargo run --example live_merge -- --database-url $URL --resume
//! ```
//!
//! The second run submits nothing: starting the coordinator rebuilds every
//! unfinished command from `command_entities`, and the demo waits for the
//! unfinished `RemoveSnapshot` hierarchies it finds there. Merges started
//! before the kill finish on their original schedule. Both command types
//! declare their `execute` safe to run again (`InterruptedExecute::Rerun`): a
//! `RemoveSnapshot` interrupted while submitting its merges submits only the
//! missing ones, and a merge whose start was never recorded is started again.
//!
//! Logs go to stderr, at `warn` unless `RUST_LOG` says otherwise.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use command_coordinator::embedded::{EmbeddedOptions, EmbeddedPostgres};
use command_coordinator::{
    Command, CommandContext, CommandError, CommandId, CommandStatus, CommandStore, Coordinator,
    DatabaseConfig, InterruptedExecute, Outcome, PgStore, PollOutcome, migrate,
};
use serde::{Deserialize, Serialize};

/// How many hierarchies the live tree shows; the rest are summarised.
const SHOWN_TREES: usize = 20;
/// How often the live tree is redrawn.
const REDRAW: Duration = Duration::from_millis(200);
/// At most one progress line this often when stdout is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Bounds of a simulated block job's duration.
const JOB_MS: std::ops::RangeInclusive<u64> = 200..=1500;

/// Runs LiveMerge-like command hierarchies through the command coordinator.
#[derive(Parser, Debug)]
#[command(name = "live_merge")]
struct Args {
    /// Number of RemoveSnapshot commands (hierarchies) to submit.
    #[arg(long, default_value_t = 5)]
    parents: usize,
    /// Number of Merge children each RemoveSnapshot submits.
    #[arg(long, default_value_t = 3)]
    children: u32,
    /// Chance (0 to 1) that a merge's block job fails.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fail_rate)]
    fail_rate: f64,
    /// PostgreSQL URL (default: $DATABASE_URL, else a throwaway embedded cluster).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Submit nothing: wait for the unfinished hierarchies left in the database.
    #[arg(long)]
    resume: bool,
    /// First poll interval in milliseconds (the interval backs off up to 4×).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    poll_ms: u64,
}

fn parse_fail_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

/// oVirt's RemoveSnapshot: merges every disk of a snapshot, one `Merge` each.
#[derive(Debug, Serialize, Deserialize)]
struct RemoveSnapshot {
    vm: String,
    snapshot: String,
    disks: u32,
    fail_rate: f64,
}

impl Command for RemoveSnapshot {
    const COMMAND_TYPE: i32 = 1;
    // Idempotent: a rerun submits only the merges not persisted yet.
    const ON_INTERRUPTED_EXECUTE: InterruptedExecute = InterruptedExecute::Rerun;
    type Output = u64;

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        // Children are listed in submission order, so the first `submitted`
        // disks already have their merge (after an interrupted execute).
        let submitted = ctx
            .children()
            .iter()
            .filter(|c| c.command_type == Merge::COMMAND_TYPE)
            .count() as u32;
        for disk in submitted..self.disks {
            ctx.submit_child(Merge::new(disk, self.fail_rate)).await?;
        }
        Ok(())
    }

    async fn poll(&mut self, ctx: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
        // Called only once every merge ended successfully.
        let merged = ctx.child_outputs::<Merge>()?;
        Ok(PollOutcome::Succeeded(
            merged.iter().map(|m| m.merged_bytes).sum(),
        ))
    }
}

/// oVirt's Merge: one disk's live merge, a block job on the host.
#[derive(Debug, Serialize, Deserialize)]
struct Merge {
    disk: u32,
    fail_rate: f64,
    /// Recorded by `execute` and persisted with the command.
    job: Option<BlockJob>,
}

/// The simulated block job, as the host would report it.
#[derive(Debug, Serialize, Deserialize)]
struct BlockJob {
    started_at: DateTime<Utc>,
    duration_ms: u64,
    will_fail: bool,
    bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct MergeOutput {
    merged_bytes: u64,
}

impl Merge {
    fn new(disk: u32, fail_rate: f64) -> Self {
        Self {
            disk,
            fail_rate,
            job: None,
        }
    }
}

impl Command for Merge {
    const COMMAND_TYPE: i32 = 2;
    // The job is simulated: one whose start was never recorded can be
    // started again. (A real one would first ask the host for a running job.)
    const ON_INTERRUPTED_EXECUTE: InterruptedExecute = InterruptedExecute::Rerun;
    type Output = MergeOutput;

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        self.job = Some(BlockJob {
            started_at: Utc::now(),
            duration_ms: fastrand::u64(JOB_MS),
            will_fail: fastrand::f64() < self.fail_rate,
            bytes: fastrand::u64(64..=4096) << 20,
        });
        Ok(())
    }

    async fn poll(
        &mut self,
        _ctx: &CommandContext,
    ) -> Result<PollOutcome<MergeOutput>, CommandError> {
        let Some(job) = &self.job else {
            return Ok(PollOutcome::Failed(format!(
                "no block job recorded for disk {}",
                self.disk
            )));
        };
        let elapsed = (Utc::now() - job.started_at).num_milliseconds();
        if elapsed < job.duration_ms as i64 {
            Ok(PollOutcome::Running)
        } else if job.will_fail {
            Ok(PollOutcome::Failed(format!(
                "block job failed on disk {}",
                self.disk
            )))
        } else {
            Ok(PollOutcome::Succeeded(MergeOutput {
                merged_bytes: job.bytes,
            }))
        }
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
        .init();

    // Kept alive until the end of main: dropping it stops the cluster.
    let mut embedded: Option<EmbeddedPostgres> = None;
    match run(args, &mut embedded).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("live_merge: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(true)` when every hierarchy waited for ended.
async fn run(
    args: Args,
    embedded: &mut Option<EmbeddedPostgres>,
) -> Result<bool, Box<dyn std::error::Error>> {
    let url = args
        .database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| !u.is_empty());
    let url = match url {
        Some(url) => url,
        None => {
            if args.resume {
                return Err("--resume needs a persistent database: pass --database-url".into());
            }
            embedded
                .insert(EmbeddedPostgres::start(EmbeddedOptions::default())?)
                .url()
        }
    };
    let config = DatabaseConfig::from_url(&url)?;
    let pool = config.create_pool()?;
    // Migrated before the coordinator starts so that --resume can list the
    // unfinished hierarchies before they get the chance to end.
    migrate(&pool, config.schema()).await?;
    let store = PgStore::new(pool, config.schema().clone());

    let resumable = if args.resume {
        let loaded = store.commands_with_callback_enabled().await?;
        for bad in &loaded.bad_rows {
            eprintln!("skipping an unreadable row: {bad}");
        }
        loaded
            .entities
            .iter()
            .filter(|e| e.parent_id.is_none())
            .map(|e| e.id)
            .collect()
    } else {
        Vec::new()
    };

    let poll = Duration::from_millis(args.poll_ms);
    let coordinator = Coordinator::builder(store.clone())
        .register::<RemoveSnapshot>()
        .register::<Merge>()
        .poll_interval(poll)
        .max_poll_interval(poll * 4)
        .start()
        .await?;

    let roots: Vec<CommandId> = if args.resume {
        if resumable.is_empty() {
            println!("nothing to resume");
            println!("ended: 0 succeeded, 0 failed");
            coordinator.shutdown().await;
            return Ok(true);
        }
        println!(
            "resuming {} unfinished RemoveSnapshot hierarchies",
            resumable.len()
        );
        resumable
    } else {
        let mut roots = Vec::with_capacity(args.parents);
        for i in 0..args.parents {
            let command = RemoveSnapshot {
                vm: format!("vm-{:02}", i + 1),
                snapshot: format!("snap-{}", i + 1),
                disks: args.children,
                fail_rate: args.fail_rate,
            };
            roots.push(coordinator.submit(command).await?);
        }
        println!(
            "submitted {} RemoveSnapshot commands with {} Merge children each",
            roots.len(),
            args.children
        );
        roots
    };

    // One waiter per hierarchy, all at once.
    let ended = Rc::new(Cell::new(0usize));
    let waiters: Vec<_> = roots
        .iter()
        .map(|&id| {
            let coordinator = coordinator.clone();
            let ended = ended.clone();
            actix::spawn(async move {
                let outcome = coordinator.wait_for(id).await;
                ended.set(ended.get() + 1);
                outcome
            })
        })
        .collect();

    let terminal = std::io::stdout().is_terminal();
    let done = Rc::new(Cell::new(false));
    let display = actix::spawn(show_progress(
        coordinator.clone(),
        roots.clone(),
        ended.clone(),
        done.clone(),
        terminal,
    ));

    let mut outcomes: Vec<Result<Outcome, String>> = Vec::with_capacity(roots.len());
    for waiter in waiters {
        outcomes.push(match waiter.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("waiter task failed: {e}")),
        });
    }
    done.set(true);
    let drawn = display.await.unwrap_or(0);

    // The final picture, replacing the live one on a terminal.
    let mut out = String::new();
    if terminal {
        clear_lines(&mut out, drawn);
    }
    render(&coordinator, &roots, ended.get(), terminal, &mut out).await;
    print!("{out}");

    let succeeded = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(o) if o.succeeded()))
        .count();
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(o) if !o.succeeded()))
        .count();
    let mut all_ended = true;
    for (id, outcome) in roots.iter().zip(&outcomes) {
        if let Err(e) = outcome {
            all_ended = false;
            eprintln!("hierarchy {id} did not end: {e}");
        }
    }
    println!("ended: {succeeded} succeeded, {failed} failed");
    std::io::stdout().flush()?;
    coordinator.shutdown().await;
    if !all_ended {
        eprintln!(
            "live_merge: {} of {} hierarchies did not end (see above)",
            roots.len() - succeeded - failed,
            roots.len()
        );
    }
    Ok(all_ended)
}

/// Redraws the live tree (terminal) or prints progress lines (otherwise)
/// until `done`; returns how many lines are on screen.
async fn show_progress(
    coordinator: Coordinator,
    roots: Vec<CommandId>,
    ended: Rc<Cell<usize>>,
    done: Rc<Cell<bool>>,
    terminal: bool,
) -> usize {
    let mut drawn = 0;
    let mut last_progress: Option<(Instant, usize)> = None;
    while !done.get() {
        if terminal {
            let mut out = String::new();
            clear_lines(&mut out, drawn);
            let lines = render(&coordinator, &roots, ended.get(), true, &mut out).await;
            if done.get() {
                // The final render replaces the frame on screen; don't flash a
                // stale one in between.
                break;
            }
            drawn = lines;
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
        } else {
            let now = Instant::now();
            let count = ended.get();
            let due =
                last_progress.is_none_or(|(at, last)| count != last && now - at >= PROGRESS_EVERY);
            if due {
                println!("ended {count}/{} hierarchies", roots.len());
                last_progress = Some((now, count));
            }
        }
        actix::clock::sleep(REDRAW).await;
    }
    drawn
}

/// Moves the cursor up over the `lines` last drawn and clears them.
fn clear_lines(out: &mut String, lines: usize) {
    if lines > 0 {
        out.push_str(&format!("\x1b[{lines}A\r\x1b[J"));
    }
}

/// Appends the trees of the first roots (and a summary line) to `out`;
/// returns the number of lines appended.
async fn render(
    coordinator: &Coordinator,
    roots: &[CommandId],
    ended: usize,
    colour: bool,
    out: &mut String,
) -> usize {
    let mut lines = Vec::new();
    for (i, &root) in roots.iter().take(SHOWN_TREES).enumerate() {
        let status = coordinator.status(root).await.ok().flatten();
        lines.push(format!(
            "RemoveSnapshot {:>2} {}  {}",
            i + 1,
            short(root),
            paint(status, colour)
        ));
        let children = coordinator.children(root).await.unwrap_or_default();
        for (j, &child) in children.iter().enumerate() {
            let status = coordinator.status(child).await.ok().flatten();
            let reason = if is_failure(status) {
                match coordinator.get(child).await {
                    Ok(Some(row)) => row.failure_reason,
                    _ => None,
                }
            } else {
                None
            };
            let branch = if j + 1 == children.len() {
                "└─"
            } else {
                "├─"
            };
            let mut line = format!(
                "  {branch} Merge disk-{j} {}  {}",
                short(child),
                paint(status, colour)
            );
            if let Some(reason) = reason {
                line.push_str(&format!("  ({})", truncate(&reason, 60)));
            }
            lines.push(line);
        }
    }
    if roots.len() > SHOWN_TREES {
        lines.push(format!(
            "… and {} more hierarchies not shown",
            roots.len() - SHOWN_TREES
        ));
    }
    lines.push(format!("ended {ended}/{} hierarchies", roots.len()));
    for line in &lines {
        out.push_str(line);
        out.push('\n');
    }
    lines.len()
}

fn short(id: CommandId) -> String {
    id.to_string()[..8].to_owned()
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

fn is_failure(status: Option<CommandStatus>) -> bool {
    matches!(
        status,
        Some(
            CommandStatus::Failed
                | CommandStatus::ExecutionFailed
                | CommandStatus::EndedWithFailure
        )
    )
}

/// The status name, coloured with ANSI escapes when `colour`.
fn paint(status: Option<CommandStatus>, colour: bool) -> String {
    let name = status.map_or("?", CommandStatus::as_str);
    if !colour {
        return name.to_owned();
    }
    let code = match status {
        Some(CommandStatus::EndedSuccessfully) => "32",
        Some(CommandStatus::Active | CommandStatus::Succeeded) => "33",
        _ if is_failure(status) => "31",
        _ => "2",
    };
    format!("\x1b[{code}m{name}\x1b[0m")
}
