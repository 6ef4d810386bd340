//! Every query the pages run, each bounded by an index range and a limit.
//!
//! SQL text is assembled from fixed fragments and the validated table name;
//! every value is a bound parameter ([`Sql::bind`]). Statements are built with
//! only the filters in use (rather than `$1 IS NULL OR …` for each) so that
//! PostgreSQL plans each shape with the index that fits it.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use command_coordinator::error_chain;
use command_coordinator::tokio_postgres::Row;
use command_coordinator::tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::Inner;

/// The statuses that mean "ended", as stored.
const ENDED: &str = "('ENDED_SUCCESSFULLY', 'ENDED_WITH_FAILURE')";

/// Rows per list page and per page of a node's children.
pub(crate) const PAGE: usize = 50;
/// Children of one node shown at once in the tree.
pub(crate) const CHILDREN_PAGE: usize = 100;
/// How many of the newest rows one list request looks through when a filter
/// (status, type) cannot use an index: the page then says how far it looked
/// and offers to search further, instead of scanning a million rows.
pub(crate) const WINDOW: i64 = 20_000;
/// Capped counts stop here: "more than 10,000" is all an operator needs.
pub(crate) const COUNT_CAP: i64 = 10_000;
/// At most this many commands are cancelled by one bulk action.
pub(crate) const BULK_CAP: i64 = 10_000;
/// How much of a payload the command page shows.
pub(crate) const PAYLOAD_CHARS: i32 = 256 * 1024;

/// The columns of a list row, in the order [`Summary::from_row`] reads them
/// (and [`Detail`]'s columns follow at [`SUMMARY_COLUMNS`]). Every list query
/// finds its rows through an index and reads them from the heap anyway, so
/// the retry columns cost no other plan: none of them is a filter or a key.
const SUMMARY: &str = "command_id, command_type, command_params_class, status, \
     parent_command_id, root_command_id, created_at, updated_at, ended_at, \
     cancel_requested_at IS NOT NULL, left(failure_reason, 200), \
     not_before, failed_attempts, left(last_error, 200)";

/// How many columns [`SUMMARY`] has.
const SUMMARY_COLUMNS: usize = 14;

/// A statement and its bound values.
pub(crate) struct Sql {
    pub(crate) text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    pub(crate) fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            params: Vec::new(),
        }
    }

    /// Binds a value; returns its placeholder (`$3`).
    pub(crate) fn bind<T: ToSql + Sync + Send + 'static>(&mut self, value: T) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// A failed query, as a page shows it: the driver's and server's messages,
/// which never contain the connection string or its password.
#[derive(Debug)]
pub(crate) struct DbError {
    pub(crate) message: String,
    /// The database could not be reached (503 rather than 500).
    pub(crate) unavailable: bool,
}

impl DbError {
    pub(crate) fn new(message: String, unavailable: bool) -> Self {
        Self {
            message,
            unavailable,
        }
    }
}

impl From<command_coordinator::StoreError> for DbError {
    fn from(e: command_coordinator::StoreError) -> Self {
        Self::new(error_chain(&e), e.is_transient())
    }
}

impl Inner {
    /// Runs a statement on a pooled connection.
    pub(crate) async fn query(&self, sql: &Sql) -> Result<Vec<Row>, DbError> {
        let client = self.store.pool().get().await.map_err(|e| {
            DbError::new(
                format!("cannot reach the database: {}", error_chain(&e)),
                true,
            )
        })?;
        client.query(&sql.text, &sql.params()).await.map_err(|e| {
            let lost = e.is_closed() || e.code().is_none();
            DbError::new(error_chain(&e), lost)
        })
    }
}

/// One command as lists and trees show it.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub(crate) id: Uuid,
    pub(crate) command_type: i32,
    pub(crate) class: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) parent: Option<Uuid>,
    pub(crate) root: Option<Uuid>,
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) updated_at: Option<DateTime<Utc>>,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    pub(crate) cancel_requested: bool,
    /// The first 200 characters.
    pub(crate) reason: Option<String>,
    /// No step runs before this time: a delayed start, or the back-off
    /// before the next try after a transient error.
    pub(crate) not_before: Option<DateTime<Utc>>,
    /// Transient failures in a row of the current step (0 once it succeeds).
    pub(crate) failed_attempts: i32,
    /// The first 200 characters of the last transient failure's message
    /// (kept after its step succeeded).
    pub(crate) last_error: Option<String>,
}

