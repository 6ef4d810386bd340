//! Several hosts on one schema, as real processes (`examples/torture_host.rs`,
//! one shard of the workload each, end methods that hold their transaction
//! open a moment): one is stopped for less than the lease, one is killed
//! with SIGKILL, one is stopped for longer than the lease while its end
//! transactions are open, one is sent SIGTERM. Every fault waits for the
//! moment it targets (a heartbeat written, rows owned, an end transaction
//! open and frozen). At the end SQL over the rows and the journal of end
//! effects (a table without a unique constraint) proves that nothing was
//! lost, nothing ran twice, and every end action ran once.
//!
//! Then a run of random kill / stop / continue events: 3 in the short
//! variant, `HOSTS_CHAOS=<n>` for more (about 20 for the long variant, in
//! release mode):
//!
//! ```text
//! cargo build --release --example torture_host
//! HOSTS_CHAOS=20 cargo test --release --test hosts -- --nocapture
//! ```

mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use command_coordinator::deadpool_postgres::{Client, Pool};
use command_coordinator::{DatabaseConfig, SchemaName};
use support::processes::{example_binary, log_tail, temp_dir};
use support::torture_check::check;
use uuid::Uuid;

const HOSTS: u32 = 3;
const LEASE: Duration = Duration::from_millis(3_000);
const HEARTBEAT: Duration = Duration::from_millis(200);
/// The torture host reads the registry every lease / 10.
const HOST_CHECK: Duration = Duration::from_millis(300);
const CHILDREN: u32 = 3;
/// Random events of the short variant (`cargo test`); `HOSTS_CHAOS=20` for
/// the long one.
const SHORT_CHAOS: u32 = 3;
/// Longest wait for any one event.
const PATIENCE: Duration = Duration::from_secs(90);

struct Proc {
    child: Child,
    name: String,
    shard: u32,
}

struct Fleet {
    binary: PathBuf,
    url: String,
    schema: String,
    hierarchies: u32,
    window: u32,
    seed: u64,
    log: PathBuf,
    runs: u32,
    pool: Pool,
}

impl Fleet {
    fn spawn(&mut self, shard: u32) -> Proc {
        self.runs += 1;
        let name = format!("h{shard}-run{}", self.runs);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the host log");
        writeln!(log, "===== {name} =====").unwrap();
        let err = log.try_clone().unwrap();
        let mut cmd = Command::new(&self.binary);
        support::processes::die_with_parent(&mut cmd);
        let child = cmd
            .args(["--database-url", &self.url, "--schema", &self.schema])
            .args(["--hierarchies", &self.hierarchies.to_string()])
            .args(["--children", &CHILDREN.to_string()])
            .args(["--seed", &self.seed.to_string()])
            .args(["--window", &self.window.to_string()])
            .args(["--host-name", &name])
            .args(["--shard", &format!("{shard}/{HOSTS}")])
            .args(["--lease-ms", &LEASE.as_millis().to_string()])
            .args(["--heartbeat-ms", &HEARTBEAT.as_millis().to_string()])
            .args(["--end-hold-ms", "60", "--linger"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start a torture host");
        Proc { child, name, shard }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}; last lines of {}:\n{}",
            self.log.display(),
            log_tail(&self.log, 60)
        )
    }

    async fn client(&self) -> command_coordinator::deadpool_postgres::Object {
        self.pool.get().await.expect("a connection")
    }

    fn table(&self, name: &str) -> String {
        format!("\"{}\".{name}", self.schema)
    }

