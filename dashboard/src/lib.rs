//! # command-coordinator-dashboard
//!
//! An operator web dashboard over `command_entities`: what runs, what is stuck,
//! whole hierarchies as expandable trees, live status changes, and the actions
//! an operator needs (cancel a hierarchy, cancel what a filter matches, cleanup).
//!
//! A host mounts it into its actix-web application with one call, under any
//! base path; the CLI's `serve` runs it standalone when no host runs:
//!
//! ```no_run
//! use actix_web::{App, HttpServer};
//! use command_coordinator::{DatabaseConfig, PgStore};
//! use command_coordinator_dashboard::Dashboard;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = DatabaseConfig::from_url("postgres://app@localhost/app")?;
//! let store = PgStore::new(config.create_pool()?, config.schema().clone());
//! let dashboard = Dashboard::new(store).base_path("/cc")?.read_only(false);
//! HttpServer::new(move || App::new().service(dashboard.scope()))
//!     .bind("127.0.0.1:8080")?
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! ## What it promises
//!
//! - **Every URL is built from the base path**, and the pages, the stylesheet
//!   and the script all come from the binary (no CDN, no Node).
//! - **No request scans the table.** Every query on a request path is an index
//!   range scan with a limit (migration `V5__dashboard_indexes`); exact counts
//!   over the whole table are computed by a background task and shown with
//!   their age.
//! - **A strict Content-Security-Policy** (`script-src 'self'`, no inline
//!   scripts or styles) on every response.
//! - **Actions are POSTs** checked against `Origin` and `Sec-Fetch-Site`; in
//!   read-only mode every request that is not GET or HEAD is refused by the
//!   server, whatever the page shows.
//! - **Authentication is the host's**: wrap the scope with the host's
//!   middleware (`dashboard.scope().wrap(my_auth)`), as for any other route.

mod cache;
mod duration;
mod guard;
mod handlers;
mod live;
mod queries;
mod views;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{Scope, web};
use command_coordinator::{Coordinator, PgStore};

pub use guard::CONTENT_SECURITY_POLICY;

/// How long a command may run before the overview lists its hierarchy as
/// stuck, unless its type says otherwise ([`Dashboard::expected_duration`]).
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(3600);

/// How often the background task recounts the whole table. The count is one
/// sequential scan; the task waits at least ten times as long as the last
/// count took, so a huge table never keeps the database busy with counting.
pub const DEFAULT_COUNTS_REFRESH: Duration = Duration::from_secs(30);

/// How often a live page's status stream looks at the database.
pub const DEFAULT_LIVE_INTERVAL: Duration = Duration::from_secs(1);

/// The dashboard: cheap to clone, one per application (its background count
/// and its live streams are shared by every actix-web worker). Configure it
/// with the builder methods before cloning it or calling [`Dashboard::scope`]:
/// they panic on a dashboard already shared.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

/// Everything a request needs, shared by the workers' scopes.
pub(crate) struct Inner {
    pub(crate) store: PgStore,
    /// `"schema".command_entities`: the schema name is validated by
    /// `SchemaName`, the only text put into SQL.
    pub(crate) table: String,
    /// `""` or `/cc`: never ends with `/`.
    pub(crate) base: String,
    pub(crate) read_only: bool,
    /// Set by a host: cancellations also reach its live commands at once
    /// (without it, a running host picks requests up from the table within its
    /// `cancel_check_interval`).
    pub(crate) coordinator: Option<Coordinator>,
    pub(crate) stuck_after: Duration,
    /// Per command type, overriding `stuck_after`.
    pub(crate) expected: Vec<(i32, Duration)>,
    /// Origins besides the request's own that may POST (a reverse proxy that
    /// rewrites `Host`).
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) live_interval: Duration,
    pub(crate) counts: cache::Counts,
    pub(crate) live_streams: live::Streams,
}

