//! [`CommandStore`] on PostgreSQL: the `command_entities` table through a
//! deadpool connection pool.
//!
//! Every statement is parameterised; the only text put into SQL is the schema
//! name, which [`SchemaName`] has validated and which is always quoted. The SQL
//! strings are built once per store and prepared once per connection
//! (`prepare_cached`).

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, PoolError};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::config::SchemaName;
use crate::pg_transaction::PgTransaction;
use command_coordinator_actors::{
    Applied, BadRow, CancelOutcome, CommandEntity, CommandId, CommandStatus, CommandStore,
    CommandUpdate, EndTransaction, Expired, HostId, HostInfo, HostRecord, HostState, JsonPayload,
    LoadedRows, LocalStoreFuture, OwnedRows, RemovedBatch, StoreError, StoreErrorKind, StoreFuture,
    StoreOp, Transition,
};

/// The columns every entity query selects, in the order [`entity_from_row`] reads.
pub(crate) const COLUMNS: &str = "command_id, command_type, root_command_id, parent_command_id, \
    command_parameters, command_params_class, created_at, updated_at, ended_at, status, \
    callback_enabled, callback_notified, executed, return_value, return_value_class, \
    failure_reason, job_id, step_id, owner_host, owner_epoch, idempotency_key, not_before, \
    failed_attempts, last_error";

/// The columns the writer's batched insert fills: the first 20 of
/// [`COLUMNS`]. A plain submit has no key, no delay and no attempts yet, so
/// the hot path sends no arrays for them (the defaults hold).
const INSERT_COLUMNS: &str = "command_id, command_type, root_command_id, parent_command_id, \
    command_parameters, command_params_class, created_at, updated_at, ended_at, status, \
    callback_enabled, callback_notified, executed, return_value, return_value_class, \
    failure_reason, job_id, step_id, owner_host, owner_epoch";

/// The columns a submit in the host's transaction fills ([`Statements`]'s
/// `submit_in`).
const SUBMIT_COLUMNS: &str = "command_id, command_type, root_command_id, command_parameters, \
    command_params_class, created_at, updated_at, status, callback_enabled, callback_notified, \
    executed, job_id, step_id, owner_host, owner_epoch, idempotency_key, not_before";

/// The `status IN (...)` list of ended statuses, spelled once.
pub(crate) const ENDED: &str = "('ENDED_SUCCESSFULLY', 'ENDED_WITH_FAILURE')";

/// How many hierarchies [`PgStore::remove_before`] removes per statement, so that
/// one cleanup never holds locks on an unbounded number of rows.
pub const DEFAULT_REMOVE_BATCH: u32 = 1_000;

/// First key of the advisory lock that coordinators before V6 (one host per
/// schema) held on their schema, the second being the schema's hash. A
/// starting host refuses to run next to one: see [`PgStore::prepare`].
pub(crate) const HOST_LOCK_CLASS: i32 = 0x4343_0002;

/// The SQL text of every operation, with the schema filled in.
#[derive(Debug)]
pub(crate) struct Statements {
    save_or_update: String,
    get: String,
    get_status: String,
    child_ids: String,
    hierarchy: String,
    has_commands_with_root: String,
    commands_with_callback_enabled: String,
    update_status: String,
    update_executed: String,
    update_notified: String,
    update_return_value: String,
    remove: String,
    remove_hierarchy: String,
    remove_before: String,
    expired: String,
    request_cancel: String,
    cancel_requested: String,
    children_of_unfinished: String,
    children: String,
    /// The writer's statement, by (retry columns, keyed inserts): index
    /// `retry + 2 * keyed`. Plain batches use the first, which is the
    /// statement from before V8.
    apply: [String; 4],
    inserted_as: String,
    pub(crate) submit_in: String,
    pub(crate) submitted_as: String,
    pub(crate) end_update: String,
    pub(crate) owner_of: String,
    pub(crate) hosts: crate::pg_hosts::HostStatements,
}

