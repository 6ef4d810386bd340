//! `list`: commands matching filters, newest first.

use std::time::Duration;

use chrono::{DateTime, Utc};
use command_coordinator::tokio_postgres::Row;
use command_coordinator::{CommandId, CommandStatus};
use serde_json::json;

use crate::db::{CliError, Db, Result};
use crate::duration::{before_now, human};
use crate::id::short;
use crate::output::{cell, colour, emit, emit_json, flat, paint, table, truncate, type_label};

/// How much of a failure reason the table shows without `--wide`.
const REASON_CHARS: usize = 60;
/// Host names in the OWNER column are cut to this many characters.
const OWNER_CHARS: usize = 12;

/// `--status`: one of [`CommandStatus::ALL`], in any case, as stored. A
/// typo must not pass for "no such commands".
pub fn parse_status(text: &str) -> std::result::Result<String, String> {
    let upper = text.trim().to_ascii_uppercase();
    match upper.parse::<CommandStatus>() {
        Ok(status) => Ok(status.as_str().to_owned()),
        Err(_) => {
            let known: Vec<&str> = CommandStatus::ALL.iter().map(|s| s.as_str()).collect();
            // clap puts the value in front: "invalid value 'actve' for '--status'".
            Err(format!(
                "not a status; the statuses are {}",
                known.join(", ")
            ))
        }
    }
}

/// `--limit`: at least 1 (`--limit 0` would list nothing, silently).
pub fn parse_limit(text: &str) -> std::result::Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err("not a number of commands (1 or more)".to_owned()),
    }
}

/// What `list` selects.
pub struct Filter {
    pub statuses: Vec<String>,
    /// A type number, or a class name (full, or its last segment).
    pub command_type: Option<String>,
    pub older_than: Option<Duration>,
    pub newer_than: Option<Duration>,
    pub root: Option<CommandId>,
    pub limit: u32,
}

