//! An actix-web application embedding the coordinator: the way a real host
//! (an engine with an HTTP API) uses the library.
//!
//! ```text
//! cargo run --example web_host                                   # throwaway PostgreSQL
//! cargo run --example web_host -- --database-url $URL --bind 127.0.0.1:8080
//! ```
//!
//! The coordinator is started inside the actix-web `System` and its handle
//! is shared with the handlers as `web::Data<Coordinator>`:
//!
//! ```text
//! # submit a LiveMerge-style hierarchy: one RemoveSnapshot, one Merge per disk
//! curl -s -X POST localhost:8080/commands -H 'content-type: application/json' \
//!      -d '{"vm": "vm-1", "disks": 3, "fail_rate": 0.0}'
//! {"id":"5b0c…"}                                                   # 202 Accepted
//!
//! # the same with an idempotency key: repeating the request (a client
//! # retrying after a timeout) answers the first command; "start_at" delays it
//! curl -s -X POST localhost:8080/commands -H 'content-type: application/json' \
//!      -H 'Idempotency-Key: snapshot-vm-1-2026-11-30' \
//!      -d '{"vm": "vm-1", "start_at": "2026-12-01T02:00:00Z"}'
//! {"id":"5b0c…"}                             # 202; repeated: 200 {"id":"5b0c…","duplicate":true}
//!
//! # its hierarchy as a JSON tree (any id of the hierarchy works)
//! curl -s localhost:8080/commands/5b0c…
//! {"id":"5b0c…","type":"RemoveSnapshot","status":"ACTIVE",…,"children":[{…"type":"Merge"…}]}
//!
//! # list commands: the same filters as Coordinator::list, newest first,
//! # a page at a time (pass the "next" it answers as after=)
//! curl -s 'localhost:8080/commands?status=ACTIVE,FAILED&type=401&limit=20'
//! {"rows":[{"id":…,"status":"ACTIVE",…}],"bad_rows":[],"next":"1764…123.5b0c…"}
//!
//! # cancel it and its unfinished merges
//! curl -s -X POST localhost:8080/commands/5b0c…/cancel
//! {"requested":4}                                                  # 202; 200 {"already_ended":…}; 404
//! ```
//!
//! The operator dashboard (crate `command-coordinator-dashboard`) is mounted
//! next to the API under `/dashboard` (its URL is printed at start-up): the
//! hierarchies submitted above appear there live, and can be cancelled from it.
//! A real host wraps that scope with its own authentication middleware.
//!
//! `GET /commands/{id}` reads the hierarchy from the store
//! (`CommandStore::hierarchy` of the command's root), not from the live
//! actors: one query gives a consistent picture that also holds the
//! commands that already ended (their actors are gone), and the runtime
//! acts on a status only after committing it, so the rows are never behind
//! what the commands did.
//!
//! Each merge is a simulated block job of 3 to 10 seconds whose schedule is
//! persisted with the command, so there is time to look, cancel, or kill
//! the host. With a persistent `--database-url`, kill the host (even with
//! `kill -9`) while merges run and start it again with the same URL: the
//! coordinator rebuilds every unfinished command from `command_entities` at
//! start-up and the work resumes — merges finish on their original
//! schedule, parents end once their merges ended, and `GET` shows them
//! progressing. Without `--database-url` (or `DATABASE_URL`) the database is
//! a throwaway cluster deleted at exit, so nothing survives.
//!
//! Its command types are numbered 401 (`RemoveSnapshot`) and 402 (`Merge`):
//! each example has numbers of its own (store_demo 101–102, torture_host
//! 201, 202 and 999, live_merge 301–302, load 901–904), so that running one
//! after another on the same database leaves no rows the next one would read
//! as its own type and fail to decode.
//!
//! It listens before it says so: the URL printed is one that answers. Errors
//! (the address in use, the database unreachable) are one line on stderr and
//! exit status 1. Every error answer of the API is JSON (`{"error": "…"}`), a
//! request body that is not the JSON expected too.
//!
//! Logs go to stderr, at `info` for this example unless `RUST_LOG` says
//! otherwise, coloured only when stderr is a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, get, post, web};
use chrono::{DateTime, Utc};
use clap::Parser;
use command_coordinator::embedded::{EmbeddedOptions, EmbeddedPostgres};
use command_coordinator::{
    CancelOutcome, Command, CommandContext, CommandEntity, CommandError, CommandId, CommandStatus,
    CommandStore, Coordinator, CoordinatorError, Cursor, DatabaseConfig, InterruptedExecute,
    ListFilter, PgStore, PollOutcome, SubmitOptions, error_chain,
};
use command_coordinator_dashboard::Dashboard;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Serves a small HTTP API over the command coordinator.
#[derive(Parser, Debug)]
#[command(name = "web_host")]
struct Args {
    /// PostgreSQL URL (default: $DATABASE_URL, else a throwaway embedded cluster).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    bind: String,
}

