//! Benchmark of the dashboard's request paths on a big table.
//!
//! ```text
//! cargo run --release -p command-coordinator-dashboard --example dashboard_bench
//! cargo run --release -p command-coordinator-dashboard --example dashboard_bench -- --rows 200000 --iterations 100
//! ```
//!
//! Fills a fresh schema of a throwaway PostgreSQL cluster with `--rows`
//! commands (default 1,000,000: hierarchies of a root and nine children over
//! 30 days, 98 % ended, plus one root with 100 children of 99 children each,
//! 10,000 descendants), then measures the server time of the overview, the
//! list's first page (plain and filtered by a rare status), a deep keyset page
//! and the 10,000-descendant tree's first render, in process (actix-web's test
//! service: no network). Each request is repeated `--iterations` times after a
//! warm-up; p50, p99 and max are printed.
//!
//! The dashboard connects as its own role, on which `auto_explain` logs the
//! plan of every statement it runs; the benchmark then reads the server log
//! and counts the plans with a sequential scan of `command_entities` (the
//! background count, which scans on purpose and off the request path, is
//! left out). The last line is JSON.

use std::time::{Duration, Instant};

use actix_web::{App, test};
use command_coordinator::embedded::{EmbeddedOptions, EmbeddedPostgres};
use command_coordinator::{DatabaseConfig, PgStore, SchemaName, migrate};
use command_coordinator_dashboard::Dashboard;
use serde_json::json;

struct Args {
    rows: i64,
    iterations: usize,
}

fn args() -> Args {
    let mut a = Args {
        rows: 1_000_000,
        iterations: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--rows" => a.rows = value.parse().expect("--rows N"),
            "--iterations" => a.iterations = value.parse().expect("--iterations N"),
            other => panic!("unknown argument {other} (use --rows N, --iterations N)"),
        }
    }
    a
}

