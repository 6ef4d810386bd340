//! Migrations against a real PostgreSQL: the seed's table, idempotence, and
//! several processes migrating at once.

mod support;

use command_coordinator::migrate;
use support::{fresh_config, fresh_db};

#[actix::test]
async fn the_table_has_every_seed_column_with_its_type() {
    let db = fresh_db().await;
    let client = db.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT column_name, data_type, character_maximum_length, is_nullable \
             FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'command_entities'",
            &[&db.config.schema().as_str()],
        )
        .await
        .unwrap();
    let column = |name: &str| {
        rows.iter()
            .find(|r| r.get::<_, String>(0) == name)
            .map(|r| {
                (
                    r.get::<_, String>(1),
                    r.get::<_, Option<i32>>(2),
                    r.get::<_, String>(3),
                )
            })
            .unwrap_or_else(|| panic!("column {name} missing"))
    };
    let seed = [
        ("command_id", "uuid", None, "NO"),
        ("command_type", "integer", None, "NO"),
        ("root_command_id", "uuid", None, "YES"),
        ("command_parameters", "text", None, "YES"),
        (
            "command_params_class",
            "character varying",
            Some(256),
            "YES",
        ),
        ("created_at", "timestamp with time zone", None, "YES"),
        ("status", "character varying", Some(20), "YES"),
        ("callback_enabled", "boolean", None, "YES"),
        ("callback_notified", "boolean", None, "YES"),
        ("return_value", "text", None, "YES"),
        ("return_value_class", "character varying", Some(256), "YES"),
        ("job_id", "uuid", None, "YES"),
        ("step_id", "uuid", None, "YES"),
        ("executed", "boolean", None, "YES"),
        // Beyond the seed.
        ("parent_command_id", "uuid", None, "YES"),
        ("updated_at", "timestamp with time zone", None, "NO"),
        ("ended_at", "timestamp with time zone", None, "YES"),
        ("failure_reason", "text", None, "YES"),
        // V6: ownership.
        ("owner_host", "uuid", None, "YES"),
        ("owner_epoch", "integer", None, "NO"),
        // V8: submit options and retries.
        ("idempotency_key", "text", None, "YES"),
        ("not_before", "timestamp with time zone", None, "YES"),
        ("failed_attempts", "integer", None, "NO"),
        ("last_error", "text", None, "YES"),
        (
            "cancel_requested_at",
            "timestamp with time zone",
            None,
            "YES",
        ),
    ];
    for (name, data_type, len, nullable) in seed {
        assert_eq!(
            column(name),
            (data_type.to_owned(), len, nullable.to_owned()),
            "{name}"
        );
    }
    assert_eq!(rows.len(), seed.len());

    let indexes: Vec<(String, String)> = client
        .query(
            "SELECT indexname, indexdef FROM pg_indexes \
             WHERE schemaname = $1 AND tablename = 'command_entities'",
            &[&db.config.schema().as_str()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let def = |name: &str| {
        indexes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("index {name} missing: {indexes:?}"))
    };
    assert!(def("pk_command_entities").contains("UNIQUE"));
    assert!(def("idx_root_command_id").contains("WHERE (root_command_id IS NOT NULL)"));
    assert!(def("idx_parent_command_id").contains("(parent_command_id)"));
    assert!(def("idx_command_entities_owned").contains("(owner_host, created_at)"));
    let idempotency = def("idx_command_entities_idempotency");
    assert!(idempotency.contains("UNIQUE"), "{idempotency}");
    assert!(
        idempotency.contains("(command_type, idempotency_key) WHERE (idempotency_key IS NOT NULL)"),
        "{idempotency}"
    );
}

#[actix::test]
async fn migrating_again_applies_nothing() {
    let db = fresh_db().await;
    let again = migrate(&db.pool, db.config.schema()).await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
}

#[actix::test]
async fn several_processes_migrating_at_once_all_succeed_and_apply_once() {
    let config = fresh_config();
    // Separate pools stand for separate processes: separate connections racing.
    let pools: Vec<_> = (0..4).map(|_| config.create_pool().unwrap()).collect();
    let runs = pools.iter().cloned().map(|pool| {
        let schema = config.schema().clone();
        async move { migrate(&pool, &schema).await }
    });
    let reports = futures_join_all(runs).await;
    let mut applied_by = 0;
    for report in reports {
        let report = report.expect("every concurrent migration succeeds");
        if !report.applied.is_empty() {
            assert_eq!(report.applied, migration_names());
            applied_by += 1;
        }
    }
    assert_eq!(applied_by, 1, "exactly one run applied the migration");
    let client = pools[0].get().await.unwrap();
    let history: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.command_coordinator_migrations",
                config.schema().quoted()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, migration_names().len() as i64);
}

/// The names of the files in `migrations/`, in version order.
fn migration_names() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let mut names: Vec<(u32, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| {
            let name = f.strip_suffix(".sql")?.to_owned();
            let version = name.strip_prefix('V')?.split("__").next()?.parse().ok()?;
            Some((version, name))
        })
        .collect();
    names.sort();
    names.into_iter().map(|(_, name)| name).collect()
}

/// Polls futures concurrently on the current task (no extra dependency).
async fn futures_join_all<F: std::future::Future + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futures.map(actix::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}
