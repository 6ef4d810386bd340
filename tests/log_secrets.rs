//! Nothing the runtime logs shows the database password, at any level.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use command_coordinator::{Coordinator, DatabaseConfig, PgStore};
use support::commands::{Behaviour, Job, tag};
use support::{database_url, url_as, within};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[actix::test]
async fn logs_never_show_the_password() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The embedded test server trusts every connection, so any password is
    // accepted; a DATABASE_URL with a password of its own is used as it is.
    let given: command_coordinator::tokio_postgres::Config = database_url().parse().unwrap();
    let (secret, url) = match given.get_password() {
        Some(pw) if pw.len() >= 4 => (String::from_utf8_lossy(pw).into_owned(), database_url()),
        _ => {
            let secret = "pw-7f3a9c-do-not-log".to_owned();
            let user = given.get_user().unwrap_or("postgres").to_owned();
            let url = url_as(&format!("{user}:{secret}"));
            (secret, url)
        }
    };
    let config = DatabaseConfig::from_url(&url).unwrap().with_schema(
        command_coordinator::SchemaName::new(format!("t_{}", uuid::Uuid::new_v4().simple()))
            .unwrap(),
    );
    tracing::info!(%config, ?config, "configuration");
    let store = PgStore::new(config.create_pool().unwrap(), config.schema().clone());
    let co = Coordinator::builder(store)
        .register::<Job>()
        .poll_interval(std::time::Duration::from_millis(10))
        .start()
        .await
        .unwrap();
    let t = tag();
    within("a job", co.execute(Job::new(&t, "a", Behaviour::Succeed)))
        .await
        .unwrap();
    within(
        "a failing job",
        co.execute(Job::new(&t, "b", Behaviour::PollErrors)),
    )
    .await
    .unwrap();
    // An error path that formats connection details: a server that is not there.
    let dead = DatabaseConfig::from_url(&format!("postgres://u:{secret}@127.0.0.1:1/x")).unwrap();
    let err = command_coordinator::migrate(&dead.create_pool().unwrap(), dead.schema())
        .await
        .unwrap_err();
    tracing::error!(error = %err, ?err, "expected failure");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("command"), "the logs were captured: {logs}");
    assert!(!logs.contains(&secret), "the password leaked into the logs");
}
