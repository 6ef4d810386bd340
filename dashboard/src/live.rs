//! Live pages: a server-sent event stream of the statuses a page shows.
//!
//! The page lists the ids it shows (up to [`MAX_IDS`]); the stream reads
//! their rows by primary key every [`crate::Dashboard::live_interval`] and
//! sends only what changed (and the overview's counts, for the overview). One
//! indexed read per second per open page, no connection held in between.
//!
//! The response carries `Content-Encoding: identity`: actix-web's `Compress`
//! middleware leaves a response that already has an encoding alone, so a host
//! that compresses its application does not buffer the stream (a gzip
//! encoder holds small writes back until its block fills). `X-Accel-Buffering:
//! no` asks nginx not to buffer it either.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use uuid::Uuid;

use crate::Inner;
use crate::cache::Counts;

/// Ids one stream follows at most.
pub(crate) const MAX_IDS: usize = 500;
/// Streams open at once per dashboard: each costs a query per interval.
pub(crate) const MAX_STREAMS: usize = 64;
/// Intervals without a change before a comment line keeps the connection
/// (and proxies) awake and finds out whether the client is gone.
const KEEP_ALIVE_TICKS: u32 = 5;

/// How many streams are open.
#[derive(Default)]
pub(crate) struct Streams {
    open: AtomicUsize,
}

/// One open stream's place; given back when the stream is dropped (the
/// client went away).
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live_streams.open.fetch_sub(1, Ordering::AcqRel);
    }
}

struct State {
    slot: Slot,
    ids: Vec<Uuid>,
    overview: bool,
    /// What the client was last told: status and cancel mark per id.
    sent: HashMap<Uuid, (Option<String>, bool)>,
    sent_overview: Option<String>,
    first: bool,
    quiet_ticks: u32,
}

/// `GET /live?ids=<id>,<id>…[&overview=1]`.
pub(crate) async fn stream(d: web::Data<Inner>, req: HttpRequest) -> HttpResponse {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let mut ids: Vec<Uuid> = Vec::new();
    let mut overview = false;
    for (k, v) in &pairs {
        match k.as_str() {
            "ids" => ids.extend(v.split(',').filter_map(|s| s.trim().parse::<Uuid>().ok())),
            "overview" => overview = v == "1",
            _ => {}
        }
    }
    ids.sort();
    ids.dedup();
    ids.truncate(MAX_IDS);

    let inner = d.into_inner();
    if inner.live_streams.open.fetch_add(1, Ordering::AcqRel) >= MAX_STREAMS {
        inner.live_streams.open.fetch_sub(1, Ordering::AcqRel);
        return HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "10"))
            .body("too many live pages open");
    }
    if overview {
        Counts::ensure_started(&inner);
    }
    let state = State {
        slot: Slot(inner),
        ids,
        overview,
        sent: HashMap::new(),
        sent_overview: None,
        first: true,
        quiet_ticks: 0,
    };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        if !st.first {
            actix_web::rt::time::sleep(st.slot.0.live_interval).await;
        }
        let chunk = st.tick().await;
        st.first = false;
        Some((Ok::<_, Infallible>(web::Bytes::from(chunk)), st))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache, no-transform"))
        .insert_header((header::CONTENT_ENCODING, "identity"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(events)
}

/// One event in the SSE format (`data:` once per line of the payload).
fn event(out: &mut String, name: &str, data: &str) {
    out.push_str("event: ");
    out.push_str(name);
    out.push('\n');
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
}

impl State {
    /// What changed since the last tick, as SSE text (maybe a comment only).
    async fn tick(&mut self) -> String {
        let inner = &self.slot.0;
        let mut out = String::new();
        if self.first {
            out.push_str("retry: 3000\n\n");
        }
        if !self.ids.is_empty() {
            match inner.live_statuses(&self.ids).await {
                Ok(rows) => {
                    for r in rows {
                        let now = (r.status.clone(), r.cancel_requested);
                        if self.sent.get(&r.id) != Some(&now) {
                            let data = json!({
                                "id": r.id,
                                "status": r.status,
                                "cancel_requested": r.cancel_requested,
                                "ended": r.is_ended(),
                            });
                            event(&mut out, "status", &data.to_string());
                            self.sent.insert(r.id, now);
                        }
                    }
                }
                Err(e) => event(&mut out, "problem", &e.message),
            }
        }
        if self.overview {
            let snapshot = inner.counts.snapshot();
            match inner.unended_counts().await {
                Ok(unended) => {
                    let html =
                        crate::views::overview_live(&inner.base, &snapshot, &unended).into_string();
                    // "Counted 4s ago" changes every second; send only on news.
                    let key = format!("{:?}{:?}{:?}", snapshot.at, snapshot.error, unended);
                    if self.sent_overview.as_deref() != Some(key.as_str()) {
                        event(&mut out, "overview", &html);
                        self.sent_overview = Some(key);
                    }
                }
                Err(e) => event(&mut out, "problem", &e.message),
            }
        }
        if out.is_empty() {
            self.quiet_ticks += 1;
            if self.quiet_ticks >= KEEP_ALIVE_TICKS {
                self.quiet_ticks = 0;
                out.push_str(": keep-alive\n\n");
            }
        } else {
            self.quiet_ticks = 0;
        }
        out
    }
}
