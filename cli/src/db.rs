//! The connection to the database and the CLI's one error type.

use std::error::Error;
use std::fmt;

use command_coordinator::deadpool_postgres::{Object, PoolError, TimeoutType};
use command_coordinator::tokio_postgres::Row;
use command_coordinator::tokio_postgres::error::DbError;
use command_coordinator::tokio_postgres::types::ToSql;
use command_coordinator::{DatabaseConfig, PgStore, SchemaName, StoreError};

/// The statuses that mean "ended", as stored.
pub const ENDED: &str = "('ENDED_SUCCESSFULLY', 'ENDED_WITH_FAILURE')";

/// An error for the operator: one line, and the exit status it stands for.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub exit_code: u8,
}

pub type Result<T> = std::result::Result<T, CliError>;

impl CliError {
    /// A runtime failure (exit status 1).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: one_line(&message.into()),
            exit_code: 1,
        }
    }

    /// Bad usage (exit status 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            exit_code: 2,
            ..Self::new(message)
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Newlines in a driver's message would break "one line per error".
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What went wrong at the bottom of `error`'s chain, in the words of
/// whoever knew: PostgreSQL's own message (without the driver's "db error"
/// and the severity), the operating system's ("Connection refused"), or the
/// pool's timeouts in plain words. The layers above it ("database error",
/// "Error occurred while creating a new object", "get of command … failed")
/// name our plumbing, not the problem, and the caller says what it was doing.
pub fn cause(error: &(dyn Error + 'static)) -> String {
    let mut deepest = error;
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(db) = e.downcast_ref::<DbError>() {
            return match db.detail() {
                Some(detail) => format!("{} ({detail})", db.message()),
                None => db.message().to_owned(),
            };
        }
        if let Some(PoolError::Timeout(kind)) = e.downcast_ref::<PoolError>() {
            return match kind {
                TimeoutType::Create => "no connection within the connect timeout".to_owned(),
                TimeoutType::Wait | TimeoutType::Recycle => "no free connection in time".to_owned(),
            };
        }
        deepest = e;
        next = e.source();
    }
    deepest.to_string()
}

/// The database of one CLI run: the library's store plus plain queries.
pub struct Db {
    pub store: PgStore,
    config: DatabaseConfig,
}

impl Db {
    /// A small pool over `url` (nothing is connected until the first query).
    pub fn new(url: &str, schema: SchemaName) -> Result<Self> {
        let config = DatabaseConfig::from_url(url)
            .map_err(|e| CliError::usage(format!("--database-url: {e}")))?
            .with_schema(schema)
            .with_pool_size(2)
            .map_err(|e| CliError::new(e.to_string()))?;
        let pool = config
            .create_pool()
            .map_err(|e| CliError::new(format!("{config}: {e}")))?;
        let store = PgStore::new(pool, config.schema().clone());
        Ok(Self { store, config })
    }

    pub fn schema(&self) -> &SchemaName {
        self.config.schema()
    }

    /// `"schema".command_entities`, for plain queries.
    pub fn table(&self) -> String {
        format!("{}.command_entities", self.schema().quoted())
    }

    /// `"schema".command_hosts`, the registry of hosts (V6).
    pub fn hosts(&self) -> String {
        format!("{}.command_hosts", self.schema().quoted())
    }

    /// A store error as the operator should read it: `doing` says what the
    /// CLI was doing ("count what cleanup would remove"), the cause what
    /// went wrong; the store's operation names stay out of it.
    pub fn store_error(&self, doing: &str, e: StoreError) -> CliError {
        if e.is_transient() {
            return self.unreachable(&e);
        }
        CliError::new(self.hint(format!("cannot {doing}: {}", cause(&e))))
    }

    /// The database could not be reached, or the connection broke.
    fn unreachable(&self, e: &(dyn Error + 'static)) -> CliError {
        CliError::new(format!(
            "cannot reach the database {}: {}",
            self.config,
            cause(e)
        ))
    }

    /// A connection of the pool, for a transaction.
    pub async fn client(&self) -> Result<Object> {
        self.store
            .pool()
            .get()
            .await
            .map_err(|e| self.unreachable(&e))
    }

    /// A driver error as the operator should read it.
    pub fn pg_error(&self, e: command_coordinator::tokio_postgres::Error) -> CliError {
        if e.is_closed() || e.code().is_none() {
            CliError::new(format!(
                "lost the connection to the database {}: {}",
                self.config,
                cause(&e)
            ))
        } else {
            CliError::new(self.hint(cause(&e)))
        }
    }

    /// Runs a parameterised query.
    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let client = self.client().await?;
        client
            .query(sql, params)
            .await
            .map_err(|e| self.pg_error(e))
    }

    /// Adds what to do when a table or column of a later migration is not there.
    fn hint(&self, message: String) -> String {
        let missing = message.contains("does not exist")
            && [
                "command_entities",
                "command_hosts",
                "cancel_requested_at",
                "owner_host",
                "idempotency_key",
                "not_before",
                "failed_attempts",
                "last_error",
            ]
            .iter()
            .any(|name| message.contains(name));
        if missing {
            format!(
                "{message} (is schema {} migrated? run `command-coordinator --schema {} migrate`)",
                self.schema(),
                self.schema()
            )
        } else {
            message
        }
    }
}
