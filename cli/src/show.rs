//! `show <id>`: the whole hierarchy containing a command, as a tree.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use command_coordinator::{CommandEntity, CommandId, CommandStore, StoreErrorKind};
use serde_json::{Value, json};

use crate::db::{CliError, Db, Result};
use crate::duration::human;
use crate::output::{
    cell, colour, emit, is_failure, pad, paint, short_class, truncate, type_label,
};

/// How much of a return value the tree shows.
const RETURN_VALUE_CHARS: usize = 80;
/// How much of a failure reason the tree shows.
const REASON_CHARS: usize = 160;

/// One node of the tree: a readable row, or one the store could not read.
enum Row {
    Entity(Box<CommandEntity>),
    Bad(String),
}

/// One line of the drawing.
enum Line {
    Text(String),
    Node {
        /// Tree prefix, branch and id.
        left: String,
        cells: [(String, usize); 3],
        rest: String,
    },
}

struct Node {
    id: CommandId,
    parent: Option<CommandId>,
    cancel_requested: bool,
    row: Row,
}

pub async fn run(db: &Db, id: CommandId, json: bool) -> Result<()> {
    let root = find_root(db, id).await?;
    let nodes = load(db, root).await?;
    let tree = Tree::new(nodes, root, id);
    if json {
        emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&tree.to_json()).expect("JSON values serialize")
        ));
    } else {
        emit(&tree.draw(colour()));
    }
    Ok(())
}

/// The top of `id`'s hierarchy, following parent links up (a row's
/// `root_command_id` may be wrong; its parent link is what the runtime
/// follows). Stops at a missing parent and at a cycle.
async fn find_root(db: &Db, id: CommandId) -> Result<CommandId> {
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
        .map_err(|e| db.store_error(e))?;
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
                    _ => return Err(db.store_error(e)),
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
    requested: CommandId,
    root: CommandId,
    bad_rows: Vec<(CommandId, String)>,
}

impl Tree {
    fn new(list: Vec<Node>, root: CommandId, requested: CommandId) -> Self {
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
            requested,
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

    fn reach(&self, id: CommandId, reached: &mut HashSet<CommandId>) {
        if !reached.insert(id) {
            return;
        }
        for &child in self.children.get(&id).map_or(&[][..], Vec::as_slice) {
            self.reach(child, reached);
        }
    }

    fn draw(&self, colour: bool) -> String {
        let mut lines = Vec::new();
        let mut drawn = HashSet::new();
        for (i, &top) in self.tops.iter().enumerate() {
            if i == 1 {
                lines.push(Line::Text(
                    "not attached to the root (missing parent or a parent cycle):".into(),
                ));
            }
            if self.nodes.contains_key(&top) {
                self.draw_node(top, "", None, colour, &mut drawn, &mut lines);
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
                Line::Node { left, cells, rest } => {
                    let mut text = pad(&left, left.chars().count(), left_width);
                    for (w, (cell, len)) in widths.iter().zip(&cells) {
                        text.push_str("  ");
                        text.push_str(&pad(cell, *len, *w));
                    }
                    text.push_str(&rest);
                    out.push_str(text.trim_end());
                }
            }
            out.push('\n');
        }
        if !self.bad_rows.is_empty() {
            out.push_str(&format!("unreadable rows ({}):\n", self.bad_rows.len()));
            for (id, reason) in &self.bad_rows {
                out.push_str(&format!("  {id}: {reason}\n"));
            }
        }
        out
    }

    /// `last`: None for a top node, else whether it is its parent's last child.
    fn draw_node(
        &self,
        id: CommandId,
        prefix: &str,
        last: Option<bool>,
        colour: bool,
        drawn: &mut HashSet<CommandId>,
        lines: &mut Vec<Line>,
    ) {
        let branch = match last {
            None => "",
            Some(true) => "└─ ",
            Some(false) => "├─ ",
        };
        let (cells, rest) = self.describe(id, colour);
        lines.push(Line::Node {
            left: format!("{prefix}{branch}{id}"),
            cells,
            rest,
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
        for (i, &child) in children.iter().enumerate() {
            if drawn.contains(&child) {
                continue;
            }
            let last = i + 1 == children.len();
            self.draw_node(child, &child_prefix, Some(last), colour, drawn, lines);
        }
    }

    /// Type, status and duration as aligned cells; then outcome and marks.
    fn describe(&self, id: CommandId, colour: bool) -> ([(String, usize); 3], String) {
        let node = &self.nodes[&id];
        let mut rest = String::new();
        let cells = match &node.row {
            Row::Bad(reason) => {
                rest.push_str(&format!("  ✗ {}", truncate(reason, REASON_CHARS)));
                [
                    cell("?"),
                    (paint("UNREADABLE", colour), "UNREADABLE".len()),
                    cell(""),
                ]
            }
            Row::Entity(e) => {
                let status = e.status.as_str();
                if let Some(reason) = &e.failure_reason {
                    rest.push_str(&format!("  ✗ {}", truncate(reason, REASON_CHARS)));
                } else if let Some(rv) = &e.return_value {
                    rest.push_str(&format!("  → {}", truncate(rv.json(), RETURN_VALUE_CHARS)));
                } else if is_failure(status) {
                    rest.push_str("  ✗ (no reason recorded)");
                }
                if node.cancel_requested && !e.status.is_ended() {
                    rest.push_str("  [cancel requested]");
                }
                [
                    cell(type_label(e.command_type, Some(e.parameters.class()))),
                    (paint(status, colour), status.len()),
                    cell(human(e.ended_at.unwrap_or_else(Utc::now) - e.created_at)),
                ]
            }
        };
        if id == self.requested && self.nodes.len() > 1 {
            rest.push_str("   ◀ requested");
        }
        (cells, rest)
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
            "requested": self.requested,
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
                })
            }
        };
        value["requested"] = Value::Bool(id == self.requested);
        value["children"] = Value::Array(children);
        value
    }
}
