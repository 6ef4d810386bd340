//! `command-coordinator`: the operator's view of `command_entities`.
//!
//! Talks to PostgreSQL directly, so it works while no host runs:
//!
//! ```text
//! command-coordinator --database-url postgres://app@db/app migrate
//! command-coordinator list --status ACTIVE --older-than 2h
//! command-coordinator show 0b7e12ab             # the whole hierarchy, as a tree
//! command-coordinator stats --json
//! command-coordinator cleanup --older-than 30days --dry-run
//! command-coordinator cancel 0b7e12ab
//! command-coordinator fail 0b7e12ab --reason "type 7 was retired"   # rows no host can run
//! command-coordinator remove 0b7e12ab           # one hierarchy that has ended
//! command-coordinator serve --bind 127.0.0.1:8080 --read-only   # the web dashboard
//! command-coordinator hosts                     # who runs, their heartbeats, what they own
//! ```
//!
//! Wherever it takes a command id it also takes the first 8 (or more)
//! characters of one, as the tables and the demo print them; a prefix that
//! matches no command or several is an error that says so.
//!
//! Every subcommand that prints data takes `--json` (`serve` prints none):
//! one JSON document on stdout, anything said before a confirmation going
//! to stderr instead.
//!
//! What removes, ends or cancels asks first on a terminal (`--yes` for
//! scripts; with no terminal to ask and no `--yes`, it refuses). Cleanup
//! refuses a retention under [`cleanup::MIN_RETENTION`] without `--force`:
//! `--older-than 0s`, or `7m` (minutes) typed by someone who meant months,
//! would remove everything that just ended. `fail` refuses a hierarchy that
//! a live host owns without `--force`, and `remove` one that has not ended.
//!
//! `cancel` only records a request that a host carries out; a row no host
//! can run (its type registered by none, its parameters no longer decoding)
//! never ends that way. `fail` is the exit for those: it ends the hierarchy's
//! commands with failure in the database, running no code; `remove` (or
//! cleanup, later) then deletes it.
//!
//! Errors are one line on stderr that says what happened once; the exit
//! status is 2 for bad usage (and for a refusal that a flag would lift) and
//! 1 for anything that went wrong at run time (unreachable database, no such
//! command).

mod cancel;
mod cleanup;
mod db;
mod duration;
mod fail;
mod hierarchy;
mod hosts;
mod id;
mod list;
mod output;
mod remove;
mod serve;
mod show;
mod stats;

use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use command_coordinator::SchemaName;

use db::{CliError, Db, Result};
use id::IdArg;
use output::{emit, emit_json};
use serde_json::json;

/// Inspect and manage the commands of command-coordinator in PostgreSQL.
#[derive(Parser, Debug)]
#[command(name = "command-coordinator", version)]
struct Cli {
    /// PostgreSQL URL (postgres://user@host:port/db, or key=value pairs).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// Schema holding command_entities.
    #[arg(long, global = true, default_value = "public", value_name = "NAME")]
    schema: SchemaName,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the schema if needed and apply pending migrations.
    Migrate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List commands, newest first.
    List(ListArgs),
    /// Draw the whole hierarchy containing a command.
    Show {
        /// Any command of the hierarchy (its id, or the first 8+ characters); the tree starts at its root.
        #[arg(value_parser = IdArg::parse)]
        id: IdArg,
        /// Full ids and untruncated reasons (the default fits 100 columns).
        #[arg(long)]
        wide: bool,
        /// Print the tree as nested JSON.
        #[arg(long)]
        json: bool,
    },
    /// Counts by status and type, the oldest command not ended, what cleanup would remove.
    Stats {
        /// Retention that cleanup applies (the runtime's default is 7d), e.g. 7days, 6months.
        #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = duration::parse)]
        retention: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove hierarchies whose every command ended longer ago than DURATION.
    ///
    /// Says how many rows will go and asks first (--yes for scripts).
    Cleanup {
        /// e.g. 12h, 30days, 6months. Units: s, min (or m), h, days (or d),
        /// weeks (or w), months (or M), years (or y). Careful: 7m is 7 MINUTES;
        /// write 7months for months. Under 1 hour needs --force.
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        older_than: Duration,
        /// Only count what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Allow --older-than under 1 hour (which can remove everything that just ended).
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation (for scripts; without it and without a terminal, cleanup refuses).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Request cancellation of a command and its descendants that have not ended.
    ///
    /// A host carries the request out, and only one that registers the
    /// commands' types; for rows no host can run, use `fail`. Says how many
    /// commands it will cancel and asks first (--yes for scripts).
    Cancel {
        /// The command to cancel (its id, or the first 8+ characters).
        #[arg(value_parser = IdArg::parse)]
        id: IdArg,
        /// Do not ask for confirmation (for scripts; without it and without a terminal, cancel refuses).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// End with failure every command of a hierarchy that has not ended, running no code.
    ///
    /// The exit for rows no host can run (an unregistered or retired type,
    /// parameters that no longer decode): sets ENDED_WITH_FAILURE with the
    /// reason, marks the end delivered, runs no end method. Refuses while a
    /// live host owns the hierarchy (--force to go ahead); asks first (--yes).
    Fail {
        /// Any command of the hierarchy (its id, or the first 8+ characters).
        #[arg(value_parser = IdArg::parse)]
        id: IdArg,
        /// Why: stored as the failure reason of every command it ends.
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// End it even though a live host owns it. The rows lose their owner: that host's
        /// next write to them is refused and it stops them (code already running finishes
        /// its call). Prefer cancel while a host runs them.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation (for scripts; without it and without a terminal, fail refuses).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove one hierarchy whose every command ended, now.
    ///
    /// Refuses while any command of it has not ended; asks first (--yes).
    Remove {
        /// Any command of the hierarchy (its id, or the first 8+ characters).
        #[arg(value_parser = IdArg::parse)]
        id: IdArg,
        /// Do not ask for confirmation (for scripts; without it and without a terminal, remove refuses).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The hosts sharing the schema: state, heartbeat age (database clock),
    /// unfinished work owned; and the work no live host owns.
    Hosts {
        /// Also hosts that left or died more than an hour ago.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the web dashboard (basic auth when COMMAND_COORDINATOR_DASHBOARD_TOKEN is set).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        bind: String,
        /// Refuse every action (any request but GET and HEAD).
        #[arg(long)]
        read_only: bool,
        /// Path the dashboard is served under (/cc); default the root.
        #[arg(long, default_value = "/", value_name = "PATH")]
        base_path: String,
    },
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Only this status (ACTIVE, ended_with_failure...; any case); repeatable.
    #[arg(long, value_name = "STATUS", value_parser = list::parse_status)]
    status: Vec<String>,
    /// Only this type: its number, or its class name (Merge, or a full path).
    #[arg(long = "type", value_name = "N")]
    command_type: Option<String>,
    /// Only commands created longer ago than this (90s, 15min, 2h, 7days; m is minutes, M months).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    older_than: Option<Duration>,
    /// Only commands created within this (90s, 15min, 2h, 7days; m is minutes, M months).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    newer_than: Option<Duration>,
    /// Only the hierarchy of this root (its id, or the first 8+ characters).
    #[arg(long, value_name = "ID", value_parser = IdArg::parse)]
    root: Option<IdArg>,
    /// At most this many commands (at least 1).
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = list::parse_limit)]
    limit: u32,
    /// Full ids and untruncated reasons.
    #[arg(long)]
    wide: bool,
    /// Print a JSON array.
    #[arg(long)]
    json: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code)
        }
    }
}

