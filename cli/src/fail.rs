//! `fail <id> --reason …`: the exit for a hierarchy no host can run.
//!
//! A row whose command type no host registers (any more), or whose
//! parameters no longer decode, is isolated at start-up: no host runs it, so
//! it never ends, `cancel` (which a host carries out) never takes effect,
//! and cleanup (which takes only ended hierarchies) never removes it. `fail`
//! ends every command of the hierarchy that has not ended, in the database,
//! without running any code: `ENDED_WITH_FAILURE` with the operator's reason,
//! its end counted as delivered (`callback_notified`), so that no host picks
//! it up again. End methods do not run: whatever they would have undone
//! outside the database is the operator's to undo.
//!
//! The rows lose their owner: a host that still runs them (`--force`) finds
//! its next write to them refused by the ownership check and stops them
//! there, without running their end methods.

use command_coordinator::CommandId;
use serde_json::json;

use crate::db::{CliError, Db, ENDED, Result};
use crate::hierarchy::{self, find_root, owners_from, owners_params, owners_sql};
use crate::id::IdArg;
use crate::output::{confirm, emit, emit_json, note};

/// How many of the commands it will end `fail` lists before asking.
const LISTED: usize = 10;

/// What `fail` was asked for.
pub struct Fail {
    pub id: IdArg,
    pub reason: String,
    pub force: bool,
    pub yes: bool,
    pub json: bool,
}

pub async fn run(db: &Db, args: Fail) -> Result<()> {
    let reason = args.reason.trim();
    if reason.is_empty() {
        return Err(CliError::usage(
            "--reason is empty: say why, it is stored as the commands' failure reason",
        ));
    }
    let id = args.id.resolve(db).await?;
    let root = find_root(db, id).await?;
    let unended = hierarchy::unended(db, root).await?;
    if unended.is_empty() {
        if args.json {
            report(root, &[], reason);
        } else {
            emit(&format!(
                "every command of hierarchy {root} has ended: nothing to fail\n"
            ));
        }
        return Ok(());
    }
    let owners = hierarchy::live_owners(db, root).await?;
    if let Some(owner) = owners.first()
        && !args.force
    {
        return Err(CliError::usage(format!(
            "refusing to fail hierarchy {root}: a live {} owns it and may be running it; \
             `command-coordinator cancel {id}` asks that host to end it, or stop the host; \
             add --force to end it anyway (nothing was changed)",
            owner.describe()
        )));
    }
    let n = unended.len();
    let commands = if n == 1 { "command" } else { "commands" };
    note(
        &format!(
            "will end {n} {commands} of hierarchy {root} with failure (ENDED_WITH_FAILURE, \
             reason {reason:?}), running no code, no end method:\n{}",
            hierarchy::plan(&unended, LISTED)
        ),
        args.json,
    );
    for owner in &owners {
        eprintln!(
            "warning: a live {} owns this hierarchy (--force given)",
            owner.describe()
        );
    }
    confirm("End them with failure?", args.yes)?;

    let failed = end_with_failure(db, root, reason, args.force).await?;
    if args.json {
        report(root, &failed, reason);
    } else {
        emit(&format!(
            "ended {} {} of hierarchy {root} with failure: {reason}\n\
             it can be removed now with `command-coordinator remove {root}`, or left to cleanup\n",
            failed.len(),
            if failed.len() == 1 {
                "command"
            } else {
                "commands"
            },
        ));
    }
    Ok(())
}

/// One transaction: lock the hierarchy's rows (a host adopting or writing
/// them waits, or is waited for), check again that no live host owns it
/// (the answer at the confirmation may be stale), end what has not ended.
async fn end_with_failure(
    db: &Db,
    root: CommandId,
    reason: &str,
    force: bool,
) -> Result<Vec<CommandId>> {
    let tree = hierarchy::tree(db);
    let t = db.table();
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(|e| db.pg_error(e))?;
    tx.query(
        &format!("{tree} SELECT 1 FROM {t} WHERE command_id IN (SELECT id FROM tree) FOR UPDATE"),
        &[root.as_uuid()],
    )
    .await
    .map_err(|e| db.pg_error(e))?;
    if !force {
        let rows = tx
            .query(&owners_sql(db), &owners_params(&root))
            .await
            .map_err(|e| db.pg_error(e))?;
        if let Some(owner) = owners_from(&rows).first() {
            return Err(CliError::new(format!(
                "refusing to fail hierarchy {root}: a live {} took it meanwhile \
                 (nothing was changed)",
                owner.describe()
            )));
        }
    }
    let rows = tx
        .query(
            &format!(
                "{tree} \
                 UPDATE {t} SET status = 'ENDED_WITH_FAILURE', callback_notified = true, \
                        ended_at = now(), updated_at = now(), failure_reason = $2, \
                        owner_host = NULL \
                  WHERE command_id IN (SELECT id FROM tree) \
                    AND (status IS NULL OR status NOT IN {ENDED}) \
                 RETURNING command_id"
            ),
            &[root.as_uuid(), &reason],
        )
        .await
        .map_err(|e| db.pg_error(e))?;
    tx.commit().await.map_err(|e| db.pg_error(e))?;
    Ok(rows
        .iter()
        .map(|r| CommandId::from_uuid(r.get(0)))
        .collect())
}

/// The `--json` output.
fn report(root: CommandId, failed: &[CommandId], reason: &str) {
    emit_json(&json!({ "root_id": root, "failed": failed, "reason": reason }));
}
