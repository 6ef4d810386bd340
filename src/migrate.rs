//! Schema migrations, applied at start-up (and from operators' tools).
//!
//! The SQL lives in `migrations/` (`V<n>__<name>.sql`) and is embedded at build
//! time by [refinery]. Refinery keeps the applied versions, with checksums, in
//! `command_coordinator_migrations` inside the configured schema, and refuses to
//! run when an applied file was changed afterwards.
//!
//! Refinery takes no lock of its own, so two hosts starting at once could both
//! try to apply the same version. We serialise them with a PostgreSQL advisory
//! lock keyed by the schema: the second waits, then finds nothing left to do.

use deadpool_postgres::Pool;
use tracing::info;

use crate::config::SchemaName;
use crate::pg_store::{error_chain, map_pg_error, map_pool_error};
use command_coordinator_actors::{StoreError, StoreErrorKind, StoreOp};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Name of refinery's history table, in the configured schema.
pub const MIGRATION_TABLE: &str = "command_coordinator_migrations";

/// First key of the advisory lock taken while migrating (the second is the
/// schema's hash). "CC" + 1; other locks of this library use other values.
pub(crate) const MIGRATION_LOCK_CLASS: i32 = 0x4343_0001;

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Names of the migrations applied by this run (`V1__command_entities`...).
    pub applied: Vec<String>,
}

/// Creates the schema if needed and applies every pending migration.
///
/// Idempotent and safe to call from several processes at once.
pub async fn migrate(pool: &Pool, schema: &SchemaName) -> Result<MigrationReport, StoreError> {
    let err = |kind| StoreError::new(StoreOp::Migrate, None, kind);
    let mut client = pool
        .get()
        .await
        .map_err(|e| map_pool_error(StoreOp::Migrate, None, e))?;
    let pg = |e| map_pg_error(StoreOp::Migrate, None, e);

    client
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&MIGRATION_LOCK_CLASS, &schema.as_str()],
        )
        .await
        .map_err(pg)?;

    let outcome = async {
        let exists = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&schema.as_str()],
            )
            .await
            .map_err(pg)?
            .get::<_, bool>(0);
        if !exists {
            // Only created when missing, so a role without CREATE on the
            // database can still migrate a schema an administrator made.
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted()))
                .await
                .map_err(pg)?;
        }
        client
            .batch_execute(&format!("SET search_path TO {}", schema.quoted()))
            .await
            .map_err(pg)?;
        let report = embedded::migrations::runner()
            .set_migration_table_name(MIGRATION_TABLE)
            .run_async(&mut **client)
            .await
            // Refinery's message hides the database's ("db error"): keep the
            // whole chain, so "permission denied for schema" reaches the operator.
            .map_err(|e| err(StoreErrorKind::Database(error_chain(&e).into())));
        // The connection goes back to the pool: leave no session state behind.
        let reset = client.batch_execute("RESET search_path").await.map_err(pg);
        let report = report?;
        reset?;
        Ok(report)
    }
    .await;

    let unlock = client
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&MIGRATION_LOCK_CLASS, &schema.as_str()],
        )
        .await
        .map_err(pg);
    let report = outcome?;
    unlock?;

    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    if applied.is_empty() {
        tracing::debug!(schema = %schema, "migrations: schema is up to date");
    } else {
        info!(schema = %schema, ?applied, "migrations applied");
    }
    Ok(MigrationReport { applied })
}