/// Help and version as clap prints them; any other argument error as one line.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
        _ => {
            // The first paragraph says what is wrong (a missing argument is
            // named on the lines after "not provided:"); usage and tips follow.
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = match first.join(" ") {
                m if m.is_empty() => "error: bad arguments".to_owned(),
                m => m,
            };
            eprintln!("{message} (see --help)");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let url = cli.database_url.filter(|u| !u.is_empty()).ok_or_else(|| {
        CliError::usage("no database: pass --database-url URL or set DATABASE_URL")
    })?;
    let db = Db::new(&url, cli.schema)?;
    match cli.command {
        Cmd::Migrate { json } => migrate(&db, json).await,
        Cmd::List(a) => {
            let root = match &a.root {
                Some(root) => Some(root.resolve(&db).await?),
                None => None,
            };
            let filter = list::Filter {
                statuses: a.status,
                command_type: a.command_type,
                older_than: a.older_than,
                newer_than: a.newer_than,
                root,
                limit: a.limit,
            };
            list::run(&db, filter, a.wide, a.json).await
        }
        Cmd::Show { id, wide, json } => {
            let id = id.resolve(&db).await?;
            show::run(&db, id, wide, json).await
        }
        Cmd::Stats { retention, json } => stats::run(&db, retention, json).await,
        Cmd::Cleanup {
            older_than,
            dry_run,
            force,
            yes,
            json,
        } => {
            let args = cleanup::Cleanup {
                older_than,
                dry_run,
                force,
                yes,
                json,
            };
            cleanup::run(&db, args).await
        }
        Cmd::Cancel { id, yes, json } => cancel::run(&db, cancel::Cancel { id, yes, json }).await,
        Cmd::Fail {
            id,
            reason,
            force,
            yes,
            json,
        } => {
            let args = fail::Fail {
                id,
                reason,
                force,
                yes,
                json,
            };
            fail::run(&db, args).await
        }
        Cmd::Remove { id, yes, json } => remove::run(&db, remove::Remove { id, yes, json }).await,
        Cmd::Hosts { all, json } => hosts::run(&db, all, json).await,
        Cmd::Serve {
            bind,
            read_only,
            base_path,
        } => {
            // actix-web runs its own System: on a thread of its own, away
            // from this runtime (which has nothing else to do meanwhile).
            let schema = db.schema().clone();
            let serve = serve::Serve {
                bind,
                read_only,
                base_path,
            };
            std::thread::spawn(move || serve::run(&url, schema, serve))
                .join()
                .map_err(|_| CliError::new("the dashboard server panicked"))?
        }
    }
}

async fn migrate(db: &Db, json: bool) -> Result<()> {
    let report = command_coordinator::migrate(db.store.pool(), db.schema())
        .await
        .map_err(|e| db.store_error("apply the migrations", e))?;
    if json {
        emit_json(&json!({ "schema": db.schema().as_str(), "applied": report.applied }));
        return Ok(());
    }
    let mut out = String::new();
    for name in &report.applied {
        out.push_str(&format!("applied {name}\n"));
    }
    if report.applied.is_empty() {
        out.push_str(&format!(
            "schema {} is up to date: nothing to apply\n",
            db.schema()
        ));
    } else {
        out.push_str(&format!(
            "schema {}: {} migration(s) applied\n",
            db.schema(),
            report.applied.len()
        ));
    }
    emit(&out);
    Ok(())
}
