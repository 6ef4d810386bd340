//! `show <id>`: the whole hierarchy containing a command, as a tree.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use command_coordinator::{CommandEntity, CommandId, CommandStatus, CommandStore, StoreErrorKind};
use serde_json::{Value, json};

use crate::db::{Db, Result};
use crate::duration::human;
use crate::hierarchy::find_root;
use crate::id::short;
use crate::output::{
    cell, colour, emit, emit_json, flat, is_failure, pad, paint, short_class, truncate, type_label,
};

/// The width the tree fits by default: a terminal wider than the classic
/// 80, as most are, with room to read a reason. Ids are shortened to their
/// first 8 characters (which every subcommand accepts), and the outcome and
/// the detail lines under a node (key, not before, attempts and last error)
/// are cut to fit; `--wide` shows everything.
const WIDTH: usize = 100;
/// How much of a return value the tree shows with `--wide`.
const RETURN_VALUE_CHARS: usize = 80;
/// How much of a failure reason the tree shows with `--wide`.
const REASON_CHARS: usize = 160;
/// How much of a type's name the tree shows without `--wide`.
const TYPE_CHARS: usize = 24;
/// The mark of the command whose id was given, next to its id (where it
/// costs the outcome no room) and explained under the tree, so that it
/// cannot be read as "cancellation requested".
const GIVEN_MARK: &str = "◀";

/// One node of the tree: a readable row, or one the store could not read.
enum Row {
    Entity(Box<CommandEntity>),
    Bad(String),
}

/// One line of the drawing.
enum Line {
    /// Printed as it is (already cut to fit).
    Text(String),
    Node {
        /// Tree prefix, branch and id.
        left: String,
        cells: [(String, usize); 3],
        /// Return value or failure reason: what is cut to fit.
        outcome: String,
        /// Cancellation and given-id marks: never cut.
        marks: String,
    },
}

struct Node {
    id: CommandId,
    parent: Option<CommandId>,
    cancel_requested: bool,
    row: Row,
}

pub async fn run(db: &Db, id: CommandId, wide: bool, json: bool) -> Result<()> {
    let root = find_root(db, id).await?;
    let nodes = load(db, root).await?;
    let tree = Tree::new(nodes, root, id);
    let owners = owners(db, root).await?;
    if json {
        let mut value = tree.to_json();
        value["owners"] = Value::Array(
            owners
                .iter()
                .map(|o| {
                    json!({
                        "host_id": o.host,
                        "name": o.name,
                        "state": o.state,
                        "unfinished_rows": o.unfinished,
                        "rows": o.rows,
                    })
                })
                .collect(),
        );
        emit_json(&value);
    } else {
        let mut text = tree.draw(colour(), wide);
        for o in &owners {
            let who = match (&o.host, &o.name) {
                (Some(host), Some(name)) => format!(
                    "{name} ({}, {})",
                    &host.to_string()[..8],
                    o.state.as_deref().unwrap_or("?")
                ),
                (Some(host), None) => format!("{host} (not in the registry)"),
                (None, _) => "no host (waiting to be adopted, or written by a tool)".to_owned(),
            };
            text.push_str(&format!(
                "owner: {who}: {} rows, {} not finished\n",
                o.rows, o.unfinished
            ));
        }
        emit(&text);
    }
    Ok(())
}

/// A host owning rows of the hierarchy (the one that runs them, or ran
/// them last).
struct Owner {
    host: Option<uuid::Uuid>,
    name: Option<String>,
    state: Option<String>,
    rows: i64,
    unfinished: i64,
}

async fn owners(db: &Db, root: CommandId) -> Result<Vec<Owner>> {
    let rows = db
        .query(
            &format!(
                "SELECT c.owner_host, min(o.name), min(o.state), count(*), \
                        count(*) FILTER (WHERE c.callback_notified IS NOT TRUE) \
                 FROM {t} c LEFT JOIN {h} o ON o.host_id = c.owner_host \
                 WHERE c.command_id = $1 OR c.root_command_id = $1 \
                 GROUP BY c.owner_host ORDER BY count(*) DESC",
                t = db.table(),
                h = db.hosts()
            ),
            &[root.as_uuid()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Owner {
            host: r.get(0),
            name: r.get(1),
            state: r.get(2),
            rows: r.get(3),
            unfinished: r.get(4),
        })
        .collect())
}

