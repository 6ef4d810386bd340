//! `command-coordinator`: the operator's view of `command_entities`.
//!
//! Talks to PostgreSQL directly, so it works while no host runs:
//!
//! ```text
//! command-coordinator --database-url postgres://app@db/app migrate
//! command-coordinator list --status ACTIVE --older-than 2h
//! command-coordinator show 0b7e…            # the whole hierarchy, as a tree
//! command-coordinator stats --json
//! command-coordinator cleanup --older-than 30days --dry-run
//! command-coordinator cancel 0b7e…
//! command-coordinator serve --bind 127.0.0.1:8080 --read-only   # the web dashboard
//! ```
//!
//! What removes or cancels asks first on a terminal (`--yes` for scripts; with
//! no terminal to ask and no `--yes`, it refuses), and cleanup refuses a
//! retention under [`MIN_RETENTION`] without `--force`: `--older-than 0s`, or
//! `7m` (minutes) typed by someone who meant months, would remove everything
//! that just ended.
//!
//! Errors are one line on stderr; the exit status is 2 for bad usage and 1
//! for anything that went wrong at run time (unreachable database, no such
//! command).

mod db;
mod duration;
mod list;
mod output;
mod serve;
mod show;
mod stats;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use command_coordinator::{CancelOutcome, CommandId, CommandStore, SchemaName};

use db::{CliError, Db, Result};
use output::emit;

