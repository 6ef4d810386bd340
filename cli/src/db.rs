//! The connection to the database and the CLI's one error type.

use std::fmt;

use command_coordinator::tokio_postgres::Row;
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

/// An error and its sources, joined with ": " (repeats left out).
pub use command_coordinator::error_chain as chain;

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

    /// A store error as the operator should read it.
    pub fn store_error(&self, e: StoreError) -> CliError {
        if e.is_transient() {
            return CliError::new(format!(
                "cannot reach the database {}: {}",
                self.config,
                chain(&e.kind)
            ));
        }
        CliError::new(self.hint(chain(&e)))
    }

    /// Runs a parameterised query.
    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let client = self.store.pool().get().await.map_err(|e| {
            CliError::new(format!(
                "cannot reach the database {}: {}",
                self.config,
                chain(&e)
            ))
        })?;
        client.query(sql, params).await.map_err(|e| {
            if e.is_closed() || e.code().is_none() {
                CliError::new(format!(
                    "lost the connection to the database {}: {}",
                    self.config,
                    chain(&e)
                ))
            } else {
                CliError::new(self.hint(chain(&e)))
            }
        })
    }

    /// Adds what to do when the table is not there.
    fn hint(&self, message: String) -> String {
        let missing = message.contains("does not exist")
            && (message.contains("command_entities") || message.contains("cancel_requested_at"));
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