/// Every row under `root`: by `root_command_id` and through parent links.
async fn load(db: &Db, root: CommandId) -> Result<Vec<Node>> {
    // The shape (ids, parents), read with plain SQL so that unreadable rows
    // keep their place in the tree.
    let sql = format!(
        "WITH RECURSIVE tree(id) AS ( \
           SELECT command_id FROM {t} WHERE command_id = $1 OR root_command_id = $1 \
           UNION \
           SELECT c.command_id FROM {t} c JOIN tree ON c.parent_command_id = tree.id \
         ) \
         SELECT command_id, parent_command_id, cancel_requested_at IS NOT NULL \
           FROM {t} WHERE command_id IN (SELECT id FROM tree) \
          ORDER BY created_at NULLS LAST, command_id",
        t = db.table()
    );
    let shape = db.query(&sql, &[root.as_uuid()]).await?;

    // The rows themselves, through the library's store.
    let loaded = db
        .store
        .hierarchy(root)
        .await
        .map_err(|e| db.store_error(&format!("read hierarchy {root}"), e))?;
    let mut entities: HashMap<CommandId, CommandEntity> =
        loaded.entities.into_iter().map(|e| (e.id, e)).collect();
    let mut bad: HashMap<CommandId, String> = loaded
        .bad_rows
        .into_iter()
        .map(|b| (b.command_id, b.reason))
        .collect();

    let mut nodes = Vec::with_capacity(shape.len());
    for row in &shape {
        let id = CommandId::from_uuid(row.get(0));
        let parent = row.get::<_, Option<_>>(1).map(CommandId::from_uuid);
        let cancel_requested: bool = row.get(2);
        let row = if let Some(e) = entities.remove(&id) {
            Row::Entity(Box::new(e))
        } else if let Some(reason) = bad.remove(&id) {
            Row::Bad(reason)
        } else {
            // Under the hierarchy by a parent link only (a wrong root id).
            match db.store.get(id).await {
                Ok(Some(e)) => Row::Entity(Box::new(e)),
                Ok(None) => continue, // removed meanwhile
                Err(e) => match e.kind {
                    StoreErrorKind::BadRow(reason) => Row::Bad(reason),
                    _ => return Err(db.store_error(&format!("read command {id}"), e)),
                },
            }
        };
        nodes.push(Node {
            id,
            parent,
            cancel_requested,
            row,
        });
    }
    Ok(nodes)
}

/// The loaded rows arranged by parent links.
struct Tree {
    nodes: HashMap<CommandId, Node>,
    /// Children in creation order.
    children: HashMap<CommandId, Vec<CommandId>>,
    /// The root first, then rows not reachable from it (a missing parent, a cycle).
    tops: Vec<CommandId>,
    given: CommandId,
    root: CommandId,
    bad_rows: Vec<(CommandId, String)>,
}

impl Tree {
    fn new(list: Vec<Node>, root: CommandId, given: CommandId) -> Self {
        let ids: HashSet<CommandId> = list.iter().map(|n| n.id).collect();
        let mut children: HashMap<CommandId, Vec<CommandId>> = HashMap::new();
        let mut orphans = Vec::new();
        let mut bad_rows = Vec::new();
        for n in &list {
            if let Row::Bad(reason) = &n.row {
                bad_rows.push((n.id, reason.clone()));
            }
            match n.parent {
                Some(p) if n.id != root && ids.contains(&p) => {
                    children.entry(p).or_default().push(n.id)
                }
                _ if n.id == root => {}
                _ => orphans.push(n.id),
            }
        }
        let nodes: HashMap<CommandId, Node> = list.into_iter().map(|n| (n.id, n)).collect();
        let mut tree = Self {
            nodes,
            children,
            tops: Vec::new(),
            given,
            root,
            bad_rows,
        };
        // What the root does not reach: orphans first, then cycle members.
        let mut reached = HashSet::new();
        tree.reach(root, &mut reached);
        tree.tops.push(root);
        let mut rest: Vec<CommandId> = orphans;
        let mut in_order: Vec<CommandId> = tree.nodes.keys().copied().collect();
        in_order.sort();
        rest.extend(in_order);
        for id in rest {
            if !reached.contains(&id) {
                tree.reach(id, &mut reached);
                tree.tops.push(id);
            }
        }
        tree
    }

