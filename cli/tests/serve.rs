//! `command-coordinator serve`: the built binary serving the dashboard against
//! a real PostgreSQL (a fresh schema), behind its basic-auth token, read-only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use command_coordinator::embedded::test_database_url;
use command_coordinator::{
    CommandEntity, CommandId, CommandStore, DatabaseConfig, JsonPayload, PgStore, SchemaName,
    migrate,
};

const BIN: &str = env!("CARGO_BIN_EXE_command-coordinator");
const TOKEN: &str = "t0ken-for-the-test";

/// The server process, killed when the test ends (and with the test's
/// thread if the test binary is killed: `PR_SET_PDEATHSIG`).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request over HTTP/1.1 with `Connection: close`: (status, body).
fn request(port: u16, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = auth
        .map(|a| {
            use base64::Engine;
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        })
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("an answer");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, raw)
}

#[tokio::test]
async fn serve_shows_the_dashboard_behind_its_token_and_refuses_actions_read_only() {
    let url = test_database_url().unwrap_or_else(|e| panic!("no PostgreSQL for the tests: {e}"));
    let schema = SchemaName::new(format!("t_{}", uuid::Uuid::new_v4().simple())).unwrap();
    let config = DatabaseConfig::from_url(&url)
        .unwrap()
        .with_schema(schema.clone());
    let pool = config.create_pool().unwrap();
    migrate(&pool, &schema).await.expect("migrations");
    let store = PgStore::new(pool, schema.clone());
    let command = CommandEntity::new(CommandId::new(), 3, JsonPayload::encode(&"vm-7").unwrap());
    store.save_or_update(&command).await.unwrap();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--database-url",
        &url,
        "--schema",
        schema.as_str(),
        "serve",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--read-only",
        "--base-path",
        "/cc",
    ])
    .env("COMMAND_COORDINATOR_DASHBOARD_TOKEN", TOKEN)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _server = Server(cmd.spawn().expect("start the CLI"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "serve did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(request(port, "GET", "/cc/", None).0, 401, "no credentials");
    assert_eq!(request(port, "GET", "/cc/", Some("ops:wrong")).0, 401);
    let auth = Some(format!("ops:{TOKEN}"));
    let (status, page) = request(
        port,
        "GET",
        &format!("/cc/commands/{}", command.id),
        auth.as_deref(),
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&command.id.to_string()));
    assert!(page.contains("read-only"));
    assert!(!page.contains(TOKEN));
    let (status, _) = request(
        port,
        "POST",
        &format!("/cc/commands/{}/cancel", command.id),
        auth.as_deref(),
    );
    assert_eq!(status, 403, "read-only refuses the action");
    let row = store.get(command.id).await.unwrap().unwrap();
    assert_eq!(row.status, command.status, "nothing changed");
    let client = store.pool().get().await.unwrap();
    let requested: bool = client
        .query_one(
            &format!(
                "SELECT cancel_requested_at IS NOT NULL FROM {}.command_entities WHERE command_id = $1",
                schema.quoted()
            ),
            &[command.id.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!requested);
}
