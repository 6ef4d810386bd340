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
/// How long to wait for a new connection (TCP connect, and separately TLS plus
/// authentication) before calling the database unavailable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time before the first TCP keepalive probe. The operating system's
/// default is 2 hours, so a connection whose peer vanished (failover, a NAT or
/// firewall that dropped its state) would sit in the pool, or under a waiting
/// query, for hours.
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered keepalive probes.
pub const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel closes the connection: with the two
/// defaults above a dead peer is found 30 + 3 × 10 = 60 s after the line went
/// quiet.
pub const DEFAULT_KEEPALIVES_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the kernel closes the
/// connection (`TCP_USER_TIMEOUT`, Linux only). Keepalives only run on a
/// connection with nothing in flight; this covers the other case, a request
/// sent into a dead network, which would otherwise be retransmitted for about
/// 15 minutes.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Client-side limit on each of the runtime's own short operations (writer
/// batches, point reads and writes, cancel requests). See
/// [`DatabaseConfig::with_query_timeout`].
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest keepalive idle time and interval Linux accepts (`MAX_TCP_KEEPIDLE`).
const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// Largest keepalive probe count Linux accepts (`MAX_TCP_KEEPCNT`).
const MAX_KEEPALIVE_RETRIES: u32 = 127;
/// Largest `statement_timeout` PostgreSQL accepts (`INT_MAX` milliseconds).
const MAX_STATEMENT_TIMEOUT_MS: u128 = i32::MAX as u128;
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
    #[error("invalid {name}: {reason}")]
    InvalidTimeout { name: &'static str, reason: String },
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

/// Where the commands live: server, credentials, schema, pool size, and how
/// long to wait for the network.
///
/// `Debug` and `Display` never show the password.
///
/// # Timeouts
///
/// A connection that stops answering without being closed (a failover behind a
/// virtual IP, a NAT or firewall that forgot the flow, a proxy that hangs) is
/// the failure TCP alone takes hours to notice; meanwhile the writer lane that
/// sent a batch on it waits. Four layers bound that wait, each where it can
/// tell a dead connection from a slow statement:
///
/// | setting | default | applies to | why |
/// |---|---|---|---|
/// | [connect timeout](Self::with_connect_timeout) | 5 s | every new connection: TCP connect, and the pool's limit for TLS + authentication | a server that does not answer at all |
/// | [TCP keepalives](Self::with_keepalives) | 30 s idle, 10 s interval, 3 probes | every connection, in the kernel | a dead peer under an idle connection (in the pool, or waiting for a long statement): found in 60 s; a live server answers probes while it works, so long statements are not affected |
/// | [TCP user timeout](Self::with_tcp_user_timeout) | 30 s (Linux) | every connection, in the kernel | a request sent into a dead network (unacknowledged data, where keepalives do not run) |
/// | [query timeout](Self::with_query_timeout) | 30 s, client side | the store's short operations only: writer batches, point reads and writes, cancel requests; **not** migrations, cleanup batches, loads or removals of whole hierarchies, the start-up loads, the heartbeat (bounded by a third of the lease), or the end methods' transactions | what the kernel cannot see: a peer that acknowledges packets but never answers (a hung proxy or pooler, a stopped server process) |
/// | [statement timeout](Self::with_statement_timeout) | off | every statement of the pool's sessions, server side | opt-in: it would also cut migrations (index builds, the migration lock wait), big cleanup batches and the end methods' own SQL |
///
/// Values given in the URL (`connect_timeout`, `keepalives`, `keepalives_idle`,
/// `keepalives_interval`, `keepalives_retries`, `tcp_user_timeout`, all in
/// seconds) win over these defaults; the `with_*` methods win over both.
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
    /// Client-side limit on the store's own short operations.
    query_timeout: Option<Duration>,
    /// Server-side `statement_timeout` of every session (off by default).
    statement_timeout: Option<Duration>,
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
        // The driver's idle default (2 h) cannot be told apart from a URL that
        // says 7200, so look for the key itself.
        if !url.contains("keepalives_idle") {
            pg.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
        }
        if pg.get_keepalives_interval().is_none() {
            pg.keepalives_interval(DEFAULT_KEEPALIVES_INTERVAL);
        }
        if pg.get_keepalives_retries().is_none() {
            pg.keepalives_retries(DEFAULT_KEEPALIVES_RETRIES);
        }
        if pg.get_tcp_user_timeout().is_none() {
            pg.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("command-coordinator");
        }
        let config = Self {
            pg,
            schema: SchemaName::default(),
            pool_size: DEFAULT_POOL_SIZE,
            ca_files: Vec::new(),
            query_timeout: Some(DEFAULT_QUERY_TIMEOUT),
            statement_timeout: None,
        };
        // The URL's own values are checked like the builder's.
        config.check_keepalives()?;
        Ok(config)
    }

    /// Waits at most `timeout` for each new connection: for the TCP connect
    /// (per address), and again for TLS plus authentication (the pool's
    /// create timeout). Default [`DEFAULT_CONNECT_TIMEOUT`]; the pool's wait
    /// for a free connection is twice this.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(invalid_timeout(
                "connect timeout",
                "it must be longer than zero (zero would fail every connection)",
            ));
        }
        self.pg.connect_timeout(timeout);
        Ok(self)
    }

    /// TCP keepalives: the first probe after `idle` without traffic, then one
    /// every `interval`; after `retries` unanswered probes the kernel closes
    /// the connection and the next use of it fails at once (a transient error;
    /// the pool makes a new one). Defaults [`DEFAULT_KEEPALIVES_IDLE`],
    /// [`DEFAULT_KEEPALIVES_INTERVAL`], [`DEFAULT_KEEPALIVES_RETRIES`].
    ///
    /// Kernels count in whole seconds: `idle` and `interval` must be 1 s to
    /// 32767 s, `retries` 1 to 127. Ignored for Unix-domain sockets.
    pub fn with_keepalives(
        mut self,
        idle: Duration,
        interval: Duration,
        retries: u32,
    ) -> Result<Self, ConfigError> {
        self.pg
            .keepalives(true)
            .keepalives_idle(idle)
            .keepalives_interval(interval)
            .keepalives_retries(retries);
        self.check_keepalives()?;
        Ok(self)
    }

    /// No TCP keepalives (a dead peer under an idle connection is then found
    /// only when the connection is next used).
    pub fn without_keepalives(mut self) -> Self {
        self.pg.keepalives(false);
        self
    }

    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before
    /// the kernel gives the connection up; `None` leaves the operating
    /// system's default (about 15 minutes of retransmissions). Default
    /// [`DEFAULT_TCP_USER_TIMEOUT`]. Linux only; ignored elsewhere and for
    /// Unix-domain sockets.
    pub fn with_tcp_user_timeout(mut self, timeout: Option<Duration>) -> Result<Self, ConfigError> {
        match timeout {
            Some(t) if t < Duration::from_millis(1) => {
                return Err(invalid_timeout(
                    "TCP user timeout",
                    "it must be at least 1 ms (use None for the system default)",
                ));
            }
            Some(t) if t.as_millis() > u128::from(u32::MAX) => {
                return Err(invalid_timeout(
                    "TCP user timeout",
                    format!("{t:?} is longer than the kernel's limit of {} ms", u32::MAX),
                ));
            }
            // The driver treats zero as "the system default".
            _ => self.pg.tcp_user_timeout(timeout.unwrap_or(Duration::ZERO)),
        };
        Ok(self)
    }

    /// Client-side limit on each of the runtime's own operations: a writer
    /// batch, a point read or write, a cancel request. When it passes without
    /// an answer the connection is closed and dropped from the pool (and so
    /// are the pool's idle connections, which likely share its fate), and the
    /// operation fails with a transient error that the writer retries on a
    /// new connection. `None` waits forever. Default [`DEFAULT_QUERY_TIMEOUT`].
    ///
    /// Why client side: a peer that acknowledges packets but never answers (a
    /// hung proxy or pooler, a server process stopped with SIGSTOP) is
    /// invisible to keepalives and the TCP user timeout, and a server-side
    /// `statement_timeout` cannot help when the server never got the
    /// statement. Why only those operations: they take milliseconds, so 30 s
    /// means the connection is dead; migrations, cleanup batches, loads and
    /// removals of whole hierarchies, the start-up loads and the end methods'
    /// transactions can legitimately run long (their size grows with the
    /// deployment) and are left to the kernel-level timeouts. A timed-out write may still have committed: the
    /// writer's batches are safe to repeat.
    ///
    /// Applied by the stores this configuration makes ([`Self::create_store`]);
    /// a store made with [`PgStore::new`](crate::PgStore::new) uses the
    /// default, or [`PgStore::with_query_timeout`](crate::PgStore::with_query_timeout).
    /// Must be longer than the statement timeout when both are set, so that the
    /// server's own, clearer error comes first.
    pub fn with_query_timeout(mut self, timeout: Option<Duration>) -> Result<Self, ConfigError> {
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid_timeout(
                "query timeout",
                "it must be longer than zero (use None for no limit)",
            ));
        }
        self.query_timeout = timeout;
        self.check_timeout_order()?;
        Ok(self)
    }

    /// Sets PostgreSQL's `statement_timeout` for every session of the pool
    /// (`None`, the default, leaves the server's setting, normally no limit).
    ///
    /// Off by default because it applies to *every* statement: migrations
    /// (index builds on a large table, the wait for another host's migration
    /// lock), cleanup batches, the heartbeat, and the SQL of end methods. Set
    /// it when the deployment wants a hard server-side bound and every one of
    /// those fits in it; at least 1 ms, at most `i32::MAX` ms.
    pub fn with_statement_timeout(
        mut self,
        timeout: Option<Duration>,
    ) -> Result<Self, ConfigError> {
        if let Some(t) = timeout {
            let ms = t.as_millis();
            if ms == 0 || ms > MAX_STATEMENT_TIMEOUT_MS {
                return Err(invalid_timeout(
                    "statement timeout",
                    format!(
                        "{t:?} is outside 1 ms ..= {MAX_STATEMENT_TIMEOUT_MS} ms (use None for no limit)"
                    ),
                ));
            }
        }
        self.statement_timeout = timeout;
        self.check_timeout_order()?;
        Ok(self)
    }

    /// The connect timeout in effect.
    pub fn connect_timeout(&self) -> Duration {
        self.pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// The client-side query timeout ([`Self::with_query_timeout`]).
    pub fn query_timeout(&self) -> Option<Duration> {
        self.query_timeout
    }

    /// The sessions' `statement_timeout` ([`Self::with_statement_timeout`]).
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout
    }

    fn check_keepalives(&self) -> Result<(), ConfigError> {
        if !self.pg.get_keepalives() {
            return Ok(());
        }
        let secs = |name: &'static str, d: Duration| {
            if d < Duration::from_secs(1) || d.as_secs() > MAX_KEEPALIVE_SECS {
                Err(invalid_timeout(
                    name,
                    format!(
                        "{d:?} is outside 1 s ..= {MAX_KEEPALIVE_SECS} s (kernels count whole seconds)"
                    ),
                ))
            } else {
                Ok(())
            }
        };
        secs("keepalives idle time", self.pg.get_keepalives_idle())?;
        if let Some(interval) = self.pg.get_keepalives_interval() {
            secs("keepalives interval", interval)?;
        }
        if let Some(retries) = self.pg.get_keepalives_retries()
            && !(1..=MAX_KEEPALIVE_RETRIES).contains(&retries)
        {
            return Err(invalid_timeout(
                "keepalives retries",
                format!("{retries} is outside 1 ..= {MAX_KEEPALIVE_RETRIES}"),
            ));
        }
        Ok(())
    }

    fn check_timeout_order(&self) -> Result<(), ConfigError> {
        if let (Some(query), Some(statement)) = (self.query_timeout, self.statement_timeout)
            && query <= statement
        {
            return Err(invalid_timeout(
                "query timeout",
                format!(
                    "{query:?} must be longer than the statement timeout ({statement:?}), so that \
                     the server reports a slow statement before the client drops the connection \
                     (set the query timeout first)"
                ),
            ));
        }
        Ok(())
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

    /// A pool over this configuration and a store over it, with this
    /// configuration's query timeout.
    pub fn create_store(&self) -> Result<crate::PgStore, ConfigError> {
        Ok(
            crate::PgStore::new(self.create_pool()?, self.schema.clone())
                .with_query_timeout(self.query_timeout),
        )
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
        let pg = self.session_config();
        let manager = if plain {
            Manager::from_config(pg, NoTls, manager_config)
        } else {
            self.tls_manager(pg, manager_config)?
        };
        // The driver's connect timeout covers the TCP connect only; the pool's
        // create timeout also bounds TLS and authentication on a connection
        // that was accepted and then went quiet.
        let connect = self.connect_timeout();
        Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(connect))
            .wait_timeout(Some(connect * 2))
            .build()
            .map_err(|e| ConfigError::InvalidUrl(e.to_string()))
    }

    /// A connection outside the pool whose asynchronous messages
    /// (notifications) come out of the returned channel: the pool's
    /// connections drop them. For the listener of notices between hosts.
    pub(crate) async fn connect_notifications(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
        ),
        Box<dyn std::error::Error>,
    > {
        let pg = self.session_config();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let limit = self.connect_timeout() * 2;
        let client = if self.pg.get_ssl_mode() == SslMode::Disable {
            let (client, connection) = tokio::time::timeout(limit, pg.connect(NoTls)).await??;
            forward_messages(connection, tx);
            client
        } else {
            #[cfg(feature = "tls")]
            {
                let tls = crate::tls::connector(&self.ca_files)?;
                let (client, connection) = tokio::time::timeout(limit, pg.connect(tls)).await??;
                forward_messages(connection, tx);
                client
            }
            #[cfg(not(feature = "tls"))]
            {
                return Err("TLS was asked for, but this build lacks the `tls` feature".into());
            }
        };
        Ok((client, rx))
    }

    /// The driver's configuration plus the session settings (the statement
    /// timeout travels in the startup packet: no extra round trip).
    fn session_config(&self) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        if let Some(t) = self.statement_timeout {
            let option = format!("-c statement_timeout={}", t.as_millis());
            let options = match pg.get_options() {
                Some(given) if !given.trim().is_empty() => format!("{given} {option}"),
                _ => option,
            };
            pg.options(options);
        }
        pg
    }

    #[cfg(feature = "tls")]
    fn tls_manager(
        &self,
        pg: tokio_postgres::Config,
        config: ManagerConfig,
    ) -> Result<Manager, ConfigError> {
        let tls = crate::tls::connector(&self.ca_files)?;
        Ok(Manager::from_config(pg, tls, config))
    }

    #[cfg(not(feature = "tls"))]
    fn tls_manager(
        &self,
        pg: tokio_postgres::Config,
        config: ManagerConfig,
    ) -> Result<Manager, ConfigError> {
        if self.pg.get_ssl_mode() == SslMode::Require || !self.ca_files.is_empty() {
            return Err(ConfigError::Tls(
                "TLS was asked for, but this build lacks the `tls` feature".into(),
            ));
        }
        Ok(Manager::from_config(pg, NoTls, config))
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

fn invalid_timeout(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidTimeout {
        name,
        reason: reason.into(),
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
            .field("connect_timeout", &self.connect_timeout())
            .field("keepalives", &self.pg.get_keepalives())
            .field("keepalives_idle", &self.pg.get_keepalives_idle())
            .field("keepalives_interval", &self.pg.get_keepalives_interval())
            .field("keepalives_retries", &self.pg.get_keepalives_retries())
            .field("tcp_user_timeout", &self.pg.get_tcp_user_timeout())
            .field("query_timeout", &self.query_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// Drives `connection` on the current arbiter, handing its asynchronous
/// messages to `tx`; ends with the connection.
fn forward_messages<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<tokio_postgres::AsyncMessage>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    actix::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if tx.send(message).is_err() {
                break;
            }
        }
    });
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

    #[test]
    fn network_timeouts_have_defaults_and_the_url_wins() {
        let config = DatabaseConfig::from_url("postgres://u@h/db").unwrap();
        let pg = config.pg_config();
        assert_eq!(pg.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert!(pg.get_keepalives());
        assert_eq!(pg.get_keepalives_idle(), DEFAULT_KEEPALIVES_IDLE);
        assert_eq!(
            pg.get_keepalives_interval(),
            Some(DEFAULT_KEEPALIVES_INTERVAL)
        );
        assert_eq!(
            pg.get_keepalives_retries(),
            Some(DEFAULT_KEEPALIVES_RETRIES)
        );
        assert_eq!(pg.get_tcp_user_timeout(), Some(&DEFAULT_TCP_USER_TIMEOUT));
        assert_eq!(config.query_timeout(), Some(DEFAULT_QUERY_TIMEOUT));
        assert_eq!(config.statement_timeout(), None);

        let config = DatabaseConfig::from_url(
            "postgres://u@h/db?connect_timeout=9&keepalives_idle=7200&keepalives_interval=4&keepalives_retries=6&tcp_user_timeout=11",
        )
        .unwrap();
        let pg = config.pg_config();
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(9)));
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(7200));
        assert_eq!(pg.get_keepalives_interval(), Some(Duration::from_secs(4)));
        assert_eq!(pg.get_keepalives_retries(), Some(6));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(11)));
    }

    #[test]
    fn bad_timeouts_are_rejected_with_a_reason() {
        let base = || DatabaseConfig::from_url("postgres://u@h/db").unwrap();
        let s = Duration::from_secs;
        let message = |r: Result<DatabaseConfig, ConfigError>| r.unwrap_err().to_string();
        assert!(message(base().with_connect_timeout(Duration::ZERO)).contains("connect timeout"));
        assert!(
            message(base().with_keepalives(Duration::from_millis(500), s(1), 3))
                .contains("whole seconds")
        );
        assert!(message(base().with_keepalives(s(30), s(40_000), 3)).contains("interval"));
        assert!(message(base().with_keepalives(s(30), s(10), 0)).contains("retries"));
        assert!(
            message(base().with_tcp_user_timeout(Some(Duration::ZERO)))
                .contains("TCP user timeout")
        );
        assert!(message(base().with_query_timeout(Some(Duration::ZERO))).contains("query timeout"));
        assert!(
            message(base().with_statement_timeout(Some(s(3_000_000))))
                .contains("statement timeout")
        );
        // The client must not give up before the server reports.
        let both = base().with_statement_timeout(Some(s(60)));
        assert!(message(both).contains("longer than the statement timeout"));
        let ok = base()
            .with_query_timeout(Some(s(90)))
            .unwrap()
            .with_statement_timeout(Some(s(60)))
            .unwrap();
        assert!(
            ok.session_config()
                .get_options()
                .unwrap()
                .contains("statement_timeout=60000")
        );
        assert!(DatabaseConfig::from_url("postgres://u@h/db?keepalives_retries=500").is_err());
        // Keepalives off: their values are not checked, and none are sent.
        assert!(!base().without_keepalives().pg_config().get_keepalives());
    }
}