impl Summary {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            command_type: row.get(1),
            class: row.get(2),
            status: row.get(3),
            parent: row.get(4),
            root: row.get(5),
            created_at: row.get(6),
            updated_at: row.get(7),
            ended_at: row.get(8),
            cancel_requested: row.get(9),
            reason: row.get(10),
            not_before: row.get(11),
            failed_attempts: row.get(12),
            last_error: row.get(13),
        }
    }

    /// How long a command that has not started still waits for its
    /// `not_before`, if it does: `NOT_STARTED` with `not_before` after `now`
    /// (as the CLI's `list` and `show` tell it).
    pub(crate) fn waiting(&self, now: DateTime<Utc>) -> Option<chrono::TimeDelta> {
        match (self.status.as_deref(), self.not_before) {
            (Some("NOT_STARTED"), Some(at)) if at > now => Some(at - now),
            _ => None,
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        matches!(
            self.status.as_deref(),
            Some("ENDED_SUCCESSFULLY" | "ENDED_WITH_FAILURE")
        )
    }

    /// The last segment of the parameters' class (`Merge`), else the number.
    pub(crate) fn type_label(&self) -> String {
        type_label(self.command_type, self.class.as_deref())
    }

    fn key(&self) -> Option<Cursor> {
        self.created_at.map(|at| Cursor { at, id: self.id })
    }
}

/// `Merge (2)` style label from a class path and a type number.
pub(crate) fn type_label(command_type: i32, class: Option<&str>) -> String {
    match class.map(|c| c.rsplit("::").next().unwrap_or(c)) {
        Some(short) if !short.is_empty() => short.to_owned(),
        _ => format!("type {command_type}"),
    }
}

/// Every column of one row.
pub(crate) struct Detail {
    pub(crate) summary: Summary,
    pub(crate) parameters: Option<String>,
    pub(crate) parameters_len: i32,
    pub(crate) return_value: Option<String>,
    pub(crate) return_value_len: i32,
    pub(crate) return_value_class: Option<String>,
    pub(crate) job_id: Option<Uuid>,
    pub(crate) step_id: Option<Uuid>,
    pub(crate) callback_enabled: Option<bool>,
    pub(crate) callback_notified: Option<bool>,
    pub(crate) executed: Option<bool>,
    pub(crate) cancel_requested_at: Option<DateTime<Utc>>,
    pub(crate) failure_reason: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    /// The whole message (the summary's is cut at 200 characters).
    pub(crate) last_error: Option<String>,
}

/// A position in a list: the key of the last row shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) at: DateTime<Utc>,
    pub(crate) id: Uuid,
}

impl Cursor {
    /// `<microseconds>_<id>`: exact (PostgreSQL keeps microseconds) and URL-safe.
    pub(crate) fn encode(&self) -> String {
        format!("{}_{}", self.at.timestamp_micros(), self.id.simple())
    }

    pub(crate) fn decode(text: &str) -> Option<Self> {
        let (micros, id) = text.split_once('_')?;
        Some(Self {
            at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: id.parse().ok()?,
        })
    }
}

/// What the list shows: every field optional, combined with AND.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    pub(crate) statuses: Vec<String>,
    pub(crate) command_type: Option<i32>,
    /// As typed (`2h`), and its value.
    pub(crate) older_than: Option<(String, Duration)>,
    pub(crate) newer_than: Option<(String, Duration)>,
    pub(crate) root: Option<Uuid>,
    pub(crate) parent: Option<Uuid>,
    /// Lower-case hex digits, at least [`MIN_PREFIX`].
    pub(crate) id_prefix: Option<String>,
}

/// Shorter id prefixes match too many rows to sort by age.
pub(crate) const MIN_PREFIX: usize = 3;

/// The statuses a filter may name.
pub(crate) const STATUSES: [&str; 8] = [
    "NOT_STARTED",
    "ACTIVE",
    "SUCCEEDED",
    "FAILED",
    "EXECUTION_FAILED",
    "ENDED_SUCCESSFULLY",
    "ENDED_WITH_FAILURE",
    "UNKNOWN",
];

