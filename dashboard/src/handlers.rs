//! The routes under the base path, and what each does.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | overview |
//! | `GET /commands` | list (filters, keyset pages) |
//! | `GET /commands/{id}` | one command, every column, its hierarchy as a tree |
//! | `GET /commands/{id}/children` | a page of a node's children (HTML fragment) |
//! | `GET`/`POST /commands/{id}/cancel` | confirm, then cancel the command and its descendants |
//! | `GET`/`POST /commands/cancel` | count, then cancel what a filter matches |
//! | `GET`/`POST /cleanup` | dry run, then remove expired hierarchies |
//! | `GET /live` | server-sent status changes of the ids a page shows |
//! | `GET /assets/…` | the stylesheet and the script |

use std::time::Duration;

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{Error, HttpRequest, HttpResponse, Scope, web};
use command_coordinator::{CancelOutcome, CommandId, CommandStore, CoordinatorError, error_chain};
use uuid::Uuid;

use crate::Inner;
use crate::cache::Counts;
use crate::duration::{before_now, human};
use crate::queries::{BULK_CAP, CHILDREN_PAGE, Cursor, DbError, Filter, Parsed};
use crate::views::{self, Frame, html_response};

/// Registers every route on the dashboard's scope.
pub(crate) fn routes<T>(scope: Scope<T>) -> Scope<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = Error, InitError = ()>,
{
    scope
        .route("", read().to(overview))
        .route("/", read().to(overview))
        .route("/commands", read().to(list))
        .route("/commands/cancel", read().to(confirm_bulk))
        .route("/commands/cancel", web::post().to(bulk_cancel))
        .route("/commands/{id}", read().to(command))
        .route("/commands/{id}/children", read().to(children))
        .route("/commands/{id}/cancel", read().to(confirm_cancel))
        .route("/commands/{id}/cancel", web::post().to(cancel))
        .route("/cleanup", read().to(cleanup_page))
        .route("/cleanup", web::post().to(cleanup_run))
        .route("/live", read().to(crate::live::stream))
        .route("/assets/dashboard.css", read().to(css))
        .route("/assets/dashboard.js", read().to(js))
        .default_service(web::to(not_found))
}

/// GET, and HEAD (answered like GET, without the body: actix-web drops it).
fn read() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

/// Why a page could not be shown.
enum PageError {
    NotFound(String),
    BadRequest(String),
    Forbidden(&'static str),
    Db(DbError),
}

impl From<DbError> for PageError {
    fn from(e: DbError) -> Self {
        Self::Db(e)
    }
}

type PageResult = Result<HttpResponse, PageError>;

impl Inner {
    fn frame(&self) -> Frame<'_> {
        Frame {
            base: &self.base,
            read_only: self.read_only,
        }
    }

    fn respond(&self, result: PageResult) -> HttpResponse {
        let (status, title, message) = match result {
            Ok(response) => return response,
            Err(PageError::NotFound(m)) => (StatusCode::NOT_FOUND, "Not found", m),
            Err(PageError::BadRequest(m)) => (StatusCode::BAD_REQUEST, "Bad request", m),
            Err(PageError::Forbidden(m)) => (StatusCode::FORBIDDEN, "Refused", m.to_owned()),
            Err(PageError::Db(e)) => {
                tracing::warn!(error = %e.message, "dashboard: database error");
                let status = if e.unavailable {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                (status, "Database error", e.message)
            }
        };
        views::message_page(&self.base, status, title, &message)
    }

    fn ensure_writable(&self) -> Result<(), PageError> {
        if self.read_only {
            Err(PageError::Forbidden(
                "this dashboard is read-only: it accepts no actions",
            ))
        } else {
            Ok(())
        }
    }

    /// Cancels `id` and its descendants: through the host's coordinator when
    /// there is one (its live commands learn it at once), else in the table.
    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, DbError> {
        let id = CommandId::from_uuid(id);
        match &self.coordinator {
            Some(c) => c.cancel(id).await.map_err(|e| {
                let transient = matches!(&e, CoordinatorError::Store(s) if s.is_transient());
                DbError::new(error_chain(&e), transient)
            }),
            None => Ok(self.store.request_cancel(id).await?),
        }
    }
}

fn see_other(location: String) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

fn parse_id(raw: &str) -> Result<Uuid, PageError> {
    raw.parse()
        .map_err(|_| PageError::NotFound("no such command: not a command id".into()))
}

fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    serde_urlencoded::from_str(req.query_string()).unwrap_or_default()
}