    /// Whether the tree marks the given id: not when it is the only node.
    fn marks_given(&self) -> bool {
        self.nodes.len() > 1
    }

    fn reach(&self, id: CommandId, reached: &mut HashSet<CommandId>) {
        if !reached.insert(id) {
            return;
        }
        for &child in self.children.get(&id).map_or(&[][..], Vec::as_slice) {
            self.reach(child, reached);
        }
    }

    fn draw(&self, colour: bool, wide: bool) -> String {
        let mut lines = Vec::new();
        let mut drawn = HashSet::new();
        for (i, &top) in self.tops.iter().enumerate() {
            if i == 1 {
                lines.push(Line::Text(
                    "not attached to the root (missing parent or a parent cycle):".into(),
                ));
            }
            if self.nodes.contains_key(&top) {
                self.draw_node(top, "", None, colour, wide, &mut drawn, &mut lines);
            }
        }
        // Columns line up across the tree, whatever the depth.
        let left_width = lines
            .iter()
            .map(|l| match l {
                Line::Node { left, .. } => left.chars().count(),
                Line::Text(_) => 0,
            })
            .max()
            .unwrap_or(0);
        let mut widths = [0usize; 3];
        for line in &lines {
            if let Line::Node { cells, .. } = line {
                for (w, (_, len)) in widths.iter_mut().zip(cells) {
                    *w = (*w).max(*len);
                }
            }
        }
        let mut out = String::new();
        for line in lines {
            match line {
                Line::Text(text) => out.push_str(&text),
                Line::Node {
                    left,
                    cells,
                    outcome,
                    marks,
                } => {
                    let mut text = pad(&left, left.chars().count(), left_width);
                    for (w, (cell, len)) in widths.iter().zip(&cells) {
                        text.push_str("  ");
                        text.push_str(&pad(cell, *len, *w));
                    }
                    let used = left_width + widths.iter().map(|w| w + 2).sum::<usize>();
                    let room = WIDTH.saturating_sub(used + marks.chars().count());
                    if wide || outcome.chars().count() <= room {
                        text.push_str(&outcome);
                    } else if room > 4 {
                        // The cut keeps room for its mark.
                        text.push_str(&truncate(&outcome, room - 1));
                    }
                    text.push_str(&marks);
                    out.push_str(text.trim_end());
                }
            }
            out.push('\n');
        }
        if self.marks_given() {
            let given = if wide {
                self.given.to_string()
            } else {
                short(self.given)
            };
            out.push_str(&format!("{GIVEN_MARK} {given}: the id given\n"));
        }
        if !self.bad_rows.is_empty() {
            out.push_str(&format!("unreadable rows ({}):\n", self.bad_rows.len()));
            for (id, reason) in &self.bad_rows {
                let line = if wide {
                    format!("  {id}: {reason}")
                } else {
                    truncate(&format!("  {}: {reason}", short(*id)), WIDTH - 1)
                };
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// `last`: None for a top node, else whether it is its parent's last child.
    #[allow(clippy::too_many_arguments)]
    fn draw_node(
        &self,
        id: CommandId,
        prefix: &str,
        last: Option<bool>,
        colour: bool,
        wide: bool,
        drawn: &mut HashSet<CommandId>,
        lines: &mut Vec<Line>,
    ) {
        let branch = match last {
            None => "",
            Some(true) => "└─ ",
            Some(false) => "├─ ",
        };
        let (cells, outcome, marks) = self.describe(id, colour, wide);
        let mut shown = if wide { id.to_string() } else { short(id) };
        if self.marks_given() && id == self.given {
            shown.push(' ');
            shown.push_str(GIVEN_MARK);
        }
        lines.push(Line::Node {
            left: format!("{prefix}{branch}{shown}"),
            cells,
            outcome,
            marks,
        });
        if !drawn.insert(id) {
            return;
        }
        let child_prefix = match last {
            None => prefix.to_owned(),
            Some(true) => format!("{prefix}   "),
            Some(false) => format!("{prefix}│  "),
        };
        let children = self.children.get(&id).map_or(&[][..], Vec::as_slice);
        // The details go under the node, 3 columns in from its id, with the
        // tree's line down to its children running past them.
        let details = self.details(id);
        if !details.is_empty() {
            let down = if children.iter().any(|c| !drawn.contains(c)) {
                "│  "
            } else {
                "   "
            };
            for detail in details {
                let line = format!("{child_prefix}{down}{detail}");
                lines.push(Line::Text(if wide || line.chars().count() <= WIDTH {
                    line.trim_end().to_owned()
                } else {
                    truncate(&line, WIDTH - 1)
                }));
            }
        }
        for (i, &child) in children.iter().enumerate() {
            if drawn.contains(&child) {
                continue;
            }
            let last = i + 1 == children.len();
            self.draw_node(child, &child_prefix, Some(last), colour, wide, drawn, lines);
        }
    }

    /// Type, status and duration as aligned cells; then the outcome (cut
    /// to fit unless `wide`) and the marks.
    fn describe(
        &self,
        id: CommandId,
        colour: bool,
        wide: bool,
    ) -> ([(String, usize); 3], String, String) {
        let node = &self.nodes[&id];
        let mut outcome = String::new();
        let mut marks = String::new();
        let reason_chars = if wide { REASON_CHARS } else { WIDTH };
        let cells = match &node.row {
            Row::Bad(reason) => {
                outcome.push_str(&format!("  ✗ {}", truncate(&flat(reason), reason_chars)));
                [
                    cell("?"),
                    (paint("UNREADABLE", colour), "UNREADABLE".len()),
                    cell(""),
                ]
            }
            Row::Entity(e) => {
                let status = e.status.as_str();
                if let Some(reason) = &e.failure_reason {
                    outcome.push_str(&format!("  ✗ {}", truncate(&flat(reason), reason_chars)));
                } else if let Some(rv) = &e.return_value {
                    outcome.push_str(&format!(
                        "  → {}",
                        truncate(&flat(rv.json()), RETURN_VALUE_CHARS)
                    ));
                } else if is_failure(status) {
                    outcome.push_str("  ✗ (no reason recorded)");
                }
                if node.cancel_requested && !e.status.is_ended() {
                    marks.push_str("  [cancel requested]");
                }
                let label = type_label(e.command_type, Some(e.parameters.class()));
                [
                    cell(if wide {
                        label
                    } else {
                        truncate(&label, TYPE_CHARS)
                    }),
                    (paint(status, colour), status.len()),
                    cell(human(e.ended_at.unwrap_or_else(Utc::now) - e.created_at)),
                ]
            }
        };
        (cells, outcome, marks)
    }

    /// The lines under a node for what a submit asked for and what its
    /// retries left: the idempotency key, the time no step runs before, and
    /// the transient failures of the current step with the last error. Each
    /// only when set; the last error is kept after its step succeeded, so it
    /// may show with no attempts. Cut to the tree's width when drawn.
    fn details(&self, id: CommandId) -> Vec<String> {
        let Row::Entity(e) = &self.nodes[&id].row else {
            return Vec::new();
        };
        let mut details = Vec::new();
        if let Some(key) = &e.idempotency_key {
            details.push(format!("key: {}", flat(key)));
        }
        if let Some(at) = e.not_before {
            details.push(format!(
                "not before: {}",
                not_before(at, e.status, Utc::now())
            ));
        }
        let last_error = e.last_error.as_deref().map(flat);
        if e.failed_attempts > 0 {
            let mut text = format!("attempts: {} failed in a row", e.failed_attempts);
            if let Some(error) = &last_error {
                text.push_str(&format!(", last error: {error}"));
            }
            details.push(text);
        } else if let Some(error) = &last_error {
            details.push(format!("last error: {error}"));
        }
        details
    }

    fn to_json(&self) -> Value {
        let mut drawn = HashSet::new();
        let root = self.node_json(self.root, &mut drawn);
        let unattached: Vec<Value> = self.tops[1..]
            .iter()
            .map(|&id| self.node_json(id, &mut drawn))
            .collect();
        let bad_rows: Vec<Value> = self
            .bad_rows
            .iter()
            .map(|(id, reason)| json!({ "id": id, "reason": reason }))
            .collect();
        json!({
            "given_id": self.given,
            "root": root,
            "unattached": unattached,
            "bad_rows": bad_rows,
        })
    }

    fn node_json(&self, id: CommandId, drawn: &mut HashSet<CommandId>) -> Value {
        let node = &self.nodes[&id];
        let mut children = Vec::new();
        if drawn.insert(id) {
            for &child in self.children.get(&id).map_or(&[][..], Vec::as_slice) {
                if !drawn.contains(&child) {
                    children.push(self.node_json(child, drawn));
                }
            }
        }
        let mut value = match &node.row {
            Row::Bad(reason) => json!({
                "id": id,
                "parent_id": node.parent,
                "unreadable": reason,
            }),
            Row::Entity(e) => {
                let end = e.ended_at.unwrap_or_else(Utc::now);
                json!({
                    "id": id,
                    "parent_id": e.parent_id,
                    "root_id": e.root_id,
                    "command_type": e.command_type,
                    "type": short_class(e.parameters.class()),
                    "params_class": e.parameters.class(),
                    "status": e.status,
                    "executed": e.executed,
                    "callback_notified": e.callback_notified,
                    "cancel_requested": node.cancel_requested,
                    "created_at": e.created_at,
                    "updated_at": e.updated_at,
                    "ended_at": e.ended_at,
                    "duration_ms": (end - e.created_at).num_milliseconds(),
                    "return_value": e.return_value.as_ref().map(|rv| {
                        serde_json::from_str::<Value>(rv.json()).unwrap_or(Value::Null)
                    }),
                    "failure_reason": e.failure_reason,
                    "idempotency_key": e.idempotency_key,
                    "not_before": e.not_before,
                    "failed_attempts": e.failed_attempts,
                    "last_error": e.last_error,
                })
            }
        };
        value["given"] = Value::Bool(id == self.given);
        value["children"] = Value::Array(children);
        value
    }
}

/// `not_before` as the tree shows it: the time in UTC, and while a command
/// that has not started waits for it, how long until then and "(waiting)",
/// so that a delayed start or a retry's back-off is not read as stuck.
fn not_before(at: DateTime<Utc>, status: CommandStatus, now: DateTime<Utc>) -> String {
    let shown = at.format("%Y-%m-%d %H:%M:%S UTC");
    if status == CommandStatus::NotStarted && at > now {
        format!("{shown}, in {} (waiting)", human(at - now))
    } else {
        shown.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_command_not_started_waits_for_not_before() {
        let now: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
        let later = now + chrono::TimeDelta::seconds(90);
        assert_eq!(
            not_before(later, CommandStatus::NotStarted, now),
            "2026-12-01 12:01:30 UTC, in 1m30s (waiting)"
        );
        assert_eq!(
            not_before(later, CommandStatus::Active, now),
            "2026-12-01 12:01:30 UTC"
        );
        let earlier = now - chrono::TimeDelta::seconds(90);
        assert_eq!(
            not_before(earlier, CommandStatus::NotStarted, now),
            "2026-12-01 11:58:30 UTC"
        );
    }
}