impl Statements {
    fn new(schema: &SchemaName) -> Self {
        let t = format!("{}.command_entities", schema.quoted());
        let hosts = format!("{}.command_hosts", schema.quoted());
        // The SET part of every runtime update: a NULL leaves the column as
        // it is. With `retry`, also the retry columns (V8): only batches
        // that carry a transient failure (or its reset) use that variant,
        // so the hot path sends and plans exactly what it did before V8.
        let update_set = |retry: bool| {
            let retry_columns = if retry {
                "failed_attempts = coalesce(u.attempts, c.failed_attempts), \
                 last_error = coalesce(u.last_error, c.last_error), \
                 not_before = coalesce(u.not_before, c.not_before), "
            } else {
                ""
            };
            format!(
                "UPDATE {t} AS c SET \
                   status = coalesce(u.status, c.status), \
                   executed = coalesce(u.executed, c.executed), \
                   callback_notified = coalesce(u.notified, c.callback_notified), \
                   command_parameters = coalesce(u.params, c.command_parameters), \
                   command_params_class = coalesce(u.params_class, c.command_params_class), \
                   return_value = coalesce(u.rv, c.return_value), \
                   return_value_class = coalesce(u.rv_class, c.return_value_class), \
                   failure_reason = coalesce(u.reason, c.failure_reason), \
                   {retry_columns}\
                   updated_at = now(), \
                   ended_at = CASE WHEN coalesce(u.status, c.status) IN {ENDED} \
                       THEN coalesce(c.ended_at, now()) END"
            )
        };
        let update = update_set(true);
        // The ownership check of an update, as a condition of the join with
        // the batch (`OR u.id IS NULL` never holds): as a plain filter on
        // the table, `owner_host = $n` looks so selective that the planner
        // scanned the table and joined every row with the whole batch
        // (170 ms for 128 rows) instead of looking each row up by its key.
        let owned_by = |n: u8| format!("(c.owner_host = ${n} OR u.id IS NULL)");
        let (owned_by_26, owned_by_10) = (owned_by(26), owned_by(10));
        // The row by (hierarchy, id): the distribution column of a sharded
        // deployment is the hierarchy (docs/scaling.md), and a statement
        // that names it can be routed. A row written by a tool may have no
        // root (it is its own), and an update without one (`u.root` NULL)
        // matches by id alone.
        let in_hierarchy = "(u.root IS NULL OR c.root_command_id = u.root \
                             OR (c.root_command_id IS NULL AND c.command_id = u.root))";
        // Roots of hierarchies that cleanup may take for cutoff $1: a hierarchy
        // goes only as a whole, and only when its root and every row under it
        // ended before the cutoff. A NULL or unknown status counts as not
        // ended. A root's end time is `ended_at`, which every write of an
        // ENDED_* status sets; the index on it is what keeps this cheap.
        //
        // The two NOT EXISTS are one index probe each (an OR of the two links
        // made PostgreSQL build and OR two bitmaps per root: 17 % slower).
        let unexpired = format!(
            "(c.status IS NULL OR c.status NOT IN {ENDED} \
              OR coalesce(c.ended_at, c.updated_at) >= $1)"
        );
        let expired = format!(
            "SELECT r.command_id FROM {t} r \
             WHERE r.parent_command_id IS NULL \
               AND r.ended_at IS NOT NULL AND r.ended_at < $1 \
               AND r.status IN {ENDED} \
               AND NOT EXISTS (SELECT 1 FROM {t} c \
                   WHERE c.root_command_id = r.command_id AND {unexpired}) \
               AND NOT EXISTS (SELECT 1 FROM {t} c \
                   WHERE c.parent_command_id = r.command_id AND {unexpired})"
        );
        // A writer batch (see `apply` below); `retry`: the variant with the
        // retry columns, parameters $29 to $31.
        let apply = |retry: bool, keyed: bool| {
            let set = update_set(retry);
            let (retry_arrays, retry_names) = if retry {
                (
                    ", $29::int4[], $30::text[], $31::timestamptz[]",
                    ", attempts, last_error, not_before",
                )
            } else {
                ("", "")
            };
            // Inserts with an idempotency key or a start time: two more
            // arrays (numbered after the others), any conflict skips the
            // row (the key's too), and the ids not inserted come back.
            let k = if retry { 32 } else { 29 };
            let (key_columns, key_values, key_arrays, key_names, conflict, inserted) = if keyed {
                (
                    ", idempotency_key, not_before",
                    ", u.key, u.not_before",
                    format!(", ${k}::text[], ${}::timestamptz[]", k + 1),
                    ", key, not_before",
                    "ON CONFLICT DO NOTHING RETURNING command_id",
                    ", ARRAY(SELECT x.id FROM unnest($1::uuid[]) AS x(id) \
                       WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.command_id = x.id))",
                )
            } else {
                (
                    "",
                    "",
                    String::new(),
                    "",
                    "ON CONFLICT (command_id) DO NOTHING",
                    "",
                )
            };
            format!(
                "WITH h AS ( \
                   SELECT 1 FROM {hosts} \
                   WHERE host_id = $26 AND state = 'alive' AND cardinality($1::uuid[]) > 0 \
                   FOR SHARE \
                 ), ins AS ( \
                   INSERT INTO {t} ({INSERT_COLUMNS}{key_columns}) \
                   SELECT u.id, u.ty, u.root, u.parent, u.params, u.class, u.created, now(), \
                          CASE WHEN u.status IN {ENDED} THEN now() END, u.status, u.cb, \
                          u.notified, u.executed, u.rv, u.rv_class, u.reason, u.job, u.step, \
                          coalesce(u.placed, $26), CASE WHEN u.placed IS NULL THEN 1 ELSE 0 END\
                          {key_values} \
                   FROM unnest($1::uuid[], $2::int4[], $3::uuid[], $4::uuid[], $5::text[], \
                               $6::text[], $7::timestamptz[], $8::text[], $9::bool[], \
                               $10::bool[], $11::bool[], $12::text[], $13::text[], $14::text[], \
                               $15::uuid[], $16::uuid[], $27::uuid[]{key_arrays}) \
                     AS u(id, ty, root, parent, params, class, created, status, cb, notified, \
                          executed, rv, rv_class, reason, job, step, placed{key_names}) \
                   WHERE EXISTS (SELECT 1 FROM h) \
                   {conflict} \
                 ), upd AS ( \
                   {set} \
                   FROM unnest($17::uuid[], $18::text[], $19::bool[], $20::bool[], \
                               $21::text[], $22::text[], $23::text[], $24::text[], $25::text[], \
                               $28::uuid[]{retry_arrays}) \
                     AS u(id, status, executed, notified, params, params_class, rv, rv_class, \
                          reason, root{retry_names}) \
                   WHERE c.command_id = u.id AND {in_hierarchy} \
                     AND c.callback_notified IS NOT TRUE AND {owned_by_26} \
                   RETURNING c.command_id \
                 ) \
                 SELECT (SELECT count(*) FROM h), \
                        ARRAY(SELECT x.id FROM unnest($17::uuid[]) AS x(id) \
                              WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.command_id = x.id)) \
                        {inserted}"
            )
        };
        Self {
            save_or_update: format!(
                "INSERT INTO {t} AS c ({COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, now(), \
                  CASE WHEN $9 IN {ENDED} THEN coalesce($8, now()) END, \
                  $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) \
                 ON CONFLICT (command_id) DO UPDATE SET \
                   command_type = EXCLUDED.command_type, \
                   root_command_id = EXCLUDED.root_command_id, \
                   parent_command_id = EXCLUDED.parent_command_id, \
                   command_parameters = EXCLUDED.command_parameters, \
                   command_params_class = EXCLUDED.command_params_class, \
                   updated_at = now(), \
                   ended_at = CASE WHEN EXCLUDED.status IN {ENDED} \
                       THEN coalesce(EXCLUDED.ended_at, c.ended_at, now()) END, \
                   status = EXCLUDED.status, \
                   callback_enabled = EXCLUDED.callback_enabled, \
                   callback_notified = EXCLUDED.callback_notified, \
                   executed = EXCLUDED.executed, \
                   return_value = EXCLUDED.return_value, \
                   return_value_class = EXCLUDED.return_value_class, \
                   failure_reason = EXCLUDED.failure_reason, \
                   job_id = EXCLUDED.job_id, \
                   step_id = EXCLUDED.step_id, \
                   owner_host = EXCLUDED.owner_host, \
                   owner_epoch = EXCLUDED.owner_epoch, \
                   idempotency_key = EXCLUDED.idempotency_key, \
                   not_before = EXCLUDED.not_before, \
                   failed_attempts = EXCLUDED.failed_attempts, \
                   last_error = EXCLUDED.last_error"
            ),
            get: format!("SELECT {COLUMNS} FROM {t} WHERE command_id = $1"),
            get_status: format!("SELECT status FROM {t} WHERE command_id = $1"),
            child_ids: format!(
                "SELECT command_id FROM {t} WHERE parent_command_id = $1 \
                 ORDER BY created_at, command_id"
            ),
            hierarchy: format!(
                "SELECT {COLUMNS} FROM {t} WHERE root_command_id = $1 OR command_id = $1 \
                 ORDER BY created_at, command_id"
            ),
            has_commands_with_root: format!(
                "SELECT EXISTS (SELECT 1 FROM {t} WHERE root_command_id = $1)"
            ),
            commands_with_callback_enabled: format!(
                "SELECT {COLUMNS} FROM {t} \
                 WHERE callback_enabled AND callback_notified IS NOT TRUE \
                 ORDER BY created_at, command_id"
            ),
            update_status: format!(
                "UPDATE {t} SET status = $2::varchar, updated_at = now(), \
                 ended_at = CASE WHEN $2::varchar IN {ENDED} THEN coalesce(ended_at, now()) END \
                 WHERE command_id = $1"
            ),
            update_executed: format!(
                "UPDATE {t} SET executed = true, updated_at = now() WHERE command_id = $1"
            ),
            update_notified: format!(
                "UPDATE {t} SET callback_notified = true, updated_at = now() \
                 WHERE command_id = $1"
            ),
            update_return_value: format!(
                "UPDATE {t} SET return_value = $2, return_value_class = $3, updated_at = now() \
                 WHERE command_id = $1"
            ),
            remove: format!("DELETE FROM {t} WHERE command_id = $1"),
            // Descendants are found through parent links, not only through
            // root_command_id, so a row with a wrong root is not left behind.
            // UNION (not UNION ALL) ends the recursion even on a cycle.
            remove_hierarchy: format!(
                "WITH RECURSIVE tree(id) AS ( \
                   SELECT $1::uuid \
                   UNION \
                   SELECT c.command_id FROM {t} c JOIN tree ON c.parent_command_id = tree.id \
                 ) \
                 DELETE FROM {t} WHERE command_id IN (SELECT id FROM tree) \
                    OR root_command_id = $1"
            ),
            children: format!(
                "SELECT {COLUMNS} FROM {t} WHERE parent_command_id = $1 \
                 ORDER BY created_at, command_id"
            ),
            // A writer batch: any number of new commands and of status
            // changes, in one statement (one round trip, and no window in
            // which a paused process holds locks between two statements).
            //
            // Fenced. New rows are inserted only while the host ($26) is
            // alive, and are owned by it (or offered to the host it placed
            // them on, $27: owner_epoch 0 until that host claims them); `h` takes a share lock on the
            // host's row, so a host declaring it dead waits for this
            // statement, and after that no insert of it passes. Updates
            // apply only to rows the host owns: checked on the row being
            // updated (an adoption that committed meanwhile is seen when
            // the row lock is granted), so it costs no lock and no round
            // trip. The ids of updates that did not apply come back (they
            // are normally none): ended already, or owned by another host.
            //
            // An id that exists is not inserted again, so a batch retried
            // after a lost commit is harmless. A command that ended and was
            // notified is final: no write changes it again. This is what
            // makes the end exactly-once when a COMMIT's reply is lost (the
            // end transaction's second attempt waits for the first's row
            // lock, then matches nothing and is rolled back with its
            // effects), and what keeps a stale write that a timed-out
            // connection left running from reopening an ended command.
            apply: [
                apply(false, false),
                apply(true, false),
                apply(false, true),
                apply(true, true),
            ],
            // The same insert in the host's own transaction
            // (`SubmitInTransaction`): offered to its owner (epoch 0), which
            // claims it once it is committed; the notice goes out with the
            // commit, and never on a rollback. Not fenced here: a lock on
            // the host's registry row would be held for the whole of the
            // host's transaction and stall the heartbeat. Offered rows of a
            // host that is not alive are adopted like the rest of its work.
            submit_in: format!(
                "WITH ins AS ( \
                   INSERT INTO {t} ({SUBMIT_COLUMNS}) \
                   VALUES ($1, $2, $3, $4, $5, $6, now(), 'NOT_STARTED', true, false, false, \
                           $7, $8, $9, 0, $10, $11) \
                   ON CONFLICT DO NOTHING \
                   RETURNING 1 \
                 ), n AS (SELECT pg_notify($12, $13) FROM ins) \
                 SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM n)"
            ),
            // What became of the inserts a keyed batch did not insert: the
            // row with the same id (an earlier try whose reply was lost: it
            // is in), else the row holding the same type and key.
            inserted_as: format!(
                "SELECT u.id, c.command_id \
                 FROM unnest($1::uuid[], $2::int4[], $3::text[]) AS u(id, ty, key) \
                 LEFT JOIN LATERAL ( \
                   SELECT c.command_id FROM {t} c \
                   WHERE c.command_id = u.id \
                      OR (u.key IS NOT NULL AND c.command_type = u.ty \
                          AND c.idempotency_key = u.key) \
                   ORDER BY c.command_id = u.id DESC LIMIT 1 \
                 ) c ON true"
            ),
            submitted_as: format!(
                "SELECT command_id FROM {t} \
                 WHERE command_id = $1 OR (command_type = $2 AND idempotency_key = $3) \
                 ORDER BY command_id = $1 DESC LIMIT 1"
            ),
            // The end transaction's update of its command: fenced like the
            // writer's; 0 rows changed means ended already, or owned by
            // another host (`owner_of` tells which).
            end_update: format!(
                "{update} \
                 FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::bool[], $5::text[], \
                             $6::text[], $7::text[], $8::text[], $9::text[], $11::uuid[], \
                             $12::int4[], $13::text[], $14::timestamptz[]) \
                   AS u(id, status, executed, notified, params, params_class, rv, rv_class, \
                        reason, root, attempts, last_error, not_before) \
                 WHERE c.command_id = u.id AND {in_hierarchy} \
                   AND c.callback_notified IS NOT TRUE AND {owned_by_10}"
            ),
            owner_of: format!(
                "SELECT command_id, owner_host, callback_notified FROM {t} \
                 WHERE command_id = ANY($1)"
            ),
            // A hierarchy goes only as a whole, and only when its root and every
            // row under it ended before the cutoff. A NULL or unknown status
            // counts as not ended. No `FOR UPDATE`: the DELETE locks what it
            // removes, and a second cleaner on the same rows waits, then finds
            // them gone; the row locks cost a WAL record per row (11 %).
            remove_before: format!(
                "WITH doomed AS ({expired} \
                   ORDER BY r.ended_at \
                   LIMIT $2 \
                 ) \
                 DELETE FROM {t} x USING doomed d \
                 WHERE x.command_id = d.command_id OR x.root_command_id = d.command_id \
                 RETURNING x.command_id, x.command_id = d.command_id"
            ),
            expired: format!(
                "WITH doomed AS ({expired}) \
                 SELECT (SELECT count(*) FROM doomed), \
                        (SELECT count(*) FROM {t} x \
                         WHERE x.command_id IN (SELECT command_id FROM doomed) \
                            OR x.root_command_id IN (SELECT command_id FROM doomed))"
            ),
            // The command and its descendants through parent links (UNION ends
            // the recursion on a cycle); only those not ended are marked.
            request_cancel: format!(
                "WITH RECURSIVE tree(id) AS ( \
                   SELECT $1::uuid \
                   UNION \
                   SELECT c.command_id FROM {t} c JOIN tree ON c.parent_command_id = tree.id \
                 ) \
                 UPDATE {t} SET cancel_requested_at = coalesce(cancel_requested_at, now()), \
                                updated_at = now() \
                 WHERE command_id IN (SELECT id FROM tree) \
                   AND (status IS NULL OR status NOT IN {ENDED})"
            ),
            children_of_unfinished: format!(
                "SELECT {COLUMNS} FROM {t} \
                 WHERE parent_command_id IN ( \
                   SELECT command_id FROM {t} \
                   WHERE callback_enabled AND callback_notified IS NOT TRUE) \
                 ORDER BY created_at, command_id"
            ),
            hosts: crate::pg_hosts::HostStatements::new(schema),
            // The predicate is the partial index's (V4): only commands not
            // notified yet, so the check does not grow with past cancellations.
            cancel_requested: format!(
                "SELECT command_id FROM {t} \
                 WHERE cancel_requested_at IS NOT NULL AND callback_notified IS NOT TRUE \
                   AND status NOT IN {ENDED}"
            ),
        }
    }
}