pub async fn run(db: &Db, filter: Filter, wide: bool, json: bool) -> Result<()> {
    let statuses: Option<Vec<String>> =
        (!filter.statuses.is_empty()).then(|| filter.statuses.clone());
    let (type_number, type_name): (Option<i32>, Option<String>) = match &filter.command_type {
        None => (None, None),
        Some(t) => match t.parse::<i32>() {
            Ok(n) => (Some(n), None),
            Err(_) => (None, Some(t.clone())),
        },
    };
    let created_before: Option<DateTime<Utc>> = filter
        .older_than
        .map(before_now)
        .transpose()
        .map_err(CliError::usage)?;
    let created_after: Option<DateTime<Utc>> = filter
        .newer_than
        .map(before_now)
        .transpose()
        .map_err(CliError::usage)?;
    let root = filter.root.map(|id| *id.as_uuid());
    let limit = i64::from(filter.limit);

    let sql = format!(
        "SELECT c.command_id, c.command_type, c.command_params_class, c.status, c.executed, \
                c.callback_notified, c.created_at, c.updated_at, c.ended_at, \
                c.parent_command_id, c.root_command_id, c.cancel_requested_at IS NOT NULL, \
                c.failure_reason, c.owner_host, o.name, \
                c.idempotency_key, c.not_before, c.failed_attempts, c.last_error \
         FROM {t} c LEFT JOIN {h} o ON o.host_id = c.owner_host \
         WHERE ($1::text[] IS NULL OR c.status = ANY($1::text[])) \
           AND ($2::int4 IS NULL OR c.command_type = $2::int4) \
           AND ($3::text IS NULL OR c.command_params_class = $3::text \
                OR right(c.command_params_class, length($3::text) + 2) = '::' || $3::text) \
           AND ($4::timestamptz IS NULL OR c.created_at < $4::timestamptz) \
           AND ($5::timestamptz IS NULL OR c.created_at >= $5::timestamptz) \
           AND ($6::uuid IS NULL OR c.command_id = $6::uuid OR c.root_command_id = $6::uuid) \
         ORDER BY c.created_at DESC NULLS LAST, c.command_id \
         LIMIT $7",
        t = db.table(),
        h = db.hosts()
    );
    let rows = db
        .query(
            &sql,
            &[
                &statuses,
                &type_number,
                &type_name,
                &created_before,
                &created_after,
                &root,
                &limit,
            ],
        )
        .await?;
    let listed: Vec<Listed> = rows.iter().map(Listed::from_row).collect();
    if listed.is_empty()
        && let Some(wanted) = &filter.command_type
    {
        check_type(db, wanted, type_number).await?;
    }

    if json {
        let array: Vec<_> = listed.iter().map(Listed::to_json).collect();
        emit_json(&serde_json::Value::Array(array));
        return Ok(());
    }
    if listed.is_empty() {
        eprintln!("no commands match");
        return Ok(());
    }
    let now = Utc::now();
    let colour = colour();
    let body: Vec<Vec<(String, usize)>> = listed
        .iter()
        .map(|l| {
            let id = |id: CommandId| if wide { id.to_string() } else { short(id) };
            let reason = flat(&l.reason_shown());
            let (status_shown, status_len) = l.status_cell(now, colour);
            vec![
                cell(id(l.id)),
                cell(l.parent.map_or("-".to_owned(), id)),
                cell(match (&l.owner_name, l.owner) {
                    (Some(name), _) => truncate(name, OWNER_CHARS),
                    (None, Some(host)) => host.to_string()[..8].to_owned(),
                    (None, None) => "-".to_owned(),
                }),
                cell(type_label(l.command_type, l.class.as_deref())),
                (status_shown, status_len),
                cell(yes_no(l.executed)),
                cell(yes_no(l.notified)),
                cell(l.created_at.map_or("?".into(), |t| human(now - t))),
                cell(
                    l.updated_at
                        .map_or("?".into(), |t| format!("{} ago", human(now - t))),
                ),
                cell(match l.failed_attempts {
                    0 => String::new(),
                    n => n.to_string(),
                }),
                cell(if wide {
                    reason
                } else {
                    truncate(&reason, REASON_CHARS)
                }),
            ]
        })
        .collect();
    emit(&table(
        &[
            "ID", "PARENT", "OWNER", "TYPE", "STATUS", "EXECUTED", "NOTIFIED", "AGE", "UPDATED",
            "ATTEMPTS", "REASON",
        ],
        &body,
    ));
    if listed.len() as i64 == limit {
        eprintln!("showing the newest {limit} matching commands; --limit N shows more");
    }
    Ok(())
}

/// Nothing matched a filter that names a type: say so when no command of
/// that type is stored at all (a typo, or the wrong number), with the types
/// that are. Asked only after an empty result: the table has no index on
/// the type, and a match already proves the type exists.
async fn check_type(db: &Db, wanted: &str, number: Option<i32>) -> Result<()> {
    let t = db.table();
    let exists: bool = db
        .query(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {t} \
                  WHERE command_type = $1::int4 OR command_params_class = $2::text \
                     OR right(command_params_class, length($2::text) + 2) = '::' || $2::text)"
            ),
            &[&number, &wanted],
        )
        .await?[0]
        .get(0);
    if exists {
        return Ok(());
    }
    let stored: Vec<String> = db
        .query(
            &format!(
                "SELECT command_type, min(command_params_class) FROM {t} \
                 GROUP BY command_type ORDER BY command_type"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| type_label(r.get(0), r.get::<_, Option<&str>>(1)))
        .collect();
    let stored = if stored.is_empty() {
        "none, the table is empty".to_owned()
    } else {
        stored.join(", ")
    };
    Err(CliError::usage(format!(
        "no command of type {wanted:?} is stored; the stored types are: {stored}"
    )))
}

fn yes_no(flag: Option<bool>) -> &'static str {
    match flag {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    }
}