/// The shortest retention `cleanup` applies without `--force`. Ended
/// hierarchies are what an operator reads when something went wrong; a
/// retention shorter than this is far more likely a slip (`0s`, or `7m`
/// meaning 7 minutes) than a plan.
const MIN_RETENTION: Duration = Duration::from_secs(3600);

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
    Migrate,
    /// List commands, newest first.
    List(ListArgs),
    /// Draw the whole hierarchy containing a command.
    Show {
        /// Any command of the hierarchy; the tree starts at its root.
        id: CommandId,
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
    },
    /// Request cancellation of a command and its descendants that have not ended.
    ///
    /// Says how many commands it will cancel and asks first (--yes for scripts).
    Cancel {
        /// The command to cancel.
        id: CommandId,
        /// Do not ask for confirmation (for scripts; without it and without a terminal, cancel refuses).
        #[arg(long, short = 'y')]
        yes: bool,
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
    /// Only this status, as stored (ACTIVE, ENDED_WITH_FAILURE...); repeatable.
    #[arg(long, value_name = "STATUS")]
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
    /// Only the hierarchy of this root.
    #[arg(long, value_name = "ID")]
    root: Option<CommandId>,
    /// At most this many commands.
    #[arg(long, default_value_t = 100, value_name = "N")]
    limit: u32,
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
        Cmd::Migrate => migrate(&db).await,
        Cmd::List(a) => {
            let filter = list::Filter {
                statuses: a.status,
                command_type: a.command_type,
                older_than: a.older_than,
                newer_than: a.newer_than,
                root: a.root,
                limit: a.limit,
            };
            list::run(&db, filter, a.json).await
        }
        Cmd::Show { id, json } => show::run(&db, id, json).await,
        Cmd::Stats { retention, json } => stats::run(&db, retention, json).await,
        Cmd::Cleanup {
            older_than,
            dry_run,
            force,
            yes,
        } => cleanup(&db, older_than, dry_run, force, yes).await,
        Cmd::Cancel { id, yes } => cancel(&db, id, yes).await,
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

async fn migrate(db: &Db) -> Result<()> {
    let report = command_coordinator::migrate(db.store.pool(), db.schema())
        .await
        .map_err(|e| db.store_error(e))?;
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

async fn cleanup(
    db: &Db,
    older_than: Duration,
    dry_run: bool,
    force: bool,
    yes: bool,
) -> Result<()> {
    let cutoff = duration::before_now(older_than).map_err(CliError::usage)?;
    // In words and as a date, so that "7m" cannot pass for seven months.
    let ended = format!(
        "ended more than {} ago (before {})",
        duration::words(older_than),
        cutoff.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if older_than < MIN_RETENTION && !force && !dry_run {
        return Err(CliError::usage(format!(
            "refusing to remove hierarchies that {ended}: --older-than is under the 1 hour floor \
             and could remove everything that just ended. For months write e.g. 7months (7m is \
             7 minutes); to go ahead anyway, add --force"
        )));
    }
    let expired = db
        .store
        .expired(cutoff)
        .await
        .map_err(|e| db.store_error(e))?;
    let what = format!(
        "{} rows in {} hierarchies that {ended}",
        expired.rows, expired.hierarchies
    );
    if dry_run {
        emit(&format!("dry run: would remove {what}\n"));
        return Ok(());
    }
    if expired.rows == 0 {
        emit(&format!("nothing to remove: no hierarchy {ended}\n"));
        return Ok(());
    }
    emit(&format!("will remove {what}\n"));
    confirm("Remove them?", yes)?;
    let removed = db
        .store
        .remove_before(cutoff)
        .await
        .map_err(|e| db.store_error(e))?;
    emit(&format!(
        "removed {removed} rows of hierarchies that {ended}\n"
    ));
    Ok(())
}

/// Goes on when `yes`, or when the user at the terminal answers yes to
/// `question`. With no terminal on stdin there is nobody to ask: refusing
/// beats hanging on a read, or taking end-of-input for consent.
fn confirm(question: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::usage(
            "not confirmed: stdin is not a terminal, so there is nobody to ask; \
             pass --yes to confirm (nothing was changed)",
        ));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .read_line(&mut answer)
        .map_err(|e| CliError::new(format!("cannot read the answer: {e}")))?;
    if is_yes(&answer) {
        Ok(())
    } else {
        Err(CliError::new("not confirmed: nothing was changed"))
    }
}

/// "y" or "yes", in any case; anything else (an empty line too) is no.
fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

async fn cancel(db: &Db, id: CommandId, yes: bool) -> Result<()> {
    // The same tree as the store's cancellation request: the command and
    // every descendant, counting those not ended.
    let sql = format!(
        "WITH RECURSIVE tree(id) AS ( \
           SELECT $1::uuid \
           UNION \
           SELECT c.command_id FROM {t} c JOIN tree ON c.parent_command_id = tree.id \
         ) \
         SELECT count(*) FROM {t} \
         WHERE command_id IN (SELECT id FROM tree) \
           AND (status IS NULL OR status NOT IN {ended})",
        t = db.table(),
        ended = db::ENDED
    );
    let live: i64 = db.query(&sql, &[id.as_uuid()]).await?[0].get(0);
    if live > 0 {
        let descendants = match live - 1 {
            0 => String::new(),
            1 => " and 1 descendant that has not ended".to_owned(),
            n => format!(" and {n} descendants that have not ended"),
        };
        let commands = if live == 1 { "command" } else { "commands" };
        emit(&format!(
            "will request cancellation of {live} {commands}: {id}{descendants}\n"
        ));
        confirm("Cancel them?", yes)?;
    }
    let outcome = db
        .store
        .request_cancel(id)
        .await
        .map_err(|e| db.store_error(e))?;
    match outcome {
        CancelOutcome::NotFound => Err(CliError::new(format!("no command {id}"))),
        CancelOutcome::AlreadyEnded(status) => {
            emit(&format!(
                "command {id} already ended ({status}): nothing to cancel\n"
            ));
            Ok(())
        }
        CancelOutcome::Requested { commands } => {
            emit(&format!(
                "cancellation requested for {commands} commands; a running host picks it up \
                 within a second, or the next host at start-up\n"
            ));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_is_yes() {
        for yes in ["y", "Y", "yes", "YES\n", " yes \r\n"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yess", "ja", "q"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }
}