/// What a list filter's parameters mean, or why they mean nothing.
pub(crate) enum Parsed {
    Filter(Filter),
    /// `id` was a whole command id: go to its page.
    Command(Uuid),
}

impl Filter {
    /// Reads `status` (repeatable), `type`, `older_than`, `newer_than`,
    /// `root`, `parent` and `id`; unknown keys are ignored, bad values named.
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<Parsed, Vec<String>> {
        let mut f = Filter::default();
        let mut errors = Vec::new();
        let uuid = |key: &str, v: &str, errors: &mut Vec<String>| match v.trim().parse::<Uuid>() {
            Ok(id) => Some(id),
            Err(_) => {
                errors.push(format!("{key}: not a command id"));
                None
            }
        };
        for (key, value) in pairs {
            let v = value.trim();
            if v.is_empty() {
                continue;
            }
            match key.as_str() {
                "status" => {
                    if STATUSES.contains(&v) {
                        if !f.statuses.iter().any(|s| s == v) {
                            f.statuses.push(v.to_owned());
                        }
                    } else {
                        errors.push("status: not a known status".into());
                    }
                }
                "type" => match v.parse() {
                    Ok(n) => f.command_type = Some(n),
                    Err(_) => errors.push("type: not a type number".into()),
                },
                "older_than" | "newer_than" => match crate::duration::parse(v) {
                    Ok(d) => {
                        let value = Some((v.to_owned(), d));
                        if key == "older_than" {
                            f.older_than = value
                        } else {
                            f.newer_than = value
                        }
                    }
                    Err(_) => errors.push(format!("{key}: not a duration (90s, 15m, 2h, 7d)")),
                },
                "root" => f.root = uuid("root", v, &mut errors),
                "parent" => f.parent = uuid("parent", v, &mut errors),
                "id" => {
                    if let Ok(id) = v.parse::<Uuid>()
                        && pairs
                            .iter()
                            .filter(|(k, v)| !v.is_empty() && k != "id")
                            .count()
                            == 0
                    {
                        return Ok(Parsed::Command(id));
                    }
                    let hex: String = v.chars().filter(|c| *c != '-').collect();
                    if hex.len() < MIN_PREFIX
                        || hex.len() > 32
                        || !hex.chars().all(|c| c.is_ascii_hexdigit())
                    {
                        errors.push(format!("id: {MIN_PREFIX} to 32 hex digits of a command id"));
                    } else {
                        f.id_prefix = Some(hex.to_ascii_lowercase());
                    }
                }
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(Parsed::Filter(f))
        } else {
            Err(errors)
        }
    }

    /// The filter as query parameters, for links and forms.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs: Vec<(&'static str, String)> = self
            .statuses
            .iter()
            .map(|s| ("status", s.clone()))
            .collect();
        if let Some(t) = self.command_type {
            pairs.push(("type", t.to_string()));
        }
        if let Some((text, _)) = &self.older_than {
            pairs.push(("older_than", text.clone()));
        }
        if let Some((text, _)) = &self.newer_than {
            pairs.push(("newer_than", text.clone()));
        }
        if let Some(root) = self.root {
            pairs.push(("root", root.to_string()));
        }
        if let Some(parent) = self.parent {
            pairs.push(("parent", parent.to_string()));
        }
        if let Some(prefix) = &self.id_prefix {
            pairs.push(("id", prefix.clone()));
        }
        pairs
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// A filter an index narrows down to few rows (a hierarchy, one
    /// parent's children, an id range): no window needed.
    fn selective(&self) -> bool {
        self.root.is_some() || self.parent.is_some() || self.id_prefix.is_some()
    }

    /// Only statuses that are not ENDED_*: the rows are in the not-ended index.
    fn only_unended(&self) -> bool {
        !self.statuses.is_empty() && self.statuses.iter().all(|s| !s.starts_with("ENDED_"))
    }

    /// Conditions an index serves: ids, links, age (and the cursor).
    fn push_indexed(&self, sql: &mut Sql, cursor: Option<Cursor>) -> Result<(), String> {
        if let Some(root) = self.root {
            let p = sql.bind(root);
            sql.push(&format!(" AND (command_id = {p} OR root_command_id = {p})"));
        }
        if let Some(parent) = self.parent {
            let p = sql.bind(parent);
            sql.push(&format!(" AND parent_command_id = {p}"));
        }
        if let Some(prefix) = &self.id_prefix {
            let lo: Uuid = format!("{prefix:0<32}").parse().map_err(|_| "id prefix")?;
            let hi: Uuid = format!("{prefix:f<32}").parse().map_err(|_| "id prefix")?;
            let (lo, hi) = (sql.bind(lo), sql.bind(hi));
            sql.push(&format!(" AND command_id BETWEEN {lo} AND {hi}"));
        }
        if let Some((_, d)) = self.older_than {
            let at = crate::duration::before_now(d)?;
            let p = sql.bind(at);
            sql.push(&format!(" AND created_at < {p}"));
        }
        if let Some((_, d)) = self.newer_than {
            let at = crate::duration::before_now(d)?;
            let p = sql.bind(at);
            sql.push(&format!(" AND created_at >= {p}"));
        }
        if let Some(c) = cursor {
            let (at, id) = (sql.bind(c.at), sql.bind(c.id));
            sql.push(&format!(" AND (created_at, command_id) < ({at}, {id})"));
        }
        Ok(())
    }

    /// Conditions checked on the rows (status, type).
    fn push_row_checks(&self, sql: &mut Sql) {
        if !self.statuses.is_empty() {
            let p = sql.bind(self.statuses.clone());
            sql.push(&format!(" AND status = ANY({p}::text[])"));
        }
        if let Some(t) = self.command_type {
            let p = sql.bind(t);
            sql.push(&format!(" AND command_type = {p}"));
        }
    }
}

/// One page of the list.
pub(crate) struct ListPage {
    pub(crate) rows: Vec<Summary>,
    /// Where the next page starts, if there is one.
    pub(crate) next: Option<Cursor>,
    /// The page holds fewer than [`PAGE`] rows because the search window ran
    /// out, not the table: `next` continues the search.
    pub(crate) window_exhausted: bool,
}

/// The list query (also what the benchmark explains).
pub(crate) fn list_sql(
    table: &str,
    filter: &Filter,
    cursor: Option<Cursor>,
) -> Result<(Sql, bool), String> {
    let windowed =
        !filter.selective() && (!filter.statuses.is_empty() || filter.command_type.is_some());
    let mut sql = Sql::new(String::new());
    if windowed {
        sql.push(&format!(
            "SELECT {SUMMARY} FROM (SELECT * FROM {table} WHERE created_at IS NOT NULL"
        ));
        if filter.only_unended() {
            sql.push(" AND ended_at IS NULL");
        }
        filter.push_indexed(&mut sql, cursor)?;
        let w = sql.bind(WINDOW);
        sql.push(&format!(
            " ORDER BY created_at DESC, command_id DESC LIMIT {w}) w WHERE true"
        ));
        filter.push_row_checks(&mut sql);
    } else {
        sql.push(&format!(
            "SELECT {SUMMARY} FROM {table} WHERE created_at IS NOT NULL"
        ));
        filter.push_indexed(&mut sql, cursor)?;
        filter.push_row_checks(&mut sql);
    }
    let limit = sql.bind(PAGE as i64 + 1);
    sql.push(&format!(
        " ORDER BY created_at DESC, command_id DESC LIMIT {limit}"
    ));
    Ok((sql, windowed))
}

impl Inner {
    /// The newest commands matching `filter` older than `cursor`.
    pub(crate) async fn list(
        &self,
        filter: &Filter,
        cursor: Option<Cursor>,
    ) -> Result<ListPage, DbError> {
        let (sql, windowed) =
            list_sql(&self.table, filter, cursor).map_err(|e| DbError::new(e, false))?;
        let mut rows: Vec<Summary> = self
            .query(&sql)
            .await?
            .iter()
            .map(Summary::from_row)
            .collect();
        if rows.len() > PAGE {
            rows.truncate(PAGE);
            let next = rows.last().and_then(Summary::key);
            return Ok(ListPage {
                rows,
                next,
                window_exhausted: false,
            });
        }
        if !windowed {
            return Ok(ListPage {
                rows,
                next: None,
                window_exhausted: false,
            });
        }
        // Fewer matches than a page: did the window or the table run out?
        let mut edge = Sql::new(format!(
            "SELECT created_at, command_id, count(*) OVER () FROM \
             (SELECT created_at, command_id FROM {} WHERE created_at IS NOT NULL",
            self.table
        ));
        if filter.only_unended() {
            edge.push(" AND ended_at IS NULL");
        }
        filter
            .push_indexed(&mut edge, cursor)
            .map_err(|e| DbError::new(e, false))?;
        let w = edge.bind(WINDOW);
        edge.push(&format!(
            " ORDER BY created_at DESC, command_id DESC LIMIT {w}) w \
             ORDER BY created_at, command_id LIMIT 1"
        ));
        let edge = self.query(&edge).await?;
        let next = edge.first().and_then(|r| {
            (r.get::<_, i64>(2) >= WINDOW).then(|| Cursor {
                at: r.get(0),
                id: r.get(1),
            })
        });
        Ok(ListPage {
            rows,
            window_exhausted: next.is_some(),
            next,
        })
    }

