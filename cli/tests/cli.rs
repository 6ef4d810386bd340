//! The built `command-coordinator` binary against a real PostgreSQL: a fresh
//! schema `t_<uuid>` per test, migrated and filled with the library.

use std::process::{Command, Output, Stdio};

use command_coordinator::embedded::test_database_url;
use command_coordinator::{
    CommandEntity, CommandId, CommandStatus, CommandStore, DatabaseConfig, JsonPayload, PgStore,
    SchemaName, migrate,
};
use serde::Serialize;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_command-coordinator");

#[derive(Serialize)]
struct RemoveSnapshot {
    snapshot: String,
}

#[derive(Serialize)]
struct Merge {
    disk: u32,
}

#[derive(Serialize)]
struct Group {
    name: String,
}

fn database_url() -> String {
    test_database_url().unwrap_or_else(|e| panic!("no PostgreSQL for the tests: {e}"))
}

/// A fresh schema; migrated when `migrated`.
struct TestDb {
    schema: SchemaName,
    store: PgStore,
}

async fn fresh(migrated: bool) -> TestDb {
    let schema = SchemaName::new(format!("t_{}", uuid::Uuid::new_v4().simple())).unwrap();
    let config = DatabaseConfig::from_url(&database_url())
        .unwrap()
        .with_schema(schema.clone())
        .with_pool_size(2)
        .unwrap();
    let pool = config.create_pool().unwrap();
    if migrated {
        migrate(&pool, &schema).await.expect("migrations");
    }
    TestDb {
        store: PgStore::new(pool, schema.clone()),
        schema,
    }
}

impl TestDb {
    /// Runs the binary on this schema.
    fn cli(&self, args: &[&str]) -> Output {
        run(&[
            &[
                "--database-url",
                &database_url(),
                "--schema",
                self.schema.as_str(),
            ],
            args,
        ]
        .concat())
    }

    /// Runs it, expects success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    async fn save(&self, e: &CommandEntity) {
        self.store.save_or_update(e).await.expect("save");
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        // Not a terminal: nobody to answer a confirmation.
        .stdin(Stdio::null())
        .output()
        .expect("run the CLI")
}

fn entity<T: Serialize>(
    value: &T,
    ty: i32,
    status: CommandStatus,
    parent: Option<&CommandEntity>,
) -> CommandEntity {
    let mut e = CommandEntity::new(CommandId::new(), ty, JsonPayload::encode(value).unwrap());
    if let Some(p) = parent {
        e = e.with_parent(p);
    }
    e.status = status;
    e.executed = status != CommandStatus::NotStarted;
    e.callback_notified = status.is_ended();
    e
}

/// `days` days ago.
fn days_ago(days: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::TimeDelta::days(days)
}