/// The PostgreSQL implementation of [`CommandStore`].
///
/// Cheap to clone: the pool and the statements are shared.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: Pool,
    pub(crate) schema: SchemaName,
    pub(crate) sql: std::sync::Arc<Statements>,
    /// Where the listener of notices between hosts connects (see
    /// [`PgStore::with_notifications`]); `None`: polling only.
    notifications: Option<crate::config::DatabaseConfig>,
    /// The heartbeat's own connection, made outside the pool on the
    /// heartbeat thread (see `pg_hosts`).
    pub(crate) heartbeat_client:
        std::sync::Arc<std::sync::Mutex<Option<deadpool_postgres::ClientWrapper>>>,
    /// Whether a coordinator's start applies migrations (see
    /// [`PgStore::without_migrations`]).
    run_migrations: bool,
    /// Client-side limit on the short operations (see
    /// [`PgStore::with_query_timeout`]).
    query_timeout: Option<std::time::Duration>,
    /// Connections that end transactions may hold at once: the pool less
    /// [`WRITER_RESERVED`]. End methods hold their transaction for as long as
    /// they run; without this limit enough of them drained the pool, and the
    /// writer (every status change, every submit) waited for a connection
    /// as if the database were down.
    end_transactions: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Connections of the pool kept from end transactions, for the writer's