    /// One row, every column (payloads cut at [`PAYLOAD_CHARS`]).
    pub(crate) async fn detail(&self, id: Uuid) -> Result<Option<Detail>, DbError> {
        let mut sql = Sql::new(String::new());
        let max = sql.bind(PAYLOAD_CHARS);
        let p = sql.bind(id);
        sql.push(&format!(
            "SELECT {SUMMARY}, left(command_parameters, {max}), \
                    coalesce(length(command_parameters), 0), \
                    left(return_value, {max}), coalesce(length(return_value), 0), \
                    return_value_class, job_id, step_id, callback_enabled, \
                    callback_notified, executed, cancel_requested_at, failure_reason, \
                    idempotency_key, last_error \
             FROM {} WHERE command_id = {p}",
            self.table
        ));
        const C: usize = SUMMARY_COLUMNS;
        Ok(self.query(&sql).await?.first().map(|row| Detail {
            summary: Summary::from_row(row),
            parameters: row.get(C),
            parameters_len: row.get(C + 1),
            return_value: row.get(C + 2),
            return_value_len: row.get(C + 3),
            return_value_class: row.get(C + 4),
            job_id: row.get(C + 5),
            step_id: row.get(C + 6),
            callback_enabled: row.get(C + 7),
            callback_notified: row.get(C + 8),
            executed: row.get(C + 9),
            cancel_requested_at: row.get(C + 10),
            failure_reason: row.get(C + 11),
            idempotency_key: row.get(C + 12),
            last_error: row.get(C + 13),
        }))
    }

