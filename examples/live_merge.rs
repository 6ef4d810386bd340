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
//! Each `RemoveSnapshot` (command type 301) submits `--children` `Merge`
//! children (command type 302) in its `execute`. A `Merge`'s `execute` "starts a
//! block job": it records the job's start time, its duration (200–1500 ms)
//! and whether it will fail (chance `--fail-rate`) in its own fields, which
//! the coordinator persists with the command once `execute` returned. Its
//! `poll` compares the wall clock with that record, so a job keeps its
//! schedule across a restart of the process. The parent, polled once every
//! merge ended successfully, succeeds with the sum of the merged bytes; a
//! failed merge fails its parent.
//!
//! Each example has command type numbers of its own (store_demo 101–102,
//! torture_host 201, 202 and 999, live_merge 301–302, web_host 401–402, orders 501–502, load
//! 901–904): run one after another on the same database, none finds rows of
//! another under its own numbers that it could not decode.
//!
//! While the commands run, a live tree of their statuses is redrawn when
//! stdout is a terminal, within the terminal's size: no line longer than its
//! width (lines are cut, never wrapped), and when the trees are taller than
//! it, a summary and the hierarchies still active, one line each. When stdout
//! is not a terminal (a pipe, a file, CI) nothing is redrawn: a progress line
//! at most once a second. The last line is `ended: N succeeded, M failed`,
//! counted over the `RemoveSnapshot` hierarchies. The exit status is 0 once
//! every hierarchy ended, whatever its outcome.
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
//! (A host killed with SIGKILL is adopted one lease after its last heartbeat,
//! 10 s by default: `--lease-s` shortens it.)
//!
//! Several processes on one database are several hosts: each runs the
//! hierarchies it submitted, and when one dies the others adopt its work.
//!
//! ```text
//! cargo run --example live_merge -- --database-url $URL --host-name a --parents 30 --lease-s 3
//! cargo run --example live_merge -- --database-url $URL --host-name b --resume --lease-s 3
//! # in a third terminal: command-coordinator --database-url $URL hosts
//! # kill -9 the first one: three seconds later b adopts its hierarchies,
//! # and its tree shows them finishing
//! ```
//!
//! Logs go to stderr, at `warn` unless `RUST_LOG` says otherwise, coloured
//! only when stderr is a terminal.

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
use crossterm::style::{Color, Stylize};
use crossterm::{cursor, queue, terminal};
use serde::{Deserialize, Serialize};

