//! `cleanup --older-than D`: removes the hierarchies whose every command
//! ended longer ago than D, as the runtime's cleanup actor does with its
//! retention, but now.

use std::time::Duration;

use command_coordinator::CommandStore;
use serde_json::json;

use crate::db::{CliError, Db, Result};
use crate::duration;
use crate::output::{confirm, emit, emit_json, note};

/// The shortest retention `cleanup` applies without `--force`. Ended
/// hierarchies are what an operator reads when something went wrong; a
/// retention shorter than this is far more likely a slip (`0s`, or `7m`
/// meaning 7 minutes) than a plan.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

/// What `cleanup` was asked for.
pub struct Cleanup {
    pub older_than: Duration,
    pub dry_run: bool,
    pub force: bool,
    pub yes: bool,
    pub json: bool,
}

pub async fn run(db: &Db, args: Cleanup) -> Result<()> {
    let cutoff = duration::before_now(args.older_than).map_err(CliError::usage)?;
    // In words and as a date, so that "7m" cannot pass for seven months.
    let ended = format!(
        "ended more than {} ago (before {})",
        duration::words(args.older_than),
        cutoff.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if args.older_than < MIN_RETENTION && !args.force && !args.dry_run {
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
        .map_err(|e| db.store_error("count what cleanup would remove", e))?;
    let report = |removed_rows: u64, dry_run: bool| {
        emit_json(&json!({
            "dry_run": dry_run,
            "cutoff": cutoff,
            "retention_seconds": args.older_than.as_secs(),
            "hierarchies": expired.hierarchies,
            "rows": removed_rows,
        }))
    };
    let what = format!(
        "{} rows in {} hierarchies that {ended}",
        expired.rows, expired.hierarchies
    );
    if args.dry_run {
        if args.json {
            report(expired.rows, true);
        } else {
            emit(&format!("dry run: would remove {what}\n"));
        }
        return Ok(());
    }
    if expired.rows == 0 {
        if args.json {
            report(0, false);
        } else {
            emit(&format!("nothing to remove: no hierarchy {ended}\n"));
        }
        return Ok(());
    }
    note(&format!("will remove {what}\n"), args.json);
    confirm("Remove them?", args.yes)?;
    let removed = db
        .store
        .remove_before(cutoff)
        .await
        .map_err(|e| db.store_error("remove the ended hierarchies", e))?;
    if args.json {
        report(removed, false);
    } else {
        emit(&format!(
            "removed {removed} rows of hierarchies that {ended}\n"
        ));
    }
    Ok(())
}
