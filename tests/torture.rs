//! Crash torture: the host process (`examples/torture_host.rs`) is killed with
//! SIGKILL at random moments and started again, several times, then run to
//! completion; SQL over what it left proves that no command was lost or
//! duplicated, every one ended and was delivered, every end action ran exactly
//! once, and nothing waits forever.
//!
//! Short mode (the default, part of `cargo test`): 5 kills over 200
//! hierarchies × 3 children. Long mode, 50 kills over 10,000 hierarchies:
//!
//! ```text
//! cargo build --release --example torture_host
//! TORTURE=long cargo test --release --test torture -- --nocapture
//! ```
//!
//! (`cargo test --test torture` does not build the example; a plain
//! `cargo test` does.) Medium mode (`TORTURE=medium`): 20 kills over 2,000
//! hierarchies.
//!
//! The host uses the test PostgreSQL (`DATABASE_URL` or the embedded one) and
//! a fresh schema per run; its output goes to a log file in a temporary
//! directory, quoted when something fails.

mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use command_coordinator::deadpool_postgres::Client;
use command_coordinator::{DatabaseConfig, SchemaName};
use support::processes::{example_binary, log_tail, temp_dir};

struct Mode {
    name: &'static str,
    kills: u32,
    hierarchies: u32,
    children: u32,
    /// Hierarchies in flight at once: small enough that the work outlasts
    /// the killed runs, so that kills land in every phase.
    window: u32,
}

fn mode() -> Mode {
    match std::env::var("TORTURE").as_deref() {
        Ok("long") => Mode {
            name: "long",
            kills: 50,
            hierarchies: 10_000,
            children: 3,
            window: 60,
        },
        Ok("medium") => Mode {
            name: "medium",
            kills: 20,
            hierarchies: 2_000,
            children: 3,
            window: 35,
        },
        _ => Mode {
            name: "short",
            kills: 5,
            hierarchies: 200,
            children: 3,
            window: 8,
        },
    }
}

/// How long the last, uninterrupted run may take.
const FINAL_RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bounds of the random time a killed run lives.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 300..=1500;

struct Host<'a> {
    binary: &'a Path,
    url: &'a str,
    schema: &'a str,
    mode: &'a Mode,
    seed: u64,
    log: &'a Path,
}

impl Host<'_> {
    fn spawn(&self, run: &str) -> Child {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log)
            .expect("open the host log");
        writeln!(log, "===== {run} =====").unwrap();
        let err = log.try_clone().unwrap();
        Command::new(self.binary)
            .args(["--database-url", self.url, "--schema", self.schema])
            .args(["--hierarchies", &self.mode.hierarchies.to_string()])
            .args(["--children", &self.mode.children.to_string()])
            .args(["--seed", &self.seed.to_string()])
            .args(["--window", &self.mode.window.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start the torture host")
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}; last lines of {}:\n{}",
            self.log.display(),
            log_tail(self.log, 40)
        )
    }
}

#[test]
fn killed_hosts_lose_nothing_duplicate_nothing_and_end_everything_once() {
    let mode = mode();
    let binary = example_binary("torture_host");
    let url = support::database_url();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let dir = temp_dir("torture");
    let log = dir.join("host.log");
    let seed = fastrand::u64(..);
    let host = Host {
        binary: &binary,
        url: &url,
        schema: &schema,
        mode: &mode,
        seed,
        log: &log,
    };
    let started = Instant::now();

    let mut kills = 0;
    let mut finished_early = 0;
    for run in 1..=mode.kills {
        let mut child = host.spawn(&format!("run {run} (to be killed)"));
        let deadline = Instant::now() + Duration::from_millis(fastrand::u64(KILL_AFTER_MS));
        let exited = loop {
            if let Some(status) = child.try_wait().expect("poll the host") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        match exited {
            Some(status) if status.success() => finished_early += 1,
            Some(status) => host.fail(&format!("run {run} exited with {status} before its kill")),
            None => {
                child.kill().expect("SIGKILL the host");
                child.wait().expect("reap the host");
                kills += 1;
            }
        }
    }

    let mut child = host.spawn("final run");
    let deadline = Instant::now() + FINAL_RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the host") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            host.fail(&format!(
                "the final run did not finish within {FINAL_RUN_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() || !std::fs::read_to_string(&log).unwrap().contains("ALL ENDED") {
        host.fail(&format!("the final run exited with {status}"));
    }
    let elapsed = started.elapsed();

    let counts = actix::System::new().block_on(check(&url, &schema, &mode, &log));
    println!(
        "torture {}: {kills} kills ({finished_early} runs ended before their kill), \
         {} hierarchies × {} children, {} roots and {} children interrupted in execute, \
         {} roots succeeded, seed {seed}, {:.1} s",
        mode.name,
        mode.hierarchies,
        mode.children,
        counts.roots_interrupted,
        counts.children_interrupted,
        counts.roots_succeeded,
        elapsed.as_secs_f64()
    );
    if std::env::var_os("TORTURE_KEEP_LOG").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("host log: {}", log.display());
    }
}

struct Counts {
    roots_interrupted: i64,
    children_interrupted: i64,
    roots_succeeded: i64,
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

async fn check(url: &str, schema: &str, mode: &Mode, log: &Path) -> Counts {
    let config = DatabaseConfig::from_url(url)
        .unwrap()
        .with_schema(SchemaName::new(schema).unwrap());
    let pool = config.create_pool().unwrap();
    let client = pool.get().await.unwrap();
    let s = config.schema().quoted();
    let t = format!("{s}.command_entities");
    let fx = format!("{s}.torture_effects");
    let n = mode.hierarchies as i64;
    let c = mode.children as i64;

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
