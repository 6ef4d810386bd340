//! Persists a small command hierarchy and prints it back from PostgreSQL.
//!
//! ```text
//! cargo run --example store_demo                      # embedded throwaway PostgreSQL
//! cargo run --example store_demo -- --database-url postgres://user@host/db
//! ```
//!
//! Without `--database-url` (or `DATABASE_URL`) it starts a throwaway cluster
//! from the local PostgreSQL binaries and removes it at exit.
//!
//! Its rows are of command types 101 (`RemoveSnapshot`) and 102 (`Merge`):
//! each example has numbers of its own (torture_host 201, 202 and 999,
//! live_merge 301–302, web_host 401–402, orders 501–502, load 901–904), so that a host
//! example run later on the same database does not take these rows for its
//! own types and fail to decode them.

use command_coordinator::embedded::{EmbeddedOptions, EmbeddedPostgres};
use command_coordinator::{
    CommandEntity, CommandId, CommandStatus, CommandStore, DatabaseConfig, JsonPayload, PgStore,
    migrate,
};
use serde::Serialize;

/// Its command type: see the module doc.
const REMOVE_SNAPSHOT: i32 = 101;
/// Its command type: see the module doc.
const MERGE: i32 = 102;

#[derive(Serialize)]
struct RemoveSnapshot {
    vm: String,
    snapshot: String,
}

#[derive(Serialize)]
struct Merge {
    disk: String,
}

#[derive(Serialize)]
struct MergeOutput {
    merged_bytes: u64,
}

#[actix::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line: the error and its causes, not a Debug dump.
            eprintln!("store_demo: {}", command_coordinator::error_chain(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--database-url" => url = Some(args.next().ok_or("--database-url needs a value")?),
            "-h" | "--help" => {
                println!("usage: store_demo [--database-url URL]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    // Kept alive until the end of main: dropping it stops the cluster.
    let mut embedded = None;
    let url = match url {
        Some(url) => url,
        None => {
            let pg = EmbeddedPostgres::start(EmbeddedOptions::default())?;
            println!("started a throwaway PostgreSQL at {}", pg.url());
            embedded.insert(pg).url()
        }
    };

    let config = DatabaseConfig::from_url(&url)?;
    println!("database: {config}");
    let pool = config.create_pool()?;
    let report = migrate(&pool, config.schema()).await?;
    println!("migrations applied: {:?}", report.applied);
    let store = PgStore::new(pool, config.schema().clone());

    // A RemoveSnapshot parent with three Merge children, in several states.
    let root = CommandEntity::new(
        CommandId::new(),
        REMOVE_SNAPSHOT,
        JsonPayload::encode(&RemoveSnapshot {
            vm: "vm-42".into(),
            snapshot: "before-upgrade".into(),
        })?,
    );
    store.save_or_update(&root).await?;
    store.update_status(root.id, CommandStatus::Active).await?;
    store.update_executed(root.id).await?;
    let outcomes = [
        CommandStatus::EndedSuccessfully,
        CommandStatus::Active,
        CommandStatus::Failed,
    ];
    for (i, status) in outcomes.into_iter().enumerate() {
        let merge = Merge {
            disk: format!("disk-{i}"),
        };
        let mut child = CommandEntity::new(CommandId::new(), MERGE, JsonPayload::encode(&merge)?)
            .with_parent(&root);
        child.status = status;
        child.executed = true;
        if status == CommandStatus::EndedSuccessfully {
            child.return_value = Some(JsonPayload::encode(&MergeOutput {
                merged_bytes: 1 << 30,
            })?);
            child.callback_notified = true;
        }
        if status == CommandStatus::Failed {
            child.failure_reason = Some("block job aborted".into());
        }
        store.save_or_update(&child).await?;
    }

    // Read everything back from the database and print it as a tree.
    let tree = store.hierarchy(root.id).await?;
    let root_row = tree
        .entities
        .iter()
        .find(|e| e.id == root.id)
        .ok_or("root row missing")?;
    println!("\npersisted hierarchy (read back from command_entities):");
    print_row(root_row, "");
    let children: Vec<_> = tree
        .entities
        .iter()
        .filter(|e| e.parent_id == Some(root.id))
        .collect();
    for (i, child) in children.iter().enumerate() {
        let branch = if i + 1 == children.len() {
            "└─ "
        } else {
            "├─ "
        };
        print_row(child, branch);
    }
    println!(
        "\n{} rows in the hierarchy, {} unreadable",
        tree.entities.len(),
        tree.bad_rows.len()
    );
    Ok(())
}

fn print_row(e: &CommandEntity, prefix: &str) {
    let mut line = format!(
        "{prefix}{} type={} status={} executed={} notified={} params={}",
        e.id,
        e.command_type,
        e.status,
        e.executed,
        e.callback_notified,
        e.parameters.json()
    );
    if let Some(rv) = &e.return_value {
        line.push_str(&format!(" return={}", rv.json()));
    }
    if let Some(reason) = &e.failure_reason {
        line.push_str(&format!(" reason={reason:?}"));
    }
    println!("{line}");
}