fn query_value(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

async fn overview(d: web::Data<Inner>) -> HttpResponse {
    Counts::ensure_started(&d.clone().into_inner());
    let result = async {
        let snapshot = d.counts.snapshot();
        let unended = d.unended_counts().await?;
        let stuck = d.stuck_roots(10).await?;
        let oldest = d.oldest_unended(10).await?;
        let stuck_after = human(chrono::TimeDelta::from_std(d.stuck_after).unwrap_or_default());
        Ok(html_response(
            StatusCode::OK,
            views::overview(
                &d.frame(),
                &snapshot,
                &unended,
                &stuck,
                &stuck_after,
                &oldest,
            ),
        ))
    }
    .await;
    d.respond(result)
}

async fn list(d: web::Data<Inner>, req: HttpRequest) -> HttpResponse {
    let result = async {
        let pairs = query_pairs(&req);
        let cursor = match query_value(&pairs, "before") {
            Some(raw) => Some(
                Cursor::decode(&raw)
                    .ok_or_else(|| PageError::BadRequest("before: not a list position".into()))?,
            ),
            None => None,
        };
        match Filter::parse(&pairs) {
            Ok(Parsed::Command(id)) => Ok(see_other(format!("{}/commands/{id}", d.base))),
            Ok(Parsed::Filter(filter)) => {
                let page = d.list(&filter, cursor).await?;
                Ok(html_response(
                    StatusCode::OK,
                    views::list(&d.frame(), &filter, &[], Some(&page), cursor.is_some()),
                ))
            }
            Err(errors) => Ok(html_response(
                StatusCode::BAD_REQUEST,
                views::list(&d.frame(), &Filter::default(), &errors, None, false),
            )),
        }
    }
    .await;
    d.respond(result)
}

async fn command(d: web::Data<Inner>, id: web::Path<String>, req: HttpRequest) -> HttpResponse {
    let result = async {
        let id = parse_id(&id)?;
        let Some(detail) = d.detail(id).await? else {
            return Err(PageError::NotFound(format!("no command {id}")));
        };
        let ancestry = match d.ancestry(id).await? {
            a if a.is_empty() => vec![id],
            a => a,
        };
        let root = ancestry[0];
        let tree = build_tree(&d, &ancestry).await?;
        let hierarchy_counts = d.hierarchy_counts(root).await?;
        let pairs = query_pairs(&req);
        let notice = match (
            query_value(&pairs, "cancelled").and_then(|n| n.parse::<u64>().ok()),
            query_value(&pairs, "ended").as_deref(),
        ) {
            (Some(n), _) => Some(format!(
                "Cancellation requested for {n} commands; the status changes below once a host has picked it up."
            )),
            (None, Some(_)) => Some(format!(
                "Nothing to cancel: the command had already ended ({}).",
                detail.summary.status.as_deref().unwrap_or("NULL")
            )),
            _ => None,
        };
        let view = views::CommandView {
            detail: &detail,
            ancestry: &ancestry,
            hierarchy_counts: &hierarchy_counts,
            tree: views::tree(&d.base, &tree, id),
            notice,
        };
        Ok(html_response(StatusCode::OK, views::command(&d.frame(), &view)))
    }
    .await;
    d.respond(result)
}

/// The hierarchy from its root, depth-limited: expanded along the path to
/// the command shown (and the command itself), one page of children each;
/// everything else expands on demand.
async fn build_tree(d: &Inner, ancestry: &[Uuid]) -> Result<views::TreeNode, PageError> {
    let root_id = ancestry[0];
    let mut root_rows = d.summaries(&[root_id]).await?;
    let root = root_rows
        .pop()
        .ok_or_else(|| PageError::NotFound(format!("no command {root_id}")))?;
    let mut levels = Vec::with_capacity(ancestry.len());
    for (i, &node) in ancestry.iter().enumerate() {
        let (mut rows, more) = d.children(node, None, CHILDREN_PAGE).await?;
        if let Some(&next) = ancestry.get(i + 1)
            && !rows.iter().any(|r| r.id == next)
        {
            // On the path but not on the first page: shown anyway.
            rows.extend(d.summaries(&[next]).await?);
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let counts = d.child_counts(&ids).await?;
        levels.push((views::nodes(rows, &counts), more));
    }
    let mut below: Option<(Vec<views::TreeNode>, Option<Cursor>)> = None;
    for i in (0..ancestry.len()).rev() {
        let Some((mut nodes, more)) = levels.pop() else {
            break;
        };
        if let (Some(b), Some(next)) = (below.take(), ancestry.get(i + 1))
            && let Some(n) = nodes.iter_mut().find(|n| n.summary.id == *next)
        {
            n.children = Some(b);
        }
        below = Some((nodes, more));
    }
    let root_count = d.child_counts(&[root_id]).await?;
    Ok(views::TreeNode {
        children_count: root_count.get(&root_id).copied().unwrap_or(0),
        summary: root,
        children: below,
    })
}

async fn children(d: web::Data<Inner>, id: web::Path<String>, req: HttpRequest) -> HttpResponse {
    let result = async {
        let id = parse_id(&id)?;
        let pairs = query_pairs(&req);
        let after = query_value(&pairs, "after").and_then(|a| Cursor::decode(&a));
        let (rows, more) = d.children(id, after, CHILDREN_PAGE).await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let counts = d.child_counts(&ids).await?;
        let nodes = views::nodes(rows, &counts);
        Ok(HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(views::children_items(&d.base, id, &nodes, more, Uuid::nil()).into_string()))
    }
    .await;
    d.respond(result)
}

async fn confirm_cancel(d: web::Data<Inner>, id: web::Path<String>) -> HttpResponse {
    let result = async {
        d.ensure_writable()?;
        let id = parse_id(&id)?;
        let Some(s) = d.summaries(&[id]).await?.pop() else {
            return Err(PageError::NotFound(format!("no command {id}")));
        };
        let counts = if s.parent.is_none() {
            d.hierarchy_counts(id).await?
        } else {
            Vec::new()
        };
        Ok(html_response(
            StatusCode::OK,
            views::confirm_cancel(&d.frame(), &s, &counts),
        ))
    }
    .await;
    d.respond(result)
}

async fn cancel(d: web::Data<Inner>, id: web::Path<String>) -> HttpResponse {
    let result = async {
        d.ensure_writable()?;
        let id = parse_id(&id)?;
        let base = &d.base;
        match d.cancel(id).await? {
            CancelOutcome::NotFound => Err(PageError::NotFound(format!("no command {id}"))),
            CancelOutcome::AlreadyEnded(_) => {
                Ok(see_other(format!("{base}/commands/{id}?ended=1")))
            }
            CancelOutcome::Requested { commands } => {
                tracing::info!(command_id = %id, commands, "dashboard: cancellation requested");
                Ok(see_other(format!(
                    "{base}/commands/{id}?cancelled={commands}"
                )))
            }
        }
    }
    .await;
    d.respond(result)
}

fn parse_filter(pairs: &[(String, String)]) -> Result<Filter, PageError> {
    match Filter::parse(pairs) {
        Ok(Parsed::Filter(f)) => Ok(f),
        Ok(Parsed::Command(id)) => Ok(Filter {
            id_prefix: Some(id.simple().to_string()),
            ..Filter::default()
        }),
        Err(errors) => Err(PageError::BadRequest(errors.join("; "))),
    }
}

async fn confirm_bulk(d: web::Data<Inner>, req: HttpRequest) -> HttpResponse {
    let result = async {
        d.ensure_writable()?;
        let filter = parse_filter(&query_pairs(&req))?;
        if filter.is_empty() {
            return Err(PageError::BadRequest(
                "choose a filter first: cancelling everything is not offered".into(),
            ));
        }
        let ids = d.unended_matching(&filter).await?;
        let capped = ids.len() as i64 > BULK_CAP;
        let shown = ids.len().min(BULK_CAP as usize);
        Ok(html_response(
            StatusCode::OK,
            views::confirm_bulk(&d.frame(), &filter, shown, capped),
        ))
    }
    .await;
    d.respond(result)
}

async fn bulk_cancel(d: web::Data<Inner>, body: web::Bytes) -> HttpResponse {
    let result = async {
        d.ensure_writable()?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
            .map_err(|_| PageError::BadRequest("the form could not be read".into()))?;
        let filter = parse_filter(&pairs)?;
        if filter.is_empty() {
            return Err(PageError::BadRequest(
                "choose a filter first: cancelling everything is not offered".into(),
            ));
        }
        let ids = d.unended_matching(&filter).await?;
        let mut requested = 0u64;
        for id in ids.iter().take(BULK_CAP as usize) {
            if let CancelOutcome::Requested { commands } = d.cancel(*id).await? {
                requested += commands;
            }
        }
        tracing::info!(matched = ids.len(), requested, "dashboard: bulk cancellation requested");
        let qs = serde_urlencoded::to_string(filter.pairs()).unwrap_or_default();
        Ok(html_response(
            StatusCode::OK,
            views::done(
                &d.frame(),
                "Cancellation requested",
                &format!(
                    "Cancellation requested for {requested} commands ({} matched the filter); a running host picks it up within a second.",
                    ids.len().min(BULK_CAP as usize)
                ),
                &format!("{}/commands?{qs}", d.base),
            ),
        ))
    }
    .await;
    d.respond(result)
}

/// The default retention shown on the cleanup page: the runtime's default.
const DEFAULT_RETENTION: &str = "7d";

/// The shortest retention the cleanup action accepts, as the CLI's without
/// `--force`: `0s`, or minutes typed for months, would remove everything
/// that just ended.
const MIN_RETENTION: Duration = Duration::from_secs(3600);

fn cutoff(older_than: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let d: Duration = crate::duration::parse(older_than)?;
    before_now(d)
}

async fn cleanup_page(d: web::Data<Inner>, req: HttpRequest) -> HttpResponse {
    let result = async {
        let pairs = query_pairs(&req);
        let Some(older_than) = query_value(&pairs, "older_than") else {
            return Ok(html_response(
                StatusCode::OK,
                views::cleanup(&d.frame(), DEFAULT_RETENTION, None, None),
            ));
        };
        match cutoff(&older_than) {
            Err(e) => Ok(html_response(
                StatusCode::BAD_REQUEST,
                views::cleanup(&d.frame(), &older_than, None, Some(&e)),
            )),
            Ok(at) => {
                let expired = d.store.expired(at).await.map_err(DbError::from)?;
                Ok(html_response(
                    StatusCode::OK,
                    views::cleanup(
                        &d.frame(),
                        &older_than,
                        Some((expired.hierarchies, expired.rows)),
                        None,
                    ),
                ))
            }
        }
    }
    .await;
    d.respond(result)
}

async fn cleanup_run(d: web::Data<Inner>, body: web::Bytes) -> HttpResponse {
    let result = async {
        d.ensure_writable()?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
            .map_err(|_| PageError::BadRequest("the form could not be read".into()))?;
        let older_than = query_value(&pairs, "older_than")
            .ok_or_else(|| PageError::BadRequest("older_than is missing".into()))?;
        let retention = crate::duration::parse(&older_than).map_err(PageError::BadRequest)?;
        if retention < MIN_RETENTION {
            return Err(PageError::BadRequest(format!(
                "{older_than} is under an hour: it would remove everything that just ended \
                 (use the CLI's cleanup --force for that)"
            )));
        }
        let at = cutoff(&older_than).map_err(PageError::BadRequest)?;
        let removed = d.store.remove_before(at).await.map_err(DbError::from)?;
        tracing::info!(removed, older_than, "dashboard: cleanup removed rows");
        Ok(html_response(
            StatusCode::OK,
            views::done(
                &d.frame(),
                "Cleanup done",
                &format!(
                    "Removed {removed} rows of hierarchies that ended longer ago than {older_than}."
                ),
                &format!("{}/cleanup", d.base),
            ),
        ))
    }
    .await;
    d.respond(result)
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        // The URL carries the assets' version: cache for long.
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .body(body)
}

async fn css() -> HttpResponse {
    asset("text/css; charset=utf-8", views::CSS)
}

async fn js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", views::JS)
}

async fn not_found(d: web::Data<Inner>) -> HttpResponse {
    d.respond(Err(PageError::NotFound("no such page".into())))
}