fn ids(array: &Value) -> Vec<String> {
    let mut ids: Vec<String> = array
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The first 8 characters of `id`, as the tables print it.
fn short(id: CommandId) -> String {
    id.to_string()[..8].to_owned()
}

fn sorted(ids: &[CommandId]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    ids.sort();
    ids
}

/// The cell of `line` under the column `name` of the table's `header`,
/// trimmed (up to the next column's name; the last column to the end).
fn column(header: &str, line: &str, name: &str) -> String {
    let start = header
        .find(&format!("{name} "))
        .or_else(|| header.ends_with(name).then(|| header.len() - name.len()))
        .unwrap_or_else(|| panic!("no column {name} in {header}"));
    let end = header[start + name.len()..]
        .find(|c: char| c != ' ')
        .map(|gap| start + name.len() + gap);
    let cells: String = line
        .chars()
        .skip(start)
        .take(end.map_or(usize::MAX, |end| end - start))
        .collect();
    cells.trim().to_owned()
}

/// A running hierarchy (root + 2 merges) made now, and an old ended one.
struct Listing {
    root: CommandEntity,
    done: CommandEntity,
    running: CommandEntity,
    old_root: CommandEntity,
    old_child: CommandEntity,
}

async fn listing(db: &TestDb) -> Listing {
    let snap = RemoveSnapshot {
        snapshot: "s1".into(),
    };
    let root = entity(&snap, 1, CommandStatus::Active, None);
    let mut done = entity(
        &Merge { disk: 0 },
        2,
        CommandStatus::EndedSuccessfully,
        Some(&root),
    );
    done.return_value = Some(JsonPayload::encode(&serde_json::json!({"merged_bytes": 7})).unwrap());
    let running = entity(&Merge { disk: 1 }, 2, CommandStatus::Active, Some(&root));
    let mut old_root = entity(&snap, 1, CommandStatus::EndedSuccessfully, None);
    old_root.created_at = days_ago(10);
    old_root.ended_at = Some(days_ago(9));
    let mut old_child = entity(
        &Merge { disk: 0 },
        2,
        CommandStatus::EndedSuccessfully,
        Some(&old_root),
    );
    old_child.created_at = days_ago(10);
    old_child.ended_at = Some(days_ago(9));
    for e in [&old_root, &old_child, &root, &done, &running] {
        db.save(e).await;
    }
    Listing {
        root,
        done,
        running,
        old_root,
        old_child,
    }
}

#[tokio::test]
async fn list_filters_and_json() {
    let db = fresh(true).await;
    let l = listing(&db).await;

    let all = db.json(&["list", "--json"]);
    assert_eq!(
        ids(&all),
        sorted(&[
            l.root.id,
            l.done.id,
            l.running.id,
            l.old_root.id,
            l.old_child.id
        ])
    );
    // Newest first: the old hierarchy comes last.
    let last_two = ids(&Value::Array(all.as_array().unwrap()[3..].to_vec()));
    assert_eq!(last_two, sorted(&[l.old_root.id, l.old_child.id]));
    assert!(all[0]["created_at"].is_string() && all[0]["type"].is_string());

    let active = db.json(&["list", "--status", "ACTIVE", "--json"]);
    assert_eq!(ids(&active), sorted(&[l.root.id, l.running.id]));
    let two = db.json(&[
        "list",
        "--status",
        "ACTIVE",
        "--status",
        "ENDED_SUCCESSFULLY",
        "--json",
    ]);
    assert_eq!(two.as_array().unwrap().len(), 5);

    let merges = db.json(&["list", "--type", "2", "--json"]);
    assert_eq!(
        ids(&merges),
        sorted(&[l.done.id, l.running.id, l.old_child.id])
    );
    assert_eq!(
        ids(&db.json(&["list", "--type", "Merge", "--json"])),
        ids(&merges)
    );
    assert_eq!(merges[0]["type"], "Merge");

    let old = db.json(&["list", "--older-than", "1d", "--json"]);
    assert_eq!(ids(&old), sorted(&[l.old_root.id, l.old_child.id]));
    let new = db.json(&["list", "--newer-than", "2h", "--json"]);
    assert_eq!(ids(&new), sorted(&[l.root.id, l.done.id, l.running.id]));

    let tree = db.json(&["list", "--root", &l.root.id.to_string(), "--json"]);
    assert_eq!(ids(&tree), sorted(&[l.root.id, l.done.id, l.running.id]));

    let limited = db.json(&["list", "--limit", "2", "--json"]);
    assert_eq!(limited.as_array().unwrap().len(), 2);

    let table = db.ok(&["list", "--status", "ACTIVE"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in [
        "ID", "PARENT", "TYPE", "STATUS", "EXECUTED", "NOTIFIED", "AGE", "UPDATED", "REASON",
    ] {
        assert!(header.contains(column), "{header}");
    }
    // Short ids by default (any subcommand takes them), the parent's too.
    let running_line = table
        .lines()
        .find(|line| line.starts_with(&short(l.running.id)))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(running_line.contains(&short(l.root.id)), "{table}");
    assert!(!table.contains(&l.root.id.to_string()), "{table}");
    assert!(table.contains("1 RemoveSnapshot"), "{table}");
    assert!(!table.contains(&short(l.done.id)), "{table}");
    let wide = db.ok(&["list", "--status", "active", "--wide"]);
    assert!(wide.contains(&l.root.id.to_string()), "{wide}");

    let none = db.json(&["list", "--status", "NOT_STARTED", "--json"]);
    assert_eq!(none.as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn show_draws_a_three_level_hierarchy() {
    let db = fresh(true).await;
    let mut root = entity(
        &RemoveSnapshot {
            snapshot: "s1".into(),
        },
        1,
        CommandStatus::EndedWithFailure,
        None,
    );
    let group = entity(
        &Group { name: "g".into() },
        3,
        CommandStatus::EndedWithFailure,
        Some(&root),
    );
    let mut leaf = entity(
        &Merge { disk: 7 },
        2,
        CommandStatus::EndedWithFailure,
        Some(&group),
    );
    leaf.failure_reason = Some("block job failed on disk 7".into());
    let mut merged = entity(
        &Merge { disk: 1 },
        2,
        CommandStatus::EndedSuccessfully,
        Some(&root),
    );
    merged.return_value = Some(JsonPayload::encode(&12345u64).unwrap());
    root.failure_reason = Some(format!("child {} failed", group.id));
    // Creation order decides the order of siblings: group first, merge last.
    root.created_at = days_ago(1);
    let mut group = group;
    group.created_at = days_ago(1) + chrono::TimeDelta::seconds(1);
    leaf.created_at = days_ago(1) + chrono::TimeDelta::seconds(2);
    merged.created_at = days_ago(1) + chrono::TimeDelta::seconds(3);
    for e in [&root, &group, &leaf, &merged] {
        db.save(e).await;
    }
    // An unreadable row in the same hierarchy.
    let bad = CommandId::new();
    let client = db.store.pool().get().await.unwrap();
    client
        .execute(
            &format!(
                "INSERT INTO {}.command_entities (command_id, command_type, root_command_id, \
                 parent_command_id, command_parameters, command_params_class, created_at, status) \
                 VALUES ($1, 2, $2, $2, '{{}}', 'x::Merge', now(), 'PAUSED_BY_OPERATOR')",
                db.schema.quoted()
            ),
            &[bad.as_uuid(), root.id.as_uuid()],
        )
        .await
        .unwrap();

    let text = db.ok(&["show", &leaf.id.to_string()]);
    for id in [root.id, group.id, leaf.id, merged.id, bad] {
        assert!(text.contains(&short(id)), "{id} missing:\n{text}");
        assert!(!text.contains(&id.to_string()), "{id} in full:\n{text}");
    }
    // Fits 100 columns by default.
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "{line:?} is too wide:\n{text}");
    }
    // --wide: full ids and whole reasons.
    let wide = db.ok(&["show", &leaf.id.to_string(), "--wide"]);
    for id in [root.id, group.id, leaf.id, merged.id, bad] {
        assert!(wide.contains(&id.to_string()), "{id} missing:\n{wide}");
    }
    assert!(
        wide.contains(&format!("child {} failed", group.id)),
        "{wide}"
    );
    assert!(text.contains("block job failed on disk 7"), "{text}");
    assert!(text.contains("12345"), "{text}");
    assert!(text.contains("1 RemoveSnapshot"), "{text}");
    assert!(text.contains("2 Merge"), "{text}");
    assert!(
        text.contains("├─ ") && text.contains("└─ ") && text.contains("│"),
        "{text}"
    );
    assert!(text.contains("unknown command status"), "{text}");
    let leaf_line = text.lines().find(|l| l.contains(&short(leaf.id))).unwrap();
    assert!(
        leaf_line.contains(&format!("{} ◀", short(leaf.id))),
        "{text}"
    );
    assert!(
        text.contains(&format!("◀ {}: the id given", short(leaf.id))),
        "{text}"
    );
    assert!(!text.contains("requested"), "{text}");
    assert!(leaf_line.starts_with("│  └─ "), "{text}");
    assert!(
        text.lines().next().unwrap().starts_with(&short(root.id)),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when not a terminal: {text}"
    );

    let tree = db.json(&["show", &leaf.id.to_string(), "--json"]);
    assert_eq!(tree["given_id"], leaf.id.to_string());
    assert_eq!(tree["root"]["id"], root.id.to_string());
    let children = tree["root"]["children"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{tree:#}");
    assert_eq!(children[0]["id"], group.id.to_string());
    let grandchild = &children[0]["children"][0];
    assert_eq!(grandchild["id"], leaf.id.to_string());
    assert_eq!(grandchild["failure_reason"], "block job failed on disk 7");
    assert_eq!(grandchild["given"], true);
    assert_eq!(children[1]["return_value"], 12345);
    assert!(children[2]["unreadable"].is_string(), "{tree:#}");
    assert_eq!(tree["bad_rows"][0]["id"], bad.to_string());

    // Any node shows the same tree, from its root.
    let from_root = db.json(&["show", &root.id.to_string(), "--json"]);
    assert_eq!(from_root["root"]["id"], root.id.to_string());
    assert_eq!(from_root["root"]["given"], true);
    assert_eq!(
        from_root["root"]["children"][0]["children"][0]["id"],
        leaf.id.to_string()
    );

    let missing = CommandId::new();
    let out = db.cli(&["show", &missing.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line(&out, &format!("no command {missing}"));
}

#[tokio::test]
async fn show_and_list_display_key_not_before_and_retries() {
    let db = fresh(true).await;
    let mut root = entity(
        &RemoveSnapshot {
            snapshot: "s1".into(),
        },
        1,
        CommandStatus::Active,
        None,
    );
    root.created_at = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
    db.save(&root).await;
    // Rows as a host writes them after transient errors, by plain SQL: one
    // waiting for its next try of execute, one running whose step succeeded
    // since (its last error kept, and long, on two lines).
    let (retried, running) = (CommandId::new(), CommandId::new());
    let long_error = format!("poll failed:\n{}", "timeout talking to vdsm ".repeat(12));
    sql(
        &db,
        "INSERT INTO {t} (command_id, command_type, root_command_id, parent_command_id, \
         command_parameters, command_params_class, created_at, status, callback_enabled, \
         idempotency_key, not_before, failed_attempts, last_error) VALUES \
         ($1, 2, $3, $3, '{\"disk\":4}', 'x::Merge', now() - interval '2 seconds', \
          'NOT_STARTED', true, \
          'order-42', now() + interval '10 minutes', 2, 'connection refused'), \
         ($2, 2, $3, $3, '{\"disk\":5}', 'x::Merge', now() - interval '1 second', 'ACTIVE', \
          true, NULL, now() + interval '1 hour', 0, $4)",
        &[
            retried.as_uuid(),
            running.as_uuid(),
            root.id.as_uuid(),
            &long_error,
        ],
    )
    .await;
    let stored = db.store.get(retried).await.unwrap().unwrap();
    let not_before = stored.not_before.expect("not_before read back");
    let at = not_before.format("%Y-%m-%d %H:%M:%S UTC").to_string();

    // show: under the node, when set; cut to 100 columns.
    let text = db.ok(&["show", &short(retried)]);
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "{line:?} is too wide:\n{text}");
    }
    let lines: Vec<&str> = text.lines().collect();
    let node = lines
        .iter()
        .position(|l| l.contains(&short(retried)))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(lines[node].contains("NOT_STARTED"), "{text}");
    assert!(lines[node + 1].ends_with("   key: order-42"), "{text}");
    assert!(
        lines[node + 2].contains(&format!("not before: {at}, in "))
            && lines[node + 2].ends_with("(waiting)"),
        "{text}"
    );
    assert!(
        lines[node + 3].ends_with("attempts: 2 failed in a row, last error: connection refused"),
        "{text}"
    );
    // The running one: its not_before is no wait for a start, its error is
    // the last one only, on one line, cut.
    let node = lines
        .iter()
        .position(|l| l.contains(&short(running)))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(lines[node + 1].contains("not before: "), "{text}");
    assert!(!lines[node + 1].contains("waiting"), "{text}");
    assert!(
        lines[node + 2].contains("last error: poll failed: timeout talking to vdsm")
            && lines[node + 2].ends_with('…')
            && !lines[node + 2].contains("attempts"),
        "{text}"
    );
    // The root has none of them: its first child follows it.
    assert!(
        lines[1].starts_with(&format!("├─ {}", short(retried))),
        "{text}"
    );
    let wide = db.ok(&["show", &short(retried), "--wide"]);
    let flat_error = long_error.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        wide.contains(&format!("last error: {flat_error}\n")),
        "{wide}"
    );

    let tree = db.json(&["show", &short(retried), "--json"]);
    let children = tree["root"]["children"].as_array().unwrap();
    let node = children
        .iter()
        .find(|c| c["id"] == retried.to_string())
        .unwrap_or_else(|| panic!("{tree:#}"));
    assert_eq!(node["idempotency_key"], "order-42", "{tree:#}");
    assert_eq!(node["failed_attempts"], 2, "{tree:#}");
    assert_eq!(node["last_error"], "connection refused", "{tree:#}");
    let json_at: chrono::DateTime<chrono::Utc> =
        node["not_before"].as_str().unwrap().parse().unwrap();
    assert_eq!(json_at, not_before);
    assert_eq!(tree["root"]["failed_attempts"], 0, "{tree:#}");
    assert!(tree["root"]["idempotency_key"].is_null(), "{tree:#}");
    assert!(tree["root"]["not_before"].is_null(), "{tree:#}");

    // list: ATTEMPTS (empty when 0), a waiting start in STATUS, the last
    // error as the reason while retrying.
    let table = db.ok(&["list"]);
    let header = table.lines().next().unwrap();
    assert!(header.contains("ATTEMPTS"), "{table}");
    let row = |id: CommandId| {
        table
            .lines()
            .find(|l| l.starts_with(&short(id)))
            .unwrap_or_else(|| panic!("{table}"))
            .to_owned()
    };
    let line = row(retried);
    assert!(
        column(header, &line, "STATUS").starts_with("NOT_STARTED (starts in "),
        "{table}"
    );
    assert_eq!(column(header, &line, "ATTEMPTS"), "2", "{table}");
    assert_eq!(
        column(header, &line, "REASON"),
        "last error: connection refused",
        "{table}"
    );
    let line = row(running);
    assert_eq!(column(header, &line, "STATUS"), "ACTIVE", "{table}");
    assert_eq!(column(header, &line, "ATTEMPTS"), "", "{table}");
    assert_eq!(column(header, &line, "REASON"), "", "{table}");
    let line = row(root.id);
    assert_eq!(column(header, &line, "STATUS"), "ACTIVE", "{table}");
    assert_eq!(column(header, &line, "ATTEMPTS"), "", "{table}");

    let listed = db.json(&["list", "--json"]);
    let by_id = |id: CommandId| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id.to_string())
            .unwrap_or_else(|| panic!("{listed:#}"))
            .clone()
    };
    let r = by_id(retried);
    assert_eq!(r["idempotency_key"], "order-42", "{r:#}");
    assert_eq!(r["failed_attempts"], 2, "{r:#}");
    assert_eq!(r["last_error"], "connection refused", "{r:#}");
    assert!(r["failure_reason"].is_null(), "{r:#}");
    let json_at: chrono::DateTime<chrono::Utc> = r["not_before"].as_str().unwrap().parse().unwrap();
    assert_eq!(json_at, not_before);
    assert_eq!(by_id(running)["last_error"], long_error.as_str());
    assert_eq!(by_id(running)["failed_attempts"], 0);
    assert!(by_id(root.id)["not_before"].is_null());
}

#[tokio::test]
async fn stats_counts() {
    let db = fresh(true).await;
    let l = listing(&db).await;
    let stats = db.json(&["stats", "--json"]);
    assert_eq!(stats["total"], 5, "{stats:#}");
    assert_eq!(stats["by_status"]["ACTIVE"], 2, "{stats:#}");
    assert_eq!(stats["by_status"]["ENDED_SUCCESSFULLY"], 3, "{stats:#}");
    let by_type = stats["by_type"].as_array().unwrap();
    assert_eq!(by_type.len(), 2);
    assert_eq!(by_type[0]["command_type"], 1);
    assert_eq!(by_type[0]["count"], 2);
    assert_eq!(by_type[0]["type"], "RemoveSnapshot");
    assert_eq!(by_type[1]["count"], 3);
    assert_eq!(stats["oldest_not_ended"]["id"], l.root.id.to_string());
    assert_eq!(stats["cleanup"]["hierarchies"], 1);
    assert_eq!(stats["cleanup"]["rows"], 2);
    assert_eq!(stats["cleanup"]["retention_seconds"], 7 * 86_400);
    // A longer retention leaves nothing to clean.
    let stats = db.json(&["stats", "--retention", "30d", "--json"]);
    assert_eq!(stats["cleanup"]["rows"], 0);

    let text = db.ok(&["stats"]);
    assert!(text.contains("ACTIVE"), "{text}");
    assert!(text.contains("2 Merge"), "{text}");
    assert!(text.contains(&l.root.id.to_string()), "{text}");
    assert!(text.contains("1 hierarchies, 2 rows"), "{text}");
}

#[tokio::test]
async fn cleanup_dry_run_then_for_real() {
    let db = fresh(true).await;
    let l = listing(&db).await;
    let dry = db.ok(&["cleanup", "--older-than", "7d", "--dry-run"]);
    assert!(
        dry.contains("would remove 2 rows in 1 hierarchies"),
        "{dry}"
    );
    assert!(db.store.get(l.old_root.id).await.unwrap().is_some());
    assert!(db.store.get(l.old_child.id).await.unwrap().is_some());

    let done = db.ok(&["cleanup", "--older-than", "7d", "--yes"]);
    assert!(done.contains("removed 2 rows"), "{done}");
    assert!(db.store.get(l.old_root.id).await.unwrap().is_none());
    assert!(db.store.get(l.old_child.id).await.unwrap().is_none());
    assert!(db.store.get(l.root.id).await.unwrap().is_some());

    let again = db.ok(&["cleanup", "--older-than", "7d", "--dry-run"]);
    assert!(again.contains("would remove 0 rows"), "{again}");
}

#[tokio::test]
async fn cancel_marks_unended_descendants() {
    let db = fresh(true).await;
    let l = listing(&db).await;
    let waiting = entity(
        &Merge { disk: 2 },
        2,
        CommandStatus::NotStarted,
        Some(&l.root),
    );
    db.save(&waiting).await;

    let out = db.ok(&["cancel", &l.root.id.to_string(), "--yes"]);
    assert!(
        out.contains("cancellation requested for 3 commands\n"),
        "{out}"
    );
    // Plain about who carries it out: a host, only one that registers the
    // types; here none is alive; `fail` is the exit.
    assert!(
        out.contains("the cancel takes effect only when a host runs these commands"),
        "{out}"
    );
    assert!(out.contains("no live host"), "{out}");
    assert!(out.contains("registers these commands' types"), "{out}");
    assert!(out.contains("command-coordinator fail"), "{out}");
    let mut requested = db.store.cancel_requested().await.unwrap();
    requested.sort();
    let mut expected = vec![l.root.id, l.running.id, waiting.id];
    expected.sort();
    assert_eq!(requested, expected);

    let out = db.ok(&["cancel", &l.done.id.to_string()]);
    assert_eq!(
        out.trim(),
        format!(
            "command {} already ended (ENDED_SUCCESSFULLY): nothing to cancel",
            l.done.id
        )
    );

    let missing = CommandId::new();
    let out = db.cli(&["cancel", &missing.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line(&out, &format!("no command {missing}"));

    // The tree shows the request.
    let text = db.ok(&["show", &l.root.id.to_string()]);
    assert!(text.contains("[cancel requested]"), "{text}");
}

/// Rows of `db` that are still there, of those given.
async fn remaining(db: &TestDb, rows: &[&CommandEntity]) -> usize {
    let mut n = 0;
    for e in rows {
        if db.store.get(e.id).await.unwrap().is_some() {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn cleanup_refuses_a_retention_under_an_hour_without_force() {
    let db = fresh(true).await;
    let l = listing(&db).await;
    // A hierarchy that ended a minute ago: what `0s` or `7m` would take.
    let mut recent = entity(
        &Merge { disk: 9 },
        2,
        CommandStatus::EndedSuccessfully,
        None,
    );
    recent.created_at = chrono::Utc::now() - chrono::TimeDelta::minutes(3);
    recent.ended_at = Some(chrono::Utc::now() - chrono::TimeDelta::minutes(1));
    db.save(&recent).await;
    let all = [
        &l.root,
        &l.done,
        &l.running,
        &l.old_root,
        &l.old_child,
        &recent,
    ];

    for (retention, shown) in [
        ("0s", "0 seconds"),
        ("7m", "7 minutes"),
        ("59min", "59 minutes"),
    ] {
        for extra in [&[][..], &["--yes"][..]] {
            let out = db.cli(&[&["cleanup", "--older-than", retention][..], extra].concat());
            assert_eq!(out.status.code(), Some(2), "{retention} {extra:?}: {out:?}");
            assert_one_line(&out, "--force");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("1 hour"), "{stderr}");
            // The duration as understood, in words: 7m is minutes.
            assert!(
                stderr.contains(&format!("more than {shown} ago")),
                "{stderr}"
            );
            assert!(stderr.contains("7months"), "{stderr}");
            assert_eq!(
                remaining(&db, &all).await,
                all.len(),
                "{retention}: rows went"
            );
        }
    }
    // Months are months.
    let dry = db.ok(&["cleanup", "--older-than", "7months", "--dry-run"]);
    assert!(dry.contains("more than 213 days 1 hour ago"), "{dry}");
    assert!(dry.contains("would remove 0 rows"), "{dry}");
    // A dry run shows what a short retention would take, without --force.
    let dry = db.ok(&["cleanup", "--older-than", "0s", "--dry-run"]);
    assert!(
        dry.contains("would remove 3 rows in 2 hierarchies"),
        "{dry}"
    );

    // --force lets it through; it still removes only ended hierarchies.
    let done = db.ok(&["cleanup", "--older-than", "0s", "--force", "--yes"]);
    assert!(done.contains("removed 3 rows"), "{done}");
    assert_eq!(
        remaining(&db, &[&recent, &l.old_root, &l.old_child]).await,
        0
    );
    assert_eq!(remaining(&db, &[&l.root, &l.done, &l.running]).await, 3);

    let help = String::from_utf8(db.cli(&["cleanup", "--help"]).stdout).unwrap();
    assert!(help.contains("7m is 7 MINUTES"), "{help}");
    assert!(help.contains("--force") && help.contains("--yes"), "{help}");
}

#[tokio::test]
async fn cleanup_confirms_and_refuses_without_a_terminal() {
    let db = fresh(true).await;
    let l = listing(&db).await;
    let old = [&l.old_root, &l.old_child];

    // stdin is not a terminal and there is no --yes: nobody to ask.
    let out = db.cli(&["cleanup", "--older-than", "7d"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_line(&out, "not a terminal");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("will remove 2 rows in 1 hierarchies that ended more than 7 days ago"),
        "{stdout}"
    );
    assert_eq!(
        remaining(&db, &old).await,
        2,
        "removed without confirmation"
    );

    let done = db.ok(&["cleanup", "--older-than", "7d", "--yes"]);
    assert!(done.contains("removed 2 rows"), "{done}");
    assert_eq!(remaining(&db, &old).await, 0);

    // Nothing to remove: nothing to confirm.
    let none = db.ok(&["cleanup", "--older-than", "7d"]);
    assert!(none.contains("nothing to remove"), "{none}");
}

#[tokio::test]
async fn cancel_confirms() {
    let db = fresh(true).await;
    let l = listing(&db).await;

    let out = db.cli(&["cancel", &l.root.id.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_line(&out, "not a terminal");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "will request cancellation of 2 commands: {} and 1 descendant that has not ended",
            l.root.id
        )),
        "{stdout}"
    );
    assert!(db.store.cancel_requested().await.unwrap().is_empty());

    let out = db.ok(&["cancel", &l.root.id.to_string(), "-y"]);
    assert!(
        out.contains("cancellation requested for 2 commands"),
        "{out}"
    );
    let mut requested = db.store.cancel_requested().await.unwrap();
    requested.sort();
    assert_eq!(requested, {
        let mut ids = vec![l.root.id, l.running.id];
        ids.sort();
        ids
    });
}

#[tokio::test]
async fn migrate_twice() {
    let db = fresh(false).await;
    let first = db.ok(&["migrate"]);
    assert!(first.contains("applied V1__command_entities"), "{first}");
    assert!(first.contains("applied V2__cancellation"), "{first}");
    let second = db.ok(&["migrate"]);
    assert!(second.contains("up to date"), "{second}");
    assert!(!second.contains("applied V"), "{second}");
    let empty = db.json(&["list", "--json"]);
    assert_eq!(empty, Value::Array(vec![]));
}

#[tokio::test]
async fn an_unmigrated_schema_says_what_to_do() {
    let db = fresh(false).await;
    let out = db.cli(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line(&out, "migrate");
}

/// Exactly one line on stderr, starting with "error:", containing `expected`,
/// and no panic.
#[track_caller]
fn assert_one_line(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in {stderr}"
    );
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let url = "postgres://x@127.0.0.1:1/x";
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "frobnicate"),
        (&["--database-url", url, "list", "--older-than", "7x"], "7x"),
        (
            &["--database-url", url, "list", "--newer-than", "5"],
            "unit",
        ),
        (&["--database-url", url, "show", "not-a-uuid"], "not-a-uuid"),
        (&["--database-url", url, "cancel", "1234"], "1234"),
        (
            &["--database-url", url, "--schema", "Bad-Name", "list"],
            "Bad-Name",
        ),
        (&["--database-url", url, "cleanup"], "--older-than"),
        (&["list"], "--database-url"),
        (&["--database-url", "not a url =", "list"], "--database-url"),
    ];
    for (args, expected) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_one_line(&out, expected);
    }
    // Help is not an error.
    let out = run(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cleanup"));
}

#[test]
fn unreachable_database_is_one_line_and_exit_1() {
    let url = "postgres://x@127.0.0.1:1/x";
    let id = CommandId::new().to_string();
    for args in [
        &["list"][..],
        &["show", &id],
        &["stats"],
        &["cleanup", "--older-than", "1d", "--dry-run"],
        &["cancel", &id],
        &["migrate"],
    ] {
        let out = run(&[&["--database-url", url], args].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert_one_line(&out, "cannot reach the database postgres://x@127.0.0.1:1/x");
    }
}

/// Runs `sql` on the test's schema (`{t}`: its command_entities, `{h}`: its command_hosts).
async fn sql(
    db: &TestDb,
    sql: &str,
    params: &[&(dyn command_coordinator::tokio_postgres::types::ToSql + Sync)],
) {
    let client = db.store.pool().get().await.unwrap();
    let sql = sql
        .replace("{t}", &format!("{}.command_entities", db.schema.quoted()))
        .replace("{h}", &format!("{}.command_hosts", db.schema.quoted()));
    client.execute(&sql, params).await.unwrap();
}

/// An isolated hierarchy: a root of a type no host registers, running,
/// with one child waiting and one ended.
struct Isolated {
    root: CommandEntity,
    waiting: CommandEntity,
    ended: CommandEntity,
}

async fn isolated(db: &TestDb) -> Isolated {
    let root = entity(
        &Group {
            name: "retired".into(),
        },
        77,
        CommandStatus::Active,
        None,
    );
    let waiting = entity(
        &Merge { disk: 1 },
        78,
        CommandStatus::NotStarted,
        Some(&root),
    );
    let mut ended = entity(
        &Merge { disk: 2 },
        78,
        CommandStatus::EndedSuccessfully,
        Some(&root),
    );
    ended.ended_at = Some(chrono::Utc::now());
    for e in [&root, &waiting, &ended] {
        db.save(e).await;
    }
    Isolated {
        root,
        waiting,
        ended,
    }
}

/// A host in `state` whose last heartbeat was `ago_s` seconds ago, owning `root`.
async fn owned_by_host(db: &TestDb, root: CommandId, state: &str, ago_s: f64) -> String {
    let host = uuid::Uuid::new_v4();
    sql(
        db,
        "INSERT INTO {h} (host_id, name, state, heartbeat_at) \
         VALUES ($1, 'web-1', $2, now() - make_interval(secs => $3))",
        &[&host, &state, &ago_s],
    )
    .await;
    sql(
        db,
        "UPDATE {t} SET owner_host = $1 WHERE command_id = $2",
        &[&host, root.as_uuid()],
    )
    .await;
    host.to_string()
}

#[tokio::test]
async fn fail_ends_an_isolated_hierarchy_and_remove_deletes_it() {
    let db = fresh(true).await;
    let h = isolated(&db).await;
    let other = listing(&db).await;
    let prefix = short(h.waiting.id);

    // Without --yes and without a terminal: the plan, then a refusal.
    let out = db.cli(&["fail", &prefix, "--reason", "type 77 was retired"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_line(&out, "not a terminal");
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains(&format!("will end 2 commands of hierarchy {}", h.root.id)),
        "{plan}"
    );
    assert!(plan.contains(&h.waiting.id.to_string()), "{plan}");
    assert!(!plan.contains(&h.ended.id.to_string()), "{plan}");
    assert_eq!(
        db.store.get(h.root.id).await.unwrap().unwrap().status,
        CommandStatus::Active
    );

    // An empty reason is refused.
    let out = db.cli(&["fail", &prefix, "--reason", " ", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_line(&out, "--reason is empty");

    // Any id of the hierarchy, by prefix: every command not ended ends.
    let out = db.ok(&["fail", &prefix, "--reason", "type 77 was retired", "--yes"]);
    assert!(
        out.contains(&format!(
            "ended 2 commands of hierarchy {} with failure",
            h.root.id
        )),
        "{out}"
    );
    for e in [&h.root, &h.waiting] {
        let row = db.store.get(e.id).await.unwrap().unwrap();
        assert_eq!(row.status, CommandStatus::EndedWithFailure);
        assert!(row.callback_notified);
        assert!(row.ended_at.is_some());
        assert_eq!(row.failure_reason.as_deref(), Some("type 77 was retired"));
    }
    let untouched = db.store.get(h.ended.id).await.unwrap().unwrap();
    assert_eq!(untouched.status, CommandStatus::EndedSuccessfully);
    assert_eq!(untouched.failure_reason, None);
    // The other hierarchy is not touched.
    assert_eq!(
        db.store
            .get(other.running.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        CommandStatus::Active
    );

    // Again: nothing left to fail.
    let again = db.json(&["fail", &h.root.id.to_string(), "--reason", "x", "--json"]);
    assert_eq!(again["failed"], Value::Array(vec![]), "{again:#}");

    // Now it has ended: remove takes the whole hierarchy, from any id.
    let out = db.cli(&["remove", &short(h.ended.id)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_line(&out, "not a terminal");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("will remove hierarchy {}: 3 rows", h.root.id)),
        "{out:?}"
    );
    let removed = db.json(&["remove", &short(h.ended.id), "--yes", "--json"]);
    assert_eq!(removed["root_id"], h.root.id.to_string());
    assert_eq!(
        removed["removed"].as_array().unwrap().len(),
        3,
        "{removed:#}"
    );
    assert_eq!(remaining(&db, &[&h.root, &h.waiting, &h.ended]).await, 0);
    assert_eq!(
        remaining(&db, &[&other.root, &other.running, &other.old_root]).await,
        3
    );
}

#[tokio::test]
async fn remove_refuses_a_hierarchy_that_has_not_ended() {
    let db = fresh(true).await;
    let l = listing(&db).await;
    let out = db.cli(&["remove", &l.done.id.to_string(), "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_one_line(&out, "2 of its commands have not ended (2 ACTIVE)");
    assert!(String::from_utf8_lossy(&out.stderr).contains("command-coordinator fail"));
    assert_eq!(remaining(&db, &[&l.root, &l.done, &l.running]).await, 3);

    let out = db.ok(&["remove", &l.old_child.id.to_string(), "--yes"]);
    assert_eq!(
        out.lines().last().unwrap(),
        format!("removed hierarchy {}: 2 rows", l.old_root.id)
    );
    assert_eq!(remaining(&db, &[&l.old_root, &l.old_child]).await, 0);
}

#[tokio::test]
async fn fail_refuses_a_hierarchy_a_live_host_owns() {
    let db = fresh(true).await;
    let h = isolated(&db).await;
    let id = h.root.id.to_string();
    let host = owned_by_host(&db, h.root.id, "alive", 1.0).await;

    let out = db.cli(&["fail", &id, "--reason", "stuck", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_line(&out, &format!("a live host web-1 ({})", &host[..8]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        db.store.get(h.root.id).await.unwrap().unwrap().status,
        CommandStatus::Active
    );

    // cancel names the owner and still says what cancel needs.
    let out = db.ok(&["cancel", &id, "--yes"]);
    assert!(out.contains("a live host web-1"), "{out}");
    assert!(out.contains("command-coordinator fail"), "{out}");
    let json = db.json(&["cancel", &id, "--yes", "--json"]);
    assert_eq!(json["live_owner"]["name"], "web-1", "{json:#}");
    assert_eq!(json["live_hosts"], 1, "{json:#}");

    // --force goes ahead.
    let out = db.ok(&["fail", &id, "--reason", "stuck", "--yes", "--force"]);
    assert!(out.contains("ended 2 commands"), "{out}");
    let root = db.store.get(h.root.id).await.unwrap().unwrap();
    assert_eq!(root.status, CommandStatus::EndedWithFailure);
    // The owner lost them: its next write to them is refused.
    assert_eq!(root.owner, None);
}

#[tokio::test]
async fn a_dead_or_silent_owner_does_not_hold_fail_back() {
    for (state, ago) in [("alive", 120.0), ("dead", 1.0), ("leaving", 1.0)] {
        let db = fresh(true).await;
        let h = isolated(&db).await;
        owned_by_host(&db, h.root.id, state, ago).await;
        // An unended child owned by a live host holds it back, though.
        let out = db.ok(&["fail", &h.root.id.to_string(), "--reason", "stuck", "--yes"]);
        assert!(out.contains("ended 2 commands"), "{state} {ago}: {out}");
    }
    let db = fresh(true).await;
    let h = isolated(&db).await;
    owned_by_host(&db, h.waiting.id, "alive", 0.0).await;
    let out = db.cli(&["fail", &h.root.id.to_string(), "--reason", "stuck", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_line(&out, "a live host web-1");
}

#[tokio::test]
async fn ids_are_taken_by_their_first_characters() {
    let db = fresh(true).await;
    let l = listing(&db).await;
    let tree = db.json(&["show", &short(l.running.id), "--json"]);
    assert_eq!(tree["root"]["id"], l.root.id.to_string());
    assert_eq!(tree["given_id"], l.running.id.to_string());
    let upper = l.running.id.to_string()[..13].to_uppercase();
    let tree = db.json(&["show", &upper, "--json"]);
    assert_eq!(tree["given_id"], l.running.id.to_string());
    let listed = db.json(&["list", "--root", &short(l.root.id), "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 3);

    // No match, several matches.
    let a: CommandId = "abcdef01-0000-4000-8000-000000000001".parse().unwrap();
    let b: CommandId = "abcdef01-0000-4000-8000-100000000002".parse().unwrap();
    for id in [a, b] {
        let mut e = entity(&Merge { disk: 0 }, 2, CommandStatus::Active, None);
        e.id = id;
        e.root_id = Some(id);
        db.save(&e).await;
    }
    for sub in [
        &["show"][..],
        &["cancel", "--yes"],
        &["fail", "--reason", "x", "--yes"],
        &["remove", "--yes"],
    ] {
        let out = db.cli(&[sub, &["abcdef01"][..]].concat());
        assert_eq!(out.status.code(), Some(2), "{sub:?} {out:?}");
        assert_one_line(&out, "abcdef01 is ambiguous");
        assert!(String::from_utf8_lossy(&out.stderr).contains(&a.to_string()));
        let out = db.cli(&[sub, &["0000000a"][..]].concat());
        assert_eq!(out.status.code(), Some(1), "{sub:?} {out:?}");
        assert_one_line(&out, "no command id starts with 0000000a");
    }
    let out = db.ok(&["show", "abcdef01-0000-4000-8000-1"]);
    assert!(out.contains("abcdef01"), "{out}");
    let out = db.cli(&["show", "abcdef0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_line(&out, "at least the first 8 characters");
}

#[tokio::test]
async fn list_refuses_filters_that_cannot_match() {
    let db = fresh(true).await;
    listing(&db).await;
    let out = db.cli(&["list", "--status", "ACTIV"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_line(
        &out,
        "'ACTIV' for '--status <STATUS>': not a status; the statuses are UNKNOWN, NOT_STARTED, ACTIVE",
    );
    let out = db.cli(&["list", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_line(&out, "at least 1");
    for wanted in ["77", "Merg"] {
        let out = db.cli(&["list", "--type", wanted]);
        assert_eq!(out.status.code(), Some(2), "{wanted}: {out:?}");
        assert_one_line(
            &out,
            &format!(
                "no command of type \"{wanted}\" is stored; the stored types are: \
                 1 RemoveSnapshot, 2 Merge"
            ),
        );
    }
    // A stored type with nothing matching the other filters is an empty list.
    let none = db.json(&[
        "list",
        "--type",
        "Merge",
        "--status",
        "not_started",
        "--json",
    ]);
    assert_eq!(none, Value::Array(vec![]));
    // The failure reason and the parent are listed.
    let mut failed = entity(&Merge { disk: 3 }, 2, CommandStatus::Failed, None);
    failed.failure_reason = Some("block job failed\non disk 3".into());
    db.save(&failed).await;
    // On one line: a newline would break the table.
    let text = db.ok(&["list", "--status", "FAILED"]);
    assert!(text.contains("block job failed on disk 3"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    let json = db.json(&["list", "--status", "failed", "--json"]);
    assert_eq!(json[0]["failure_reason"], "block job failed\non disk 3");
}

#[tokio::test]
async fn errors_say_what_happened_once() {
    let db = fresh(false).await;
    for args in [
        &["cleanup", "--older-than", "7d", "--dry-run"][..],
        &["stats"],
        &["list"],
        &["fail", "abcdef01", "--reason", "x"],
    ] {
        let out = db.cli(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert_one_line(
            &out,
            &format!("run `command-coordinator --schema {} migrate`", db.schema),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        for plumbing in [
            "remove_before",
            "of commands failed",
            "database error",
            "db error",
            "ERROR:",
        ] {
            assert!(!stderr.contains(plumbing), "{args:?}: {stderr}");
        }
    }
    let out = db.cli(&["cleanup", "--older-than", "7d", "--dry-run"]);
    assert_one_line(&out, "cannot count what cleanup would remove: relation");
}

#[test]
fn an_unreachable_database_is_said_in_words() {
    let out = run(&[
        "--database-url",
        "postgres://x@127.0.0.1:1/x",
        "cleanup",
        "--older-than",
        "1d",
        "--dry-run",
    ]);
    assert_one_line(
        &out,
        "cannot reach the database postgres://x@127.0.0.1:1/x (schema public): Connection refused",
    );
    let out = run(&["--database-url", "postgres://x@127.0.0.1:1/x", "list"]);
    assert_one_line(
        &out,
        "cannot reach the database postgres://x@127.0.0.1:1/x (schema public): Connection refused",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("creating a new object"), "{stderr}");
}

#[tokio::test]
async fn actions_print_json() {
    let db = fresh(false).await;
    let migrated = db.json(&["migrate", "--json"]);
    assert!(
        migrated["applied"].as_array().unwrap().len() >= 6,
        "{migrated:#}"
    );
    let l = listing(&db).await;
    let dry = db.json(&["cleanup", "--older-than", "7d", "--dry-run", "--json"]);
    assert_eq!(dry["rows"], 2, "{dry:#}");
    assert_eq!(dry["dry_run"], true, "{dry:#}");
    // The plan goes to stderr, so stdout stays one JSON document.
    let done = db.json(&["cleanup", "--older-than", "7d", "--yes", "--json"]);
    assert_eq!(done["rows"], 2, "{done:#}");
    let cancel = db.json(&["cancel", &short(l.root.id), "--yes", "--json"]);
    assert_eq!(cancel["requested"], 2, "{cancel:#}");
    assert_eq!(cancel["live_hosts"], 0, "{cancel:#}");
    let ended = db.json(&["cancel", &l.done.id.to_string(), "--json"]);
    assert_eq!(ended["already_ended"], "ENDED_SUCCESSFULLY", "{ended:#}");
    let failed = db.json(&[
        "fail",
        &short(l.root.id),
        "--reason",
        "r",
        "--yes",
        "--json",
    ]);
    assert_eq!(failed["failed"].as_array().unwrap().len(), 2, "{failed:#}");
    assert_eq!(failed["reason"], "r");
}

#[tokio::test]
async fn hosts_lists_the_registry_what_each_owns_and_what_waits_for_adoption() {
    let db = fresh(true).await;
    // A live host owning one hierarchy of two unfinished rows.
    let h = isolated(&db).await;
    let live = owned_by_host(&db, h.root.id, "alive", 1.0).await;
    sql(
        &db,
        "UPDATE {t} SET owner_host = $1 WHERE command_id = $2",
        &[
            &uuid::Uuid::parse_str(&live).unwrap(),
            h.waiting.id.as_uuid(),
        ],
    )
    .await;
    // A dead host still owning a hierarchy: waiting to be adopted.
    let orphan = isolated(&db).await;
    let dead = owned_by_host(&db, orphan.root.id, "dead", 60.0).await;

    let json = db.json(&["hosts", "--json"]);
    let hosts = json["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{json:#}");
    let by_id = |id: &str| {
        hosts
            .iter()
            .find(|x| x["host_id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {json:#}"))
    };
    assert_eq!(by_id(&live)["state"], "alive");
    assert_eq!(by_id(&live)["owned_hierarchies"], 1);
    assert_eq!(by_id(&live)["owned_unfinished_rows"], 2);
    assert!(by_id(&live)["heartbeat_age_seconds"].as_f64().unwrap() >= 1.0);
    assert_eq!(by_id(&dead)["state"], "dead");
    // The orphaned hierarchy: its root is the dead host's, its waiting
    // child has no owner at all.
    assert_eq!(json["without_live_owner"]["hierarchies"], 1, "{json:#}");
    assert_eq!(json["without_live_owner"]["rows"], 2, "{json:#}");

    let out = db.ok(&["hosts"]);
    assert!(out.contains(&live[..8]) && out.contains("alive"), "{out}");
    assert!(out.contains("1 hierarchy (2 rows)"), "{out}");

    // list and show name the owner.
    let out = db.ok(&["list"]);
    assert!(out.contains("OWNER") && out.contains("web-1"), "{out}");
    let out = db.ok(&["show", &h.root.id.to_string()]);
    assert!(
        out.contains(&format!("owner: web-1 ({}, alive)", &live[..8])),
        "{out}"
    );
}