/// How many hierarchies the trees show; the rest are summarised.
const SHOWN_TREES: usize = 20;
/// How much of a failure reason a tree line shows.
const REASON_CHARS: usize = 60;
/// How many active hierarchies beyond the first [`SHOWN_TREES`] the live
/// display reads the merges of: more than any terminal has rows.
const ACTIVE_DETAILED: usize = 200;
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
    /// This process's name among the hosts sharing the database
    /// (`command-coordinator hosts`); the machine's name by default.
    #[arg(long, value_name = "NAME")]
    host_name: Option<String>,
    /// The lease in seconds: how long after a host stops heartbeating the
    /// others adopt its hierarchies (the library's default is 10).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_s: Option<u64>,
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
    const COMMAND_TYPE: i32 = 301;
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
    const COMMAND_TYPE: i32 = 302;
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
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // Kept alive until the end of main: dropping it stops the cluster.
    let mut embedded: Option<EmbeddedPostgres> = None;
    match run(args, &mut embedded).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("live_merge: {}", command_coordinator::error_chain(&*e));
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
    let store = PgStore::new(pool, config.schema().clone()).with_notifications(&config);

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
    let mut builder = Coordinator::builder(store.clone())
        .register::<RemoveSnapshot>()
        .register::<Merge>()
        .poll_interval(poll)
        .max_poll_interval(poll * 4);
    if let Some(name) = &args.host_name {
        builder = builder.host_name(name.clone());
    }
    if let Some(lease) = args.lease_s {
        let lease = Duration::from_secs(lease);
        builder = builder
            .lease(lease)
            .heartbeat_interval(
                (lease / 5).clamp(Duration::from_millis(50), Duration::from_secs(2)),
            )
            .host_check_interval(
                (lease / 10).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            );
    }
    let coordinator = builder.start().await?;

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
    let drawn = display.await.unwrap_or_default();

    // The final picture, replacing the live one on a terminal. It is not
    // redrawn, so it may scroll: every tree shown (up to SHOWN_TREES), each
    // line still cut to the terminal's width.
    let snapshot = Snapshot::take(&coordinator, &roots, ended.get()).await;
    let width = terminal
        .then(|| terminal::size().ok())
        .flatten()
        .map(|(w, _)| w);
    {
        let mut stdout = std::io::stdout().lock();
        if terminal {
            let _ = drawn.clear(&mut stdout);
        }
        for line in snapshot.trees() {
            let _ = writeln!(stdout, "{}", line.show(width, terminal));
        }
    }

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
/// until `done`; returns what is on screen.
async fn show_progress(
    coordinator: Coordinator,
    roots: Vec<CommandId>,
    ended: Rc<Cell<usize>>,
    done: Rc<Cell<bool>>,
    terminal: bool,
) -> Frame {
    let mut frame = Frame::default();
    let mut last_progress: Option<(Instant, usize)> = None;
    while !done.get() {
        if terminal {
            let snapshot = Snapshot::take(&coordinator, &roots, ended.get()).await;
            if done.get() {
                // The final picture replaces the frame on screen; don't flash
                // a stale one in between.
                break;
            }
            // Asked every time: the terminal may have been resized.
            let size = terminal::size().unwrap_or((80, 24));
            let mut stdout = std::io::stdout().lock();
            let _ = frame.redraw(&mut stdout, &snapshot.fit(size), size);
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
    frame
}

/// What the live display has on screen: how many lines, at which size.
#[derive(Default)]
struct Frame {
    lines: u16,
    size: Option<(u16, u16)>,
}

impl Frame {
    /// Replaces the lines on screen with `lines`. They fit `size`: at most
    /// one line fewer than its rows (the cursor rests on the last), none
    /// wider than its columns less one (so that none wraps, and the cursor
    /// can go back up exactly as many lines as were written). After a resize,
    /// the old lines may have wrapped or scrolled away: the screen is cleared.
    fn redraw(
        &mut self,
        out: &mut impl Write,
        lines: &[String],
        size: (u16, u16),
    ) -> std::io::Result<()> {
        if self.size.is_some_and(|old| old != size) {
            queue!(
                out,
                terminal::Clear(terminal::ClearType::All),
                cursor::MoveTo(0, 0)
            )?;
        } else {
            self.clear(out)?;
        }
        for line in lines {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        self.lines = lines.len() as u16;
        self.size = Some(size);
        Ok(())
    }

    /// Moves the cursor up over the lines drawn and clears them.
    fn clear(&self, out: &mut impl Write) -> std::io::Result<()> {
        if self.lines > 0 {
            queue!(
                out,
                cursor::MoveUp(self.lines),
                cursor::MoveToColumn(0),
                terminal::Clear(terminal::ClearType::FromCursorDown)
            )?;
        }
        out.flush()
    }
}

/// One line of the display, in spans so that it can be cut to a width
/// before it is coloured (escape codes have no width).
struct Line(Vec<(String, Option<Color>)>);

impl Line {
    fn plain(text: impl Into<String>) -> Self {
        Self(vec![(text.into(), None)])
    }

    fn push(mut self, text: impl Into<String>, colour: Option<Color>) -> Self {
        self.0.push((text.into(), colour));
        self
    }

    /// The line cut to `width` columns less one (with `…`), coloured when `colour`.
    fn show(&self, width: Option<u16>, colour: bool) -> String {
        let mut room = width.map_or(usize::MAX, |w| usize::from(w).saturating_sub(1));
        let total: usize = self.0.iter().map(|(t, _)| t.chars().count()).sum();
        let cut = total > room;
        if cut {
            room = room.saturating_sub(1);
        }
        let mut out = String::new();
        for (text, hue) in &self.0 {
            if room == 0 {
                break;
            }
            let part: String = text.chars().take(room).collect();
            room -= part.chars().count();
            match hue {
                Some(hue) if colour => out.push_str(&part.with(*hue).to_string()),
                _ => out.push_str(&part),
            }
        }
        if cut {
            out.push('…');
        }
        out
    }
}

/// One hierarchy as the display shows it.
struct Tree {
    root: CommandId,
    status: Option<CommandStatus>,
    merges: Vec<(CommandId, Option<CommandStatus>, Option<String>)>,
}

/// The statuses of the hierarchies at one moment.
struct Snapshot {
    trees: Vec<Tree>,
    total: usize,
    ended: usize,
}

impl Snapshot {
    /// Reads the first [`SHOWN_TREES`] hierarchies and up to
    /// [`ACTIVE_DETAILED`] more active ones, and the status of every root,
    /// from the coordinator.
    async fn take(coordinator: &Coordinator, roots: &[CommandId], ended: usize) -> Self {
        let mut trees = Vec::with_capacity(roots.len());
        let mut detailed = 0;
        for (i, &root) in roots.iter().enumerate() {
            let status = coordinator.status(root).await.ok().flatten();
            let mut merges = Vec::new();
            let detail = i < SHOWN_TREES || (!is_ended(status) && detailed < ACTIVE_DETAILED);
            if detail {
                detailed += usize::from(i >= SHOWN_TREES);
                for child in coordinator.children(root).await.unwrap_or_default() {
                    let status = coordinator.status(child).await.ok().flatten();
                    let reason = if is_failure(status) {
                        match coordinator.get(child).await {
                            Ok(Some(row)) => row.failure_reason,
                            _ => None,
                        }
                    } else {
                        None
                    };
                    merges.push((child, status, reason));
                }
            }
            trees.push(Tree {
                root,
                status,
                merges,
            });
        }
        Self {
            trees,
            total: roots.len(),
            ended,
        }
    }

    /// The first [`SHOWN_TREES`] hierarchies as trees, then a summary line.
    fn trees(&self) -> Vec<Line> {
        let mut lines = Vec::new();
        for (i, tree) in self.trees.iter().take(SHOWN_TREES).enumerate() {
            lines.push(root_line(i, tree));
            for (j, (child, status, reason)) in tree.merges.iter().enumerate() {
                let branch = if j + 1 == tree.merges.len() {
                    "└─"
                } else {
                    "├─"
                };
                let mut line =
                    Line::plain(format!("  {branch} Merge disk-{j} {}  ", short(*child)))
                        .push(name(*status), hue(*status));
                if let Some(reason) = reason {
                    line = line.push(format!("  ({})", truncate(reason, REASON_CHARS)), None);
                }
                lines.push(line);
            }
        }
        if self.total > SHOWN_TREES {
            lines.push(Line::plain(format!(
                "… and {} more hierarchies not shown",
                self.total - SHOWN_TREES
            )));
        }
        lines.push(Line::plain(format!(
            "ended {}/{} hierarchies",
            self.ended, self.total
        )));
        lines
    }

    /// The display for a terminal of `(columns, rows)`: the trees when they
    /// fit, else a summary and the hierarchies still active, one line each
    /// (as many as fit).
    fn fit(&self, (columns, rows): (u16, u16)) -> Vec<String> {
        let room = usize::from(rows).saturating_sub(1).max(1);
        let show = |lines: Vec<Line>| -> Vec<String> {
            lines.iter().map(|l| l.show(Some(columns), true)).collect()
        };
        let trees = self.trees();
        if trees.len() <= room {
            return show(trees);
        }
        let active: Vec<(usize, &Tree)> = self
            .trees
            .iter()
            .enumerate()
            .filter(|(_, t)| !is_ended(t.status))
            .collect();
        let mut lines = vec![Line::plain(format!(
            "ended {}/{} hierarchies, {} active:",
            self.ended,
            self.total,
            active.len()
        ))];
        // Room for the active ones, keeping a line for "… and N more".
        let fits = if active.len() < room {
            active.len()
        } else {
            room.saturating_sub(2)
        };
        for &(i, tree) in active.iter().take(fits) {
            let merges_ended = tree.merges.iter().filter(|(_, s, _)| is_ended(*s)).count();
            lines.push(
                Line::plain(format!("{:>3} {}  ", i + 1, short(tree.root)))
                    .push(name(tree.status), hue(tree.status))
                    .push(
                        format!("  merges ended {merges_ended}/{}", tree.merges.len()),
                        None,
                    ),
            );
        }
        if fits < active.len() && lines.len() < room {
            lines.push(Line::plain(format!(
                "… and {} more active",
                active.len() - fits
            )));
        }
        show(lines)
    }
}

/// `RemoveSnapshot  3 1b2c3d4e  ACTIVE`.
fn root_line(i: usize, tree: &Tree) -> Line {
    Line::plain(format!(
        "RemoveSnapshot {:>2} {}  ",
        i + 1,
        short(tree.root)
    ))
    .push(name(tree.status), hue(tree.status))
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

fn is_ended(status: Option<CommandStatus>) -> bool {
    status.is_some_and(CommandStatus::is_ended)
}

fn name(status: Option<CommandStatus>) -> &'static str {
    status.map_or("?", CommandStatus::as_str)
}

/// Green success, yellow running, red failure, grey the rest.
fn hue(status: Option<CommandStatus>) -> Option<Color> {
    Some(match status {
        Some(CommandStatus::EndedSuccessfully) => Color::Green,
        Some(CommandStatus::Active | CommandStatus::Succeeded) => Color::Yellow,
        _ if is_failure(status) => Color::Red,
        _ => Color::DarkGrey,
    })
}
