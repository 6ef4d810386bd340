//! The dashboard's pages and actions through actix-web's test service, on a
//! real PostgreSQL: a fresh schema per test, rows written with plain SQL.

mod support;

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::http::StatusCode;
use actix_web::{App, test};
use command_coordinator_dashboard::{CONTENT_SECURITY_POLICY, Dashboard};
use support::{Row, TestDb, fresh_db, fresh_db_at};
use uuid::Uuid;

/// GET `$path`: (status, body).
macro_rules! get {
    ($app:expr, $path:expr) => {{
        let res =
            test::call_service(&$app, test::TestRequest::get().uri(&$path).to_request()).await;
        let status = res.status();
        let body = test::read_body(res).await;
        (status, String::from_utf8(body.to_vec()).unwrap())
    }};
}

/// POST a form to `$path` as the dashboard's own page would (same origin).
macro_rules! post {
    ($app:expr, $path:expr, $form:expr) => {
        post!(
            $app,
            $path,
            $form,
            [
                ("origin", "http://dash.test"),
                ("sec-fetch-site", "same-origin")
            ]
        )
    };
    ($app:expr, $path:expr, $form:expr, $headers:expr) => {{
        let mut req = test::TestRequest::post()
            .uri(&$path)
            .insert_header(("host", "dash.test"))
            .insert_header(("content-type", "application/x-www-form-urlencoded"))
            .set_payload($form.to_string());
        for h in $headers {
            req = req.insert_header(h);
        }
        let res = test::call_service(&$app, req.to_request()).await;
        let status = res.status();
        let location = res
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        let body = test::read_body(res).await;
        (status, String::from_utf8(body.to_vec()).unwrap(), location)
    }};
}

/// The ids a page shows in status badges, in page order, without repeats.
fn listed_ids(html: &str) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for part in html.split("data-status-of=\"").skip(1) {
        let id: Uuid = part[..36].parse().unwrap();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// The value of the first `attr="…"` after `marker`.
fn attr_after(html: &str, marker: &str, attr: &str) -> Option<String> {
    let rest = &html[html.find(marker)?..];
    let start = rest.find(&format!("{attr}=\""))? + attr.len() + 2;
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].replace("&amp;", "&"))
}

fn dashboard(db: &TestDb) -> Dashboard {
    Dashboard::new(db.store.clone())
}