    /// The ids from the top of `id`'s hierarchy down to `id`, following
    /// parent links (a row's `root_command_id` may be wrong; its parent link
    /// is what the runtime follows). Stops at a missing parent, a cycle, or a
    /// thousand levels.
    pub(crate) async fn ancestry(&self, id: Uuid) -> Result<Vec<Uuid>, DbError> {
        let mut sql = Sql::new(String::new());
        let p = sql.bind(id);
        sql.push(&format!(
            "WITH RECURSIVE up(id, parent, depth, path) AS ( \
               SELECT command_id, parent_command_id, 0, ARRAY[command_id] \
                 FROM {t} WHERE command_id = {p} \
               UNION ALL \
               SELECT c.command_id, c.parent_command_id, up.depth + 1, up.path || c.command_id \
                 FROM {t} c JOIN up ON c.command_id = up.parent \
                WHERE NOT c.command_id = ANY(up.path) AND up.depth < 1000 \
             ) \
             SELECT id FROM up ORDER BY depth DESC",
            t = self.table
        ));
        Ok(self.query(&sql).await?.iter().map(|r| r.get(0)).collect())
    }

    /// The commands with these ids (the tree's top).
    pub(crate) async fn summaries(&self, ids: &[Uuid]) -> Result<Vec<Summary>, DbError> {
        let mut sql = Sql::new(String::new());
        let p = sql.bind(ids.to_vec());
        sql.push(&format!(
            "SELECT {SUMMARY} FROM {} WHERE command_id = ANY({p})",
            self.table
        ));
        Ok(self
            .query(&sql)
            .await?
            .iter()
            .map(Summary::from_row)
            .collect())
    }