/// oVirt's RemoveSnapshot: one `Merge` per disk; succeeds with the bytes merged.
#[derive(Debug, Serialize, Deserialize)]
struct RemoveSnapshot {
    vm: String,
    disks: u32,
    fail_rate: f64,
}

impl Command for RemoveSnapshot {
    const COMMAND_TYPE: i32 = 401;
    // Safe to rerun: it submits only the merges not persisted yet.
    const ON_INTERRUPTED_EXECUTE: InterruptedExecute = InterruptedExecute::Rerun;
    type Output = u64;

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        let submitted = ctx.children().len() as u32;
        for disk in submitted..self.disks {
            ctx.submit_child(Merge {
                disk,
                fail_rate: self.fail_rate,
                job: None,
            })
            .await?;
        }
        Ok(())
    }

    async fn poll(&mut self, ctx: &CommandContext) -> Result<PollOutcome<u64>, CommandError> {
        // Called once every merge ended successfully.
        let merged = ctx.child_outputs::<Merge>()?;
        Ok(PollOutcome::Succeeded(
            merged.iter().map(|m| m.merged_bytes).sum(),
        ))
    }
}

/// oVirt's Merge: one disk's block job, simulated.
#[derive(Debug, Serialize, Deserialize)]
struct Merge {
    disk: u32,
    fail_rate: f64,
    /// Recorded by `execute`, persisted with the command: survives a restart.
    job: Option<BlockJob>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BlockJob {
    started_at: DateTime<Utc>,
    duration_ms: u64,
    will_fail: bool,
    bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct MergeOutput {
    merged_bytes: u64,
}

impl Command for Merge {
    const COMMAND_TYPE: i32 = 402;
    const ON_INTERRUPTED_EXECUTE: InterruptedExecute = InterruptedExecute::Rerun;
    type Output = MergeOutput;

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        self.job = Some(BlockJob {
            started_at: Utc::now(),
            duration_ms: fastrand::u64(3_000..=10_000),
            will_fail: fastrand::f64() < self.fail_rate,
            bytes: fastrand::u64(64..=4096) << 20,
        });
        Ok(())
    }

    async fn poll(
        &mut self,
        _ctx: &CommandContext,
    ) -> Result<PollOutcome<MergeOutput>, CommandError> {
        let Some(job) = &self.job else {
            return Ok(PollOutcome::Failed("no block job recorded".into()));
        };
        if (Utc::now() - job.started_at).num_milliseconds() < job.duration_ms as i64 {
            Ok(PollOutcome::Running)
        } else if job.will_fail {
            Ok(PollOutcome::Failed(format!(
                "block job failed on disk {}",
                self.disk
            )))
        } else {
            Ok(PollOutcome::Succeeded(MergeOutput {
                merged_bytes: job.bytes,
            }))
        }
    }
}

/// The body of `POST /commands`.
#[derive(Debug, Deserialize)]
struct Submit {
    vm: String,
    #[serde(default = "three")]
    disks: u32,
    #[serde(default)]
    fail_rate: f64,
    /// Start no earlier than this (RFC 3339); at once when absent.
    #[serde(default)]
    start_at: Option<DateTime<Utc>>,
}

fn three() -> u32 {
    3
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.to_string() }))
}

