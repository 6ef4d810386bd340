//! What several subcommands ask of a hierarchy: its root, its rows, and
//! whether a live host owns it.

use std::time::Duration;

use command_coordinator::CommandId;
use command_coordinator::tokio_postgres::types::ToSql;

use crate::db::{CliError, Db, ENDED, Result};

/// How recent a host's heartbeat must be for the host to count as alive
/// (the window the runtime judges liveness by, on the database's clock).
pub const LIVE_HEARTBEAT: Duration = Duration::from_secs(30);

/// The top of `id`'s hierarchy, following parent links up (a row's
/// `root_command_id` may be wrong; its parent link is what the runtime
/// follows). Stops at a missing parent and at a cycle.
pub async fn find_root(db: &Db, id: CommandId) -> Result<CommandId> {
    let sql = format!(
        "WITH RECURSIVE up(id, parent, depth, path) AS ( \
           SELECT command_id, parent_command_id, 0, ARRAY[command_id] \
             FROM {t} WHERE command_id = $1 \
           UNION ALL \
           SELECT c.command_id, c.parent_command_id, up.depth + 1, up.path || c.command_id \
             FROM {t} c JOIN up ON c.command_id = up.parent \
            WHERE NOT c.command_id = ANY(up.path) \
         ) \
         SELECT id FROM up ORDER BY depth DESC LIMIT 1",
        t = db.table()
    );
    let rows = db.query(&sql, &[id.as_uuid()]).await?;
    match rows.first() {
        Some(row) => Ok(CommandId::from_uuid(row.get(0))),
        None => Err(CliError::new(format!("no command {id}"))),
    }
}

/// `WITH RECURSIVE tree(id)`: the ids of the hierarchy of root `$1`, the
/// rows naming it as their root and everything under it by parent links
/// (UNION ends the recursion on a cycle). What `show` draws, `fail` ends and
/// `remove` deletes is this one set.
pub fn tree(db: &Db) -> String {
    format!(
        "WITH RECURSIVE tree(id) AS ( \
           SELECT command_id FROM {t} WHERE command_id = $1 OR root_command_id = $1 \
           UNION \
           SELECT c.command_id FROM {t} c JOIN tree ON c.parent_command_id = tree.id \
         )",
        t = db.table()
    )
}

/// A live host that owns (part of) a hierarchy.
pub struct Owner {
    pub host_id: String,
    pub name: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age: f64,
}

impl Owner {
    /// `host web-1 (3f2a…), heartbeat 2s ago`.
    pub fn describe(&self) -> String {
        format!(
            "host {} ({}), heartbeat {:.0}s ago",
            self.name,
            self.host_id.get(..8).unwrap_or(&self.host_id),
            self.heartbeat_age
        )
    }
}

/// The query for the live owners of root `$1`'s hierarchy (`$2`: the
/// heartbeat window in seconds): hosts alive with a fresh heartbeat that
/// own its root or any of its rows not ended.
pub fn owners_sql(db: &Db) -> String {
    format!(
        "{tree} \
         SELECT DISTINCT h.host_id::text, h.name, \
                extract(epoch FROM now() - h.heartbeat_at)::float8 \
           FROM {t} e JOIN {hosts} h ON h.host_id = e.owner_host \
          WHERE e.command_id IN (SELECT id FROM tree) \
            AND (e.command_id = $1 OR e.status IS NULL OR e.status NOT IN {ENDED}) \
            AND h.state = 'alive' \
            AND h.heartbeat_at > now() - make_interval(secs => $2) \
          ORDER BY 1",
        tree = tree(db),
        t = db.table(),
        hosts = db.hosts()
    )
}

/// The parameters of [`owners_sql`].
pub fn owners_params(root: &CommandId) -> [&(dyn ToSql + Sync); 2] {
    [root.as_uuid(), &LIVE_HEARTBEAT_SECS]
}

/// [`LIVE_HEARTBEAT`] as the query takes it.
const LIVE_HEARTBEAT_SECS: f64 = LIVE_HEARTBEAT.as_secs() as f64;

/// Reads [`Owner`]s from the rows of [`owners_sql`].
pub fn owners_from(rows: &[command_coordinator::tokio_postgres::Row]) -> Vec<Owner> {
    rows.iter()
        .map(|r| Owner {
            host_id: r.get(0),
            name: r.get(1),
            heartbeat_age: r.get(2),
        })
        .collect()
}

/// The live owners of `root`'s hierarchy.
pub async fn live_owners(db: &Db, root: CommandId) -> Result<Vec<Owner>> {
    let rows = db.query(&owners_sql(db), &owners_params(&root)).await?;
    Ok(owners_from(&rows))
}

/// How many hosts are alive with a fresh heartbeat.
pub async fn live_hosts(db: &Db) -> Result<i64> {
    let sql = format!(
        "SELECT count(*) FROM {hosts} \
          WHERE state = 'alive' AND heartbeat_at > now() - make_interval(secs => $1)",
        hosts = db.hosts()
    );
    Ok(db.query(&sql, &[&LIVE_HEARTBEAT_SECS]).await?[0].get(0))
}

/// One command of a hierarchy that has not ended, for a plan shown before acting.
pub struct Unended {
    pub id: CommandId,
    pub label: String,
    pub status: String,
}

/// The commands of `root`'s hierarchy that have not ended, oldest first.
pub async fn unended(db: &Db, root: CommandId) -> Result<Vec<Unended>> {
    let sql = format!(
        "{tree} \
         SELECT command_id, command_type, command_params_class, status FROM {t} \
          WHERE command_id IN (SELECT id FROM tree) \
            AND (status IS NULL OR status NOT IN {ENDED}) \
          ORDER BY created_at NULLS LAST, command_id",
        tree = tree(db),
        t = db.table()
    );
    let rows = db.query(&sql, &[root.as_uuid()]).await?;
    Ok(rows
        .iter()
        .map(|r| Unended {
            id: CommandId::from_uuid(r.get(0)),
            label: crate::output::type_label(r.get(1), r.get::<_, Option<&str>>(2)),
            status: r
                .get::<_, Option<String>>(3)
                .unwrap_or_else(|| "NULL".into()),
        })
        .collect())
}

/// Up to `max` lines of `  <id>  <type>  <status>`, aligned, then how many more.
pub fn plan(commands: &[Unended], max: usize) -> String {
    let shown = &commands[..commands.len().min(max)];
    let width = shown
        .iter()
        .map(|c| c.label.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for c in shown {
        out.push_str(&format!("  {}  {:<width$}  {}\n", c.id, c.label, c.status));
    }
    if commands.len() > max {
        out.push_str(&format!("  … and {} more\n", commands.len() - max));
    }
    out
}