/// One listed row. Every column but the id and the type may be NULL in a
/// row written by someone else, so all are optional (but `failed_attempts`,
/// NOT NULL with a default).
struct Listed {
    id: CommandId,
    command_type: i32,
    class: Option<String>,
    status: Option<String>,
    executed: Option<bool>,
    notified: Option<bool>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    parent: Option<CommandId>,
    root: Option<CommandId>,
    cancel_requested: bool,
    reason: Option<String>,
    /// The host that runs it (or ran it last), and that host's name.
    owner: Option<uuid::Uuid>,
    owner_name: Option<String>,
    /// What a submit asked for and what its retries left (V8).
    idempotency_key: Option<String>,
    not_before: Option<DateTime<Utc>>,
    failed_attempts: i32,
    last_error: Option<String>,
}

impl Listed {
    fn from_row(row: &Row) -> Self {
        Self {
            id: CommandId::from_uuid(row.get(0)),
            command_type: row.get(1),
            class: row.get(2),
            status: row.get(3),
            executed: row.get(4),
            notified: row.get(5),
            created_at: row.get(6),
            updated_at: row.get(7),
            ended_at: row.get(8),
            parent: row.get::<_, Option<_>>(9).map(CommandId::from_uuid),
            root: row.get::<_, Option<_>>(10).map(CommandId::from_uuid),
            cancel_requested: row.get(11),
            reason: row.get(12),
            owner: row.get(13),
            owner_name: row.get(14),
            idempotency_key: row.get(15),
            not_before: row.get(16),
            failed_attempts: row.get(17),
            last_error: row.get(18),
        }
    }

    /// The STATUS cell, `(shown, visible length)`. A command that has not
    /// started and waits for `not_before` (a delayed start, or the back-off
    /// before the next try of `execute`) reads `NOT_STARTED (starts in
    /// 4m05s)`, so that it is not taken for one that no host picks up.
    ///
    /// Folded into STATUS rather than a STARTS column of its own: such rows
    /// are few, so a column would be empty on nearly every line of a table
    /// that is wide already (near 100 columns before REASON), while the fold
    /// widens STATUS only when a waiting row is listed, and keeps the status
    /// word first (what the eye and `grep NOT_STARTED` look for). Relative,
    /// like AGE and UPDATED, because a clock time would need a date and a
    /// time zone to be read right; `--json` and `show` give the time itself.
    fn status_cell(&self, now: DateTime<Utc>, colour: bool) -> (String, usize) {
        let status = self.status.as_deref().unwrap_or("NULL");
        let mut shown = paint(status, colour);
        let mut len = status.chars().count();
        if let Some(at) = self.not_before
            && at > now
            && status == CommandStatus::NotStarted.as_str()
        {
            let wait = format!(" (starts in {})", human(at - now));
            len += wait.chars().count();
            shown.push_str(&wait);
        }
        (shown, len)
    }

    /// The REASON cell before cutting: the failure reason; while a step is
    /// being retried (ATTEMPTS not empty), the error of its last try, marked
    /// as such so that it is not read as the reason the command failed.
    fn reason_shown(&self) -> String {
        match (&self.reason, &self.last_error) {
            (Some(reason), _) => reason.clone(),
            (None, Some(error)) if self.failed_attempts > 0 => format!("last error: {error}"),
            _ => String::new(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "command_type": self.command_type,
            "type": self.class.as_deref().map(crate::output::short_class),
            "params_class": self.class,
            "status": self.status,
            "executed": self.executed,
            "callback_notified": self.notified,
            "cancel_requested": self.cancel_requested,
            "parent_id": self.parent,
            "owner_host": self.owner,
            "owner_name": self.owner_name,
            "root_id": self.root,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "ended_at": self.ended_at,
            "failure_reason": self.reason,
            "idempotency_key": self.idempotency_key,
            "not_before": self.not_before,
            "failed_attempts": self.failed_attempts,
            "last_error": self.last_error,
        })
    }
}
