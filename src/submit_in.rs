//! Submitting a command inside the host's own transaction: the host's rows
//! and the command commit together, or neither does (River's `InsertTx`,
//! Oban's `Multi`).
//!
//! ```no_run
//! use command_coordinator::{Coordinator, SubmitInTransaction};
//! # use command_coordinator::*;
//! # #[derive(serde::Serialize, serde::Deserialize)] struct ShipOrder { order: i64 }
//! # impl Command for ShipOrder { const COMMAND_TYPE: i32 = 41; type Output = ();
//! #   async fn execute(&mut self, _: &CommandContext) -> Result<(), CommandError> { Ok(()) }
//! #   async fn poll(&mut self, _: &CommandContext) -> Result<PollOutcome<()>, CommandError> { Ok(PollOutcome::Succeeded(())) } }
//!
//! # async fn demo(coordinator: Coordinator, pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = pool.get().await?;
//! let tx = client.transaction().await?;
//! let order: i64 = tx
//!     .query_one("INSERT INTO orders (item) VALUES ($1) RETURNING id", &[&"book"])
//!     .await?
//!     .get(0);
//! let submitted = coordinator.submit_in(&tx, ShipOrder { order }).await?;
//! tx.commit().await?; // the command starts now; after a rollback it never exists
//! let outcome = coordinator.wait_for(submitted.id).await?;
//! # Ok(()) }
//! ```
//!
//! How the command starts: its row is inserted *offered* to this host
//! (`owner_epoch` 0), and the same statement queues a notice
//! (`pg_notify`), which PostgreSQL delivers only when the transaction
//! commits. A coordinator with notifications
//! ([`PgStore::with_notifications`]) claims the row as soon as the notice
//! arrives (milliseconds); without them, at its next host check
//! (`host_check_interval`, 1 s by default). Either way one claim statement
//! picks up every row committed since the last: no query per command. A
//! rolled-back row never existed, and its notice is never sent. If the
//! host dies between the commit and the claim, the row is adopted with the
//! rest of its work.

use std::future::Future;

use command_coordinator_actors::{Command, Coordinator, CoordinatorError, Notice, StoreOp};
use command_coordinator_actors::{StoreError, StoreErrorKind, SubmitOptions, Submitted};
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::PgStore;
use crate::pg_store::map_pg_error;

/// Submits commands in the host's own `tokio_postgres` (or
/// `deadpool_postgres`, through its `Deref`) transaction. See the
/// [module documentation](self).
pub trait SubmitInTransaction {
    /// Inserts `command` as part of `tx`; it starts once `tx` commits, and
    /// never if it rolls back.
    fn submit_in<C: Command>(
        &self,
        tx: &Transaction<'_>,
        command: C,
    ) -> impl Future<Output = Result<Submitted, CoordinatorError>>;

    /// [`SubmitInTransaction::submit_in`] with an idempotency key and/or a
    /// later start. With a key held by a committed command, that command's
    /// id is answered ([`Submitted::duplicate`]); held by a command another
    /// transaction inserted and has not committed yet, this waits for that
    /// transaction (PostgreSQL's unique index does), then answers its id or
    /// inserts this one if it rolled back. In a `REPEATABLE READ` or
    /// `SERIALIZABLE` transaction a key taken by a transaction that
    /// committed after this one began is a serialization failure: retry the
    /// transaction.
    fn submit_in_with<C: Command>(
        &self,
        tx: &Transaction<'_>,
        command: C,
        options: SubmitOptions,
    ) -> impl Future<Output = Result<Submitted, CoordinatorError>>;
}

impl SubmitInTransaction for Coordinator {
    async fn submit_in<C: Command>(
        &self,
        tx: &Transaction<'_>,
        command: C,
    ) -> Result<Submitted, CoordinatorError> {
        self.submit_in_with(tx, command, SubmitOptions::new()).await
    }

    async fn submit_in_with<C: Command>(
        &self,
        tx: &Transaction<'_>,
        command: C,
        options: SubmitOptions,
    ) -> Result<Submitted, CoordinatorError> {
        let store = self.store_as::<PgStore>().ok_or_else(|| {
            StoreError::new(
                StoreOp::Submit,
                None,
                StoreErrorKind::Database(
                    "submit_in needs a coordinator running on a PgStore".into(),
                ),
            )
        })?;
        let e = self.prepare_offered(command, &options)?;
        let id = e.id;
        let owner = e.owner.expect("prepare_offered sets the owner");
        let pg = |err| CoordinatorError::Store(map_pg_error(StoreOp::Submit, Some(id), err));
        let channel = crate::pg_notify::channel(store.schema());
        let payload = crate::pg_notify::payload(&Notice::Offered(owner));
        let inserted = tx
            .query_one(
                &store.sql.submit_in,
                &[
                    e.id.as_uuid(),
                    &e.command_type,
                    &e.root_id.map(Uuid::from),
                    &e.parameters.json(),
                    &e.parameters.class(),
                    &e.created_at,
                    &e.job_id,
                    &e.step_id,
                    owner.as_uuid(),
                    &e.idempotency_key,
                    &e.not_before,
                    &channel,
                    &payload,
                ],
            )
            .await
            .map_err(pg)?;
        if inserted.get::<_, i64>(0) == 1 {
            tracing::debug!(command_id = %id, owner = %owner, "command inserted in the host's transaction");
            return Ok(Submitted {
                id,
                duplicate: false,
            });
        }
        let found = tx
            .query_opt(
                &store.sql.submitted_as,
                &[e.id.as_uuid(), &e.command_type, &e.idempotency_key],
            )
            .await
            .map_err(pg)?;
        match found.map(|r| command_coordinator_actors::CommandId::from_uuid(r.get(0))) {
            Some(existing) => Ok(Submitted {
                id: existing,
                duplicate: existing != id,
            }),
            None => Err(CoordinatorError::Store(StoreError::new(
                StoreOp::Submit,
                Some(id),
                StoreErrorKind::Database(
                    "the command holding this idempotency key was removed while this \
                     transaction waited for it; retry the transaction"
                        .into(),
                ),
            ))),
        }
    }
}
