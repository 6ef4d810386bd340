//! The pages, as maud templates: checked by the compiler, and every spliced
//! value HTML-escaped unless wrapped in `PreEscaped` (which only the SVG
//! numbers and our own fragments are).
//!
//! No inline script or style anywhere: behaviour comes from
//! `assets/dashboard.js` through `data-*` attributes, looks from
//! `assets/dashboard.css` through classes, so the strict CSP holds.

use std::collections::HashMap;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use uuid::Uuid;

use crate::cache::Snapshot;
use crate::duration::human;
use crate::queries::{COUNT_CAP, Cursor, Detail, Filter, ListPage, STATUSES, Summary, WINDOW};

/// The stylesheet and script, compiled into the binary.
pub(crate) const CSS: &str = include_str!("assets/dashboard.css");
pub(crate) const JS: &str = include_str!("assets/dashboard.js");

/// Changes whenever an asset does, so that browsers may cache assets for long.
pub(crate) const ASSET_VERSION: u64 = fnv(CSS.as_bytes()) ^ fnv(JS.as_bytes()).rotate_left(17);

const fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// What every page needs to know about where it is served.
pub(crate) struct Frame<'a> {
    pub(crate) base: &'a str,
    pub(crate) read_only: bool,
}

/// An HTML response.
pub(crate) fn html_response(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// A page with one message (errors, refusals).
pub(crate) fn message_page(
    base: &str,
    status: StatusCode,
    title: &str,
    message: &str,
) -> HttpResponse {
    let frame = Frame {
        base,
        read_only: true,
    };
    html_response(
        status,
        layout(
            &frame,
            title,
            html! {
                h1 { (title) }
                p.message role="alert" { (message) }
                p { a href=(format!("{base}/")) { "Back to the overview" } }
            },
        ),
    )
}

/// The frame around every page: navigation, search, live control, help.
pub(crate) fn layout(frame: &Frame, title: &str, content: Markup) -> Markup {
    let base = frame.base;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · command-coordinator" }
                link rel="stylesheet" href=(format!("{base}/assets/dashboard.css?v={ASSET_VERSION:x}"));
                script src=(format!("{base}/assets/dashboard.js?v={ASSET_VERSION:x}")) defer {}
            }
            body data-base=(base) {
                header.top {
                    a.brand href=(format!("{base}/")) { "command-coordinator" }
                    nav {
                        a href=(format!("{base}/")) { "Overview" }
                        a href=(format!("{base}/commands")) { "Commands" }
                        @if !frame.read_only {
                            a href=(format!("{base}/cleanup")) { "Cleanup" }
                        }
                    }
                    form.search action=(format!("{base}/commands")) method="get" role="search" {
                        input #search type="search" name="id" autocomplete="off"
                            placeholder="Command id or prefix  ( / )" aria-label="Command id or prefix";
                    }
                    span.live {
                        span #live-state aria-live="polite" {}
                        button #live-toggle type="button" hidden { "Pause" }
                    }
                    @if frame.read_only {
                        span.badge.ro title="Actions are refused by the server" { "read-only" }
                    }
                }
                main { (content) }
                footer {
                    "Press " kbd { "?" } " for keyboard shortcuts."
                }
                div #help .help hidden role="dialog" aria-label="Keyboard shortcuts" {
                    h2 { "Keyboard shortcuts" }
                    table {
                        tr { td { kbd { "/" } } td { "search by command id or prefix" } }
                        tr { td { kbd { "j" } " / " kbd { "k" } } td { "next / previous row" } }
                        tr { td { kbd { "Enter" } } td { "open the selected row" } }
                        tr { td { kbd { "e" } } td { "expand or collapse the selected tree node" } }
                        tr { td { kbd { "g" } " " kbd { "o" } } td { "overview" } }
                        tr { td { kbd { "g" } " " kbd { "c" } } td { "commands" } }
                        tr { td { kbd { "p" } } td { "pause or resume live updates" } }
                        tr { td { kbd { "?" } } td { "show or hide this help" } }
                    }
                }
            }
        }
    }
}

