//! The registry of hosts and the ownership of hierarchies on PostgreSQL
//! (`command_hosts`, `command_entities.owner_host`; migration V6): joining,
//! heartbeats, declaring hosts dead, leaving, adoption, and the loads a host
//! rebuilds its commands from.

use chrono::{DateTime, Utc};
use deadpool::managed::Manager as _;
use uuid::Uuid;

use crate::config::SchemaName;
use crate::pg_store::{COLUMNS, ENDED, PgStore, map_pg_error};
use command_coordinator_actors::{
    CommandEntity, CommandId, HostId, HostInfo, HostRecord, HostState, LoadedRows, OwnedRows,
    StoreError, StoreErrorKind, StoreOp,
};

/// How long a statement of adoption may wait for a row lock: a lock held by
/// a paused process's session (not yet ended) must not stall the adopter;
/// the next host tick tries again.
const ADOPT_LOCK_TIMEOUT: &str = "5s";

/// The `application_name` of an end transaction's session: how a host that
/// declares this one dead finds the transactions it left open (a paused
/// process keeps them, and their row locks, for as long as it is paused).
pub(crate) fn session_name(host: HostId) -> String {
    format!("command-coordinator {host}")
}

/// The SQL of the registry, with the schema filled in.
#[derive(Debug)]
pub(crate) struct HostStatements {
    join: String,
    heartbeat: String,
    list: String,
    declare_dead: String,
    terminate: String,
    leave: String,
    adopt: String,
    owned_unfinished: String,
    owned_children: String,
    owned_cancel_requested: String,
    prune: String,
    claim: String,
    ended: String,
    commands: String,
}

