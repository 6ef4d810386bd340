//! `remove <id>`: deletes one hierarchy that has ended, now, whatever its
//! age: the end of `fail`'s exit, or an ended hierarchy an operator wants
//! gone before cleanup's retention takes it. A hierarchy goes only whole and
//! only once every command of it ended, as with cleanup: a row still running
//! would lose its parent, or its children.

use std::collections::BTreeMap;

use command_coordinator::CommandId;
use serde_json::json;

use crate::db::{CliError, Db, ENDED, Result};
use crate::hierarchy::{self, find_root};
use crate::id::IdArg;
use crate::output::{confirm, emit, emit_json, note};

/// What `remove` was asked for.
pub struct Remove {
    pub id: IdArg,
    pub yes: bool,
    pub json: bool,
}

pub async fn run(db: &Db, args: Remove) -> Result<()> {
    let id = args.id.resolve(db).await?;
    let root = find_root(db, id).await?;
    let unended = hierarchy::unended(db, root).await?;
    if !unended.is_empty() {
        let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &unended {
            *by_status.entry(c.status.as_str()).or_default() += 1;
        }
        let statuses: Vec<String> = by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
        return Err(CliError::new(format!(
            "refusing to remove hierarchy {root}: {} of its commands have not ended ({}); \
             end them first: `command-coordinator cancel {id}` if a host runs them, \
             `command-coordinator fail {id} --reason …` if none can (nothing was changed)",
            unended.len(),
            statuses.join(", ")
        )));
    }
    let tree = hierarchy::tree(db);
    let t = db.table();
    let count: i64 = db
        .query(
            &format!("{tree} SELECT count(*) FROM {t} WHERE command_id IN (SELECT id FROM tree)"),
            &[root.as_uuid()],
        )
        .await?[0]
        .get(0);
    let rows = if count == 1 { "row" } else { "rows" };
    note(
        &format!("will remove hierarchy {root}: {count} {rows}, every command ended\n"),
        args.json,
    );
    confirm("Remove it?", args.yes)?;
    // Again in the statement: nothing of it may have started meanwhile.
    let removed: Vec<CommandId> = db
        .query(
            &format!(
                "{tree} \
                 DELETE FROM {t} WHERE command_id IN (SELECT id FROM tree) \
                   AND NOT EXISTS ( \
                     SELECT 1 FROM {t} WHERE command_id IN (SELECT id FROM tree) \
                       AND (status IS NULL OR status NOT IN {ENDED})) \
                 RETURNING command_id"
            ),
            &[root.as_uuid()],
        )
        .await?
        .iter()
        .map(|r| CommandId::from_uuid(r.get(0)))
        .collect();
    if removed.is_empty() {
        return Err(CliError::new(format!(
            "nothing removed: hierarchy {root} changed meanwhile (run `command-coordinator show {root}`)"
        )));
    }
    if args.json {
        let value = json!({ "root_id": root, "removed": removed });
        emit_json(&value);
    } else {
        let n = removed.len();
        emit(&format!(
            "removed hierarchy {root}: {n} {}\n",
            if n == 1 { "row" } else { "rows" }
        ));
    }
    Ok(())
}
