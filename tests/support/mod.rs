//! Shared by the integration tests: a fresh schema on a real PostgreSQL.
//!
//! With `DATABASE_URL` set the tests use that server; otherwise one throwaway
//! cluster is started per test process from the local PostgreSQL binaries
//! (see `command_coordinator::embedded`). Every test gets its own schema, so
//! tests run in parallel without seeing each other's rows.
#![allow(dead_code)]

use command_coordinator::embedded::test_database_url;
use command_coordinator::{DatabaseConfig, PgStore, SchemaName, migrate};
use deadpool_postgres::Pool;

pub struct TestDb {
    pub config: DatabaseConfig,
    pub pool: Pool,
    pub store: PgStore,
}

impl TestDb {
    /// The table's name qualified by this test's schema, for plain-SQL checks.
    pub fn table(&self) -> String {
        format!("{}.command_entities", self.config.schema().quoted())
    }

    /// Runs plain SQL (for writing rows the store would never write).
    pub async fn sql(&self, sql: &str) {
        let client = self.pool.get().await.expect("connection");
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Registers a host (as a coordinator's start does), for tests that write
/// through the store directly: its writes are fenced by its ownership.
pub async fn join_host(db: &TestDb) -> command_coordinator::HostId {
    use command_coordinator::CommandStore;
    let host = command_coordinator::actors::HostInfo {
        id: command_coordinator::HostId::new(),
        name: "test".into(),
        pid: std::process::id(),
    };
    db.store.join(&host).await.expect("join");
    host.id
}

/// The URL of the test server, or a panic that says how to get one.
pub fn database_url() -> String {
    test_database_url().unwrap_or_else(|e| panic!("no PostgreSQL for the tests: {e}"))
}

/// A configuration for a new, empty schema (not yet migrated).
pub fn fresh_config() -> DatabaseConfig {
    let schema = SchemaName::new(format!("t_{}", uuid::Uuid::new_v4().simple())).unwrap();
    DatabaseConfig::from_url(&database_url())
        .expect("test database URL")
        .with_schema(schema)
        .with_pool_size(4)
        .unwrap()
}

/// A migrated, empty schema of its own and a store over it.
pub async fn fresh_db() -> TestDb {
    let config = fresh_config();
    let pool = config.create_pool().expect("pool");
    migrate(&pool, config.schema()).await.expect("migrations");
    let store = PgStore::new(pool.clone(), config.schema().clone());
    TestDb {
        config,
        pool,
        store,
    }
}

pub mod commands;
pub mod gates;
pub mod rows;

use std::time::Duration;

use command_coordinator::{Coordinator, CoordinatorBuilder};

/// A builder over the test's store with every test command type registered
/// and fast timings (polls every 10 ms, end retries after 5 ms, a lease of
/// 3 s renewed every 200 ms: a killed host's work is adopted in seconds).
pub fn builder(db: &TestDb) -> CoordinatorBuilder {
    builder_over(db.store.clone())
}

/// [`builder`] over another store (of the same schema, say).
pub fn builder_over(store: command_coordinator::PgStore) -> CoordinatorBuilder {
    Coordinator::builder(store)
        .register::<commands::Job>()
        .register::<commands::Parent>()
        .register::<commands::SerialParent>()
        .register::<commands::Idempotent>()
        .register::<commands::ShortLived>()
        .register::<commands::Effectful>()
        .register::<commands::Poller>()
        .register::<commands::WaitsForCancel>()
        .register::<commands::Flaky>()
        .register::<commands::SlowFlaky>()
        .register::<commands::Timed>()
        .poll_interval(Duration::from_millis(10))
        .max_poll_interval(Duration::from_millis(40))
        .end_retry_delay(Duration::from_millis(5))
        .heartbeat_interval(TEST_HEARTBEAT)
        .lease(TEST_LEASE)
        .host_check_interval(Duration::from_millis(100))
}

/// The tests' heartbeat interval and lease (see [`builder`]).
pub const TEST_HEARTBEAT: Duration = Duration::from_millis(200);
pub const TEST_LEASE: Duration = Duration::from_secs(3);

/// Fails the test instead of hanging when something never finishes.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match actix::clock::timeout(Duration::from_secs(60), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The test server's URL with another user (trust authentication, so no password).
pub fn url_as(user: &str) -> String {
    let config: command_coordinator::tokio_postgres::Config = database_url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        command_coordinator::tokio_postgres::config::Host::Tcp(h) => h.clone(),
        command_coordinator::tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}@{host}:{port}/{db}")
}
pub mod processes;
pub mod proxy;
pub mod torture_check;
