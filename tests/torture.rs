//! Crash torture: the host process (`examples/torture_host.rs`) is killed with
//! SIGKILL at random moments and started again, several times, then run to
//! completion; SQL over what it left proves that no command was lost or
//! duplicated, every one ended and was delivered, every end action ran exactly
//! once, and nothing waits forever.
//!
//! Short mode (the default, part of `cargo test`): 5 kills over 200
//! hierarchies × 3 children. Long mode, 50 kills over 10,000 hierarchies:
//!
//! ```text
//! cargo build --release --example torture_host
//! TORTURE=long cargo test --release --test torture -- --nocapture
//! ```
//!
//! (`cargo test --test torture` does not build the example; a plain
//! `cargo test` does.) Medium mode (`TORTURE=medium`): 20 kills over 2,000
//! hierarchies.
//!
//! The host uses the test PostgreSQL (`DATABASE_URL` or the embedded one) and
//! a fresh schema per run; its output goes to a log file in a temporary
//! directory, quoted when something fails.

mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::processes::{example_binary, log_tail, temp_dir};
use support::torture_check::check;

struct Mode {
    name: &'static str,
    kills: u32,
    hierarchies: u32,
    children: u32,
    /// Hierarchies in flight at once: small enough that the work outlasts
    /// the killed runs, so that kills land in every phase.
    window: u32,
}

fn mode() -> Mode {
    match std::env::var("TORTURE").as_deref() {
        Ok("long") => Mode {
            name: "long",
            kills: 50,
            hierarchies: 10_000,
            children: 3,
            window: 60,
        },
        Ok("medium") => Mode {
            name: "medium",
            kills: 20,
            hierarchies: 2_000,
            children: 3,
            window: 35,
        },
        _ => Mode {
            name: "short",
            kills: 5,
            hierarchies: 200,
            children: 3,
            window: 8,
        },
    }
}

/// How long the last, uninterrupted run may take.
const FINAL_RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bounds of the random time a killed run lives.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 300..=1500;

struct Host<'a> {
    binary: &'a Path,
    url: &'a str,
    schema: &'a str,
    mode: &'a Mode,
    seed: u64,
    log: &'a Path,
}

impl Host<'_> {
    fn spawn(&self, run: &str) -> Child {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log)
            .expect("open the host log");
        writeln!(log, "===== {run} =====").unwrap();
        let err = log.try_clone().unwrap();
        let mut cmd = Command::new(self.binary);
        support::processes::die_with_parent(&mut cmd);
        cmd.args(["--database-url", self.url, "--schema", self.schema])
            .args(["--hierarchies", &self.mode.hierarchies.to_string()])
            .args(["--children", &self.mode.children.to_string()])
            .args(["--seed", &self.seed.to_string()])
            .args(["--window", &self.mode.window.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start the torture host")
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}; last lines of {}:\n{}",
            self.log.display(),
            log_tail(self.log, 40)
        )
    }
}

#[test]
fn killed_hosts_lose_nothing_duplicate_nothing_and_end_everything_once() {
    let mode = mode();
    let binary = example_binary("torture_host");
    let url = support::database_url();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let dir = temp_dir("torture");
    let log = dir.join("host.log");
    let seed = fastrand::u64(..);
    let host = Host {
        binary: &binary,
        url: &url,
        schema: &schema,
        mode: &mode,
        seed,
        log: &log,
    };
    let started = Instant::now();

    let mut kills = 0;
    let mut finished_early = 0;
    for run in 1..=mode.kills {
        let mut child = host.spawn(&format!("run {run} (to be killed)"));
        let deadline = Instant::now() + Duration::from_millis(fastrand::u64(KILL_AFTER_MS));
        let exited = loop {
            if let Some(status) = child.try_wait().expect("poll the host") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        match exited {
            Some(status) if status.success() => finished_early += 1,
            Some(status) => host.fail(&format!("run {run} exited with {status} before its kill")),
            None => {
                child.kill().expect("SIGKILL the host");
                child.wait().expect("reap the host");
                kills += 1;
            }
        }
    }

    let mut child = host.spawn("final run");
    let deadline = Instant::now() + FINAL_RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the host") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            host.fail(&format!(
                "the final run did not finish within {FINAL_RUN_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() || !std::fs::read_to_string(&log).unwrap().contains("ALL ENDED") {
        host.fail(&format!("the final run exited with {status}"));
    }
    let elapsed = started.elapsed();

    let counts =
        actix::System::new().block_on(check(&url, &schema, mode.hierarchies, mode.children, &log));
    println!(
        "torture {}: {kills} kills ({finished_early} runs ended before their kill), \
         {} hierarchies × {} children, {} roots and {} children interrupted in execute, \
         {} roots succeeded, seed {seed}, {:.1} s",
        mode.name,
        mode.hierarchies,
        mode.children,
        counts.roots_interrupted,
        counts.children_interrupted,
        counts.roots_succeeded,
        elapsed.as_secs_f64()
    );
    if std::env::var_os("TORTURE_KEEP_LOG").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("host log: {}", log.display());
    }
}