/// batches (two in flight by default) and the reads between them.
pub const WRITER_RESERVED: usize = 2;

/// Attempts of a cancel request's update (a deadlock with a writer batch
/// is retried).
const CANCEL_ATTEMPTS: u32 = 3;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgStore {
    /// A store over `pool` for the table in `schema`. Does not touch the
    /// database: run [`crate::migrate`] first.
    pub fn new(pool: Pool, schema: SchemaName) -> Self {
        let sql = std::sync::Arc::new(Statements::new(&schema));
        Self {
            schema,
            sql,
            heartbeat_client: Default::default(),
            notifications: None,
            run_migrations: true,
            query_timeout: Some(crate::config::DEFAULT_QUERY_TIMEOUT),
            end_transactions: std::sync::Arc::new(tokio::sync::Semaphore::new(
                end_transaction_share(pool_size_of(&pool)),
            )),
            pool,
        }
    }

    /// Gives up on a writer batch, point read or write, or cancel request
    /// that has had no answer for `timeout` (`None`: wait forever): the
    /// connection is closed, and the operation fails with a transient error.
    /// Default [`DEFAULT_QUERY_TIMEOUT`](crate::config::DEFAULT_QUERY_TIMEOUT);
    /// why, and what it does not cover, at
    /// [`DatabaseConfig::with_query_timeout`](crate::DatabaseConfig::with_query_timeout).
    pub fn with_query_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Lets hosts tell each other at once (LISTEN/NOTIFY on a connection of
    /// its own, made from `config`) what they would otherwise find by
    /// polling: a cancellation reaches the command's host within
    /// milliseconds instead of its `cancel_check_interval`, a hand-over is
    /// adopted at once, a command's end reaches a waiter on another host at
    /// once instead of within its `remote_wait_interval`. Without it every
    /// one of these still happens, by polling.
    ///
    /// ```no_run
    /// # use command_coordinator::{DatabaseConfig, PgStore};
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = DatabaseConfig::from_url("postgres://app@db/app")?;
    /// let store = PgStore::new(config.create_pool()?, config.schema().clone())
    ///     .with_notifications(&config);
    /// # Ok(()) }
    /// ```
    pub fn with_notifications(mut self, config: &crate::config::DatabaseConfig) -> Self {
        self.notifications = Some(config.clone());
        self
    }

    /// Does not apply migrations when a coordinator starts: for deployments
    /// where migrations run separately (`command_coordinator::migrate`, as a
    /// role that owns the schema) and the runtime's role has only DML rights on
    /// `command_entities`.
    pub fn without_migrations(mut self) -> Self {
        self.run_migrations = false;
        self
    }

    /// Refuses to run next to a coordinator of a version before several
    /// hosts could share a schema: such a host holds the advisory lock
    /// ([`HOST_LOCK_CLASS`], hashtext(schema)) and neither registers nor
    /// checks ownership, so both would run the same commands.
    async fn refuse_single_host_versions(&self) -> Result<(), StoreError> {
        let op = StoreOp::Connect;
        let client = self.client(op, None).await?;
        let free: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&HOST_LOCK_CLASS, &self.schema.as_str()],
            )
            .await
            .map_err(|e| map_pg_error(op, None, e))?
            .get(0);
        if free {
            client
                .execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))",
                    &[&HOST_LOCK_CLASS, &self.schema.as_str()],
                )
                .await
                .map_err(|e| map_pg_error(op, None, e))?;
            return Ok(());
        }
        Err(StoreError::new(
            op,
            None,
            StoreErrorKind::Database(
                format!(
                    "a coordinator of an older version (one host per schema) is running on schema \
                     {:?}: it holds advisory lock ({HOST_LOCK_CLASS}, hashtext('{}')). Stop it \
                     before starting this version: it does not know of other hosts and would \
                     run the same commands",
                    self.schema.as_str(),
                    self.schema.as_str()
                )
                .into(),
            ),
        ))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// Removes every hierarchy that ended before `cutoff`, in batches of
    /// [`DEFAULT_REMOVE_BATCH`] hierarchies; returns how many rows went.
    pub async fn remove_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let batch = self
                .remove_before_batch(cutoff, DEFAULT_REMOVE_BATCH)
                .await?;
            total += batch.removed.len() as u64;
            if batch.roots < DEFAULT_REMOVE_BATCH as usize {
                return Ok(total);
            }
        }
    }

    /// Applies a writer batch in one statement (see `Statements::apply`).
    async fn apply_batch(&self, host: HostId, batch: &[Transition]) -> Result<Applied, StoreError> {
        let op = StoreOp::Apply;
        let first = batch.first().map(Transition::command_id);
        let one = if batch.len() == 1 { first } else { None };
        let pg = |e| map_pg_error(op, one, e);
        let mut inserts = InsertColumns::default();
        let mut updates = UpdateColumns::default();
        for transition in batch {
            match transition {
                Transition::Insert(e) => inserts.push(e),
                Transition::Update(u) => updates.push(u),
            }
        }
        let retrying = updates.has_retries();
        let keyed = inserts.keyed();
        let sql = &self.sql.apply[usize::from(retrying) + 2 * usize::from(keyed)];
        let client = self.client(op, first).await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg)?;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::with_capacity(33);
        let insert_params = inserts.params();
        let update_params = updates.params();
        params.extend(insert_params);
        params.extend(update_params);
        params.push(host.as_uuid());
        params.push(&inserts.placed);
        params.push(updates.roots());
        if retrying {
            params.extend(updates.retries());
        }
        if keyed {
            params.push(&inserts.key);
            params.push(&inserts.not_before);
        }
        let row = client.query_one(&stmt, &params).await.map_err(pg)?;
        let alive = row.get::<_, i64>(0) > 0;
        let missed: Vec<Uuid> = row.get(1);
        let mut applied = Applied::default();
        if !inserts.id.is_empty() && !alive {
            applied
                .fenced
                .extend(inserts.id.iter().map(|id| CommandId::from_uuid(*id)));
        }
        if keyed && alive {
            let skipped: Vec<Uuid> = row.get(2);
            if !skipped.is_empty() {
                self.resolve_skipped(&client, &inserts, &skipped, &mut applied)
                    .await?;
            }
        }
        if !missed.is_empty() {
            // Ended already (final: nothing to do), gone, or owned by
            // another host now: only the last is refused. Read after the
            // statement, so an adoption that made it skip a row is seen.
            // (Ownership never comes back to a host that lost it, so a row
            // still owned here was skipped because it had ended.)
            let rows = client
                .query(&self.sql.owner_of, &[&missed])
                .await
                .map_err(pg)?;
            for row in rows {
                let owner: Option<Uuid> = row.get(1);
                let notified: Option<bool> = row.get(2);
                if owner != Some(*host.as_uuid()) {
                    applied.fenced.push(CommandId::from_uuid(row.get(0)));
                } else if notified != Some(true) {
                    // Owned here, not ended, and still not updated: the
                    // command must not carry on as if it had been.
                    tracing::error!(command_id = %CommandId::from_uuid(row.get(0)), "an update matched no row although this host owns it and it has not ended; the command stops");
                    applied.fenced.push(CommandId::from_uuid(row.get(0)));
                }
            }
        }
        Ok(applied)
    }

    /// The inserts of a keyed batch that were not inserted: each is this
    /// very row (committed by an earlier try whose reply was lost: applied),
    /// or the key's holder (a duplicate). A holder removed in between (its
    /// hierarchy cleaned up) makes the batch fail as transient: the writer
    /// tries it again, and the key is free then.
    async fn resolve_skipped(
        &self,
        client: &deadpool_postgres::Object,
        inserts: &InsertColumns<'_>,
        skipped: &[Uuid],
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        let op = StoreOp::Apply;
        let (mut ids, mut types, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        for (i, id) in inserts.id.iter().enumerate() {
            if skipped.contains(id) {
                ids.push(*id);
                types.push(inserts.ty[i]);
                keys.push(inserts.key[i]);
            }
        }
        let rows = client
            .query(&self.sql.inserted_as, &[&ids, &types, &keys])
            .await
            .map_err(|e| map_pg_error(op, None, e))?;
        for row in rows {
            let id: Uuid = row.get(0);
            match row.get::<_, Option<Uuid>>(1) {
                Some(found) if found == id => {}
                Some(found) => applied
                    .duplicates
                    .push((CommandId::from_uuid(id), CommandId::from_uuid(found))),
                None => {
                    return Err(StoreError::new(
                        op,
                        Some(CommandId::from_uuid(id)),
                        StoreErrorKind::Unavailable(
                            "the command holding this idempotency key was removed meanwhile".into(),
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn client(
        &self,
        op: StoreOp,
        id: Option<CommandId>,
    ) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| map_pool_error(op, id, e))
    }

    /// Runs a statement that returns rows.
    pub(crate) async fn query(
        &self,
        op: StoreOp,
        id: Option<CommandId>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.bounded(op, id, async {
            let client = self.client(op, id).await?;
            let stmt = client
                .prepare_cached(sql)
                .await
                .map_err(|e| map_pg_error(op, id, e))?;
            client
                .query(&stmt, params)
                .await
                .map_err(|e| map_pg_error(op, id, e))
        })
        .await
    }

    /// Runs a statement and returns how many rows it changed.
    pub(crate) async fn execute(
        &self,
        op: StoreOp,
        id: Option<CommandId>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.bounded(op, id, async {
            let client = self.client(op, id).await?;
            let stmt = client
                .prepare_cached(sql)
                .await
                .map_err(|e| map_pg_error(op, id, e))?;
            client
                .execute(&stmt, params)
                .await
                .map_err(|e| map_pg_error(op, id, e))
        })
        .await
    }

    pub(crate) async fn load_many(
        &self,
        op: StoreOp,
        id: Option<CommandId>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<LoadedRows, StoreError> {
        let rows = self.query(op, id, sql, params).await?;
        let mut loaded = LoadedRows {
            entities: Vec::with_capacity(rows.len()),
            bad_rows: Vec::new(),
        };
        for row in &rows {
            match entity_from_row(row) {
                Ok(entity) => loaded.entities.push(entity),
                Err(bad) => {
                    tracing::warn!(command_id = %bad.command_id, reason = %bad.reason, op = %op, "unreadable command row skipped");
                    loaded.bad_rows.push(bad);
                }
            }
        }
        Ok(loaded)
    }
}

impl CommandStore for PgStore {
    fn save_or_update<'a>(&'a self, e: &'a CommandEntity) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (rv, rv_class) = split_payload(e.return_value.as_ref());
            self.execute(
                StoreOp::SaveOrUpdate,
                Some(e.id),
                &self.sql.save_or_update,
                &[
                    e.id.as_uuid(),
                    &e.command_type,
                    &e.root_id.map(Uuid::from),
                    &e.parent_id.map(Uuid::from),
                    &e.parameters.json(),
                    &e.parameters.class(),
                    &e.created_at,
                    &e.ended_at,
                    &e.status.as_str(),
                    &e.callback_enabled,
                    &e.callback_notified,
                    &e.executed,
                    &rv,
                    &rv_class,
                    &e.failure_reason,
                    &e.job_id,
                    &e.step_id,
                    &e.owner.map(|h| *h.as_uuid()),
                    &e.owner_epoch,
                    &e.idempotency_key,
                    &e.not_before,
                    &e.failed_attempts,
                    &e.last_error,
                ],
            )
            .await
            .map(drop)
        })
    }

    fn get(&self, id: CommandId) -> StoreFuture<'_, Option<CommandEntity>> {
        Box::pin(async move {
            let rows = self
                .query(StoreOp::Get, Some(id), &self.sql.get, &[id.as_uuid()])
                .await?;
            match rows.first() {
                None => Ok(None),
                Some(row) => entity_from_row(row).map(Some).map_err(|bad| {
                    StoreError::new(StoreOp::Get, Some(id), StoreErrorKind::BadRow(bad.reason))
                }),
            }
        })
    }

    fn get_status(&self, id: CommandId) -> StoreFuture<'_, Option<CommandStatus>> {
        Box::pin(async move {
            let op = StoreOp::GetStatus;
            let rows = self
                .query(op, Some(id), &self.sql.get_status, &[id.as_uuid()])
                .await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let bad =
                |reason: String| StoreError::new(op, Some(id), StoreErrorKind::BadRow(reason));
            let status: Option<String> = row.try_get(0).map_err(|e| bad(e.to_string()))?;
            let status = status.ok_or_else(|| bad("status is NULL".into()))?;
            status.parse().map(Some).map_err(|e| bad(format!("{e}")))
        })
    }

    fn child_ids(&self, parent: CommandId) -> StoreFuture<'_, Vec<CommandId>> {
        Box::pin(async move {
            let rows = self
                .query(
                    StoreOp::ChildIds,
                    Some(parent),
                    &self.sql.child_ids,
                    &[parent.as_uuid()],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| CommandId::from_uuid(r.get(0)))
                .collect())
        })
    }

    fn hierarchy(&self, root: CommandId) -> StoreFuture<'_, LoadedRows> {
        Box::pin(async move {
            self.load_many(
                StoreOp::Hierarchy,
                Some(root),
                &self.sql.hierarchy,
                &[root.as_uuid()],
            )
            .await
        })
    }

    fn has_commands_with_root(&self, root: CommandId) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let rows = self
                .query(
                    StoreOp::HasCommandsWithRoot,
                    Some(root),
                    &self.sql.has_commands_with_root,
                    &[root.as_uuid()],
                )
                .await?;
            Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
        })
    }

    fn commands_with_callback_enabled(&self) -> StoreFuture<'_, LoadedRows> {
        Box::pin(async move {
            self.load_many(
                StoreOp::CommandsWithCallbackEnabled,
                None,
                &self.sql.commands_with_callback_enabled,
                &[],
            )
            .await
        })
    }

    fn update_status(&self, id: CommandId, status: CommandStatus) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            self.execute(
                StoreOp::UpdateStatus,
                Some(id),
                &self.sql.update_status,
                &[id.as_uuid(), &status.as_str()],
            )
            .await
            .map(|n| n > 0)
        })
    }

    fn update_executed(&self, id: CommandId) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            self.execute(
                StoreOp::UpdateExecuted,
                Some(id),
                &self.sql.update_executed,
                &[id.as_uuid()],
            )
            .await
            .map(|n| n > 0)
        })
    }

    fn update_notified(&self, id: CommandId) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            self.execute(
                StoreOp::UpdateNotified,
                Some(id),
                &self.sql.update_notified,
                &[id.as_uuid()],
            )
            .await
            .map(|n| n > 0)
        })
    }

    fn update_return_value<'a>(
        &'a self,
        id: CommandId,
        value: Option<&'a JsonPayload>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let (rv, rv_class) = split_payload(value);
            self.execute(
                StoreOp::UpdateReturnValue,
                Some(id),
                &self.sql.update_return_value,
                &[id.as_uuid(), &rv, &rv_class],
            )
            .await
            .map(|n| n > 0)
        })
    }

    fn remove(&self, id: CommandId) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            self.execute(StoreOp::Remove, Some(id), &self.sql.remove, &[id.as_uuid()])
                .await
                .map(|n| n > 0)
        })
    }

    fn remove_hierarchy(&self, root: CommandId) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            // One statement, so one implicit transaction: all of the tree or none.
            self.execute(
                StoreOp::RemoveHierarchy,
                Some(root),
                &self.sql.remove_hierarchy,
                &[root.as_uuid()],
            )
            .await
        })
    }

    fn children(&self, parent: CommandId) -> StoreFuture<'_, LoadedRows> {
        Box::pin(async move {
            self.load_many(
                StoreOp::Children,
                Some(parent),
                &self.sql.children,
                &[parent.as_uuid()],
            )
            .await
        })
    }

    fn apply<'a>(&'a self, host: HostId, batch: &'a [Transition]) -> StoreFuture<'a, Applied> {
        Box::pin(async move {
            let id = match batch {
                [one] => Some(one.command_id()),
                _ => None,
            };
            self.bounded(StoreOp::Apply, id, self.apply_batch(host, batch))
                .await
        })
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn begin_end_transaction(&self, host: HostId) -> LocalStoreFuture<'_, Box<dyn EndTransaction>> {
        Box::pin(async move {
            // Waits for a share of the pool, never for the writer's.
            let share = self
                .end_transactions
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let client = self.client(StoreOp::Apply, None).await?;
            let tx = PgTransaction::begin(client, self.sql.clone(), share, host).await?;
            Ok(Box::new(tx) as Box<dyn EndTransaction>)
        })
    }

    /// Closes the heartbeat's connection.
    fn release(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            drop(self.heartbeat_client.lock().expect("never poisoned").take());
            Ok(())
        })
    }

    /// Applies migrations (unless turned off); refuses to run next to a
    /// coordinator of a single-host version.
    fn prepare(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if self.run_migrations {
                crate::migrate::migrate(&self.pool, &self.schema).await?;
            }
            self.refuse_single_host_versions().await
        })
    }

    fn subscribe(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<command_coordinator_actors::Notice>> {
        let config = self.notifications.clone()?;
        Some(crate::pg_notify::listen(config, self.schema.clone()))
    }

    fn notify(&self, notice: command_coordinator_actors::Notice) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let channel = crate::pg_notify::channel(&self.schema);
            let payload = crate::pg_notify::payload(&notice);
            self.execute(
                StoreOp::Hosts,
                None,
                "SELECT pg_notify($1, $2)",
                &[&channel, &payload],
            )
            .await
            .map(drop)
        })
    }

    fn join<'a>(&'a self, host: &'a HostInfo) -> StoreFuture<'a, ()> {
        Box::pin(self.join_host(host))
    }

    fn heartbeat(&self, host: HostId, live: u64) -> StoreFuture<'_, Option<HostState>> {
        Box::pin(self.renew_heartbeat(host, live))
    }

    fn hosts(&self) -> StoreFuture<'_, Vec<HostRecord>> {
        Box::pin(self.list_hosts())
    }

    fn declare_dead<'a>(
        &'a self,
        by: HostId,
        observed: &'a [(HostId, DateTime<Utc>)],
        lease: std::time::Duration,
    ) -> StoreFuture<'a, Vec<HostId>> {
        Box::pin(self.declare_hosts_dead(by, observed, lease))
    }

    fn claim_offered(&self, host: HostId) -> StoreFuture<'_, Vec<CommandId>> {
        Box::pin(self.claim(host))
    }

    fn prune_hosts(&self, after: std::time::Duration) -> StoreFuture<'_, u64> {
        Box::pin(self.prune_hosts(after))
    }

    fn leave(&self, host: HostId) -> StoreFuture<'_, ()> {
        Box::pin(self.leave_host(host))
    }

    fn adopt(&self, host: HostId, max_rows: u32) -> StoreFuture<'_, Vec<CommandId>> {
        Box::pin(self.adopt_hierarchies(host, max_rows))
    }

    fn load_owned<'a>(
        &'a self,
        host: HostId,
        roots: Option<&'a [CommandId]>,
    ) -> StoreFuture<'a, OwnedRows> {
        Box::pin(self.load_owned_rows(host, roots))
    }

    fn list<'a>(
        &'a self,
        filter: &'a command_coordinator_actors::ListFilter,
    ) -> StoreFuture<'a, command_coordinator_actors::Page> {
        Box::pin(self.list_page(filter))
    }

    fn ended<'a>(&'a self, ids: &'a [CommandId]) -> StoreFuture<'a, Vec<CommandEntity>> {
        Box::pin(self.ended_rows(ids))
    }

    fn request_cancel(&self, id: CommandId) -> StoreFuture<'_, CancelOutcome> {
        Box::pin(async move {
            let op = StoreOp::Cancel;
            let rows = self
                .query(op, Some(id), &self.sql.get_status, &[id.as_uuid()])
                .await?;
            let Some(row) = rows.first() else {
                return Ok(CancelOutcome::NotFound);
            };
            let status: Option<String> = row.get(0);
            if let Some(status) = status
                .as_deref()
                .and_then(|s| s.parse::<CommandStatus>().ok())
                && status.is_ended()
            {
                return Ok(CancelOutcome::AlreadyEnded(status));
            }
            // The tree walk locks rows in its own order, a writer batch in
            // another: a deadlock (reported as transient) is retried.
            let mut attempt = 1;
            loop {
                match self
                    .execute(op, Some(id), &self.sql.request_cancel, &[id.as_uuid()])
                    .await
                {
                    Ok(commands) => {
                        // The host that runs it looks at once (it would
                        // within its cancellation check anyway).
                        if let Err(e) = self
                            .notify(command_coordinator_actors::Notice::Cancel)
                            .await
                        {
                            tracing::debug!(error = %e, "cancellation notice not sent; hosts find it by polling");
                        }
                        return Ok(CancelOutcome::Requested { commands });
                    }
                    Err(e) if e.is_transient() && attempt < CANCEL_ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }

    fn children_of_unfinished(&self) -> StoreFuture<'_, LoadedRows> {
        Box::pin(async move {
            self.load_many(
                StoreOp::Children,
                None,
                &self.sql.children_of_unfinished,
                &[],
            )
            .await
        })
    }

    fn cancel_requested(&self) -> StoreFuture<'_, Vec<CommandId>> {
        Box::pin(async move {
            let rows = self
                .query(StoreOp::Cancel, None, &self.sql.cancel_requested, &[])
                .await?;
            Ok(rows
                .iter()
                .map(|r| CommandId::from_uuid(r.get(0)))
                .collect())
        })
    }

    fn expired(&self, cutoff: DateTime<Utc>) -> StoreFuture<'_, Expired> {
        Box::pin(async move {
            let rows = self
                .query(StoreOp::RemoveBefore, None, &self.sql.expired, &[&cutoff])
                .await?;
            let row = rows.first();
            Ok(Expired {
                hierarchies: row.map_or(0, |r| r.get::<_, i64>(0) as u64),
                rows: row.map_or(0, |r| r.get::<_, i64>(1) as u64),
            })
        })
    }

    fn remove_before_batch(
        &self,
        cutoff: DateTime<Utc>,
        max_hierarchies: u32,
    ) -> StoreFuture<'_, RemovedBatch> {
        Box::pin(async move {
            let limit = i64::from(max_hierarchies);
            let rows = self
                .query(
                    StoreOp::RemoveBefore,
                    None,
                    &self.sql.remove_before,
                    &[&cutoff, &limit],
                )
                .await?;
            let mut batch = RemovedBatch {
                roots: 0,
                removed: Vec::with_capacity(rows.len()),
            };
            for row in &rows {
                batch.removed.push(CommandId::from_uuid(row.get(0)));
                if row.get::<_, bool>(1) {
                    batch.roots += 1;
                }
            }
            Ok(batch)
        })
    }
}