#[actix_web::test]
async fn the_overview_counts_in_the_background_and_lists_stuck_hierarchies() {
    let db = fresh_db().await;
    for _ in 0..3 {
        db.insert(Row::new("ENDED_SUCCESSFULLY")).await;
    }
    db.insert(Row::new("ENDED_WITH_FAILURE")).await;
    let stuck = db
        .insert(Row {
            age_secs: 7200.0,
            ..Row::new("ACTIVE")
        })
        .await;
    let young = db.insert(Row::new("ACTIVE")).await;
    let app = test::init_service(
        App::new().service(
            dashboard(&db)
                .stuck_after(Duration::from_secs(3600))
                .counts_refresh(Duration::from_secs(1))
                .scope(),
        ),
    )
    .await;

    let res = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers().get("content-security-policy").unwrap(),
        CONTENT_SECURITY_POLICY
    );
    let body = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
    let stuck_section =
        &body[body.find("Stuck hierarchies").unwrap()..body.find("Oldest commands").unwrap()];
    assert!(
        stuck_section.contains(&stuck.to_string()),
        "{stuck_section}"
    );
    assert!(!stuck_section.contains(&young.to_string()));
    assert!(
        !body.contains("<script>") && !body.contains("style="),
        "no inline code"
    );

    // The exact counts arrive from the background task.
    let counted = async {
        loop {
            let (_, body) = get!(app, "/");
            if body.contains("6 commands, counted") {
                return body;
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let body = actix_web::rt::time::timeout(Duration::from_secs(20), counted)
        .await
        .expect("the background count within 20 s");
    assert!(
        body.contains(r#"data-count-of="ENDED_SUCCESSFULLY">3<"#),
        "{body}"
    );
    assert!(body.contains(r#"data-count-of="ACTIVE">2<"#));
    assert!(body.contains("<svg class=\"chart\""), "throughput chart");
}

#[actix_web::test]
async fn the_list_filters_and_pages_by_key_newest_first() {
    let db = fresh_db().await;
    let mut active = Vec::new();
    for i in 0..120 {
        active.push(
            db.insert(Row {
                age_secs: f64::from(i),
                ..Row::new("ACTIVE")
            })
            .await,
        );
    }
    for _ in 0..5 {
        db.insert(Row {
            command_type: 9,
            ..Row::new("FAILED")
        })
        .await;
    }
    let app = test::init_service(App::new().service(dashboard(&db).scope())).await;

    let mut seen = Vec::new();
    let mut path = "/commands?status=ACTIVE".to_owned();
    let mut pages = 0;
    loop {
        let (status, body) = get!(app, path);
        assert_eq!(status, StatusCode::OK, "{body}");
        let ids = listed_ids(&body);
        pages += 1;
        assert!(ids.len() <= 50);
        seen.extend(ids);
        match attr_after(&body, "id=\"older\"", "href") {
            Some(next) => path = next,
            None => break,
        }
        assert!(pages < 10, "pagination ends");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, active, "every ACTIVE row once, newest first");

    let (_, body) = get!(app, "/commands?type=9");
    assert_eq!(listed_ids(&body).len(), 5);
    let prefix = &active[7].simple().to_string()[..12];
    let (_, body) = get!(app, format!("/commands?id={prefix}"));
    assert_eq!(listed_ids(&body), vec![active[7]]);
    let (_, body) = get!(app, "/commands?status=NOPE&older_than=soon");
    assert!(
        body.contains("status: not a known status") && body.contains("older_than: not a duration")
    );

    let res = test::call_service(
        &app,
        test::TestRequest::get()
            .uri(&format!("/commands?id={}", active[3]))
            .to_request(),
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "a whole id opens its page"
    );
    assert_eq!(
        res.headers().get("location").unwrap().to_str().unwrap(),
        format!("/commands/{}", active[3])
    );
}

#[actix_web::test]
async fn html_in_parameters_and_failure_reasons_is_escaped() {
    let db = fresh_db().await;
    let params = r#"{"name":"<script>alert('p')</script>","nested":{"n":1}}"#;
    let reason = r#"<img src=x onerror="alert(1)"> & <b>boom</b>"#;
    let id = db
        .insert(Row {
            params,
            reason: Some(reason),
            class: "app::<i>Evil</i>",
            ..Row::new("ENDED_WITH_FAILURE")
        })
        .await;
    let app = test::init_service(App::new().service(dashboard(&db).scope())).await;
    for path in [format!("/commands/{id}"), "/commands".to_owned()] {
        let (status, body) = get!(app, path);
        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("<script>alert"), "{path}: {body}");
        assert!(!body.contains("<img src=x"), "{path}");
        assert!(
            !body.contains("<b>boom") && !body.contains("<i>Evil"),
            "{path}"
        );
        assert!(
            body.contains("&lt;img src=x onerror=\"alert(1)\"&gt; &amp; &lt;b&gt;boom&lt;/b&gt;")
                || body.contains(
                    "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &lt;b&gt;boom&lt;/b&gt;"
                ),
            "{path}: {body}"
        );
    }
    let (_, body) = get!(app, format!("/commands/{id}"));
    assert!(body.contains("&lt;script&gt;alert('p')&lt;/script&gt;"));
    assert!(
        body.contains("\n  &quot;nested&quot;: {\n    &quot;n&quot;: 1\n  }"),
        "pretty-printed JSON: {body}"
    );
    // Every column is on the page.
    for column in [
        "command_id",
        "command_type",
        "command_params_class",
        "status",
        "parent_command_id",
        "root_command_id",
        "executed",
        "callback_enabled",
        "callback_notified",
        "job_id",
        "step_id",
        "return_value_class",
        "created_at",
        "updated_at",
        "ended_at",
        "cancel_requested_at",
    ] {
        assert!(body.contains(&format!("<dt>{column}</dt>")), "{column}");
    }
}

/// The `<tr>` of `id` in a list page.
fn list_row(html: &str, id: Uuid) -> &str {
    let start = html
        .find(&format!("data-href=\"/commands/{id}\""))
        .unwrap_or_else(|| panic!("{id} listed: {html}"));
    let end = start + html[start..].find("</tr>").expect("the row ends");
    &html[start..end]
}

#[actix_web::test]
async fn keys_delayed_starts_and_failed_attempts_show_escaped_on_the_command_and_the_list() {
    let db = fresh_db().await;
    let root = db.insert(Row::new("ACTIVE")).await;
    let waiting = db
        .insert(Row::new("NOT_STARTED").child_of(root, root))
        .await;
    db.execute(
        &format!(
            "UPDATE {} SET idempotency_key = 'order-42', \
                    not_before = now() + interval '10 minutes', failed_attempts = 2, \
                    last_error = 'connection refused <b>x</b>' \
              WHERE command_id = $1",
            db.table()
        ),
        &[&waiting],
    )
    .await;
    // Its time has come: not waiting any more, whatever the column says.
    let due = db.insert(Row::new("NOT_STARTED")).await;
    db.execute(
        &format!(
            "UPDATE {} SET not_before = now() - interval '1 minute' WHERE command_id = $1",
            db.table()
        ),
        &[&due],
    )
    .await;
    let plain = db.insert(Row::new("ACTIVE")).await;
    let app = test::init_service(App::new().service(dashboard(&db).scope())).await;
    let escaped = "connection refused &lt;b&gt;x&lt;/b&gt;";

    let (status, body) = get!(app, format!("/commands/{waiting}"));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.contains("<b>x</b>"), "{body}");
    for expected in [
        "<dt>idempotency_key</dt>",
        "order-42",
        "<dt>not_before</dt>",
        "(waiting, starts in 9m",
        "<dt>failed_attempts</dt>",
        "2 failed in a row",
        "Last error",
        &format!("<pre class=\"last-error\" id=\"last-error\">{escaped}</pre>"),
    ] {
        assert!(body.contains(expected), "{expected}: {body}");
    }

    let (_, body) = get!(app, format!("/commands/{due}"));
    assert!(body.contains("<dt>not_before</dt>"), "{body}");
    assert!(!body.contains("waiting") && !body.contains("starts in"));
    let (_, body) = get!(app, format!("/commands/{plain}"));
    for absent in [
        "idempotency_key",
        "not_before",
        "failed_attempts",
        "Last error",
        "starts in",
    ] {
        assert!(!body.contains(absent), "{absent} only when set: {body}");
    }

    // The list, unfiltered and through the status filter's window.
    for path in ["/commands", "/commands?status=NOT_STARTED"] {
        let (status, body) = get!(app, path);
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(!body.contains("<b>x</b>"), "{path}: {body}");
        let row = list_row(&body, waiting);
        for expected in [
            ">NOT_STARTED</span>",
            "· starts in 9m",
            ">2 failed attempts</span>",
            &format!("last error: {escaped}"),
        ] {
            assert!(row.contains(expected), "{path}: {expected}: {row}");
        }
        let row = list_row(&body, due);
        assert!(row.contains(">NOT_STARTED</span>") && !row.contains("starts in"));
        assert!(!row.contains("failed attempt"), "{row}");
    }
    let (_, body) = get!(app, "/commands");
    let row = list_row(&body, plain);
    assert!(!row.contains("starts in") && !row.contains("failed attempt"));

    // The tree marks the waiting child on its parent's page too.
    let (_, body) = get!(app, format!("/commands/{root}"));
    assert!(
        body.contains("· starts in 9m") && body.contains(">2 failed attempts</span>"),
        "{body}"
    );
}

#[actix_web::test]
async fn a_hierarchy_renders_one_page_of_children_and_expands_lazily() {
    let db = fresh_db().await;
    let root = db
        .insert(Row {
            age_secs: 1000.0,
            ..Row::new("ACTIVE")
        })
        .await;
    let mut children = Vec::new();
    for i in 0..250 {
        children.push(
            db.insert(Row {
                age_secs: 900.0 - f64::from(i),
                ..Row::new("ACTIVE").child_of(root, root)
            })
            .await,
        );
    }
    // Grandchildren under a child that is not on the first page.
    let deep_parent = children[200];
    let mut grandchildren = Vec::new();
    for _ in 0..3 {
        grandchildren.push(
            db.insert(Row::new("NOT_STARTED").child_of(deep_parent, root))
                .await,
        );
    }
    let app = test::init_service(App::new().service(dashboard(&db).scope())).await;

    let (status, body) = get!(app, format!("/commands/{root}"));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body.matches("data-node=").count(),
        101,
        "the root and its first 100 children"
    );
    assert!(body.contains("254 commands under root"));
    let more = attr_after(&body, "data-more=", "data-more").expect("a show-more button");

    let (_, page2) = get!(app, more);
    let ids = listed_ids(&page2);
    assert_eq!(ids, children[100..200].to_vec());
    let more = attr_after(&page2, "data-more=", "data-more").expect("a third page");
    let (_, page3) = get!(app, more);
    assert_eq!(listed_ids(&page3)[0], children[200]);
    assert!(!page3.contains("data-more="), "the last page");
    assert!(
        page3.contains("3 children"),
        "the deep parent says it has children"
    );
    let (_, grand) = get!(app, format!("/commands/{deep_parent}/children"));
    assert_eq!(listed_ids(&grand), grandchildren);

    // A grandchild's page expands the path down to it, off the first page too.
    let (_, body) = get!(app, format!("/commands/{}", grandchildren[1]));
    let ids = listed_ids(&body);
    for id in [
        root,
        deep_parent,
        grandchildren[0],
        grandchildren[1],
        grandchildren[2],
    ] {
        assert!(ids.contains(&id), "{id} shown");
    }
    assert!(body.contains("class=\"node current\""));
}

#[actix_web::test]
async fn read_only_refuses_every_action_on_the_server() {
    let db = fresh_db().await;
    let id = db.insert(Row::new("ACTIVE")).await;
    let app = test::init_service(App::new().service(dashboard(&db).read_only(true).scope())).await;

    let (_, page) = get!(app, format!("/commands/{id}"));
    assert!(!page.contains("/cancel\""), "no cancel button");
    assert!(page.contains("read-only"));
    let (status, body, _) = post!(app, format!("/commands/{id}/cancel"), "");
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("read-only"));
    for (path, form) in [
        ("/commands/cancel", "status=ACTIVE"),
        ("/cleanup", "older_than=0s"),
    ] {
        let (status, _, _) = post!(app, path, form);
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    for method in ["PUT", "DELETE", "PATCH"] {
        let req = test::TestRequest::default()
            .method(method.parse().unwrap())
            .uri(&format!("/commands/{id}"))
            .to_request();
        assert_eq!(
            test::call_service(&app, req).await.status(),
            StatusCode::FORBIDDEN
        );
    }
    assert!(!db.cancel_requested(id).await, "nothing was cancelled");
    let (status, _) = get!(app, format!("/commands/{id}/cancel"));
    assert_eq!(status, StatusCode::FORBIDDEN, "no confirmation page either");
}

#[actix_web::test]
async fn cross_origin_posts_are_refused_and_same_origin_ones_act() {
    let db = fresh_db().await;
    let id = db.insert(Row::new("ACTIVE")).await;
    let app = test::init_service(App::new().service(dashboard(&db).scope())).await;
    let path = format!("/commands/{id}/cancel");

    for headers in [
        vec![("origin", "http://evil.test")],
        vec![("origin", "null")],
        vec![("origin", "http://dash.test.evil.test")],
        vec![("sec-fetch-site", "cross-site")],
        vec![
            ("sec-fetch-site", "same-site"),
            ("origin", "http://dash.test"),
        ],
    ] {
        let (status, _, _) = post!(app, path, "", headers.clone());
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    assert!(!db.cancel_requested(id).await);

    let (status, body, location) = post!(app, path, "");
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location.unwrap(), format!("/commands/{id}?cancelled=1"));
    assert!(
        db.cancel_requested(id).await,
        "the library's cancellation request"
    );
    let (_, page) = get!(app, format!("/commands/{id}?cancelled=1"));
    assert!(page.contains("Cancellation requested for 1 commands"));
    assert!(page.contains("cancel requested"));
}

#[actix_web::test]
async fn bulk_cancel_shows_the_count_first_then_cancels_what_matches() {
    let db = fresh_db().await;
    let mut matching = Vec::new();
    for _ in 0..4 {
        matching.push(
            db.insert(Row {
                command_type: 7,
                ..Row::new("ACTIVE")
            })
            .await,
        );
    }
    let other = db
        .insert(Row {
            command_type: 8,
            ..Row::new("ACTIVE")
        })
        .await;
    db.insert(Row {
        command_type: 7,
        ..Row::new("ENDED_SUCCESSFULLY")
    })
    .await;
    let app = test::init_service(App::new().service(dashboard(&db).scope())).await;

    let (status, body) = get!(app, "/commands/cancel?type=7");
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("4 commands not ended match"), "{body}");
    assert!(
        !db.cancel_requested(matching[0]).await,
        "counting cancels nothing"
    );
    let (status, _) = get!(app, "/commands/cancel");
    assert_eq!(status, StatusCode::BAD_REQUEST, "no filter, no bulk action");

    let (status, body, _) = post!(app, "/commands/cancel", "type=7");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("Cancellation requested for 4 commands"),
        "{body}"
    );
    for id in matching {
        assert!(db.cancel_requested(id).await);
    }
    assert!(!db.cancel_requested(other).await);
}

