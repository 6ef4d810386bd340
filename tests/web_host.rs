//! The built `web_host` example as a user meets it: it announces its URL
//! only once it listens, reports an address in use or an unreachable
//! database in one readable line, and answers a bad request body with JSON
//! like every other error.
//!
//! The example runs against a throwaway PostgreSQL of its own (no
//! `DATABASE_URL`), so that its commands in schema `public` meet no other test's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the example may take to start its database and coordinator.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The example's binary, next to this test's (`cargo test` builds the
/// examples); built here when a narrower `cargo test --test web_host` did not.
fn web_host() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let binary = profile_dir.join("examples").join("web_host");
    if !binary.exists() {
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args(["build", "--example", "web_host"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build --example web_host failed");
    }
    binary
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(web_host());
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null());
    cmd
}

/// Runs the example to its end (it is expected to fail fast).
fn run(args: &[&str]) -> Output {
    command(args).output().expect("run web_host")
}

/// The example running, stopped with SIGINT (so that it stops its own
/// PostgreSQL), killed if it does not go.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Exactly one line on stderr, from the example, naming `expected`, and no
/// Debug dump of an error.
#[track_caller]
fn assert_one_line(out: &Output, expected: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("web_host: "), "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in {stderr}"
    );
    for dump in ["Os {", "kind:", "Error {", "listening on"] {
        assert!(!stderr.contains(dump), "{dump:?} in {stderr}");
    }
}

#[test]
fn an_address_in_use_is_one_line_and_nothing_is_announced() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["--bind", &addr]);
    assert_one_line(
        &out,
        &format!("cannot listen on {addr}: Address already in use"),
    );
}

#[test]
fn an_unreachable_database_is_one_line() {
    let out = run(&[
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        "postgres://x@127.0.0.1:1/x?connect_timeout=5",
    ]);
    assert_one_line(&out, "Connection refused");
}

/// One request over HTTP/1.1 with `Connection: close`: (status, content type, body).
fn request(addr: &str, content_type: &str, body: &str) -> (u16, String, String) {
    http(addr, "POST", "/commands", content_type, body)
}

/// `POST /commands` with an `Idempotency-Key` header.
fn request_keyed(addr: &str, key: &str, body: &str) -> (u16, String, String) {
    http_with(
        addr,
        "POST",
        "/commands",
        "application/json",
        &format!("Idempotency-Key: {key}\r\n"),
        body,
    )
}

/// `GET path`: status, content type, body.
fn get(addr: &str, path: &str) -> (u16, String, String) {
    http(addr, "GET", path, "text/plain", "")
}

fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String, String) {
    http_with(addr, method, path, content_type, "", body)
}

/// [`http`] with more header lines (each ending in CRLF).
fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         {headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("an answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

#[test]
fn it_announces_a_url_that_answers_and_errors_are_json() {
    let mut child = command(&["--bind", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start web_host");
    let stderr = child.stderr.take().unwrap();
    let running = Running(child);
    // The first line names the address: port 0 shows the one bound.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(START_TIMEOUT)
        .expect("web_host announced nothing");
    let addr = line
        .strip_prefix("web_host: listening on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("not an announcement: {line}"))
        .to_owned();
    assert!(!addr.ends_with(":0"), "{line}");

    // Announced, so it answers at once.
    let (status, content_type, body) = request(&addr, "application/json", r#"{"vm": "#);
    assert_eq!(status, 400, "{body}");
    assert_eq!(content_type, "application/json", "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request body:"),
        "{body}"
    );

    let (status, content_type, body) = request(&addr, "application/json", r#"{"disks": 2}"#);
    assert_eq!(
        (status, content_type.as_str()),
        (400, "application/json"),
        "{body}"
    );
    assert!(body.contains("missing field `vm`"), "{body}");

    let (status, content_type, body) = request(&addr, "text/plain", r#"{"vm": "a"}"#);
    assert_eq!(
        (status, content_type.as_str()),
        (415, "application/json"),
        "{body}"
    );
    assert!(body.contains("application/json"), "{body}");

    let (status, _, body) = request(&addr, "application/json", r#"{"vm": "a", "disks": 1}"#);
    assert_eq!(status, 202, "{body}");
    let accepted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(accepted["id"].is_string(), "{body}");

    // An Idempotency-Key: the repeated request answers the first command;
    // a start time leaves it NOT_STARTED.
    let keyed = r#"{"vm": "k", "disks": 1, "start_at": "2999-01-01T00:00:00Z"}"#;
    let (status, _, body) = request_keyed(&addr, "snapshot-k", keyed);
    assert_eq!(status, 202, "{body}");
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, _, body) = request_keyed(&addr, "snapshot-k", keyed);
    assert_eq!(status, 200, "{body}");
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["id"], first["id"], "{body}");
    assert_eq!(again["duplicate"], true, "{body}");
    let (status, content_type, body) = request_keyed(&addr, &"k".repeat(600), keyed);
    assert_eq!(
        (status, content_type.as_str()),
        (400, "application/json"),
        "{body}"
    );
    assert!(body.contains("idempotency key"), "{body}");
    let (_, _, body) = get(&addr, "/commands?status=not_started&type=401");
    let waiting: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(waiting["rows"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(waiting["rows"][0]["id"], first["id"], "{body}");

    // The list, with Coordinator::list's filters.
    let (status, content_type, body) = get(
        &addr,
        "/commands?type=401&status=not_started,active&limit=5",
    );
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/json"),
        "{body}"
    );
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows = page["rows"].as_array().unwrap();
    let ids: Vec<&serde_json::Value> = rows.iter().map(|r| &r["id"]).collect();
    assert!(ids.contains(&&accepted["id"]), "{body}");
    assert!(page["next"].is_null(), "{body}");
    // Filters that cannot be used: JSON errors that say why.
    for (path, why) in [
        ("/commands?status=RUNNING", "unknown command status"),
        ("/commands?limit=0", "limit"),
        ("/commands?limit=lots", "bad query"),
        ("/commands?after=yesterday", "page cursor"),
    ] {
        let (status, content_type, body) = get(&addr, path);
        assert_eq!(
            (status, content_type.as_str()),
            (400, "application/json"),
            "{path}: {body}"
        );
        assert!(body.contains(why), "{path}: {body}");
    }
    drop(running);
}