/// The CSS class of a status badge.
fn status_class(status: Option<&str>) -> String {
    match status {
        Some(s) => format!("status s-{}", s.to_ascii_lowercase().replace('_', "-")),
        None => "status s-null".into(),
    }
}

/// A status badge the live script keeps current.
pub(crate) fn status_badge(
    id: Uuid,
    status: Option<&str>,
    cancel_requested: bool,
    ended: bool,
) -> Markup {
    html! {
        span class=(status_class(status)) data-status-of=(id) { (status.unwrap_or("NULL")) }
        span.cancel-mark data-cancel-mark-of=(id) hidden[!cancel_requested || ended] { "cancel requested" }
    }
}

/// What a submit asked for and what retries left, next to a status badge:
/// "· starts in 4m05s" while a command that has not started waits for its
/// `not_before` (so that it is not taken for one no host picks up), and
/// "2 failed attempts" while its current step fails transiently (the last
/// error on hover). The wait mark hides when the live status moves on.
fn retry_marks(s: &Summary, now: DateTime<Utc>) -> Markup {
    html! {
        @if let (Some(wait), Some(at)) = (s.waiting(now), s.not_before) {
            " " span.wait data-wait-of=(s.id) title=(format!("not before {}", at.format("%Y-%m-%d %H:%M:%S%.3f UTC"))) {
                "· starts in " (human(wait))
            }
        }
        @if s.failed_attempts > 0 {
            " " span.attempts title=(attempts_title(s)) { (attempts(s.failed_attempts)) }
        }
    }
}

/// "1 failed attempt", "2 failed attempts".
fn attempts(n: i32) -> String {
    format!("{n} failed attempt{}", if n == 1 { "" } else { "s" })
}

fn attempts_title(s: &Summary) -> String {
    let n = s.failed_attempts;
    let mut title = format!(
        "{n} transient failure{} in a row of the current step",
        if n == 1 { "" } else { "s" }
    );
    if let Some(e) = &s.last_error {
        title.push_str("; last error: ");
        title.push_str(e);
    }
    title
}

/// A time as "4m05s ago", with the exact time on hover.
fn ago(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    match at {
        Some(t) => html! {
            time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S%.3f UTC")) {
                (human(now - t)) " ago"
            }
        },
        None => html! { span.muted { "—" } },
    }
}

fn exact(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(t) => {
            html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S%.3f UTC")) } }
        }
        None => html! { span.muted { "NULL" } },
    }
}

fn short(id: Uuid) -> String {
    id.to_string()[..8].to_owned()
}

fn command_link(base: &str, id: Uuid) -> Markup {
    html! { a.id href=(format!("{base}/commands/{id}")) title=(id) { code { (short(id)) } } }
}