#[actix_web::test]
async fn cleanup_counts_in_a_dry_run_then_removes() {
    let db = fresh_db().await;
    let root = db.insert(Row::new("ENDED_SUCCESSFULLY")).await;
    db.insert(Row::new("ENDED_SUCCESSFULLY").child_of(root, root))
        .await;
    let live = db.insert(Row::new("ACTIVE")).await;
    db.execute(
        &format!(
            "UPDATE {} SET ended_at = now() - interval '10 days' WHERE ended_at IS NOT NULL",
            db.table()
        ),
        &[],
    )
    .await;
    let app = test::init_service(App::new().service(dashboard(&db).scope())).await;

    let (status, body, _) = post!(app, "/cleanup", "older_than=10m");
    assert_eq!(status, StatusCode::BAD_REQUEST, "under an hour: {body}");
    let (_, body) = get!(app, "/cleanup?older_than=7d");
    assert!(
        body.contains("Would remove 2 rows in 1 hierarchies"),
        "{body}"
    );
    let (status, body, _) = post!(app, "/cleanup", "older_than=7d");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Removed 2 rows"), "{body}");
    let left = db
        .query_one_i64(&format!("SELECT count(*) FROM {}", db.table()), &[])
        .await;
    assert_eq!(left, 1);
    let (status, _) = get!(app, format!("/commands/{live}"));
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn the_database_password_never_appears_on_a_page() {
    const PASSWORD: &str = "Sup3r-Secret-pw";
    let config: command_coordinator::tokio_postgres::Config =
        support::database_url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        command_coordinator::tokio_postgres::config::Host::Tcp(h) => h.clone(),
        command_coordinator::tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let dbname = config.get_dbname().unwrap_or("postgres");
    // Trust authentication ignores the password; the dashboard still holds it.
    let url = format!("postgres://{user}:{PASSWORD}@{host}:{port}/{dbname}");
    let db = fresh_db_at(&url).await;
    let id = db
        .insert(Row {
            reason: Some("failed"),
            ..Row::new("ENDED_WITH_FAILURE")
        })
        .await;
    let app = test::init_service(App::new().service(dashboard(&db).scope())).await;
    for path in [
        "/".to_owned(),
        "/commands".to_owned(),
        format!("/commands/{id}"),
        "/cleanup?older_than=1d".to_owned(),
        "/commands/cancel?status=ACTIVE".to_owned(),
        "/no/such/page".to_owned(),
    ] {
        let (_, body) = get!(app, path);
        assert!(!body.contains(PASSWORD), "{path}");
    }

    // A database that cannot be reached: the error page names no password.
    let dead = command_coordinator::DatabaseConfig::from_url(&format!(
        "postgres://{user}:{PASSWORD}@127.0.0.1:1/{dbname}"
    ))
    .unwrap();
    let store =
        command_coordinator::PgStore::new(dead.create_pool().unwrap(), dead.schema().clone());
    let app = test::init_service(App::new().service(Dashboard::new(store).scope())).await;
    let (status, body) = get!(app, "/commands");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("Database error"));
    assert!(!body.contains(PASSWORD), "{body}");
}