/// Column arrays of a multi-row insert (`unnest` turns them back into rows).
#[derive(Default)]
struct InsertColumns<'a> {
    id: Vec<Uuid>,
    ty: Vec<i32>,
    root: Vec<Option<Uuid>>,
    parent: Vec<Option<Uuid>>,
    params: Vec<&'a str>,
    class: Vec<&'a str>,
    created: Vec<DateTime<Utc>>,
    status: Vec<&'static str>,
    cb: Vec<bool>,
    notified: Vec<bool>,
    executed: Vec<bool>,
    rv: Vec<Option<&'a str>>,
    rv_class: Vec<Option<&'a str>>,
    reason: Vec<Option<&'a str>>,
    job: Vec<Option<Uuid>>,
    step: Vec<Option<Uuid>>,
    /// The host a new hierarchy was placed on (`None`: the writer's own).
    placed: Vec<Option<Uuid>>,
    /// Idempotency keys and start times (V8), sent only by a keyed batch.
    key: Vec<Option<&'a str>>,
    not_before: Vec<Option<DateTime<Utc>>>,
}

impl<'a> InsertColumns<'a> {
    fn push(&mut self, e: &'a CommandEntity) {
        let (rv, rv_class) = split_payload(e.return_value.as_ref());
        self.id.push(*e.id.as_uuid());
        self.ty.push(e.command_type);
        self.root.push(e.root_id.map(Uuid::from));
        self.parent.push(e.parent_id.map(Uuid::from));
        self.params.push(e.parameters.json());
        self.class.push(e.parameters.class());
        self.created.push(e.created_at);
        self.status.push(e.status.as_str());
        self.cb.push(e.callback_enabled);
        self.notified.push(e.callback_notified);
        self.executed.push(e.executed);
        self.rv.push(rv);
        self.rv_class.push(rv_class);
        self.reason.push(e.failure_reason.as_deref());
        self.job.push(e.job_id);
        self.step.push(e.step_id);
        self.placed.push(e.owner.map(|h| *h.as_uuid()));
        self.key.push(e.idempotency_key.as_deref());
        self.not_before.push(e.not_before);
    }

