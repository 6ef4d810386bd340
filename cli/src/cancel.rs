//! `cancel <id>`: asks for a command and its descendants that have not ended
//! to be cancelled.
//!
//! The CLI only records the request (`cancel_requested_at`); a host carries
//! it out, and only a host that registers the commands' types can. The CLI
//! cannot know which types the hosts register, so it says so, names the
//! live host that owns the hierarchy (or that there is none), and points at
//! `fail`, the exit for rows no host can run.

use command_coordinator::{CancelOutcome, CommandId, CommandStore};
use serde_json::json;

use crate::db::{CliError, Db, ENDED, Result};
use crate::hierarchy::{self, LIVE_HEARTBEAT, find_root};
use crate::id::IdArg;
use crate::output::{confirm, emit, emit_json, note};

/// What `cancel` was asked for.
pub struct Cancel {
    pub id: IdArg,
    pub yes: bool,
    pub json: bool,
}

/// The root of `id`'s hierarchy, its live owners, and how many hosts are alive.
async fn ownership(db: &Db, id: CommandId) -> Result<(CommandId, Vec<hierarchy::Owner>, i64)> {
    let root = find_root(db, id).await?;
    let owners = hierarchy::live_owners(db, root).await?;
    let hosts = hierarchy::live_hosts(db).await?;
    Ok((root, owners, hosts))
}

pub async fn run(db: &Db, args: Cancel) -> Result<()> {
    let id = args.id.resolve(db).await?;
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
           AND (status IS NULL OR status NOT IN {ENDED})",
        t = db.table()
    );
    let live: i64 = db.query(&sql, &[id.as_uuid()]).await?[0].get(0);
    if live > 0 {
        let descendants = match live - 1 {
            0 => String::new(),
            1 => " and 1 descendant that has not ended".to_owned(),
            n => format!(" and {n} descendants that have not ended"),
        };
        let commands = if live == 1 { "command" } else { "commands" };
        note(
            &format!("will request cancellation of {live} {commands}: {id}{descendants}\n"),
            args.json,
        );
        confirm("Cancel them?", args.yes)?;
    }
    let outcome = db
        .store
        .request_cancel(id)
        .await
        .map_err(|e| db.store_error("request the cancellation", e))?;
    match outcome {
        CancelOutcome::NotFound => Err(CliError::new(format!("no command {id}"))),
        CancelOutcome::AlreadyEnded(status) => {
            if args.json {
                emit_json(&json!({ "id": id, "already_ended": status }));
            } else {
                emit(&format!(
                    "command {id} already ended ({status}): nothing to cancel\n"
                ));
            }
            Ok(())
        }
        CancelOutcome::Requested { commands } => {
            // Who can carry it out. The request is recorded whatever this
            // says: a schema without the hosts' registry (before V6) gets
            // the general answer rather than an error.
            let (root, owners, hosts) = match ownership(db, id).await {
                Ok((root, owners, hosts)) => (Some(root), owners, Some(hosts)),
                Err(_) => (None, Vec::new(), None),
            };
            let who = match (owners.first(), hosts) {
                (Some(owner), _) => format!(
                    "a live {} owns this hierarchy: it carries the request out within a second \
                     if it registers these commands' types",
                    owner.describe()
                ),
                (None, Some(0)) => format!(
                    "no live host: none has sent a heartbeat in the last {}s, so nothing carries \
                     the request out until a host that registers these commands' types starts",
                    LIVE_HEARTBEAT.as_secs()
                ),
                (None, Some(n)) => format!(
                    "no live host owns this hierarchy yet; of the {n} live host(s), one that \
                     registers these commands' types carries the request out once it runs them"
                ),
                (None, None) => "a host that registers these commands' types carries the \
                                 request out when it runs them"
                    .to_owned(),
            };
            if args.json {
                emit_json(&json!({
                    "id": id,
                    "requested": commands,
                    "root_id": root,
                    "live_owner": owners.first().map(|o| json!({
                        "host_id": o.host_id,
                        "name": o.name,
                        "heartbeat_age_seconds": o.heartbeat_age,
                    })),
                    "live_hosts": hosts,
                }));
            } else {
                emit(&format!(
                    "cancellation requested for {commands} {}\n\
                     the cancel takes effect only when a host runs these commands: {who}\n\
                     a row no host can run (its type registered by none, or parameters that no \
                     longer decode) never ends this way: `command-coordinator fail {id} --reason …` \
                     ends its hierarchy with failure without running any code\n",
                    if commands == 1 { "command" } else { "commands" }
                ));
            }
            Ok(())
        }
    }
}