#[actix_web::test]
async fn live_status_changes_stream_unbuffered_and_unencoded() {
    let db = fresh_db().await;
    let id = db.insert(Row::new("ACTIVE")).await;
    let app = test::init_service(
        App::new().service(
            dashboard(&db)
                .live_interval(Duration::from_millis(100))
                .scope(),
        ),
    )
    .await;
    let res = test::call_service(
        &app,
        test::TestRequest::get()
            .uri(&format!("/live?ids={id},not-an-id"))
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    // actix-web's Compress leaves a response with an encoding alone.
    assert_eq!(res.headers().get("content-encoding").unwrap(), "identity");
    let mut body = Box::pin(res.into_body());
    let mut received = String::new();
    let mut next_until = async |what: &str, received: &mut String| {
        let wait = async {
            while !received.contains(what) {
                let chunk = std::future::poll_fn(|cx| body.as_mut().poll_next(cx))
                    .await
                    .expect("the stream stays open")
                    .unwrap();
                received.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        };
        actix_web::rt::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("no {what} within 10 s: {received}"));
    };
    next_until(r#""status":"ACTIVE""#, &mut received).await;
    db.execute(
        &format!(
            "UPDATE {} SET status = 'ENDED_WITH_FAILURE', ended_at = now() WHERE command_id = $1",
            db.table()
        ),
        &[&id],
    )
    .await;
    next_until(r#""status":"ENDED_WITH_FAILURE""#, &mut received).await;
    assert!(received.contains(r#""ended":true"#));
}

#[actix_web::test]
async fn under_a_base_path_every_url_starts_with_it() {
    let db = fresh_db().await;
    let id = db.insert(Row::new("ACTIVE")).await;
    let app = test::init_service(
        App::new().service(dashboard(&db).base_path("/ops/cc/").unwrap().scope()),
    )
    .await;
    for path in [
        "/ops/cc".to_owned(),
        "/ops/cc/".to_owned(),
        "/ops/cc/commands".to_owned(),
        format!("/ops/cc/commands/{id}"),
    ] {
        let (status, body) = get!(app, path);
        assert_eq!(status, StatusCode::OK, "{path}");
        for attr in ["href=\"", "src=\"", "action=\""] {
            for part in body.split(attr).skip(1) {
                assert!(
                    part.starts_with("/ops/cc/"),
                    "{path}: {attr}{}",
                    &part[..40.min(part.len())]
                );
            }
        }
    }
    let head = test::TestRequest::default()
        .method(actix_web::http::Method::HEAD)
        .uri("/ops/cc/commands")
        .to_request();
    assert_eq!(
        test::call_service(&app, head).await.status(),
        StatusCode::OK
    );
    let (status, js) = get!(app, "/ops/cc/assets/dashboard.js");
    assert_eq!(status, StatusCode::OK);
    assert!(js.contains("EventSource"));
    let (status, _) = get!(app, "/commands");
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "nothing outside the base path"
    );

    for bad in ["cc", "/a b", "/a/../b", "/x\"y"] {
        assert!(
            Dashboard::new(db.store.clone()).base_path(bad).is_err(),
            "{bad}"
        );
    }
}