fn number(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A table of commands (list, stuck, oldest).
fn summary_table(base: &str, rows: &[Summary], now: DateTime<Utc>) -> Markup {
    html! {
        table.commands {
            thead {
                tr {
                    th { "Id" } th { "Type" } th { "Status" } th { "Created" }
                    th { "Updated" } th { "Parent" } th { "Root" } th { "Failure reason" }
                }
            }
            tbody {
                @for r in rows {
                    tr data-nav data-href=(format!("{base}/commands/{}", r.id)) {
                        td { (command_link(base, r.id)) }
                        td { (r.type_label()) " " span.muted { "(" (r.command_type) ")" } }
                        td { (status_badge(r.id, r.status.as_deref(), r.cancel_requested, r.is_ended())) (retry_marks(r, now)) }
                        td { (ago(r.created_at, now)) }
                        td { (ago(r.updated_at, now)) }
                        td { @if let Some(p) = r.parent { (command_link(base, p)) } }
                        td { @if let Some(p) = r.root { @if p != r.id { (command_link(base, p)) } @else { span.muted { "itself" } } } }
                        td.reason {
                            @if let Some(why) = &r.reason { (why) }
                            @else if r.failed_attempts > 0 && let Some(e) = &r.last_error {
                                span.last-error { "last error: " (e) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The part of the overview that live updates replace.
pub(crate) fn overview_live(
    base: &str,
    snapshot: &Snapshot,
    unended: &[(Option<String>, i64)],
) -> Markup {
    let now = Utc::now();
    let unended_total: i64 = unended.iter().map(|(_, n)| n).sum();
    let max = snapshot
        .by_status
        .iter()
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut statuses: Vec<Option<String>> = STATUSES.iter().map(|s| Some(s.to_string())).collect();
    for (s, _) in snapshot.by_status.iter().chain(unended) {
        if !statuses.contains(s) {
            statuses.push(s.clone());
        }
    }
    let count_of = |list: &[(Option<String>, i64)], s: &Option<String>| {
        list.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n)
    };
    html! {
        div.cards {
            section.card {
                h2 { "Commands by status" }
                p.note #counted {
                    @match snapshot.at {
                        Some(at) => {
                            (number(snapshot.total())) " commands, counted "
                            (human(now - at)) " ago in " (snapshot.took.as_millis()) " ms"
                        }
                        None => { "Counting the table in the background…" }
                    }
                    @if let Some(e) = &snapshot.error { br; span.error { "last count failed: " (e) } }
                }
                table.counts {
                    thead { tr { th { "Status" } th.num { "All (counted)" } th { } th.num { "Not ended (now)" } } }
                    tbody {
                        @for s in &statuses {
                            @let all = count_of(&snapshot.by_status, s);
                            @let live = count_of(unended, s);
                            tr data-nav data-href=(status_href(base, s)) {
                                td { a href=(status_href(base, s)) { span class=(status_class(s.as_deref())) { (s.as_deref().unwrap_or("NULL")) } } }
                                td.num data-count-of=(s.as_deref().unwrap_or("NULL")) {
                                    @if snapshot.at.is_some() { (number(all)) } @else { "…" }
                                }
                                td { (bar(all, max)) }
                                td.num { @if live > 0 { (number(live)) } }
                            }
                        }
                    }
                }
                @if unended_total > COUNT_CAP {
                    p.note { "More than " (number(COUNT_CAP)) " commands not ended: the live column counts the first " (number(COUNT_CAP)) "." }
                }
            }
            section.card {
                h2 { "Ended per minute, last hour" }
                (throughput_chart(&snapshot.per_minute))
                p.legend { span.key.ok {} "ended successfully " span.key.fail {} "ended with failure" }
            }
        }
    }
}

fn status_href(base: &str, s: &Option<String>) -> String {
    match s {
        Some(s) if STATUSES.contains(&s.as_str()) => format!("{base}/commands?status={s}"),
        _ => format!("{base}/commands"),
    }
}

/// A horizontal bar as SVG (attributes only: no inline style under the CSP).
fn bar(n: i64, max: i64) -> Markup {
    let width = if n == 0 {
        0.0
    } else {
        (n as f64 / max as f64 * 100.0).max(1.0)
    };
    html! {
        svg.bar viewBox="0 0 100 8" width="100" height="8" aria-hidden="true" {
            rect.track x="0" y="0" width="100" height="8" rx="2" {}
            rect.fill x="0" y="0" width=(format!("{width:.1}")) height="8" rx="2" {}
        }
    }
}

/// Stacked bars per minute: successes below, failures on top.
fn throughput_chart(per_minute: &[(DateTime<Utc>, i64, i64)]) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 120.0;
    let max = per_minute
        .iter()
        .map(|(_, ok, fail)| ok + fail)
        .max()
        .unwrap_or(0);
    let scale = if max == 0 {
        0.0
    } else {
        (H - 10.0) / max as f64
    };
    let slot = W / per_minute.len().max(1) as f64;
    let total: i64 = per_minute.iter().map(|(_, ok, fail)| ok + fail).sum();
    html! {
        svg.chart viewBox=(format!("0 0 {W} {}", H + 16.0)) role="img"
            aria-label=(format!("{} commands ended in the last hour; at most {} in one minute", total, max)) {
            line.axis x1="0" y1=(H) x2=(W) y2=(H) {}
            @for (i, (minute, ok, fail)) in per_minute.iter().enumerate() {
                @let x = i as f64 * slot + 1.0;
                @let h_ok = *ok as f64 * scale;
                @let h_fail = *fail as f64 * scale;
                g {
                    title { (minute.format("%H:%M")) ": " (ok) " ended successfully, " (fail) " with failure" }
                    rect.hit x=(format!("{x:.1}")) y="0" width=(format!("{:.1}", slot - 2.0)) height=(H) {}
                    @if *ok > 0 {
                        rect.ok x=(format!("{x:.1}")) y=(format!("{:.1}", H - h_ok)) width=(format!("{:.1}", slot - 2.0)) height=(format!("{h_ok:.1}")) {}
                    }
                    @if *fail > 0 {
                        rect.fail x=(format!("{x:.1}")) y=(format!("{:.1}", H - h_ok - h_fail)) width=(format!("{:.1}", slot - 2.0)) height=(format!("{h_fail:.1}")) {}
                    }
                }
            }
            text x="0" y=(H + 13.0) { "60 min ago" }
            text x=(W) y=(H + 13.0) text-anchor="end" { "now" }
            text x="2" y="10" { "max " (number(max)) "/min" }
        }
    }
}

/// The overview page.
pub(crate) fn overview(
    frame: &Frame,
    snapshot: &Snapshot,
    unended: &[(Option<String>, i64)],
    stuck: &[Summary],
    stuck_after: &str,
    oldest: &[Summary],
) -> Markup {
    let now = Utc::now();
    let base = frame.base;
    layout(
        frame,
        "Overview",
        html! {
            h1 { "Overview" }
            div #overview-live { (overview_live(base, snapshot, unended)) }
            section {
                h2 { "Stuck hierarchies" }
                p.note { "Roots not ended after their expected time (default " (stuck_after) "), oldest first." }
                @if stuck.is_empty() { p.empty { "None." } } @else { (summary_table(base, stuck, now)) }
            }
            section {
                h2 { "Oldest commands not ended" }
                @if oldest.is_empty() { p.empty { "None: every command ended." } } @else { (summary_table(base, oldest, now)) }
            }
        },
    )
}

/// The filter form of the list.
fn filter_form(base: &str, f: &Filter) -> Markup {
    let value = |o: &Option<(String, std::time::Duration)>| {
        o.as_ref().map(|(t, _)| t.clone()).unwrap_or_default()
    };
    html! {
        form.filters #filters action=(format!("{base}/commands")) method="get" {
            fieldset.statuses {
                legend { "Status" }
                @for s in STATUSES {
                    label { input type="checkbox" name="status" value=(s) checked[f.statuses.iter().any(|x| x == s)]; " " (s) }
                }
            }
            label { "Type " input type="number" name="type" value=[f.command_type] inputmode="numeric"; }
            label { "Older than " input type="text" name="older_than" value=(value(&f.older_than)) placeholder="2h" size="6"; }
            label { "Newer than " input type="text" name="newer_than" value=(value(&f.newer_than)) placeholder="15m" size="6"; }
            label { "Root " input type="text" name="root" value=[f.root] placeholder="command id" size="36"; }
            label { "Parent " input type="text" name="parent" value=[f.parent] placeholder="command id" size="36"; }
            label { "Id prefix " input type="text" name="id" value=[f.id_prefix.as_ref()] placeholder="3+ hex digits" size="12"; }
            button #apply-filter type="submit" { "Filter" }
            a.button.secondary href=(format!("{base}/commands")) { "Clear" }
        }
    }
}

fn query_string(pairs: &[(&str, String)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// The command list.
pub(crate) fn list(
    frame: &Frame,
    f: &Filter,
    errors: &[String],
    page: Option<&ListPage>,
    paged: bool,
) -> Markup {
    let base = frame.base;
    let now = Utc::now();
    let filter_qs = query_string(&f.pairs());
    layout(
        frame,
        "Commands",
        html! {
            h1 { "Commands" }
            (filter_form(base, f))
            @for e in errors { p.error role="alert" { (e) } }
            @if let Some(page) = page {
                div.toolbar {
                    span.note { "Newest first." }
                    @if !frame.read_only && !f.is_empty() {
                        a.button.danger #bulk-cancel href=(format!("{base}/commands/cancel?{filter_qs}")) { "Cancel matching…" }
                    }
                }
                @if page.rows.is_empty() {
                    p.empty #no-match { "No command matches." }
                } @else {
                    (summary_table(base, &page.rows, now))
                }
                @if page.window_exhausted {
                    p.note { "Looked through " (number(WINDOW)) " commands for this page: the status and type filters are checked row by row, a window at a time, so that no request scans the whole table." }
                }
                nav.pager {
                    @if paged {
                        a.button.secondary href=(format!("{base}/commands?{filter_qs}")) { "← Newest" }
                    }
                    @if let Some(next) = page.next {
                        a.button #older href=(older_href(base, f, next)) {
                            @if page.window_exhausted { "Search older →" } @else { "Older →" }
                        }
                    }
                }
            }
        },
    )
}

/// The link to the page after `next`, with the same filter.
fn older_href(base: &str, f: &Filter, next: Cursor) -> String {
    let mut pairs = f.pairs();
    pairs.push(("before", next.encode()));
    format!("{base}/commands?{}", query_string(&pairs))
}

/// Pretty JSON when it parses (and was not cut), else the stored text.
fn payload(text: &Option<String>, len: i32) -> Markup {
    match text {
        None => html! { span.muted { "NULL" } },
        Some(t) => {
            let cut = (len as usize) > t.chars().count();
            let pretty = if cut {
                None
            } else {
                serde_json::from_str::<serde_json::Value>(t)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
            };
            html! {
                pre.json { (pretty.as_deref().unwrap_or(t)) }
                @if cut { p.note { "Showing the first " (number(t.chars().count() as i64)) " of " (number(i64::from(len))) " characters." } }
            }
        }
    }
}

fn flag(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "true",
        Some(false) => "false",
        None => "NULL",
    }
}

/// Everything the command page shows.
pub(crate) struct CommandView<'a> {
    pub(crate) detail: &'a Detail,
    /// Root first, the command last.
    pub(crate) ancestry: &'a [Uuid],
    pub(crate) hierarchy_counts: &'a [(Option<String>, i64)],
    pub(crate) tree: Markup,
    pub(crate) notice: Option<String>,
}

/// The command page.
pub(crate) fn command(frame: &Frame, v: &CommandView) -> Markup {
    let base = frame.base;
    let d = v.detail;
    let s = &d.summary;
    let now = Utc::now();
    let title = format!("{} {}", s.type_label(), short(s.id));
    let root = v.ancestry.first().copied().unwrap_or(s.id);
    let total: i64 = v.hierarchy_counts.iter().map(|(_, n)| n).sum();
    layout(
        frame,
        &title,
        html! {
            nav.crumbs aria-label="Ancestors" {
                a href=(format!("{base}/commands")) { "Commands" }
                @for a in v.ancestry {
                    " › "
                    @if *a == s.id { code { (short(*a)) } } @else { (command_link(base, *a)) }
                }
            }
            h1 { (s.type_label()) " " code.full { (s.id) } " " (status_badge(s.id, s.status.as_deref(), s.cancel_requested, s.is_ended())) (retry_marks(s, now)) }
            @if let Some(n) = &v.notice { p.notice role="status" { (n) } }
            @if !frame.read_only && !s.is_ended() {
                div.actions data-cancel-of=(s.id) {
                    a.button.danger #cancel href=(format!("{base}/commands/{}/cancel", s.id)) { "Cancel this command and its descendants…" }
                    @if root != s.id {
                        " " a.button.secondary href=(format!("{base}/commands/{root}/cancel")) { "Cancel the whole hierarchy…" }
                    }
                }
            }
            div.cards {
                section.card {
                    h2 { "Row" }
                    dl.columns {
                        dt { "command_id" } dd { code { (s.id) } }
                        dt { "command_type" } dd { (s.command_type) }
                        dt { "command_params_class" } dd { code { (s.class.as_deref().unwrap_or("NULL")) } }
                        dt { "status" } dd { (s.status.as_deref().unwrap_or("NULL")) }
                        dt { "parent_command_id" } dd { @match s.parent { Some(p) => a href=(format!("{base}/commands/{p}")) { code { (p) } }, None => span.muted { "NULL (a root)" } } }
                        dt { "root_command_id" } dd { @match s.root { Some(p) => a href=(format!("{base}/commands/{p}")) { code { (p) } }, None => span.muted { "NULL" } } }
                        dt { "executed" } dd { (flag(d.executed)) }
                        dt { "callback_enabled" } dd { (flag(d.callback_enabled)) }
                        dt { "callback_notified" } dd { (flag(d.callback_notified)) }
                        dt { "job_id" } dd { @match d.job_id { Some(j) => code { (j) }, None => span.muted { "NULL" } } }
                        dt { "step_id" } dd { @match d.step_id { Some(j) => code { (j) }, None => span.muted { "NULL" } } }
                        dt { "return_value_class" } dd { code { (d.return_value_class.as_deref().unwrap_or("NULL")) } }
                        dt { "created_at" } dd { (exact(s.created_at)) }
                        dt { "updated_at" } dd { (exact(s.updated_at)) }
                        dt { "ended_at" } dd { (exact(s.ended_at)) }
                        dt { "cancel_requested_at" } dd { (exact(d.cancel_requested_at)) }
                        @if let Some(key) = &d.idempotency_key {
                            dt { "idempotency_key" } dd { code #idempotency-key { (key) } }
                        }
                        @if let Some(at) = s.not_before {
                            dt { "not_before" }
                            dd #not-before {
                                (exact(Some(at)))
                                @if let Some(wait) = s.waiting(now) {
                                    " " span.wait data-wait-of=(s.id) { "(waiting, starts in " (human(wait)) ")" }
                                }
                            }
                        }
                        @if s.failed_attempts > 0 {
                            dt { "failed_attempts" }
                            dd #failed-attempts {
                                (s.failed_attempts) " failed in a row"
                                span.muted { " (transient failures of the current step)" }
                            }
                        }
                    }
                }
                section.card {
                    h2 { "Timeline" }
                    ol.timeline {
                        li { span.label { "created" } " " (exact(s.created_at)) }
                        @if d.executed == Some(true) { li { span.label { "executed" } " execute() returned (the table keeps no time for it)" } }
                        @if let Some(c) = d.cancel_requested_at {
                            li { span.label { "cancel requested" } " " (exact(Some(c))) @if let Some(at) = s.created_at { " (+" (human(c - at)) ")" } }
                        }
                        @if let Some(e) = s.ended_at {
                            li { span.label { "ended" } " " (exact(Some(e))) @if let Some(at) = s.created_at { " (ran " (human(e - at)) ")" } }
                        } @else {
                            li { span.label { "last change" } " " (ago(s.updated_at, now)) @if let Some(at) = s.created_at { " (running for " (human(now - at)) ")" } }
                        }
                    }
                    @if let Some(why) = &d.failure_reason {
                        h3 { "Failure reason" }
                        pre.reason #failure-reason { (why) }
                    }
                    @if let Some(e) = &d.last_error {
                        h3 { "Last error" }
                        @if s.failed_attempts == 0 {
                            p.note { "The message of the last transient failure; its step has succeeded since." }
                        } @else {
                            p.note { "The message of the last of " (attempts(s.failed_attempts)) " in a row of the current step." }
                        }
                        pre.last-error #last-error { (e) }
                    }
                }
            }
            section {
                h2 { "Parameters" }
                (payload(&d.parameters, d.parameters_len))
            }
            section {
                h2 { "Return value" }
                (payload(&d.return_value, d.return_value_len))
            }
            section {
                h2 { "Hierarchy" }
                p.note {
                    (number(total)) " commands under root " (command_link(base, root)) ": "
                    @for (i, (st, n)) in v.hierarchy_counts.iter().enumerate() {
                        @if i > 0 { ", " }
                        (number(*n)) " " (st.as_deref().unwrap_or("NULL"))
                    }
                }
                (v.tree)
            }
        },
    )
}

/// A tree node to render: the command, its child count, and its children
/// when they are shown expanded.
pub(crate) struct TreeNode {
    pub(crate) summary: Summary,
    pub(crate) children_count: i64,
    pub(crate) children: Option<(Vec<TreeNode>, Option<Cursor>)>,
}

/// The tree of a hierarchy, from its root.
pub(crate) fn tree(base: &str, root: &TreeNode, current: Uuid) -> Markup {
    html! {
        ul.tree #tree role="tree" { (tree_node(base, root, current)) }
    }
}

/// One `<li>` (and, when expanded, its children).
pub(crate) fn tree_node(base: &str, n: &TreeNode, current: Uuid) -> Markup {
    let s = &n.summary;
    let now = Utc::now();
    let expanded = n.children.is_some();
    let end = s.ended_at.unwrap_or(now);
    html! {
        li role="treeitem" aria-expanded=[(n.children_count > 0).then_some(if expanded { "true" } else { "false" })]
            data-nav data-href=(format!("{base}/commands/{}", s.id)) data-node=(s.id) {
            div.node.current[s.id == current] {
                @if n.children_count > 0 {
                    a.expand href=(format!("{base}/commands/{}", s.id))
                        data-children=(format!("{base}/commands/{}/children", s.id))
                        data-expanded=(if expanded { "true" } else { "false" })
                        title="Expand or collapse (e)" { @if expanded { "▾" } @else { "▸" } }
                } @else { span.leaf { "·" } }
                a.name href=(format!("{base}/commands/{}", s.id)) { (s.type_label()) }
                " " (status_badge(s.id, s.status.as_deref(), s.cancel_requested, s.is_ended()))
                (retry_marks(s, now))
                @if let Some(at) = s.created_at { " " span.dur title="run time" { (human(end - at)) } }
                @if n.children_count > 0 {
                    " " span.kids { (number(n.children_count.min(COUNT_CAP))) @if n.children_count > COUNT_CAP { "+" } " children" }
                }
                @if let Some(why) = &s.reason { " " span.reason { "✗ " (why) } }
                " " code.muted { (short(s.id)) }
            }
            @if let Some((children, more)) = &n.children {
                ul role="group" { (children_items(base, s.id, children, *more, current)) }
            }
        }
    }
}

/// A page of children as `<li>`s, and a "more" item when more follow: what
/// the script inserts when a node is expanded.
pub(crate) fn children_items(
    base: &str,
    parent: Uuid,
    children: &[TreeNode],
    more: Option<Cursor>,
    current: Uuid,
) -> Markup {
    html! {
        @for c in children { (tree_node(base, c, current)) }
        @if let Some(cursor) = more {
            li.more {
                a.button.secondary data-more=(format!("{base}/commands/{parent}/children?after={}", cursor.encode()))
                    href=(format!("{base}/commands?parent={parent}")) { "Show more children" }
            }
        }
    }
}

/// Counts of a tree level keyed by id, for building nodes.
pub(crate) fn nodes(rows: Vec<Summary>, counts: &HashMap<Uuid, i64>) -> Vec<TreeNode> {
    rows.into_iter()
        .map(|summary| TreeNode {
            children_count: counts.get(&summary.id).copied().unwrap_or(0),
            summary,
            children: None,
        })
        .collect()
}

/// Confirmation of a cancellation.
pub(crate) fn confirm_cancel(
    frame: &Frame,
    s: &Summary,
    counts: &[(Option<String>, i64)],
) -> Markup {
    let base = frame.base;
    layout(
        frame,
        "Cancel",
        html! {
            h1 { "Cancel " (s.type_label()) " " code { (s.id) } "?" }
            p { "Requests cancellation of this command and of every descendant that has not ended. A running host picks it up within a second (or the next host at start-up); the commands end " code { "ENDED_WITH_FAILURE" } " with reason " code { "cancelled" } ", and their parents' end methods see that." }
            @if !counts.is_empty() {
                p.note { "Its hierarchy: " @for (i, (st, n)) in counts.iter().enumerate() { @if i > 0 { ", " } (number(*n)) " " (st.as_deref().unwrap_or("NULL")) } "." }
            }
            form method="post" action=(format!("{base}/commands/{}/cancel", s.id)) {
                button.danger #confirm type="submit" { "Cancel it" }
                " " a.button.secondary href=(format!("{base}/commands/{}", s.id)) { "Keep it running" }
            }
        },
    )
}

/// Confirmation of a bulk cancellation: the count first.
pub(crate) fn confirm_bulk(frame: &Frame, f: &Filter, matching: usize, capped: bool) -> Markup {
    let base = frame.base;
    let qs = query_string(&f.pairs());
    layout(
        frame,
        "Cancel matching commands",
        html! {
            h1 { "Cancel matching commands" }
            p #bulk-count {
                @if capped { "More than " (number(matching as i64)) } @else { (number(matching as i64)) }
                " commands not ended match this filter."
            }
            @if matching == 0 {
                p { a href=(format!("{base}/commands?{qs}")) { "Back to the list" } }
            } @else {
                @if capped { p.note { "One action cancels at most " (number(matching as i64)) " of them (and their descendants); repeat it for the rest." } }
                form method="post" action=(format!("{base}/commands/cancel")) {
                    @for (k, v) in f.pairs() { input type="hidden" name=(k) value=(v); }
                    button.danger #confirm type="submit" { "Cancel them" }
                    " " a.button.secondary href=(format!("{base}/commands?{qs}")) { "Back to the list" }
                }
            }
        },
    )
}

/// The outcome of an action, with a link onwards.
pub(crate) fn done(frame: &Frame, title: &str, message: &str, href: &str) -> Markup {
    layout(
        frame,
        title,
        html! {
            h1 { (title) }
            p.notice #outcome role="status" { (message) }
            p { a href=(href) { "Continue" } }
        },
    )
}

/// The cleanup page: dry run first, then the real thing.
pub(crate) fn cleanup(
    frame: &Frame,
    older_than: &str,
    dry_run: Option<(u64, u64)>,
    error: Option<&str>,
) -> Markup {
    let base = frame.base;
    layout(
        frame,
        "Cleanup",
        html! {
            h1 { "Cleanup" }
            p { "Removes whole hierarchies whose every command ended longer ago than the age given; a hierarchy with any command not ended is never touched." }
            form.filters method="get" action=(format!("{base}/cleanup")) {
                label { "Ended longer ago than " input type="text" name="older_than" value=(older_than) size="6"; }
                button #dry-run type="submit" { "Dry run" }
            }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if let Some((hierarchies, rows)) = dry_run {
                p #dry-run-result { "Would remove " (number(rows as i64)) " rows in " (number(hierarchies as i64)) " hierarchies." }
                @if rows > 0 && !frame.read_only {
                    form method="post" action=(format!("{base}/cleanup")) {
                        input type="hidden" name="older_than" value=(older_than);
                        button.danger #run-cleanup type="submit" { "Remove them" }
                    }
                }
            }
        },
    )
}