impl HostStatements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let t = format!("{}.command_entities", schema.quoted());
        let h = format!("{}.command_hosts", schema.quoted());
        // The unfinished rows of host $1, all of them or those of the
        // hierarchies $2 (the owner index, V6).
        // (`IN (SELECT unnest(..))`, not `= ANY(..)`: a hash join over the
        // adopted keys, where `ANY` of a parameter compares every row with
        // every key.)
        let owned = "callback_enabled AND callback_notified IS NOT TRUE AND owner_host = $1 \
                     AND ($2::uuid[] IS NULL \
                          OR coalesce(root_command_id, command_id) IN (SELECT unnest($2::uuid[])))";
        Self {
            join: format!(
                "INSERT INTO {h} (host_id, name, pid, state, started_at, heartbeat_at) \
                 VALUES ($1, $2, $3, 'alive', now(), now())"
            ),
            // Renews whatever the state, and answers it: a host declared
            // dead learns it here (and is never made alive again).
            heartbeat: format!(
                "UPDATE {h} SET heartbeat_at = now(), live_commands = $2 \
                 WHERE host_id = $1 RETURNING state"
            ),
            list: format!(
                "SELECT host_id, name, state, heartbeat_at, \
                        extract(epoch FROM now() - heartbeat_at)::float8, \
                        started_at, pid, live_commands \
                 FROM {h} ORDER BY started_at, host_id"
            ),
            // Compare-and-set on the heartbeat that was seen standing
            // still, judged on the database's clock.
            declare_dead: format!(
                "UPDATE {h} AS h SET state = 'dead', ended_at = now(), ended_by = $1 \
                 FROM unnest($2::uuid[], $3::timestamptz[]) AS o(id, beat) \
                 WHERE h.host_id = o.id AND h.state = 'alive' AND h.heartbeat_at = o.beat \
                   AND h.heartbeat_at < now() - make_interval(secs => $4) \
                 RETURNING h.host_id"
            ),
            terminate: "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                        WHERE application_name = ANY($1) AND pid <> pg_backend_pid()"
                .to_owned(),
            leave: format!(
                "UPDATE {h} SET state = 'leaving', ended_at = now() \
                 WHERE host_id = $1 AND state = 'alive'"
            ),
            // Unfinished rows whose owner is not alive (or none), found
            // through the owner index (`owner_host IN` the few hosts that
            // are not alive: a probe each, so that the host check that runs
            // this every second costs nothing while there is nothing to
            // adopt, however many commands run), oldest first, rows that head their hierarchy before the
            // others; `SKIP LOCKED` lets several adopters share them. Each
            // picked row brings its whole hierarchy (the rows sharing its
            // key, `coalesce(root_command_id, command_id)`: one equality, so
            // that the rows are found by a hash join, where `command_id =
            // root OR root_command_id = root` compared every row with every
            // key: 150 ms a slice of 500), so that rows
            // whose parent is missing or in a cycle are adopted too (and
            // then isolated by the rebuild, as at start-up). The owner is
            // checked again on every row moved: when two adopters picked
            // different rows of one hierarchy, the second finds the rows
            // owned by a live host and leaves them (or, having locked one
            // of them, is chosen as a deadlock victim and retries).
            adopt: format!(
                "WITH picked AS ( \
                   SELECT coalesce(r.root_command_id, r.command_id) AS root FROM {t} r \
                   WHERE r.callback_enabled AND r.callback_notified IS NOT TRUE \
                     AND (r.owner_host IS NULL \
                          OR r.owner_host IN (SELECT host_id FROM {h} WHERE state <> 'alive')) \
                   ORDER BY coalesce(r.root_command_id, r.command_id) <> r.command_id, \
                            r.created_at \
                   LIMIT $2 \
                   FOR UPDATE OF r SKIP LOCKED \
                 ) \
                 UPDATE {t} c SET owner_host = $1, owner_epoch = c.owner_epoch + 1 \
                 FROM (SELECT DISTINCT root FROM picked) p \
                 WHERE c.callback_notified IS NOT TRUE \
                   AND coalesce(c.root_command_id, c.command_id) = p.root \
                   AND (c.owner_host IS NULL \
                        OR c.owner_host NOT IN (SELECT host_id FROM {h} WHERE state = 'alive')) \
                 RETURNING p.root"
            ),
            owned_unfinished: format!(
                "SELECT {COLUMNS} FROM {t} WHERE {owned} ORDER BY created_at, command_id"
            ),
            owned_children: format!(
                "SELECT {COLUMNS} FROM {t} \
                 WHERE parent_command_id IN (SELECT command_id FROM {t} WHERE {owned}) \
                 ORDER BY created_at, command_id"
            ),
            owned_cancel_requested: format!(
                "SELECT command_id FROM {t} \
                 WHERE {owned} AND cancel_requested_at IS NOT NULL AND status NOT IN {ENDED}"
            ),
            // Hosts gone for a day that own nothing unfinished: each start
            // of a process registers a new one.
            prune: format!(
                "DELETE FROM {h} o WHERE o.state <> 'alive' \
                   AND o.ended_at < now() - make_interval(secs => $1) \
                   AND NOT EXISTS (SELECT 1 FROM {t} c WHERE c.owner_host = o.host_id \
                                   AND c.callback_enabled AND c.callback_notified IS NOT TRUE)"
            ),
            // Offered to $1 by the host that placed them (V7's index).
            claim: format!(
                "UPDATE {t} SET owner_epoch = 1 \
                 WHERE owner_host = $1 AND owner_epoch = 0 AND callback_notified IS NOT TRUE \
                 RETURNING coalesce(root_command_id, command_id)"
            ),
            // A page of the command list, newest first, by the V5 index
            // (created_at, command_id); rows without created_at are left
            // out (keys cannot order them).
            commands: format!(
                "SELECT {COLUMNS} FROM {t} \
                 WHERE created_at IS NOT NULL \
                   AND ($1::text[] IS NULL OR status = ANY($1)) \
                   AND ($2::int4 IS NULL OR command_type = $2) \
                   AND ($3::uuid IS NULL OR command_id = $3 OR root_command_id = $3) \
                   AND ($4::timestamptz IS NULL OR created_at >= $4) \
                   AND ($5::timestamptz IS NULL OR created_at < $5) \
                   AND ($6::timestamptz IS NULL OR (created_at, command_id) < ($6, $7::uuid)) \
                 ORDER BY created_at DESC, command_id DESC \
                 LIMIT $8"
            ),
            ended: format!(
                "SELECT {COLUMNS} FROM {t} WHERE command_id = ANY($1) AND status IN {ENDED}"
            ),
        }
    }
}

fn database(op: StoreOp, message: String) -> StoreError {
    StoreError::new(op, None, StoreErrorKind::Database(message.into()))
}

impl PgStore {
    pub(crate) async fn join_host(&self, host: &HostInfo) -> Result<(), StoreError> {
        let pid = i32::try_from(host.pid).ok();
        self.execute(
            StoreOp::Hosts,
            None,
            &self.sql.hosts.join,
            &[host.id.as_uuid(), &host.name, &pid],
        )
        .await
        .map(drop)
    }

