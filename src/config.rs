//! Connection settings, validated where they enter the library.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;
use tokio_postgres::config::SslMode;

/// The default schema: PostgreSQL's own, so `\d command_entities` works in psql
/// with the default `search_path`.
pub const DEFAULT_SCHEMA: &str = "public";
/// Default pool size. Commands write through a batching writer, so a handful of
/// connections carries a lot of traffic; operators' reads take the others.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// How long to wait for a new connection before calling the database unavailable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENTIFIER_LEN: usize = 63;

/// A configuration value that cannot be used, with what is wrong in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid schema name {name:?}: {reason}")]
    InvalidSchema { name: String, reason: &'static str },
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("pool size must be at least 1")]
    EmptyPool,
    #[error("TLS: {0}")]
    Tls(String),
}

/// A validated PostgreSQL schema name: lower-case ASCII letters, digits and `_`,
/// starting with a letter or `_`, at most 63 bytes, not `pg_*`.
///
/// Identifiers cannot be bound as query parameters, so the schema is the one
/// piece of text that is put into SQL; this type is what makes that safe. It is
/// always written quoted.
///
/// ```
/// use command_coordinator::SchemaName;
/// assert!(SchemaName::new("tenant_7").is_ok());
/// assert!(SchemaName::new("x; DROP TABLE command_entities").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

impl SchemaName {
    pub fn new(name: impl Into<String>) -> Result<Self, ConfigError> {
        let name = name.into();
        let invalid = |reason| ConfigError::InvalidSchema {
            name: name.clone(),
            reason,
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(invalid("it is empty")),
            Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
                return Err(invalid("it must start with a lower-case letter or '_'"));
            }
            Some(_) => {}
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(invalid(
                "only lower-case ASCII letters, digits and '_' are allowed",
            ));
        }
        if name.len() > MAX_IDENTIFIER_LEN {
            return Err(invalid("it is longer than 63 bytes"));
        }
        if name.starts_with("pg_") {
            return Err(invalid(
                "names starting with 'pg_' are reserved by PostgreSQL",
            ));
        }
        Ok(Self(name))
    }

    /// The bare name, as stored in `pg_namespace`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for use in SQL text.
    pub fn quoted(&self) -> String {
        // Validation leaves no character that needs escaping; quoting keeps
        // reserved words (a schema called "user") working.
        format!("\"{}\"", self.0)
    }
}

impl Default for SchemaName {
    fn default() -> Self {
        Self(DEFAULT_SCHEMA.to_owned())
    }
}

impl FromStr for SchemaName {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SchemaName({:?})", self.0)
    }
}