    /// Some insert has a key or a start time: the batch needs the keyed
    /// variant of the statement.
    fn keyed(&self) -> bool {
        self.key.iter().any(Option::is_some) || self.not_before.iter().any(Option::is_some)
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 16] {
        [
            &self.id,
            &self.ty,
            &self.root,
            &self.parent,
            &self.params,
            &self.class,
            &self.created,
            &self.status,
            &self.cb,
            &self.notified,
            &self.executed,
            &self.rv,
            &self.rv_class,
            &self.reason,
            &self.job,
            &self.step,
        ]
    }
}

/// Column arrays of a multi-row update; `None` leaves a column unchanged.
#[derive(Default)]
pub(crate) struct UpdateColumns<'a> {
    id: Vec<Uuid>,
    status: Vec<Option<&'static str>>,
    executed: Vec<Option<bool>>,
    notified: Vec<Option<bool>>,
    params: Vec<Option<&'a str>>,
    params_class: Vec<Option<&'a str>>,
    rv: Vec<Option<&'a str>>,
    rv_class: Vec<Option<&'a str>>,
    reason: Vec<Option<&'a str>>,
    root: Vec<Option<Uuid>>,
    attempts: Vec<Option<i32>>,
    last_error: Vec<Option<&'a str>>,
    not_before: Vec<Option<DateTime<Utc>>>,
}

