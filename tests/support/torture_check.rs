//! What the torture host (`examples/torture_host.rs`) must have left in
//! PostgreSQL after any number of kills, stops and hosts: checked with SQL.
#![allow(dead_code)]

use std::path::Path;

use command_coordinator::deadpool_postgres::Client;
use command_coordinator::{DatabaseConfig, SchemaName};

use super::processes::log_tail;

pub struct Counts {
    pub roots_interrupted: i64,
    pub children_interrupted: i64,
    pub roots_succeeded: i64,
}

/// Runs `sql` (one row, one bigint per column) and returns the values.
async fn ints(client: &Client, sql: &str) -> Vec<i64> {
    let row = client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (0..row.len()).map(|i| row.get::<_, i64>(i)).collect()
}

/// Asserts that `sql` returns no rows, showing a few of them if it does.
async fn none(client: &Client, what: &str, sql: &str, log: &Path) {
    let rows = client
        .query(
            &format!("SELECT row_to_json(q)::text FROM ({sql}) q LIMIT 5"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    if !rows.is_empty() {
        let shown: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        panic!(
            "{what}: {} (of possibly more) offending rows:\n{}\nlast lines of {}:\n{}",
            rows.len(),
            shown.join("\n"),
            log.display(),
            log_tail(log, 20)
        );
    }
}

pub async fn check(url: &str, schema: &str, hierarchies: u32, children: u32, log: &Path) -> Counts {
    let config = DatabaseConfig::from_url(url)
        .unwrap()
        .with_schema(SchemaName::new(schema).unwrap());
    let pool = config.create_pool().unwrap();
    let client = pool.get().await.unwrap();
    let s = config.schema().quoted();
    let t = format!("{s}.command_entities");
    let fx = format!("{s}.torture_effects");
    let n = hierarchies as i64;
    let c = children as i64;

    // No root lost, none duplicated.
    assert_eq!(
        ints(
            &client,
            &format!(
                "SELECT count(*), count(DISTINCT seq), coalesce(min(seq), -1)::bigint, \
                     coalesce(max(seq), -1)::bigint \
                 FROM (SELECT (command_parameters::jsonb->>'seq')::int AS seq \
                       FROM {t} WHERE command_type = 201) r"
            )
        )
        .await,
        [n, n, 0, n - 1],
        "TortureRoot rows: count, distinct seqs, min seq, max seq"
    );
    // Everything ended and was delivered.
    none(
        &client,
        "commands not ended or not notified",
        &format!(
            "SELECT command_id, command_type, status, callback_notified FROM {t} \
             WHERE command_type IN (201, 202) \
               AND (status NOT IN ('ENDED_SUCCESSFULLY', 'ENDED_WITH_FAILURE') \
                    OR callback_notified IS NOT TRUE)"
        ),
        log,
    )
    .await;
    // Children hang under an existing root of the same seq; at most C per root,
    // no index twice.
    none(
        &client,
        "children without their root",
        &format!(
            "SELECT ch.command_id, ch.parent_command_id FROM {t} ch \
             LEFT JOIN {t} p ON p.command_id = ch.parent_command_id \
             WHERE ch.command_type = 202 AND (p.command_id IS NULL OR p.command_type <> 201 \
                OR ch.root_command_id IS DISTINCT FROM p.command_id \
                OR (ch.command_parameters::jsonb->>'seq') <> (p.command_parameters::jsonb->>'seq'))"
        ),
        log,
    )
    .await;
    none(
        &client,
        "roots with too many children",
        &format!(
            "SELECT parent_command_id, count(*) FROM {t} WHERE command_type = 202 \
             GROUP BY parent_command_id HAVING count(*) > {c}"
        ),
        log,
    )
    .await;
    none(
        &client,
        "children submitted twice (same parent and index)",
        &format!(
            "SELECT parent_command_id, command_parameters::jsonb->>'index', count(*) FROM {t} \
             WHERE command_type = 202 GROUP BY 1, 2 HAVING count(*) > 1"
        ),
        log,
    )
    .await;
    // Exactly one effect per command, of the right kind, and none for rows
    // that do not exist (a removed workload row would leave one behind).
    none(
        &client,
        "commands without exactly one end effect",
        &format!(
            "SELECT e.command_id, e.command_type, e.status, count(f.command_id) FROM {t} e \
             LEFT JOIN {fx} f ON f.command_id = e.command_id \
             WHERE e.command_type IN (201, 202) GROUP BY 1, 2, 3 HAVING count(f.command_id) <> 1"
        ),
        log,
    )
    .await;
    none(
        &client,
        "effects of the wrong kind",
        &format!(
            "SELECT e.command_id, e.status, f.kind FROM {t} e JOIN {fx} f USING (command_id) \
             WHERE (e.status = 'ENDED_SUCCESSFULLY') <> (f.kind = 'succeeded') \
                OR f.seq::text <> e.command_parameters::jsonb->>'seq'"
        ),
        log,
    )
    .await;
    none(
        &client,
        "effects of commands that no longer exist",
        &format!(
            "SELECT f.* FROM {fx} f LEFT JOIN {t} e USING (command_id) WHERE e.command_id IS NULL"
        ),
        log,
    )
    .await;
    // Never waiting forever: what execute did not finish failed, and so did its root.
    none(
        &client,
        "unexecuted children not failed with their root",
        &format!(
            "SELECT ch.command_id, ch.status, p.status FROM {t} ch \
             JOIN {t} p ON p.command_id = ch.parent_command_id \
             WHERE ch.command_type = 202 AND NOT ch.executed \
               AND (ch.status <> 'ENDED_WITH_FAILURE' OR p.status <> 'ENDED_WITH_FAILURE')"
        ),
        log,
    )
    .await;
    none(
        &client,
        "unexecuted roots not failed",
        &format!(
            "SELECT command_id, status FROM {t} \
             WHERE command_type = 201 AND NOT executed AND status <> 'ENDED_WITH_FAILURE'"
        ),
        log,
    )
    .await;
    // A successful root has all its children, all successful, and their sum.
    none(
        &client,
        "successful roots without C successful children summing to its output",
        &format!(
            "SELECT p.command_id, count(ch.command_id), \
                 count(*) FILTER (WHERE ch.status = 'ENDED_SUCCESSFULLY'), \
                 sum(ch.return_value::bigint), min(p.return_value) FROM {t} p \
             LEFT JOIN {t} ch ON ch.parent_command_id = p.command_id \
             WHERE p.command_type = 201 AND p.status = 'ENDED_SUCCESSFULLY' \
             GROUP BY p.command_id \
             HAVING count(ch.command_id) <> {c} \
                 OR count(*) FILTER (WHERE ch.status = 'ENDED_SUCCESSFULLY') <> {c} \
                 OR sum(ch.return_value::bigint) IS DISTINCT FROM min(p.return_value)::bigint"
        ),
        log,
    )
    .await;
    // Cleanup removed the junk, and only the junk.
    assert_eq!(
        ints(
            &client,
            &format!("SELECT count(*) FROM {t} WHERE command_type = 999")
        )
        .await,
        [0],
        "junk rows left by cleanup"
    );
    none(
        &client,
        "rows of unexpected types",
        &format!("SELECT command_id, command_type FROM {t} WHERE command_type NOT IN (201, 202)"),
        log,
    )
    .await;

    let interrupted = "execute was interrupted by a restart before it completed";
    let v = ints(
        &client,
        &format!(
            "SELECT count(*) FILTER (WHERE command_type = 201 AND failure_reason = '{interrupted}'), \
                    count(*) FILTER (WHERE command_type = 202 AND failure_reason = '{interrupted}'), \
                    count(*) FILTER (WHERE command_type = 201 AND status = 'ENDED_SUCCESSFULLY') \
             FROM {t}"
        ),
    )
    .await;
    Counts {
        roots_interrupted: v[0],
        children_interrupted: v[1],
        roots_succeeded: v[2],
    }
}