/// A base path that cannot be mounted.
#[derive(Debug, thiserror::Error)]
#[error("base path {0:?} is not usable: {1}")]
pub struct BasePathError(String, &'static str);

impl Dashboard {
    /// A dashboard over the store's pool and schema, mounted at `/`, with
    /// actions enabled. The store is used as is (no migration is run): the
    /// host or `command-coordinator migrate` has applied them.
    pub fn new(store: PgStore) -> Self {
        let table = format!("{}.command_entities", store.schema().quoted());
        Self {
            inner: Arc::new(Inner {
                store,
                table,
                base: String::new(),
                read_only: false,
                coordinator: None,
                stuck_after: DEFAULT_STUCK_AFTER,
                expected: Vec::new(),
                allowed_origins: Vec::new(),
                live_interval: DEFAULT_LIVE_INTERVAL,
                counts: cache::Counts::new(DEFAULT_COUNTS_REFRESH),
                live_streams: live::Streams::default(),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        let inner = Arc::get_mut(&mut self.inner)
            .expect("a Dashboard is configured before it is cloned or mounted");
        change(inner);
        self
    }

    /// Mounts every page under `path` (`/cc`, `/ops/commands`); `/` or `""`
    /// is the root. Letters, digits, `-`, `_`, `.` and `/` only, so that the
    /// path goes into links and into the script unescaped.
    pub fn base_path(self, path: &str) -> Result<Self, BasePathError> {
        let trimmed = path.trim_end_matches('/');
        if !trimmed.is_empty() && !trimmed.starts_with('/') {
            return Err(BasePathError(path.into(), "it must start with /"));
        }
        if trimmed.contains("//") || trimmed.split('/').any(|s| s == "." || s == "..") {
            return Err(BasePathError(path.into(), "empty, . or .. segment"));
        }
        if !trimmed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            return Err(BasePathError(
                path.into(),
                "use letters, digits, '-', '_', '.' and '/'",
            ));
        }
        let base = trimmed.to_owned();
        Ok(self.with(|i| i.base = base))
    }

    /// Refuses every request that is not GET or HEAD (403), and shows no
    /// action buttons. The refusal is the server's: a hand-made POST fails too.
    pub fn read_only(self, read_only: bool) -> Self {
        self.with(|i| i.read_only = read_only)
    }

    /// Cancels through the host's coordinator, so that its live commands learn
    /// it at once; without one, cancellation is requested in the table, as the
    /// CLI does, and a running host picks it up within a second.
    pub fn with_coordinator(self, coordinator: Coordinator) -> Self {
        self.with(|i| i.coordinator = Some(coordinator))
    }

    /// How long a hierarchy may run before the overview calls it stuck
    /// (default [`DEFAULT_STUCK_AFTER`]).
    pub fn stuck_after(self, after: Duration) -> Self {
        self.with(|i| i.stuck_after = after)
    }

    /// The expected run time of one command type (its `command_type`), for
    /// the stuck list: a root of this type is stuck after `expected`.
    pub fn expected_duration(self, command_type: i32, expected: Duration) -> Self {
        self.with(|i| {
            i.expected.retain(|(t, _)| *t != command_type);
            i.expected.push((command_type, expected));
        })
    }

    /// Another origin (`https://ops.example.com`) allowed to POST actions,
    /// for a proxy that changes the `Host` header. The request's own origin
    /// is always allowed.
    pub fn allow_origin(self, origin: &str) -> Self {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.with(|i| i.allowed_origins.push(origin))
    }

    /// How often the whole-table counts are refreshed in the background
    /// (default [`DEFAULT_COUNTS_REFRESH`]; at least a second).
    pub fn counts_refresh(self, every: Duration) -> Self {
        self.with(|i| i.counts = cache::Counts::new(every.max(Duration::from_secs(1))))
    }

    /// How often live pages' streams read the statuses they show (default
    /// [`DEFAULT_LIVE_INTERVAL`]).
    pub fn live_interval(self, every: Duration) -> Self {
        self.with(|i| i.live_interval = every.max(Duration::from_millis(100)))
    }

    /// The base path the pages are mounted at (`""` for the root).
    pub fn base(&self) -> &str {
        &self.inner.base
    }

    /// The actix-web scope serving every page, asset and action under the
    /// base path: `App::new().service(dashboard.scope())`. Wrap it with the
    /// host's authentication middleware like any scope.
    pub fn scope(
        &self,
    ) -> Scope<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<impl MessageBody + use<>>,
            Error = actix_web::Error,
            InitError = (),
        > + use<>,
    > {
        let inner = self.inner.clone();
        let guarded = self.inner.clone();
        let scope = web::scope(&self.inner.base)
            .app_data(web::Data::from(inner))
            .wrap_fn(move |req, srv| guard::check(&guarded, req, srv));
        handlers::routes(scope)
    }
}