/// 503 when the database is away (worth retrying), 500 otherwise.
fn coordinator_error(e: CoordinatorError) -> HttpResponse {
    let status = match &e {
        CoordinatorError::Store(s) if s.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        CoordinatorError::NotFound(_) => StatusCode::NOT_FOUND,
        CoordinatorError::InvalidOptions(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

/// A request body that is not the JSON expected: answered as JSON like
/// every other error (actix-web's default is a plain-text 400).
fn bad_json(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    let status = match &err {
        actix_web::error::JsonPayloadError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        actix_web::error::JsonPayloadError::Overflow { .. }
        | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let why = match &err {
        actix_web::error::JsonPayloadError::ContentType => {
            "expected content-type: application/json".to_owned()
        }
        other => error_chain(other),
    };
    let response = error(status, format!("bad request body: {why}"));
    actix_web::error::InternalError::from_response(err, response).into()
}

fn bad_id(raw: &str) -> HttpResponse {
    error(
        StatusCode::BAD_REQUEST,
        format!("{raw:?} is not a command id"),
    )
}

/// The `Idempotency-Key` header (the IETF HTTP draft's name): a client that
/// repeats a POST after a timeout gets the first command back (200 with
/// `"duplicate": true`) instead of a second one.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[post("/commands")]
async fn submit(
    coordinator: web::Data<Coordinator>,
    request: actix_web::HttpRequest,
    body: web::Json<Submit>,
) -> HttpResponse {
    let body = body.into_inner();
    let mut options = SubmitOptions::new();
    if let Some(key) = request.headers().get(IDEMPOTENCY_KEY) {
        match key.to_str() {
            Ok(key) => options = options.key(key),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the Idempotency-Key header must be visible ASCII",
                );
            }
        }
    }
    if let Some(at) = body.start_at {
        options = options.not_before(at);
    }
    if !(1..=64).contains(&body.disks) {
        return error(StatusCode::BAD_REQUEST, "disks must be between 1 and 64");
    }
    if !(0.0..=1.0).contains(&body.fail_rate) {
        return error(StatusCode::BAD_REQUEST, "fail_rate must be between 0 and 1");
    }
    let command = RemoveSnapshot {
        vm: body.vm,
        disks: body.disks,
        fail_rate: body.fail_rate,
    };
    match coordinator.submit_with(command, options).await {
        Ok(s) if s.duplicate => HttpResponse::Ok().json(json!({ "id": s.id, "duplicate": true })),
        Ok(s) => HttpResponse::Accepted().json(json!({ "id": s.id })),
        Err(e) => coordinator_error(e),
    }
}

/// `GET /commands`'s query: `Coordinator::list`'s filters.
#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Comma-separated statuses, any case.
    status: Option<String>,
    #[serde(rename = "type")]
    command_type: Option<i32>,
    root: Option<String>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
    limit: Option<u32>,
    after: Option<String>,
}

/// A query string that does not parse: answered as JSON like every other
/// error.
fn bad_query(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    let response = error(
        StatusCode::BAD_REQUEST,
        format!("bad query: {}", error_chain(&err)),
    );
    actix_web::error::InternalError::from_response(err, response).into()
}

#[get("/commands")]
async fn list_commands(
    coordinator: web::Data<Coordinator>,
    query: web::Query<ListQuery>,
) -> HttpResponse {
    let query = query.into_inner();
    let mut filter = ListFilter {
        command_type: query.command_type,
        created_after: query.created_after,
        created_before: query.created_before,
        ..ListFilter::default()
    };
    if let Some(limit) = query.limit {
        filter.limit = limit;
    }
    for status in query.status.iter().flat_map(|s| s.split(',')) {
        match status.trim().to_uppercase().parse::<CommandStatus>() {
            Ok(status) => filter.statuses.push(status),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    }
    if let Some(root) = &query.root {
        let Ok(root) = root.parse::<CommandId>() else {
            return bad_id(root);
        };
        filter.root = Some(root);
    }
    if let Some(after) = &query.after {
        match after.parse::<Cursor>() {
            Ok(after) => filter.after = Some(after),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    }
    match coordinator.list(&filter).await {
        Ok(page) => HttpResponse::Ok().json(json!({
            "rows": page.rows.iter().map(|r| json!({
                "id": r.id,
                "command_type": r.command_type,
                "type": r.parameters.class().rsplit("::").next(),
                "status": r.status,
                "parent_id": r.parent_id,
                "root_id": r.root_id,
                "created_at": r.created_at,
                "ended_at": r.ended_at,
                "failure_reason": r.failure_reason,
                "owner_host": r.owner,
            })).collect::<Vec<_>>(),
            "bad_rows": page.bad_rows.iter().map(|b| json!({
                "id": b.command_id,
                "reason": b.reason,
            })).collect::<Vec<_>>(),
            "next": page.next.map(|c| c.to_string()),
        })),
        Err(CoordinatorError::InvalidFilter(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(e) => coordinator_error(e),
    }
}

#[get("/commands/{id}")]
async fn show(store: web::Data<PgStore>, id: web::Path<String>) -> HttpResponse {
    let Ok(id) = id.parse::<CommandId>() else {
        return bad_id(&id);
    };
    match hierarchy(&store, id).await {
        Ok(Some(tree)) => HttpResponse::Ok().json(tree),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no command {id}")),
        Err(e) => coordinator_error(e),
    }
}

#[post("/commands/{id}/cancel")]
async fn cancel(coordinator: web::Data<Coordinator>, id: web::Path<String>) -> HttpResponse {
    let Ok(id) = id.parse::<CommandId>() else {
        return bad_id(&id);
    };
    match coordinator.cancel(id).await {
        Ok(CancelOutcome::Requested { commands }) => {
            HttpResponse::Accepted().json(json!({ "requested": commands }))
        }
        Ok(CancelOutcome::AlreadyEnded(status)) => {
            HttpResponse::Ok().json(json!({ "already_ended": status }))
        }
        Ok(CancelOutcome::NotFound) => error(StatusCode::NOT_FOUND, format!("no command {id}")),
        Err(e) => coordinator_error(e),
    }
}

/// The tree of the hierarchy holding `id`, from the store; `None` when
/// there is no such command.
async fn hierarchy(store: &PgStore, id: CommandId) -> Result<Option<Value>, CoordinatorError> {
    let Some(mut top) = store.get(id).await? else {
        return Ok(None);
    };
    // Up the parent links to the root (bounded, in case of a corrupt cycle).
    for _ in 0..64 {
        match top.parent_id {
            Some(parent) => match store.get(parent).await? {
                Some(p) => top = p,
                None => break,
            },
            None => break,
        }
    }
    let loaded = store.hierarchy(top.id).await?;
    let mut children: HashMap<Option<CommandId>, Vec<&CommandEntity>> = HashMap::new();
    for e in &loaded.entities {
        children.entry(e.parent_id).or_default().push(e);
    }
    let mut tree = node(&top, &children, 0);
    if !loaded.bad_rows.is_empty() {
        tree["unreadable_rows"] = json!(
            loaded
                .bad_rows
                .iter()
                .map(|b| json!({ "id": b.command_id, "reason": b.reason }))
                .collect::<Vec<_>>()
        );
    }
    Ok(Some(tree))
}

fn node(
    e: &CommandEntity,
    children: &HashMap<Option<CommandId>, Vec<&CommandEntity>>,
    depth: usize,
) -> Value {
    let kids: Vec<Value> = match children.get(&Some(e.id)) {
        Some(list) if depth < 64 => list.iter().map(|c| node(c, children, depth + 1)).collect(),
        _ => Vec::new(),
    };
    let kind = match e.command_type {
        RemoveSnapshot::COMMAND_TYPE => "RemoveSnapshot",
        Merge::COMMAND_TYPE => "Merge",
        _ => "unknown",
    };
    json!({
        "id": e.id,
        "type": kind,
        "status": e.status,
        "created_at": e.created_at,
        "ended_at": e.ended_at,
        "parameters": serde_json::from_str::<Value>(e.parameters.json()).unwrap_or(Value::Null),
        "output": e.return_value.as_ref()
            .map(|rv| serde_json::from_str::<Value>(rv.json()).unwrap_or(Value::Null)),
        "failure_reason": e.failure_reason,
        "children": kids,
    })
}

#[actix_web::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,web_host=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // Kept alive until the end of main: dropping it stops the cluster.
    let mut embedded: Option<EmbeddedPostgres> = None;
    let result = serve(args, &mut embedded).await;
    drop(embedded);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line: the error and its causes, not a Debug dump.
            eprintln!("web_host: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    args: Args,
    embedded: &mut Option<EmbeddedPostgres>,
) -> Result<(), Box<dyn std::error::Error>> {
    // The address first: one in use is reported before a database is
    // started or a coordinator joins the hosts of the schema, and once it is bound the
    // URL announced below answers.
    let listener = std::net::TcpListener::bind(&args.bind)
        .map_err(|e| format!("cannot listen on {}: {e}", args.bind))?;
    let url = match args
        .database_url
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| !u.is_empty())
    {
        Some(url) => url,
        None => embedded
            .insert(EmbeddedPostgres::start(EmbeddedOptions::default())?)
            .url(),
    };
    let config = DatabaseConfig::from_url(&url)?;
    let store =
        PgStore::new(config.create_pool()?, config.schema().clone()).with_notifications(&config);
    // Migrates, joins the hosts of the schema, adopts and rebuilds every
    // unfinished command no live host owns.
    let coordinator = Coordinator::builder(store.clone())
        .register::<RemoveSnapshot>()
        .register::<Merge>()
        .poll_interval(Duration::from_millis(500))
        .max_poll_interval(Duration::from_secs(2))
        .start()
        .await
        .map_err(|e| {
            format!(
                "cannot start the coordinator on {config}: {}",
                error_chain(&e)
            )
        })?;
    // The dashboard cancels through the coordinator, so its live commands
    // learn it at once; a host would add `.wrap(its_auth_middleware)` to the scope.
    let dashboard = Dashboard::new(store.clone())
        .base_path("/dashboard")?
        .with_coordinator(coordinator.clone());

    let data_coordinator = web::Data::new(coordinator.clone());
    let data_store = web::Data::new(store);
    let json_config = web::JsonConfig::default().error_handler(bad_json);
    let query_config = web::QueryConfig::default().error_handler(bad_query);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data_coordinator.clone())
            .app_data(data_store.clone())
            .app_data(json_config.clone())
            .app_data(query_config.clone())
            .service(submit)
            .service(list_commands)
            .service(show)
            .service(cancel)
            .service(dashboard.scope())
    })
    .workers(2)
    .listen(listener);
    let server = match server {
        Ok(server) => server,
        Err(e) => {
            // Commit what is queued before giving up: nothing is lost.
            coordinator.shutdown().await;
            return Err(format!("cannot serve on {}: {e}", args.bind).into());
        }
    };
    // The addresses printed answer (with port 0, the one the system chose).
    for addr in server.addrs() {
        eprintln!("web_host: listening on http://{addr} (database {config})");
        eprintln!("web_host: dashboard at http://{addr}/dashboard/");
    }
    let result = server.run().await;

    // Ctrl-C: commit what is queued; unfinished commands resume next start.
    coordinator.shutdown().await;
    result.map_err(|e| format!("the server failed: {e}").into())
}
