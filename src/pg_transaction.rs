//! [`PgTransaction`]: the transaction an end method writes its own rows
//! through, committed together with the command's end.
//!
//! ```no_run
//! use command_coordinator::{Command, CommandContext, CommandError, PgTransaction, PollOutcome};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct RemoveSnapshot { snapshot: String }
//! impl Command for RemoveSnapshot {
//!     const COMMAND_TYPE: i32 = 1;
//!     type Output = ();
//! #   async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> { Ok(()) }
//! #   async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> { Ok(PollOutcome::Succeeded(())) }
//!     async fn end_successfully(&mut self, _: &(), ctx: &CommandContext) -> Result<(), CommandError> {
//!         let tx = ctx.transaction::<PgTransaction>().await?;
//!         // Happens exactly once, together with ENDED_SUCCESSFULLY.
//!         tx.execute("DELETE FROM snapshots WHERE name = $1", &[&self.snapshot]).await?;
//!         Ok(())
//!     }
//! }
//! ```

use std::any::Any;
use std::rc::Rc;
use std::sync::Arc;

use deadpool_postgres::Object;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::pg_store::{Statements, UpdateColumns, map_pg_error};
use command_coordinator_actors::{
    CommandUpdate, EndTransaction, HostId, LocalStoreFuture, StoreError, StoreErrorKind, StoreOp,
};

/// An open PostgreSQL transaction on a pooled connection of its own.
///
/// Dropped without commit or rollback (the actor stopped mid-way), its
/// connection is closed rather than returned to the pool, so the server rolls
/// the transaction back and no later user of the pool finds it open.
pub struct PgTransaction {
    client: Option<Object>,
    sql: Arc<Statements>,
    finished: std::cell::Cell<bool>,
    /// This transaction's place among the pool's share for end
    /// transactions (see `PgStore`), given back with it.
    _share: tokio::sync::OwnedSemaphorePermit,
    /// The host whose ownership the commit checks.
    host: HostId,
}

impl PgTransaction {
    pub(crate) async fn begin(
        client: Object,
        sql: Arc<Statements>,
        share: tokio::sync::OwnedSemaphorePermit,
        host: HostId,
    ) -> Result<Self, StoreError> {
        let pg = |e| map_pg_error(StoreOp::Apply, None, e);
        client.batch_execute("BEGIN").await.map_err(pg)?;
        let tx = Self {
            client: Some(client),
            sql,
            finished: std::cell::Cell::new(false),
            _share: share,
            host,
        };
        // Named after the host for the transaction's life: a host that
        // declares this one dead ends such sessions (a paused process keeps
        // its transaction open, and its row locks, for as long as it is
        // paused). Dropped without commit, the connection is closed.
        tx.client()
            .execute(
                "SELECT set_config('application_name', $1, true)",
                &[&crate::pg_hosts::session_name(host)],
            )
            .await
            .map_err(pg)?;
        Ok(tx)
    }

    /// The connection, inside the transaction: anything tokio-postgres offers.
    pub fn client(&self) -> &tokio_postgres::Client {
        self.client.as_ref().expect("client present until drop")
    }

    /// Runs a statement in the transaction; returns the rows it changed.
    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.client().execute(sql, params).await
    }

    /// Runs a query in the transaction.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.client().query(sql, params).await
    }
}

impl EndTransaction for PgTransaction {
    fn as_any_rc(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }

    fn commit(&self, update: CommandUpdate) -> LocalStoreFuture<'_, ()> {
        Box::pin(async move {
            let id = update.id;
            let pg = |e| map_pg_error(StoreOp::Apply, Some(id), e);
            let mut columns = UpdateColumns::default();
            columns.push(&update);
            let stmt = self
                .client
                .as_ref()
                .expect("client present until drop")
                .prepare_cached(&self.sql.end_update)
                .await
                .map_err(pg)?;
            let mut params = columns.params().to_vec();
            params.push(self.host.as_uuid());
            params.push(columns.roots());
            params.extend(columns.retries());
            let changed = self.client().execute(&stmt, &params).await.map_err(pg)?;
            if changed != 1 {
                // Ended already (an earlier attempt committed, its reply
                // lost), gone, or adopted by another host: this attempt's
                // effects must not be applied.
                let ids = vec![*id.as_uuid()];
                let owner = self
                    .client()
                    .query(&self.sql.owner_of, &[&ids])
                    .await
                    .map_err(pg)?
                    .first()
                    .and_then(|row| row.get::<_, Option<uuid::Uuid>>(1));
                self.client().batch_execute("ROLLBACK").await.map_err(pg)?;
                self.finished.set(true);
                let kind = if owner.is_some_and(|o| o != *self.host.as_uuid()) {
                    StoreErrorKind::Fenced(
                        "another host owns this command now (this host was declared dead or \
                         left); the end transaction was rolled back"
                            .into(),
                    )
                } else {
                    StoreErrorKind::Database(
                        "the command already ended (an earlier attempt committed) or its row \
                         is gone; this attempt was rolled back"
                            .into(),
                    )
                };
                return Err(StoreError::new(StoreOp::Apply, Some(id), kind));
            }
            self.client().batch_execute("COMMIT").await.map_err(pg)?;
            self.finished.set(true);
            Ok(())
        })
    }

    fn is_broken(&self) -> bool {
        self.client().is_closed()
    }

    fn rollback(&self) -> LocalStoreFuture<'_, ()> {
        Box::pin(async move {
            self.client()
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| map_pg_error(StoreOp::Apply, None, e))?;
            self.finished.set(true);
            Ok(())
        })
    }
}

impl Drop for PgTransaction {
    fn drop(&mut self) {
        if !self.finished.get()
            && let Some(client) = self.client.take()
        {
            // Closing the connection is the only way to end the transaction
            // without awaiting; the pool makes a new connection when needed.
            drop(Object::take(client));
        }
    }
}