impl<'a> UpdateColumns<'a> {
    pub(crate) fn push(&mut self, u: &'a CommandUpdate) {
        let (params, params_class) = split_payload(u.parameters.as_ref());
        let (rv, rv_class) = split_payload(u.return_value.as_ref());
        self.id.push(*u.id.as_uuid());
        self.status.push(u.status.map(CommandStatus::as_str));
        self.executed.push(u.executed);
        self.notified.push(u.notified);
        self.params.push(params);
        self.params_class.push(params_class);
        self.rv.push(rv);
        self.rv_class.push(rv_class);
        self.reason.push(u.failure_reason.as_deref());
        self.root.push(u.root.map(Uuid::from));
        let retry = u.retry.as_deref();
        self.attempts.push(retry.map(|r| r.failed_attempts));
        self.last_error
            .push(retry.and_then(|r| r.last_error.as_deref()));
        self.not_before.push(retry.and_then(|r| r.not_before));
    }

    /// Some update sets the retry columns: the batch needs the statement
    /// variant that writes them.
    pub(crate) fn has_retries(&self) -> bool {
        self.attempts.iter().any(Option::is_some)
    }

    /// The retry columns (their own parameters, after the roots).
    pub(crate) fn retries(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 3] {
        [&self.attempts, &self.last_error, &self.not_before]
    }

    /// The hierarchies of the updates (their own parameter, after the
    /// others).
    pub(crate) fn roots(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        &self.root
    }

    pub(crate) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 9] {
        [
            &self.id,
            &self.status,
            &self.executed,
            &self.notified,
            &self.params,
            &self.params_class,
            &self.rv,
            &self.rv_class,
            &self.reason,
        ]
    }
}

fn split_payload(payload: Option<&JsonPayload>) -> (Option<&str>, Option<&str>) {
    match payload {
        Some(p) => (Some(p.json()), Some(p.class())),
        None => (None, None),
    }
}