/// Percentiles of the measured times, in milliseconds.
fn summary(mut times: Vec<Duration>) -> serde_json::Value {
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_secs_f64() * 1000.0
    };
    json!({
        "p50_ms": (at(0.50) * 100.0).round() / 100.0,
        "p99_ms": (at(0.99) * 100.0).round() / 100.0,
        "max_ms": (at(1.0) * 100.0).round() / 100.0,
    })
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    let pg = EmbeddedPostgres::start(EmbeddedOptions::default())?;
    let log_path = pg
        .data_dir()
        .parent()
        .expect("the data directory has a parent")
        .join("server.log");
    let schema = SchemaName::new("dashboard_bench")?;
    let owner = DatabaseConfig::from_url(&pg.url())?.with_schema(schema.clone());
    let owner_pool = owner.create_pool()?;
    migrate(&owner_pool, &schema).await?;
    let client = owner_pool.get().await?;
    let t = format!("{}.command_entities", schema.quoted());

    let began = Instant::now();
    let tree_rows = 10_001_i64;
    let bulk = (args.rows - tree_rows).max(0);
    eprintln!("loading {bulk} rows + a tree of {tree_rows}…");
    // Hierarchies of ten: a root (i % 10 = 0) and nine children, one every
    // 2.6 s over 30 days; the newest 1 % and a few old ones not ended.
    client
        .execute(
            &format!(
                "INSERT INTO {t} (command_id, command_type, root_command_id, parent_command_id, \
                   command_parameters, command_params_class, created_at, updated_at, status, \
                   callback_enabled, callback_notified, executed, ended_at, failure_reason) \
                 SELECT id, ty, root, parent, '{{\"disk\":\"vda\",\"job\":12}}', cls, created, \
                   created + interval '5 s', status, true, status LIKE 'ENDED%', true, \
                   CASE WHEN status LIKE 'ENDED%' THEN created + interval '5 s' END, \
                   CASE WHEN status IN ('ENDED_WITH_FAILURE', 'FAILED') \
                        THEN 'block job failed on disk ' || (i % 7) END \
                 FROM (SELECT i, md5('c' || i)::uuid AS id, md5('c' || (i - i % 10))::uuid AS root, \
                         CASE WHEN i % 10 = 0 THEN NULL ELSE md5('c' || (i - i % 10))::uuid END AS parent, \
                         CASE WHEN i % 10 = 0 THEN 1 ELSE 2 END AS ty, \
                         CASE WHEN i % 10 = 0 THEN 'app::RemoveSnapshot' ELSE 'app::Merge' END AS cls, \
                         now() - ($1 - i) * interval '2.6 s' AS created, \
                         CASE WHEN i >= $1 * 0.99 THEN (ARRAY['ACTIVE','NOT_STARTED','ACTIVE','SUCCEEDED','FAILED'])[1 + i % 5] \
                              WHEN i % 5000 < 2 THEN 'ACTIVE' \
                              WHEN i % 33 = 0 THEN 'ENDED_WITH_FAILURE' \
                              ELSE 'ENDED_SUCCESSFULLY' END AS status \
                       FROM generate_series(0, $1 - 1) i) s"
            ),
            &[&(i32::try_from(bulk).expect("rows fit in an int4"))],
        )
        .await?;
    // The big tree: one root, 100 children, 99 grandchildren each.
    client
        .execute(
            &format!(
                "INSERT INTO {t} (command_id, command_type, root_command_id, parent_command_id, \
                   command_parameters, command_params_class, created_at, status, callback_enabled, \
                   callback_notified, executed, ended_at) \
                 SELECT md5('tree')::uuid, 1, md5('tree')::uuid, NULL, '{{}}', 'app::Rollout', \
                        now() - interval '1 day', 'ACTIVE', true, false, true, NULL::timestamptz \
                 UNION ALL \
                 SELECT md5('tree-c' || c)::uuid, 2, md5('tree')::uuid, md5('tree')::uuid, '{{}}', \
                        'app::Region', now() - interval '1 day' + c * interval '1 s', 'ACTIVE', true, \
                        false, true, NULL FROM generate_series(0, 99) c \
                 UNION ALL \
                 SELECT md5('tree-g' || c || '-' || g)::uuid, 3, md5('tree')::uuid, \
                        md5('tree-c' || c)::uuid, '{{}}', 'app::Host', \
                        now() - interval '1 day' + (c * 100 + g) * interval '10 ms', \
                        'ENDED_SUCCESSFULLY', true, true, true, now() - interval '20 hours' \
                 FROM generate_series(0, 99) c, generate_series(0, 98) g"
            ),
            &[],
        )
        .await?;
    client.batch_execute(&format!("VACUUM ANALYZE {t}")).await?;
    let loaded = began.elapsed();
    let total: i64 = client
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await?
        .get(0);
    eprintln!("loaded {total} rows in {:.1} s", loaded.as_secs_f64());

    // The dashboard's own role, whose every statement's plan is logged.
    client
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS dashboard_bench; CREATE ROLE dashboard_bench LOGIN; \
             GRANT USAGE ON SCHEMA {s} TO dashboard_bench; \
             GRANT SELECT ON {t} TO dashboard_bench; \
             ALTER ROLE dashboard_bench SET session_preload_libraries = 'auto_explain'; \
             ALTER ROLE dashboard_bench SET auto_explain.log_min_duration = 0;",
            s = schema.quoted()
        ))
        .await?;
    let deep: (chrono::DateTime<chrono::Utc>, uuid::Uuid) = {
        // A position 90 % of the way down the list (OFFSET here only: the
        // benchmark picks a page; the dashboard never skips rows).
        let row = client
            .query_one(
                &format!(
                    "SELECT created_at, command_id FROM {t} \
                     ORDER BY created_at, command_id OFFSET $1 LIMIT 1"
                ),
                &[&(total / 10)],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    let tree_root: uuid::Uuid = client
        .query_one("SELECT md5('tree')::uuid", &[])
        .await?
        .get(0);
    let tree_child: uuid::Uuid = client
        .query_one("SELECT md5('tree-c0')::uuid", &[])
        .await?
        .get(0);
    drop(client);

    let url = format!(
        "postgres://dashboard_bench@127.0.0.1:{}/postgres",
        pg.port()
    );
    let config = DatabaseConfig::from_url(&url)?.with_schema(schema.clone());
    let store = PgStore::new(config.create_pool()?, schema.clone());
    let app =
        test::init_service(App::new().service(Dashboard::new(store).read_only(true).scope())).await;
    let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);

    let deep_cursor = format!("{}_{}", deep.0.timestamp_micros(), deep.1.simple());
    let cases: Vec<(&str, String)> = vec![
        ("overview", "/".into()),
        ("list_first_page", "/commands".into()),
        (
            "list_first_page_status_failed",
            "/commands?status=FAILED".into(),
        ),
        // No row has it: the page looks through its whole window (the worst case).
        (
            "list_status_unknown_window",
            "/commands?status=UNKNOWN".into(),
        ),
        (
            "list_deep_keyset_page",
            format!("/commands?before={deep_cursor}"),
        ),
        (
            "list_parent_filter",
            format!("/commands?parent={tree_child}"),
        ),
        ("tree_10000_first_render", format!("/commands/{tree_root}")),
        (
            "tree_expand_node",
            format!("/commands/{tree_child}/children"),
        ),
    ];
    let mut results = serde_json::Map::new();
    println!(
        "{:<32} {:>8} {:>8} {:>8}",
        "request", "p50 ms", "p99 ms", "max ms"
    );
    for (name, path) in &cases {
        let mut times = Vec::with_capacity(args.iterations);
        for i in 0..args.iterations + 10 {
            let began = Instant::now();
            let res =
                test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
            let status = res.status();
            let body = test::read_body(res).await;
            let took = began.elapsed();
            assert!(
                status.is_success(),
                "{path}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
            if i >= 10 {
                times.push(took);
            }
        }
        let s = summary(times);
        let ms = |k: &str| format!("{:.2}", s[k].as_f64().unwrap_or(0.0));
        println!(
            "{:<32} {:>8} {:>8} {:>8}",
            name,
            ms("p50_ms"),
            ms("p99_ms"),
            ms("max_ms")
        );
        results.insert((*name).into(), s);
    }

    // Every plan the dashboard's role ran, from the server log.
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read(&log_path)?;
    let log = String::from_utf8_lossy(&log[log_start as usize..]).to_string();
    let plans: Vec<&str> = log.split("plan:").skip(1).collect();
    let mut seq_scans = Vec::new();
    for plan in &plans {
        let plan = plan.split("\nLOG:").next().unwrap_or(plan);
        // The background count scans the table on purpose, off the request path.
        let background = plan.contains("date_trunc('minute'");
        if plan.contains("Seq Scan on command_entities") && !background {
            seq_scans.push(plan.trim().to_owned());
        }
    }
    for plan in &seq_scans {
        eprintln!("SEQUENTIAL SCAN on the request path:\n{plan}\n");
    }
    let over = results
        .iter()
        .filter(|(_, v)| v["p99_ms"].as_f64().unwrap_or(0.0) > 100.0)
        .map(|(k, _)| k.clone())
        .collect::<Vec<_>>();
    eprintln!(
        "{} plans checked, {} with a sequential scan of command_entities; p99 over 100 ms: {:?}",
        plans.len(),
        seq_scans.len(),
        over
    );
    let line = json!({
        "rows": total,
        "load_s": (loaded.as_secs_f64() * 10.0).round() / 10.0,
        "iterations": args.iterations,
        "requests": results,
        "plans_checked": plans.len(),
        "seq_scans_on_request_path": seq_scans.len(),
        "ok": seq_scans.is_empty() && over.is_empty() && !plans.is_empty(),
    });
    println!("{line}");
    drop(pg);
    Ok(())
}