    /// Waits (polling the database) until `probe` answers `Some`.
    async fn until<T>(&self, what: &str, mut probe: impl AsyncFnMut(&Client) -> Option<T>) -> T {
        let client = self.client().await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = probe(&client).await {
                return v;
            }
            if Instant::now() > deadline {
                self.fail(&format!("timed out waiting for {what}"));
            }
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The id the host process `name` runs under now (it changes when the
    /// host rejoins).
    async fn host_id(&self, name: &str) -> Uuid {
        let sql = format!(
            "SELECT host_id FROM {} WHERE name = $1 AND state = 'alive' \
             ORDER BY started_at DESC LIMIT 1",
            self.table("command_hosts")
        );
        self.until(&format!("host {name} registered"), async |c: &Client| {
            c.query_opt(&sql, &[&name]).await.unwrap().map(|r| r.get(0))
        })
        .await
    }

    /// Unfinished rows `host` owns.
    async fn owned(&self, client: &Client, host: Uuid) -> i64 {
        client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE owner_host = $1 \
                     AND callback_enabled AND callback_notified IS NOT TRUE",
                    self.table("command_entities")
                ),
                &[&host],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn until_owns_work(&self, name: &str, host: Uuid) {
        self.until(&format!("{name} runs commands"), async |c: &Client| {
            (self.owned(c, host).await >= 2).then_some(())
        })
        .await;
    }

    async fn until_adopted(&self, name: &str, host: Uuid) -> Duration {
        let began = Instant::now();
        self.until(
            &format!("the work of {name} adopted by the others"),
            async |c: &Client| (self.owned(c, host).await == 0).then_some(()),
        )
        .await;
        began.elapsed()
    }

    async fn heartbeat_of(&self, client: &Client, host: Uuid) -> chrono::DateTime<chrono::Utc> {
        client
            .query_one(
                &format!(
                    "SELECT heartbeat_at FROM {} WHERE host_id = $1",
                    self.table("command_hosts")
                ),
                &[&host],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn until_heartbeat(&self, name: &str, host: Uuid) {
        let client = self.client().await;
        let before = self.heartbeat_of(&client, host).await;
        self.until(&format!("a heartbeat of {name}"), async |c: &Client| {
            (self.heartbeat_of(c, host).await > before).then_some(())
        })
        .await;
    }

    async fn state_of(&self, client: &Client, host: Uuid) -> String {
        client
            .query_one(
                &format!(
                    "SELECT state FROM {} WHERE host_id = $1",
                    self.table("command_hosts")
                ),
                &[&host],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// End transactions of `host` that are open and idle (their process
    /// is inside the end method, or stopped there).
    async fn open_end_transactions(&self, client: &Client, host: Uuid) -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
                &[&format!("command-coordinator {host}")],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Hierarchies adopted so far (any row whose ownership moved).
    async fn adoptions(&self, client: &Client) -> i64 {
        client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE owner_epoch > 1",
                    self.table("command_entities")
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn dead_hosts(&self, client: &Client) -> i64 {
        client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE state = 'dead'",
                    self.table("command_hosts")
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for Proc {
    /// A test that fails half-way leaves no host running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(proc: &Proc, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid this test started and has not reaped.
    let rc = unsafe { libc::kill(proc.child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "signal {sig} to {}", proc.name);
}

fn alive(proc: &mut Proc) -> bool {
    proc.child.try_wait().expect("poll a host").is_none()
}

#[test]
fn hosts_stopped_killed_and_terminated_hand_over_their_work_and_nothing_runs_twice() {
    let binary = example_binary("torture_host");
    let url = support::database_url();
    let schema = format!("t_{}", Uuid::new_v4().simple());
    let dir = temp_dir("hosts");
    let log = dir.join("hosts.log");
    let seed = fastrand::u64(..);
    let chaos: u32 = std::env::var("HOSTS_CHAOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHORT_CHAOS);
    let hierarchies = 900 + 100 * chaos;
    actix::System::new().block_on(async {
        let config = DatabaseConfig::from_url(&url)
            .unwrap()
            .with_schema(SchemaName::new(schema.clone()).unwrap());
        let mut fleet = Fleet {
            binary,
            url: url.clone(),
            schema: schema.clone(),
            hierarchies,
            window: 3,
            seed,
            log: log.clone(),
            runs: 0,
            pool: config.create_pool().unwrap(),
        };
        command_coordinator::migrate(&fleet.pool, config.schema())
            .await
            .expect("migrations");
        let mut procs: Vec<Proc> = (0..HOSTS).map(|shard| fleet.spawn(shard)).collect();
        let client = fleet.client().await;
        let mut ids = Vec::new();
        for p in &procs {
            let id = fleet.host_id(&p.name).await;
            fleet.until_owns_work(&p.name, id).await;
            ids.push(id);
        }

        // 1. Stopped for less than the lease: nobody adopts anything.
        fleet.until_heartbeat(&procs[0].name, ids[0]).await;
        signal(&procs[0], libc::SIGSTOP);
        // The fault's length: a third of the lease.
        std::thread::sleep(LEASE / 3);
        signal(&procs[0], libc::SIGCONT);
        // Once it heartbeats again no verdict on it can apply (a host is
        // declared dead only on the very heartbeat that was seen standing
        // still): whatever the others decided about the stop is in the
        // registry now.
        fleet.until_heartbeat(&procs[0].name, ids[0]).await;
        assert_eq!(
            fleet.dead_hosts(&client).await,
            0,
            "a short stop killed a host"
        );
        assert_eq!(
            fleet.adoptions(&client).await,
            0,
            "a short stop caused adoption"
        );
        println!("short stop of {}: nothing adopted", procs[0].name);

        // 2. SIGKILL: the others adopt its work within the lease and a
        // few host checks.
        fleet.until_owns_work(&procs[1].name, ids[1]).await;
        procs[1].child.kill().unwrap();
        procs[1].child.wait().unwrap();
        let took = fleet.until_adopted(&procs[1].name, ids[1]).await;
        assert_eq!(fleet.state_of(&client, ids[1]).await, "dead");
        println!("kill -9 of {}: adopted after {took:?}", procs[1].name);
        assert!(
            took <= LEASE + HEARTBEAT * 2 + HOST_CHECK * 2 + Duration::from_secs(2),
            "adoption took {took:?}"
        );
        procs[1] = fleet.spawn(1);
        ids[1] = fleet.host_id(&procs[1].name).await;

        // 3. Stopped for longer than the lease with end transactions open:
        // declared dead, its sessions ended, its work adopted; when it
        // continues, its late writes are refused and it rejoins.
        let victim = 2;
        let mut frozen = false;
        for _ in 0..50 {
            fleet
                .until(
                    &format!("an end transaction of {} open", procs[victim].name),
                    async |c: &Client| {
                        (fleet.open_end_transactions(c, ids[victim]).await > 0).then_some(())
                    },
                )
                .await;
            signal(&procs[victim], libc::SIGSTOP);
            // Stopped inside it? (It may have committed in between.)
            actix::clock::sleep(Duration::from_millis(50)).await;
            if fleet.open_end_transactions(&client, ids[victim]).await > 0 {
                frozen = true;
                break;
            }
            signal(&procs[victim], libc::SIGCONT);
        }
        assert!(
            frozen,
            "never stopped {} inside an end transaction",
            procs[victim].name
        );
        let took = fleet.until_adopted(&procs[victim].name, ids[victim]).await;
        assert_eq!(fleet.state_of(&client, ids[victim]).await, "dead");
        assert_eq!(
            fleet.open_end_transactions(&client, ids[victim]).await,
            0,
            "the frozen end transactions were not ended"
        );
        println!(
            "long stop of {} inside end transactions: declared dead and adopted after {took:?}",
            procs[victim].name
        );
        signal(&procs[victim], libc::SIGCONT);
        let name = procs[victim].name.clone();
        let rejoined = fleet
            .until(&format!("{name} rejoins"), async |c: &Client| {
                c.query_opt(
                    &format!(
                        "SELECT host_id FROM {} WHERE name = $1 AND state = 'alive'",
                        fleet.table("command_hosts")
                    ),
                    &[&name],
                )
                .await
                .unwrap()
                .map(|r| r.get::<_, Uuid>(0))
            })
            .await;
        assert_ne!(rejoined, ids[victim]);
        ids[victim] = rejoined;
        assert!(alive(&mut procs[victim]), "{name} exited after it woke up");

        // 4. SIGTERM: it hands its work over at once, without the lease.
        fleet.until_owns_work(&procs[0].name, ids[0]).await;
        signal(&procs[0], libc::SIGTERM);
        let took = fleet.until_adopted(&procs[0].name, ids[0]).await;
        println!("SIGTERM of {}: handed over after {took:?}", procs[0].name);
        assert!(
            took < LEASE,
            "hand-over took {took:?}, not less than the lease"
        );
        let status = procs[0].child.wait().unwrap();
        assert!(status.success(), "{} exited with {status}", procs[0].name);
        assert_eq!(fleet.state_of(&client, ids[0]).await, "leaving");
        procs[0] = fleet.spawn(0);
        ids[0] = fleet.host_id(&procs[0].name).await;

        // 5. Chaos: random kills, stops (shorter and longer than the lease)
        // and continues, each aimed at a host seen heartbeating.
        for event in 0..chaos {
            let i = fastrand::usize(..procs.len());
            let id = fleet.host_id(&procs[i].name).await;
            fleet.until_heartbeat(&procs[i].name, id).await;
            match fastrand::u8(..3) {
                0 => {
                    println!("chaos {event}: kill -9 {}", procs[i].name);
                    let _ = procs[i].child.kill();
                    let _ = procs[i].child.wait();
                    procs[i] = fleet.spawn(procs[i].shard);
                }
                kind => {
                    let stop = if kind == 1 { LEASE / 3 } else { LEASE * 2 };
                    println!("chaos {event}: stop {} for {stop:?}", procs[i].name);
                    signal(&procs[i], libc::SIGSTOP);
                    actix::clock::sleep(stop).await;
                    signal(&procs[i], libc::SIGCONT);
                }
            }
            actix::clock::sleep(Duration::from_millis(fastrand::u64(200..1500))).await;
        }

        // Every root ended; the hosts linger until told to go.
        let roots = format!(
            "SELECT count(*) FILTER (WHERE status IN ('ENDED_SUCCESSFULLY', 'ENDED_WITH_FAILURE') \
                                     AND callback_notified) \
             FROM {} WHERE command_type = 201",
            fleet.table("command_entities")
        );
        let total = i64::from(hierarchies);
        fleet
            .until("every hierarchy ended", async |c: &Client| {
                let ended: i64 = c.query_one(&roots, &[]).await.unwrap().get(0);
                (ended == total).then_some(())
            })
            .await;
        for p in &mut procs {
            if !alive(p) {
                fleet.fail(&format!("{} exited early", p.name));
            }
            signal(p, libc::SIGTERM);
        }
        for p in &mut procs {
            let status = p.child.wait().unwrap();
            if !status.success() {
                fleet.fail(&format!("{} exited with {status}", p.name));
            }
        }
        let counts = check(&url, &schema, hierarchies, CHILDREN, &log).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("HOST DECLARED DEAD"),
            "the host stopped past its lease never learned it was declared dead"
        );
        println!(
            "{HOSTS} hosts, {hierarchies} hierarchies, {} roots succeeded, {} runs, {chaos} chaos \
             events, seed {seed}",
            counts.roots_succeeded, fleet.runs
        );
        let _ = check_no_live_sessions(&fleet, &client).await;
    });
    if std::env::var_os("HOSTS_KEEP_LOG").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("host log: {}", log.display());
    }
}

/// Every host left: none is alive any more.
async fn check_no_live_sessions(fleet: &Fleet, client: &Client) -> i64 {
    let alive: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE state = 'alive'",
                fleet.table("command_hosts")
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(alive, 0, "hosts still alive after every process left");
    alive
}