    /// On a connection of its own, made outside the pool the first time
    /// (and again after it broke) by the caller's runtime: the heartbeat
    /// thread's. While it is in use it is out of its slot, so a heartbeat
    /// abandoned mid-way (its timeout) drops it, and the next makes a new
    /// one.
    pub(crate) async fn renew_heartbeat(
        &self,
        host: HostId,
        live: u64,
    ) -> Result<Option<HostState>, StoreError> {
        let op = StoreOp::Hosts;
        let pg = |e| map_pg_error(op, None, e);
        let taken = self.heartbeat_client.lock().expect("never poisoned").take();
        let client = match taken {
            Some(client) if !client.is_closed() => client,
            _ => self.pool.manager().create().await.map_err(pg)?,
        };
        let live = i64::try_from(live).unwrap_or(i64::MAX);
        let stmt = client
            .prepare_cached(&self.sql.hosts.heartbeat)
            .await
            .map_err(pg)?;
        let rows = client
            .query(&stmt, &[host.as_uuid(), &live])
            .await
            .map_err(pg)?;
        *self.heartbeat_client.lock().expect("never poisoned") = Some(client);
        match rows.first() {
            None => Ok(None),
            Some(row) => {
                let state: String = row.get(0);
                state.parse().map(Some).map_err(|e: String| database(op, e))
            }
        }
    }