/// Where the commands live: server, credentials, schema and pool size.
///
/// `Debug` and `Display` never show the password.
///
/// ```
/// use command_coordinator::DatabaseConfig;
/// let config = DatabaseConfig::from_url("postgres://app:s3cret@db.internal:5433/ops").unwrap();
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert!(!config.to_string().contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct DatabaseConfig {
    pg: tokio_postgres::Config,
    schema: SchemaName,
    pool_size: usize,
    /// Extra trusted CA certificates (PEM files) for TLS.
    ca_files: Vec<std::path::PathBuf>,
}

impl DatabaseConfig {
    /// Parses a `postgres://` URL or a `key=value` connection string.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| {
            // The driver's message never echoes the input, so no password leaks.
            ConfigError::InvalidUrl(e.to_string())
        })?;
        if pg.get_hosts().is_empty() {
            return Err(ConfigError::InvalidUrl("no host given".into()));
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("command-coordinator");
        }
        Ok(Self {
            pg,
            schema: SchemaName::default(),
            pool_size: DEFAULT_POOL_SIZE,
            ca_files: Vec::new(),
        })
    }

    /// Uses `schema` instead of [`DEFAULT_SCHEMA`].
    pub fn with_schema(mut self, schema: SchemaName) -> Self {
        self.schema = schema;
        self
    }

    /// Uses a pool of `size` connections instead of [`DEFAULT_POOL_SIZE`].
    pub fn with_pool_size(mut self, size: usize) -> Result<Self, ConfigError> {
        if size == 0 {
            return Err(ConfigError::EmptyPool);
        }
        self.pool_size = size;
        Ok(self)
    }

    /// Trusts the CA certificate(s) in this PEM file for TLS, besides the
    /// platform's roots: for a private CA or a self-signed server. Read when
    /// the pool is created.
    pub fn with_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// The driver's configuration (for hosts that build their own pool).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// A deadpool pool over this configuration.
    ///
    /// TLS follows the URL's `sslmode` (see [`crate::tls`] when the `tls`
    /// feature is on, the default); the server certificate is always verified.
    /// Connections are made lazily, so this succeeds even when the server is
    /// down; the first operation reports it. Must be called inside a Tokio
    /// runtime (an actix `System` is one).
    pub fn create_pool(&self) -> Result<Pool, ConfigError> {
        let manager_config = ManagerConfig {
            // Fast recycling: a broken connection is found by the next query,
            // which the store reports as `Unavailable`; checking every
            // checkout would cost a round trip per operation.
            recycling_method: RecyclingMethod::Fast,
        };
        let plain = self.pg.get_ssl_mode() == SslMode::Disable;
        let manager = if plain {
            Manager::from_config(self.pg.clone(), NoTls, manager_config)
        } else {
            self.tls_manager(manager_config)?
        };
        Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(DEFAULT_CONNECT_TIMEOUT))
            .wait_timeout(Some(DEFAULT_CONNECT_TIMEOUT * 2))
            .build()
            .map_err(|e| ConfigError::InvalidUrl(e.to_string()))
    }

    #[cfg(feature = "tls")]
    fn tls_manager(&self, config: ManagerConfig) -> Result<Manager, ConfigError> {
        let tls = crate::tls::connector(&self.ca_files)?;
        Ok(Manager::from_config(self.pg.clone(), tls, config))
    }

    #[cfg(not(feature = "tls"))]
    fn tls_manager(&self, config: ManagerConfig) -> Result<Manager, ConfigError> {
        if self.pg.get_ssl_mode() == SslMode::Require || !self.ca_files.is_empty() {
            return Err(ConfigError::Tls(
                "TLS was asked for, but this build lacks the `tls` feature".into(),
            ));
        }
        Ok(Manager::from_config(self.pg.clone(), NoTls, config))
    }

    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self.pg.get_user().unwrap_or("");
        let password = if self.pg.get_password().is_some() {
            ":***"
        } else {
            ""
        };
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .zip(self.pg.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            })
            .collect();
        write!(
            f,
            "postgres://{user}{password}@{}/{}",
            hosts.join(","),
            self.pg.get_dbname().unwrap_or("")
        )
    }
}

impl fmt::Display for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_redacted(f)?;
        write!(f, " (schema {})", self.schema)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Url<'a>(&'a DatabaseConfig);
        impl fmt::Debug for Url<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt_redacted(f)
            }
        }
        f.debug_struct("DatabaseConfig")
            .field("url", &Url(self))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("sslmode", &self.pg.get_ssl_mode())
            .field("ca_files", &self.ca_files)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_validated() {
        for good in ["public", "_x", "tenant_42", &"a".repeat(63)] {
            assert!(SchemaName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Public",
            "9lives",
            "a-b",
            "a b",
            "x\"; drop table t; --",
            "pg_catalog",
            &"a".repeat(64),
            "schéma",
        ] {
            assert!(SchemaName::new(bad).is_err(), "{bad}");
        }
        assert_eq!(SchemaName::new("user").unwrap().quoted(), "\"user\"");
    }

    #[test]
    fn password_never_shows() {
        for url in [
            "postgres://alice:hunter2@localhost:5432/db",
            "host=localhost user=alice password=hunter2 dbname=db",
        ] {
            let config = DatabaseConfig::from_url(url).unwrap();
            for shown in [
                format!("{config:?}"),
                format!("{config}"),
                format!("{config:#?}"),
            ] {
                assert!(!shown.contains("hunter2"), "{shown}");
                assert!(shown.contains("alice"), "{shown}");
            }
        }
    }

    #[test]
    fn bad_urls_are_rejected_with_a_reason() {
        assert!(DatabaseConfig::from_url("postgres://").is_err());
        assert!(DatabaseConfig::from_url("not a url at all =").is_err());
        let err = DatabaseConfig::from_url("postgres://u:pw@h/db")
            .unwrap()
            .with_pool_size(0)
            .unwrap_err();
        assert_eq!(err, ConfigError::EmptyPool);
    }
}
