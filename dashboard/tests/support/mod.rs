//! Shared by the dashboard's tests: a fresh, migrated schema of its own on a
//! real PostgreSQL (`DATABASE_URL`, else the embedded throwaway cluster of
//! `command_coordinator::embedded`), and rows written with plain SQL.
#![allow(dead_code)]

pub mod webdriver;

use command_coordinator::embedded::test_database_url;
use command_coordinator::tokio_postgres::types::ToSql;
use command_coordinator::{DatabaseConfig, PgStore, SchemaName, migrate};
use uuid::Uuid;

pub struct TestDb {
    pub config: DatabaseConfig,
    pub store: PgStore,
    pub url: String,
}

pub fn database_url() -> String {
    test_database_url().unwrap_or_else(|e| panic!("no PostgreSQL for the tests: {e}"))
}

/// A migrated schema `t_<uuid>` and a store over it.
pub async fn fresh_db() -> TestDb {
    fresh_db_at(&database_url()).await
}

/// The same over a given URL (one carrying a password, say).
pub async fn fresh_db_at(url: &str) -> TestDb {
    let schema = SchemaName::new(format!("t_{}", Uuid::new_v4().simple())).unwrap();
    let config = DatabaseConfig::from_url(url)
        .expect("test database URL")
        .with_schema(schema)
        .with_pool_size(4)
        .unwrap();
    let pool = config.create_pool().expect("pool");
    migrate(&pool, config.schema()).await.expect("migrations");
    let store = PgStore::new(pool, config.schema().clone());
    TestDb {
        config,
        store,
        url: url.to_owned(),
    }
}

impl TestDb {
    pub fn table(&self) -> String {
        format!("{}.command_entities", self.config.schema().quoted())
    }

    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> u64 {
        let client = self.store.pool().get().await.expect("connection");
        client
            .execute(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", command_coordinator::error_chain(&e)))
    }

    pub async fn query_one_i64(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
        let client = self.store.pool().get().await.expect("connection");
        client
            .query_one(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", command_coordinator::error_chain(&e)))
            .get(0)
    }

    /// Inserts one row; returns its id.
    pub async fn insert(&self, row: Row<'_>) -> Uuid {
        let id = row.id.unwrap_or_else(Uuid::new_v4);
        let root = row.root.unwrap_or(id);
        let sql = format!(
            "INSERT INTO {} (command_id, command_type, root_command_id, parent_command_id, \
             command_parameters, command_params_class, created_at, status, callback_enabled, \
             callback_notified, executed, failure_reason, ended_at) \
             VALUES ($1, $2, $3, $4, $5, $6, now() - make_interval(secs => $7), $8, true, \
                     $9, true, $10, CASE WHEN $9 THEN now() END)",
            self.table()
        );
        let ended = row.status.starts_with("ENDED_");
        self.execute(
            &sql,
            &[
                &id,
                &row.command_type,
                &root,
                &row.parent,
                &row.params,
                &row.class,
                &row.age_secs,
                &row.status,
                &ended,
                &row.reason,
            ],
        )
        .await;
        id
    }

    pub async fn cancel_requested(&self, id: Uuid) -> bool {
        self.query_one_i64(
            &format!(
                "SELECT count(*) FROM {} WHERE command_id = $1 AND cancel_requested_at IS NOT NULL",
                self.table()
            ),
            &[&id],
        )
        .await
            == 1
    }
}

/// A row to insert; `Row::new(status)` then adjust fields.
pub struct Row<'a> {
    pub id: Option<Uuid>,
    pub command_type: i32,
    pub class: &'a str,
    pub params: &'a str,
    pub status: &'a str,
    pub parent: Option<Uuid>,
    pub root: Option<Uuid>,
    pub reason: Option<&'a str>,
    pub age_secs: f64,
}

impl<'a> Row<'a> {
    pub fn new(status: &'a str) -> Self {
        Self {
            id: None,
            command_type: 1,
            class: "app::commands::Deploy",
            params: r#"{"service":"web"}"#,
            status,
            parent: None,
            root: None,
            reason: None,
            age_secs: 0.0,
        }
    }

    pub fn child_of(mut self, parent: Uuid, root: Uuid) -> Self {
        self.parent = Some(parent);
        self.root = Some(root);
        self
    }
}
