//! TLS to PostgreSQL: a local server with a certificate from a private CA made
//! here with the openssl command-line tool.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use command_coordinator::embedded::{EmbeddedOptions, EmbeddedPostgres};
use command_coordinator::{Coordinator, DatabaseConfig, PgStore};
use support::commands::{Behaviour, Job, tag};
use support::within;

/// Makes a CA and a server certificate for 127.0.0.1 signed by it; returns
/// (ca.pem, server.pem, server.key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Process::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect(
                "the openssl command-line tool is needed for this test (apt-get install openssl)",
            );
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=command-coordinator test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// Turns TLS on in a running embedded server, with the given certificate.
async fn enable_ssl(pg: &EmbeddedPostgres, cert: &Path, key: &Path) {
    // The server reads them as its own user: copy them into its data directory.
    let data = pg.data_dir();
    let owner = std::fs::metadata(data).unwrap();
    let mut placed = Vec::new();
    for (src, name) in [(cert, "server.crt"), (key, "server.key")] {
        let dst = data.join(name);
        std::fs::copy(src, &dst).unwrap();
        std::os::unix::fs::chown(&dst, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).unwrap();
        placed.push(dst);
    }
    let config = DatabaseConfig::from_url(&format!("{}?sslmode=disable", pg.url())).unwrap();
    let pool = config.create_pool().unwrap();
    let client = pool.get().await.unwrap();
    // One statement at a time: ALTER SYSTEM refuses to run in a transaction.
    for statement in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", placed[0].display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", placed[1].display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        client.batch_execute(&statement).await.unwrap();
    }
    within("ssl to be on", async {
        loop {
            let on: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
            if on == "on" {
                break;
            }
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[actix::test]
async fn connections_use_verified_tls_when_required() {
    let mut pg = EmbeddedPostgres::start(EmbeddedOptions::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("cc-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = make_certificates(&dir);
    enable_ssl(&pg, &cert, &key).await;
    let url = format!("{}?sslmode=require", pg.url());

    // Trusting the private CA: encrypted, and the runtime works over it.
    let config = DatabaseConfig::from_url(&url).unwrap().with_ca_file(&ca);
    let pool = config.create_pool().unwrap();
    let client = pool.get().await.unwrap();
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted);
    drop(client);
    let co = Coordinator::builder(PgStore::new(pool, config.schema().clone()))
        .register::<Job>()
        .poll_interval(Duration::from_millis(10))
        .start()
        .await
        .unwrap();
    let outcome = within(
        "a command over TLS",
        co.execute(Job::new(&tag(), "a", Behaviour::Succeed)),
    )
    .await
    .unwrap();
    assert!(outcome.succeeded());

    // Without the CA the certificate is not trusted: a clear error, no silent
    // downgrade to plain text.
    let untrusted = DatabaseConfig::from_url(&url).unwrap();
    let store = PgStore::new(untrusted.create_pool().unwrap(), untrusted.schema().clone());
    let err = command_coordinator::CommandStore::get(&store, command_coordinator::CommandId::new())
        .await
        .unwrap_err();
    assert!(err.is_transient());
    let err = err.to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // A CA file that is not there is a configuration error naming it.
    let err = DatabaseConfig::from_url(&url)
        .unwrap()
        .with_ca_file(dir.join("missing.pem"))
        .create_pool()
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");

    pg.stop_server().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