    pub(crate) async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let op = StoreOp::Hosts;
        let rows = self.query(op, None, &self.sql.hosts.list, &[]).await?;
        rows.iter()
            .map(|row| {
                let state: String = row.get(2);
                let age: f64 = row.get(4);
                Ok(HostRecord {
                    id: HostId::from_uuid(row.get(0)),
                    name: row.get(1),
                    state: state.parse().map_err(|e: String| database(op, e))?,
                    heartbeat_at: row.get(3),
                    heartbeat_age: std::time::Duration::from_secs_f64(age.max(0.0)),
                    started_at: row.get(5),
                    pid: row
                        .get::<_, Option<i32>>(6)
                        .and_then(|p| u32::try_from(p).ok()),
                    live_commands: u64::try_from(row.get::<_, i64>(7)).unwrap_or(0),
                })
            })
            .collect()
    }

    pub(crate) async fn declare_hosts_dead(
        &self,
        by: HostId,
        observed: &[(HostId, DateTime<Utc>)],
        lease: std::time::Duration,
    ) -> Result<Vec<HostId>, StoreError> {
        let op = StoreOp::Hosts;
        let ids: Vec<Uuid> = observed.iter().map(|(h, _)| *h.as_uuid()).collect();
        let beats: Vec<DateTime<Utc>> = observed.iter().map(|(_, b)| *b).collect();
        let lease = lease.as_secs_f64();
        let rows = self
            .query(
                op,
                None,
                &self.sql.hosts.declare_dead,
                &[by.as_uuid(), &ids, &beats, &lease],
            )
            .await?;
        let dead: Vec<HostId> = rows.iter().map(|r| HostId::from_uuid(r.get(0))).collect();
        if !dead.is_empty() {
            // Their open end transactions hold row locks for as long as the
            // process is paused; ending the sessions rolls them back. (A
            // role without the right to do so leaves them: adoption then
            // waits for them, bounded by ADOPT_LOCK_TIMEOUT per attempt.)
            let names: Vec<String> = dead.iter().map(|h| session_name(*h)).collect();
            if let Err(e) = self
                .query(op, None, &self.sql.hosts.terminate, &[&names])
                .await
            {
                tracing::warn!(error = %e, "could not end the sessions of hosts declared dead");
            }
        }
        Ok(dead)
    }

    pub(crate) async fn claim(&self, host: HostId) -> Result<Vec<CommandId>, StoreError> {
        let rows = self
            .query(
                StoreOp::Adopt,
                None,
                &self.sql.hosts.claim,
                &[host.as_uuid()],
            )
            .await?;
        let mut keys: Vec<CommandId> = rows
            .iter()
            .map(|r| CommandId::from_uuid(r.get(0)))
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Removes hosts that left or died more than `after` ago and own
    /// nothing unfinished; returns how many.
    pub(crate) async fn prune_hosts(&self, after: std::time::Duration) -> Result<u64, StoreError> {
        let after = after.as_secs_f64();
        self.execute(StoreOp::Hosts, None, &self.sql.hosts.prune, &[&after])
            .await
    }

    pub(crate) async fn leave_host(&self, host: HostId) -> Result<(), StoreError> {
        self.execute(
            StoreOp::Hosts,
            None,
            &self.sql.hosts.leave,
            &[host.as_uuid()],
        )
        .await?;
        // The others adopt at once rather than at their next host check.
        use command_coordinator_actors::CommandStore as _;
        let _ = self.notify(command_coordinator_actors::Notice::Adopt).await;
        Ok(())
    }

    pub(crate) async fn adopt_hierarchies(
        &self,
        host: HostId,
        max: u32,
    ) -> Result<Vec<CommandId>, StoreError> {
        let op = StoreOp::Adopt;
        let pg = |e| map_pg_error(op, None, e);
        let limit = i64::from(max);
        self.bounded(op, None, async {
            let mut client = self.client(op, None).await?;
            let tx = client.transaction().await.map_err(pg)?;
            tx.batch_execute(&format!("SET LOCAL lock_timeout = '{ADOPT_LOCK_TIMEOUT}'"))
                .await
                .map_err(pg)?;
            let stmt = tx.prepare_cached(&self.sql.hosts.adopt).await.map_err(pg)?;
            let rows = tx
                .query(&stmt, &[host.as_uuid(), &limit])
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            let mut roots: Vec<CommandId> = rows
                .iter()
                .map(|r| CommandId::from_uuid(r.get(0)))
                .collect();
            roots.sort();
            roots.dedup();
            Ok(roots)
        })
        .await
    }

    pub(crate) async fn load_owned_rows(
        &self,
        host: HostId,
        roots: Option<&[CommandId]>,
    ) -> Result<OwnedRows, StoreError> {
        let op = StoreOp::CommandsWithCallbackEnabled;
        let roots: Option<Vec<Uuid>> = roots.map(|r| r.iter().map(|id| *id.as_uuid()).collect());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [host.as_uuid(), &roots];
        // Cancellations first: a command cancelled while nobody ran it is
        // born cancelled, before any step of it runs.
        let cancel_requested = self
            .query(
                StoreOp::Cancel,
                None,
                &self.sql.hosts.owned_cancel_requested,
                &params,
            )
            .await?
            .iter()
            .map(|r| CommandId::from_uuid(r.get(0)))
            .collect();
        let unfinished: LoadedRows = self
            .load_many(op, None, &self.sql.hosts.owned_unfinished, &params)
            .await?;
        let children = self
            .load_many(
                StoreOp::Children,
                None,
                &self.sql.hosts.owned_children,
                &params,
            )
            .await?;
        Ok(OwnedRows {
            unfinished,
            children,
            cancel_requested,
        })
    }

    pub(crate) async fn list_page(
        &self,
        filter: &command_coordinator_actors::ListFilter,
    ) -> Result<command_coordinator_actors::Page, StoreError> {
        use command_coordinator_actors::{Cursor, Page};
        let statuses: Option<Vec<&str>> = (!filter.statuses.is_empty())
            .then(|| filter.statuses.iter().map(|s| s.as_str()).collect());
        let root = filter.root.map(Uuid::from);
        let after_at = filter.after.map(|c| c.created_at);
        let after_id = filter.after.map(|c| Uuid::from(c.id));
        // One more than asked: whether there is a next page.
        let limit = i64::from(filter.limit) + 1;
        let rows = self
            .query(
                StoreOp::Get,
                None,
                &self.sql.hosts.commands,
                &[
                    &statuses,
                    &filter.command_type,
                    &root,
                    &filter.created_after,
                    &filter.created_before,
                    &after_at,
                    &after_id,
                    &limit,
                ],
            )
            .await?;
        let more = rows.len() > filter.limit as usize;
        let mut page = Page::default();
        let mut last = None;
        for row in rows.iter().take(filter.limit as usize) {
            let created_at: chrono::DateTime<chrono::Utc> = row.get(6);
            let id = CommandId::from_uuid(row.get(0));
            last = Some(Cursor { created_at, id });
            match crate::pg_store::entity_from_row(row) {
                Ok(entity) => page.rows.push(entity),
                Err(bad) => page.bad_rows.push(bad),
            }
        }
        page.next = if more { last } else { None };
        Ok(page)
    }

    pub(crate) async fn ended_rows(
        &self,
        ids: &[CommandId],
    ) -> Result<Vec<CommandEntity>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
        Ok(self
            .load_many(StoreOp::Get, None, &self.sql.hosts.ended, &[&ids])
            .await?
            .entities)
    }
}