    /// Up to `limit` children of `parent` in creation order, after `after`;
    /// the extra row fetched tells whether more follow.
    pub(crate) async fn children(
        &self,
        parent: Uuid,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<(Vec<Summary>, Option<Cursor>), DbError> {
        let mut sql = Sql::new(String::new());
        let p = sql.bind(parent);
        sql.push(&format!(
            "SELECT {SUMMARY} FROM {} WHERE parent_command_id = {p}",
            self.table
        ));
        if let Some(c) = after {
            let (at, id) = (sql.bind(c.at), sql.bind(c.id));
            sql.push(&format!(" AND (created_at, command_id) > ({at}, {id})"));
        }
        let l = sql.bind(limit as i64 + 1);
        sql.push(&format!(" ORDER BY created_at, command_id LIMIT {l}"));
        let mut rows: Vec<Summary> = self
            .query(&sql)
            .await?
            .iter()
            .map(Summary::from_row)
            .collect();
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().and_then(Summary::key)
        } else {
            None
        };
        Ok((rows, next))
    }

    /// How many children each of `ids` has, counted up to [`COUNT_CAP`] + 1.
    pub(crate) async fn child_counts(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, i64>, DbError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut sql = Sql::new(String::new());
        let p = sql.bind(ids.to_vec());
        let cap = sql.bind(COUNT_CAP + 1);
        sql.push(&format!(
            "SELECT p, (SELECT count(*) FROM (SELECT 1 FROM {} c \
                         WHERE c.parent_command_id = p LIMIT {cap}) s) \
             FROM unnest({p}::uuid[]) p",
            self.table
        ));
        Ok(self
            .query(&sql)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// Statuses in the hierarchy of `root` (by `root_command_id`), counted up
    /// to 100,000 rows.
    pub(crate) async fn hierarchy_counts(
        &self,
        root: Uuid,
    ) -> Result<Vec<(Option<String>, i64)>, DbError> {
        let mut sql = Sql::new(String::new());
        let p = sql.bind(root);
        let cap = sql.bind(100_001_i64);
        sql.push(&format!(
            "SELECT status, count(*) FROM (SELECT status FROM {} \
               WHERE root_command_id = {p} LIMIT {cap}) s \
             GROUP BY status ORDER BY status",
            self.table
        ));
        Ok(self
            .query(&sql)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// Commands not ended by status, counted up to [`COUNT_CAP`] + 1 rows
    /// (through the not-ended index).
    pub(crate) async fn unended_counts(&self) -> Result<Vec<(Option<String>, i64)>, DbError> {
        let mut sql = Sql::new(String::new());
        let cap = sql.bind(COUNT_CAP + 1);
        sql.push(&format!(
            "SELECT status, count(*) FROM (SELECT status FROM {} \
               WHERE ended_at IS NULL LIMIT {cap}) s GROUP BY status ORDER BY status",
            self.table
        ));
        Ok(self
            .query(&sql)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// The oldest commands not ended.
    pub(crate) async fn oldest_unended(&self, limit: i64) -> Result<Vec<Summary>, DbError> {
        let mut sql = Sql::new(String::new());
        let l = sql.bind(limit);
        sql.push(&format!(
            "SELECT {SUMMARY} FROM {} WHERE ended_at IS NULL \
             ORDER BY created_at, command_id LIMIT {l}",
            self.table
        ));
        Ok(self
            .query(&sql)
            .await?
            .iter()
            .map(Summary::from_row)
            .collect())
    }

    /// Roots not ended that have run longer than expected of their type,
    /// oldest first. The index range is what is older than the shortest
    /// expectation; each row is then checked against its own type's.
    pub(crate) async fn stuck_roots(&self, limit: i64) -> Result<Vec<Summary>, DbError> {
        let secs = |d: &Duration| d.as_secs_f64();
        let shortest = self
            .expected
            .iter()
            .map(|(_, d)| *d)
            .chain([self.stuck_after])
            .min()
            .unwrap_or(self.stuck_after);
        let horizon = crate::duration::before_now(shortest).map_err(|e| DbError::new(e, false))?;
        let mut sql = Sql::new(String::new());
        let h = sql.bind(horizon);
        let types = sql.bind(self.expected.iter().map(|(t, _)| *t).collect::<Vec<i32>>());
        let limits = sql.bind(
            self.expected
                .iter()
                .map(|(_, d)| secs(d))
                .collect::<Vec<f64>>(),
        );
        let default = sql.bind(secs(&self.stuck_after));
        let l = sql.bind(limit);
        sql.push(&format!(
            "SELECT {SUMMARY} FROM {t} WHERE ended_at IS NULL AND created_at < {h} \
               AND parent_command_id IS NULL \
               AND created_at < now() - make_interval(secs => coalesce( \
                   (SELECT s FROM unnest({types}::int4[], {limits}::float8[]) u(ty, s) \
                     WHERE ty = command_type), {default})) \
             ORDER BY created_at, command_id LIMIT {l}",
            t = self.table
        ));
        Ok(self
            .query(&sql)
            .await?
            .iter()
            .map(Summary::from_row)
            .collect())
    }

    /// Status, cancellation and times of these commands, for live pages.
    pub(crate) async fn live_statuses(&self, ids: &[Uuid]) -> Result<Vec<Summary>, DbError> {
        self.summaries(ids).await
    }

    /// The ids of commands matching `filter` that have not ended, up to
    /// [`BULK_CAP`] + 1 (through the not-ended index, or the filter's own).
    pub(crate) async fn unended_matching(&self, filter: &Filter) -> Result<Vec<Uuid>, DbError> {
        let mut sql = Sql::new(format!(
            "SELECT command_id FROM {} WHERE ended_at IS NULL \
               AND (status IS NULL OR status NOT IN {ENDED})",
            self.table
        ));
        filter
            .push_indexed(&mut sql, None)
            .map_err(|e| DbError::new(e, false))?;
        filter.push_row_checks(&mut sql);
        let l = sql.bind(BULK_CAP + 1);
        sql.push(&format!(" LIMIT {l}"));
        Ok(self.query(&sql).await?.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_whole_id_alone_opens_its_page_and_a_prefix_filters() {
        let id = Uuid::new_v4();
        assert!(matches!(
            Filter::parse(&pairs(&[("id", &id.to_string())])),
            Ok(Parsed::Command(i)) if i == id
        ));
        let Ok(Parsed::Filter(f)) = Filter::parse(&pairs(&[("id", "AB-c1")])) else {
            panic!("a prefix is a filter");
        };
        assert_eq!(f.id_prefix.as_deref(), Some("abc1"));
        assert!(Filter::parse(&pairs(&[("id", "ab")])).is_err());
        assert!(Filter::parse(&pairs(&[("id", "xyz1")])).is_err());
    }

    #[test]
    fn bad_values_are_named_and_never_reach_sql() {
        let errors = match Filter::parse(&pairs(&[
            ("status", "ACTIVE'; DROP TABLE x; --"),
            ("type", "1 OR 1=1"),
            ("older_than", "yesterday"),
            ("root", "<script>"),
        ])) {
            Err(e) => e,
            Ok(_) => panic!("bad values accepted"),
        };
        assert_eq!(errors.len(), 4, "{errors:?}");
    }

    #[test]
    fn a_filter_survives_its_round_trip_through_a_link() {
        let Ok(Parsed::Filter(f)) = Filter::parse(&pairs(&[
            ("status", "ACTIVE"),
            ("status", "FAILED"),
            ("type", "2"),
            ("older_than", "2h"),
            ("parent", &Uuid::new_v4().to_string()),
        ])) else {
            panic!("valid filter");
        };
        let again: Vec<(String, String)> = f
            .pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert!(matches!(Filter::parse(&again), Ok(Parsed::Filter(g)) if g == f));
    }

    #[test]
    fn the_summary_has_as_many_columns_as_its_reader_expects() {
        let mut depth = 0;
        let mut columns = 1;
        for c in SUMMARY.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => columns += 1,
                _ => {}
            }
        }
        assert_eq!(columns, SUMMARY_COLUMNS);
    }

    #[test]
    fn cursors_round_trip_exactly() {
        let c = Cursor {
            at: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("12_notanid"), None);
    }

    #[test]
    fn status_and_type_filters_search_a_bounded_window_of_the_newest_rows() {
        let (plain, windowed) = list_sql("t", &Filter::default(), None).unwrap();
        assert!(!windowed && !plain.text.contains("LIMIT $1)"));
        let f = Filter {
            statuses: vec!["ACTIVE".into()],
            ..Filter::default()
        };
        let (sql, windowed) = list_sql("t", &f, None).unwrap();
        assert!(windowed);
        assert!(sql.text.contains("ended_at IS NULL"), "{}", sql.text);
    }
}