/// Reads one row into an entity, or says what is wrong with it.
///
/// Only `command_id` is trusted to be readable (it is the primary key); every
/// other column is checked, so that a bad row is reported by id instead of
/// panicking or failing the whole query.
pub(crate) fn entity_from_row(row: &Row) -> Result<CommandEntity, BadRow> {
    let id = CommandId::from_uuid(row.get(0));
    let bad = |reason: String| BadRow {
        command_id: id,
        reason,
    };
    fn col<'r, T: tokio_postgres::types::FromSql<'r>>(
        row: &'r Row,
        idx: usize,
    ) -> Result<Option<T>, String> {
        row.try_get::<_, Option<T>>(idx)
            .map_err(|e| format!("column {idx}: {e}"))
    }
    fn required<T>(value: Option<T>, name: &str) -> Result<T, String> {
        value.ok_or_else(|| format!("{name} is NULL"))
    }
    let read = || -> Result<CommandEntity, String> {
        let status: String = required(col(row, 9)?, "status")?;
        let status: CommandStatus = status.parse().map_err(|e| format!("{e}"))?;
        let params: String = required(col(row, 4)?, "command_parameters")?;
        let params_class: String = required(col(row, 5)?, "command_params_class")?;
        let parameters = JsonPayload::from_stored(params_class, params)
            .map_err(|e| format!("command_parameters is not JSON: {e}"))?;
        let return_value = match (col::<String>(row, 13)?, col::<String>(row, 14)?) {
            (None, _) => None,
            (Some(json), class) => Some(
                JsonPayload::from_stored(class.unwrap_or_default(), json)
                    .map_err(|e| format!("return_value is not JSON: {e}"))?,
            ),
        };
        Ok(CommandEntity {
            id,
            command_type: required(col(row, 1)?, "command_type")?,
            root_id: col::<Uuid>(row, 2)?.map(CommandId::from_uuid),
            parent_id: col::<Uuid>(row, 3)?.map(CommandId::from_uuid),
            parameters,
            created_at: required(col(row, 6)?, "created_at")?,
            updated_at: required(col(row, 7)?, "updated_at")?,
            ended_at: col(row, 8)?,
            status,
            callback_enabled: required(col(row, 10)?, "callback_enabled")?,
            callback_notified: required(col(row, 11)?, "callback_notified")?,
            executed: required(col(row, 12)?, "executed")?,
            return_value,
            failure_reason: col(row, 15)?,
            job_id: col(row, 16)?,
            step_id: col(row, 17)?,
            owner: col::<Uuid>(row, 18)?.map(HostId::from_uuid),
            owner_epoch: col::<i32>(row, 19)?.unwrap_or(0),
            idempotency_key: col(row, 20)?,
            not_before: col(row, 21)?,
            failed_attempts: col::<i32>(row, 22)?.unwrap_or(0),
            last_error: col(row, 23)?,
        })
    };
    read().map_err(bad)
}

impl PgStore {
    /// Runs `work`, a store operation that takes its connection from the pool,
    /// within the query timeout. Operations whose size grows with the table or
    /// a hierarchy (cleanup batches, removing or loading a whole hierarchy,
    /// the start-up loads) have none: they may legitimately run long, and a
    /// limit that a large deployment always exceeds would keep it from
    /// starting or cleaning up; the kernel-level timeouts still cover them.
    ///
    /// On timeout `work` is dropped, and with it its connection, which goes
    /// back to the pool synchronously; the pool's idle connections are then
    /// all closed (dropping one aborts its connection task). That closes the
    /// silent connection instead of handing it out again, and the others too:
    /// whatever silenced one (a failover, a hung proxy) most likely silenced
    /// them, and a retry should not spend another timeout on each of them.
    pub(crate) async fn bounded<T>(
        &self,
        op: StoreOp,
        id: Option<CommandId>,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let bulk = matches!(
            op,
            StoreOp::RemoveBefore
                | StoreOp::RemoveHierarchy
                | StoreOp::Hierarchy
                | StoreOp::CommandsWithCallbackEnabled
                | StoreOp::Children
        );
        let limit = match self.query_timeout {
            Some(limit) if !bulk => limit,
            _ => return work.await,
        };
        // `work` (and the connection it holds) is dropped when this statement
        // ends, before the `retain` below: nothing can take the silent
        // connection from the pool in between.
        let outcome = tokio::time::timeout(limit, work).await;
        if outcome.is_err() {
            self.pool.retain(|_, _| false);
            tracing::warn!(op = %op, command_id = ?id, timeout = ?limit, "no answer from the database within the query timeout: connections closed");
        }
        outcome.unwrap_or_else(|_elapsed| {
            Err(StoreError::new(
                op,
                id,
                StoreErrorKind::Unavailable(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer from the database within {limit:?} (query timeout); \
                         the connection was closed"
                    ),
                ))),
            ))
        })
    }
}

/// Classifies a driver error: lost connections and server shutdowns are
/// `Unavailable` (worth retrying), everything else is a `Database` error.
pub(crate) fn map_pg_error(
    op: StoreOp,
    id: Option<CommandId>,
    err: tokio_postgres::Error,
) -> StoreError {
    let transient = err.is_closed()
        || match err.code() {
            // No SQLSTATE: an I/O, TLS or protocol failure below the database.
            None => true,
            Some(code) => {
                code.code().starts_with("08") // connection exception
                    || code.code().starts_with("57P") // operator intervention (shutdown)
                    // Two transactions took the same rows in different orders
                    // (a cancel request's tree walk and a writer batch, say):
                    // retrying wins, the other side went through.
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::TOO_MANY_CONNECTIONS
                    || *code == SqlState::CANNOT_CONNECT_NOW
            }
        };
    let described = Box::new(Described::new(err));
    let kind = if transient {
        StoreErrorKind::Unavailable(described)
    } else {
        StoreErrorKind::Database(described)
    };
    StoreError::new(op, id, kind)
}

/// A pool that cannot hand out a connection means the database is unreachable.
pub(crate) fn map_pool_error(op: StoreOp, id: Option<CommandId>, err: PoolError) -> StoreError {
    match err {
        PoolError::Backend(e) => map_pg_error(op, id, e),
        other => StoreError::new(
            op,
            id,
            StoreErrorKind::Unavailable(Box::new(Described::new(other))),
        ),
    }
}

/// An error whose message carries its whole chain of causes. The driver's
/// own messages are terse ("db error", "error performing TLS handshake"); the
/// reason an operator needs ("permission denied for schema x", "invalid peer
/// certificate: UnknownIssuer") is in the sources, which many loggers never
/// print. The typed error stays available as the source.
#[derive(Debug)]
pub(crate) struct Described<E> {
    text: String,
    error: E,
}

impl<E: std::error::Error> Described<E> {
    pub(crate) fn new(error: E) -> Self {
        Self {
            text: error_chain(&error),
            error,
        }
    }
}

impl<E: std::error::Error> std::fmt::Display for Described<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Described<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// An error and all its sources, joined with ": " (a source whose text is
/// already in the message is left out). For one-line error reports.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// The pool's size.
fn pool_size_of(pool: &Pool) -> usize {
    pool.status().max_size
}

/// End transactions' share of a pool of `size`: all but
/// [`WRITER_RESERVED`], and at least one.
fn end_transaction_share(size: usize) -> usize {
    size.saturating_sub(WRITER_RESERVED).max(1)
}
