//! A throwaway PostgreSQL cluster started from the local PostgreSQL server
//! binaries.
//!
//! The coordinator persists everything in PostgreSQL, so its integration tests
//! and examples need a real server. Rather than requiring every developer to
//! run and configure one, this module creates a private cluster in a temporary
//! directory (`initdb`), starts `postgres` on a free loopback port with
//! trust authentication, and removes everything again when it is dropped (or,
//! for the shared test cluster, when the process exits).
//!
//! Two entry points exist:
//!
//! * [`EmbeddedPostgres::start`] gives the caller its own cluster, which it can
//!   stop and restart (to simulate database outages) and which disappears on
//!   drop. Examples use it as their default database.
//! * [`test_database_url`] gives every test in a test binary the URL of one
//!   shared, lazily started cluster (or `DATABASE_URL`, when set), because
//!   starting a cluster per test would cost about a second each.
//!
//! When the process runs as root (as in containers), `initdb` and `postgres`
//! refuse to run, so they are started as the `postgres` user when it exists,
//! else as `nobody`.
//!
//! The server is started with `PR_SET_PDEATHSIG` so that it dies with the
//! thread that spawned it: a killed test binary leaves no server behind. The
//! flip side is that an [`EmbeddedPostgres`] must be started from a thread that
//! outlives it (the main thread in examples).
//!
//! ```no_run
//! use command_coordinator::embedded::{EmbeddedOptions, EmbeddedPostgres};
//!
//! # fn main() -> Result<(), command_coordinator::embedded::EmbeddedError> {
//! // A private cluster, e.g. for an example or an outage test.
//! let mut pg = EmbeddedPostgres::start(EmbeddedOptions::default())?;
//! println!("connect to {}", pg.url());
//! pg.stop_server()?; // the database is now unreachable...
//! pg.start_server()?; // ...and back, same data and port.
//! drop(pg); // stops the server and deletes the cluster.
//!
//! // In tests: one cluster per test process, or $DATABASE_URL.
//! let url = command_coordinator::embedded::test_database_url()?;
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Settings that make a cluster fast but unsafe on power loss; irrelevant for
/// a throwaway test database, wrong for benchmarks.
const NON_DURABLE_SETTINGS: [&str; 6] = [
    "-c",
    "fsync=off",
    "-c",
    "synchronous_commit=off",
    "-c",
    "full_page_writes=off",
];

/// How long `start`/`start_server` wait for the server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long `stop_server` waits for a fast shutdown before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the exit handler waits for the shared cluster before SIGKILL.
const EXIT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many free ports `start` tries when another process grabs the port
/// between choosing it and the server binding it.
const PORT_ATTEMPTS: u32 = 3;
/// How many server-log lines are quoted in startup errors.
const LOG_TAIL_LINES: usize = 20;

/// How the embedded cluster trades durability for speed.
///
/// Tests want speed (nothing survives them anyway), benchmarks want numbers
/// representative of a real server; hence the switch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// `false` (the default) runs with `fsync=off`, `synchronous_commit=off`
    /// and `full_page_writes=off` and skips `initdb`'s sync, which makes
    /// tests much faster. `true` keeps PostgreSQL's durable defaults;
    /// benchmarks must use it, or they measure a server nobody runs.
    pub durable: bool,
}

/// Why an embedded cluster could not be created, started or stopped.
///
/// Messages say what to do, because the usual reader is someone whose tests
/// just failed on a machine without PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No directory holds both `initdb` and `postgres`.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH or under \
         /usr/lib/postgresql/*/bin: install them (`apt-get install postgresql` on Debian) \
         or set DATABASE_URL to a running server"
    )]
    BinariesNotFound,
    /// `PG_BIN_DIR` was set but does not hold the binaries; reported rather than
    /// silently ignored, since an explicit override that is wrong is a mistake.
    #[error("PG_BIN_DIR={} does not contain executable `initdb` and `postgres`", .0.display())]
    BadBinDir(PathBuf),
    /// A filesystem or process operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `initdb` exited unsuccessfully.
    #[error("initdb failed ({status}):\n{stderr}")]
    InitdbFailed {
        /// `initdb`'s exit status.
        status: ExitStatus,
        /// What `initdb` printed on stderr (and stdout, if stderr was empty).
        stderr: String,
    },
    /// `pg_basebackup` (making a standby) exited unsuccessfully.
    #[error("pg_basebackup failed ({status}):\n{stderr}")]
    BaseBackupFailed { status: ExitStatus, stderr: String },
    /// The server process exited while we waited for it to become ready.
    #[error("PostgreSQL server exited during startup ({status}); last lines of {}:\n{tail}", .log.display())]
    ServerExited {
        /// The server's exit status.
        status: ExitStatus,
        /// The server log.
        log: PathBuf,
        /// The last lines the server logged during this start attempt.
        tail: String,
    },
    /// The server kept running but never accepted connections in time.
    #[error("PostgreSQL server did not become ready within {secs} s; last lines of {}:\n{tail}", .log.display())]
    NotReady {
        /// The timeout, in seconds.
        secs: u64,
        /// The server log.
        log: PathBuf,
        /// The last lines the server logged during this start attempt.
        tail: String,
    },
    /// The process-wide test cluster could not be started; every caller of
    /// [`test_database_url`] gets the same message.
    #[error("could not start the shared test PostgreSQL cluster: {0}")]
    Shared(String),
}

impl EmbeddedError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        EmbeddedError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether a startup failure was caused by the port being taken, in which
    /// case `start` retries with another port.
    fn is_port_in_use(&self) -> bool {
        matches!(self, EmbeddedError::ServerExited { tail, .. } if log_says_port_in_use(tail))
    }
}

/// A private PostgreSQL cluster: a data directory in a temporary directory and
/// (while running) a `postgres` server on a loopback port.
///
/// It exists so that tests and examples get a real, disposable database with
/// no setup. Dropping it stops the server and deletes the directory.
///
/// The server receives `SIGQUIT` when the thread that started it exits
/// (`PR_SET_PDEATHSIG`), so create it — and call [`start_server`] — from a
/// thread that outlives it, such as the main thread.
///
/// [`start_server`]: EmbeddedPostgres::start_server
#[derive(Debug)]
pub struct EmbeddedPostgres {
    options: EmbeddedOptions,
    bin_dir: PathBuf,
    base_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    run_as: Option<RunAs>,
    port: u16,
    child: Option<Child>,
}

/// The unprivileged account the server runs as when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl EmbeddedPostgres {
    /// Creates a new cluster (`initdb`) in a fresh temporary directory and
    /// starts a server on a free loopback port, returning once it accepts
    /// connections, so that callers can connect immediately.
    ///
    /// Must be called from a thread that outlives the returned value (see the
    /// type's documentation).
    pub fn start(options: EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir()?;
        let run_as = unprivileged_user();
        let base_dir = create_base_dir(run_as)?;
        // From here on, `Drop` removes the base dir on every error path.
        let mut pg = EmbeddedPostgres {
            options,
            bin_dir,
            data_dir: base_dir.join("data"),
            socket_dir: base_dir.join("socket"),
            log_path: base_dir.join("server.log"),
            base_dir,
            run_as,
            port: 0,
            child: None,
        };
        pg.create_socket_dir()?;
        pg.initdb()?;
        let mut attempt = 1;
        loop {
            pg.port = free_port()?;
            match pg.spawn_and_wait() {
                Ok(()) => break,
                Err(e) if attempt < PORT_ATTEMPTS && e.is_port_in_use() => {
                    tracing::debug!(
                        port = pg.port,
                        "port taken before PostgreSQL bound it; retrying"
                    );
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(url = %pg.url(), data_dir = %pg.data_dir.display(), "embedded PostgreSQL started");
        Ok(pg)
    }

    /// The connection URL (`postgres://postgres@127.0.0.1:{port}/postgres`);
    /// trust authentication means no password is needed.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The TCP port the server listens on; stays the same across
    /// [`stop_server`](Self::stop_server)/[`start_server`](Self::start_server)
    /// so that clients can reconnect after a simulated outage.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory, for tests that inspect or tamper with it.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the server (fast shutdown: SIGINT, which aborts open
    /// transactions), escalating to SIGKILL after 10 s. The data directory and
    /// port are kept so that [`start_server`](Self::start_server) can bring the
    /// same database back: this is how tests simulate a database outage.
    ///
    /// Does nothing if the server is not running.
    pub fn stop_server(&mut self) -> Result<(), EmbeddedError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        let wait_err =
            |e| EmbeddedError::io(format!("waiting for PostgreSQL server (pid {pid})"), e);
        if child.try_wait().map_err(wait_err)?.is_some() {
            return Ok(());
        }
        // SAFETY: plain syscall; `pid` is our unreaped child, so it cannot have
        // been recycled for another process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().map_err(wait_err)?.is_some() {
                tracing::info!(port = self.port, "embedded PostgreSQL stopped");
                return Ok(());
            }
            thread::sleep(POLL_INTERVAL);
        }
        tracing::warn!(
            pid,
            "embedded PostgreSQL ignored fast shutdown for 10 s; killing it"
        );
        let _ = child.kill();
        child.wait().map_err(wait_err)?;
        Ok(())
    }

    /// Starts the server again on the same data directory and port, returning
    /// once it accepts connections; the counterpart of
    /// [`stop_server`](Self::stop_server). Does nothing if it is running.
    ///
    /// Like [`start`](Self::start), call it from a thread that outlives the
    /// server.
    pub fn start_server(&mut self) -> Result<(), EmbeddedError> {
        if let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => self.child = None,
                Err(e) => return Err(EmbeddedError::io("checking the PostgreSQL server", e)),
            }
        }
        self.spawn_and_wait()?;
        tracing::info!(url = %self.url(), "embedded PostgreSQL restarted");
        Ok(())
    }

    /// Creates `<base>/socket` for the server's Unix socket and lock file; a
    /// private directory avoids clashing with a system server in
    /// `/var/run/postgresql`.
    /// A streaming standby of this cluster, on a port and in a directory
    /// of its own (`pg_basebackup -R`: it follows this server until it is
    /// promoted, `SELECT pg_promote()`), for failover tests. Like this one it
    /// dies with the thread that started it.
    pub fn start_standby(&self) -> Result<EmbeddedPostgres, EmbeddedError> {
        let base_dir = create_base_dir(self.run_as)?;
        let mut standby = EmbeddedPostgres {
            options: self.options,
            bin_dir: self.bin_dir.clone(),
            data_dir: base_dir.join("data"),
            socket_dir: base_dir.join("socket"),
            log_path: base_dir.join("server.log"),
            base_dir,
            run_as: self.run_as,
            port: 0,
            child: None,
        };
        standby.create_socket_dir()?;
        let tool = self.bin_dir.join("pg_basebackup");
        let mut cmd = Command::new(&tool);
        cmd.arg("-D")
            .arg(&standby.data_dir)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-R", "-X", "stream", "-c", "fast"]);
        if !self.options.durable {
            cmd.arg("--no-sync");
        }
        standby.prepare(&mut cmd);
        cmd.stdin(Stdio::null());
        let output = cmd
            .output()
            .map_err(|e| EmbeddedError::io(format!("running {}", tool.display()), e))?;
        if !output.status.success() {
            return Err(EmbeddedError::BaseBackupFailed {
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        let mut attempt = 1;
        loop {
            standby.port = free_port()?;
            match standby.spawn_and_wait() {
                Ok(()) => break,
                Err(e) if attempt < PORT_ATTEMPTS && e.is_port_in_use() => attempt += 1,
                Err(e) => return Err(e),
            }
        }
        tracing::info!(url = %standby.url(), "embedded standby started");
        Ok(standby)
    }

    /// Kills the server with SIGKILL: a crash, no shutdown checkpoint (the
    /// data directory stays; [`start_server`](Self::start_server) recovers it).
    pub fn kill_server(&mut self) -> Result<(), EmbeddedError> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child
                .wait()
                .map_err(|e| EmbeddedError::io("reaping the killed PostgreSQL server", e))?;
        }
        Ok(())
    }

    fn create_socket_dir(&self) -> Result<(), EmbeddedError> {
        create_private_dir(&self.socket_dir, self.run_as)
    }

    /// Runs `initdb` to create the cluster in `<base>/data`.
    fn initdb(&self) -> Result<(), EmbeddedError> {
        let mut cmd = Command::new(self.bin_dir.join("initdb"));
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
        ]);
        if !self.options.durable {
            cmd.arg("--no-sync");
        }
        self.prepare(&mut cmd);
        cmd.stdin(Stdio::null());
        tracing::debug!(data_dir = %self.data_dir.display(), "running initdb");
        let output = cmd.output().map_err(|e| {
            EmbeddedError::io(
                format!("running {}", self.bin_dir.join("initdb").display()),
                e,
            )
        })?;
        if output.status.success() {
            return Ok(());
        }
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        Err(EmbeddedError::InitdbFailed {
            status: output.status,
            stderr,
        })
    }

    /// Settings shared by every command we run: an unprivileged user when we
    /// are root, a working directory that user can read (root's cwd is often
    /// unreadable to it) and a locale that cannot be missing.
    fn prepare(&self, cmd: &mut Command) {
        cmd.current_dir(&self.base_dir).env("LC_ALL", "C");
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
    }

    /// Spawns `postgres` on `self.port` and waits until it is ready.
    fn spawn_and_wait(&mut self) -> Result<(), EmbeddedError> {
        let log_err = |e| EmbeddedError::io(format!("opening {}", self.log_path.display()), e);
        // Opened by us (possibly root) and inherited as an fd, so the server
        // can append to it whatever the file's owner.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(log_err)?;
        let log_offset = log.metadata().map_err(log_err)?.len();
        let log_stderr = log.try_clone().map_err(log_err)?;

        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=128MB",
            ]);
        if !self.options.durable {
            cmd.args(NON_DURABLE_SETTINGS);
        }
        self.prepare(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_stderr);
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe operations are allowed. It calls only `prctl` and
        // `getppid` (plain syscalls) and builds an `io::Error` from a raw OS
        // code, which does not allocate. std runs it after switching uid/gid,
        // which matters because a credential change clears the death signal.
        unsafe {
            cmd.pre_exec(move || {
                // Die with the spawning thread, so that a killed test binary
                // does not leave a server running.
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGQUIT as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        tracing::debug!(port = self.port, "starting PostgreSQL server");
        let child = cmd.spawn().map_err(|e| {
            EmbeddedError::io(
                format!("starting {}", self.bin_dir.join("postgres").display()),
                e,
            )
        })?;
        self.child = Some(child);
        self.wait_ready(log_offset)
    }

    /// Polls until the server reports `ready` in `postmaster.pid` and accepts
    /// a TCP connection; fails early if it exits.
    fn wait_ready(&mut self, log_offset: u64) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let pid_file = self.data_dir.join("postmaster.pid");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            let child = self
                .child
                .as_mut()
                .expect("spawn_and_wait stores the child");
            let pid = child.id();
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Err(EmbeddedError::ServerExited {
                        status,
                        log: self.log_path.clone(),
                        tail: self.log_tail(log_offset),
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(EmbeddedError::io("checking the PostgreSQL server", e)),
            }
            if let Ok(contents) = fs::read_to_string(&pid_file)
                && pid_file_says_ready(&contents, pid)
                && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(EmbeddedError::NotReady {
                    secs: READY_TIMEOUT.as_secs(),
                    log: self.log_path.clone(),
                    tail: self.log_tail(log_offset),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The last lines of the server log written since `offset` (the current
    /// start attempt), for error messages.
    fn log_tail(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let mut bytes = Vec::new();
            if file.seek(SeekFrom::Start(offset)).is_ok() && file.read_to_end(&mut bytes).is_ok() {
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        tail_lines(&text, LOG_TAIL_LINES)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for EmbeddedPostgres {
    /// Stops the server and deletes the whole cluster directory, so that tests
    /// leave neither processes nor disk usage behind.
    fn drop(&mut self) {
        if let Err(e) = self.stop_server() {
            tracing::warn!(error = %e, "stopping embedded PostgreSQL failed");
        }
        if let Err(e) = fs::remove_dir_all(&self.base_dir) {
            tracing::warn!(error = %e, dir = %self.base_dir.display(), "removing embedded PostgreSQL directory failed");
        } else {
            tracing::debug!(dir = %self.base_dir.display(), "embedded PostgreSQL removed");
        }
    }
}

/// The database URL for tests: `DATABASE_URL` when set and non-empty (to test
/// against a real server), else the URL of one embedded cluster per process.
///
/// The cluster is started on first use; concurrent callers on several test
/// threads wait for it and all get the same URL, or all get an error with the
/// same message. It lives on a dedicated thread that never exits (so the
/// server's parent-death signal never fires while the process lives) and is
/// stopped and deleted by an `atexit` handler when the test binary exits.
pub fn test_database_url() -> Result<String, EmbeddedError> {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        return Ok(url);
    }
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    URL.get_or_init(start_shared_cluster)
        .clone()
        .map_err(EmbeddedError::Shared)
}

/// The shared cluster's postmaster pid and base dir, for the exit handler.
static SHARED_CLUSTER: Mutex<Option<(u32, PathBuf)>> = Mutex::new(None);

/// Starts the shared cluster on its own never-ending thread and returns its URL.
fn start_shared_cluster() -> Result<String, String> {
    let (tx, rx) = mpsc::channel::<Result<String, String>>();
    let spawned = thread::Builder::new()
        .name("embedded-postgres".into())
        .spawn(
            move || match EmbeddedPostgres::start(EmbeddedOptions::default()) {
                Ok(pg) => {
                    if let Some(pid) = pg.pid() {
                        *SHARED_CLUSTER.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((pid, pg.base_dir.clone()));
                        register_exit_handler();
                    }
                    let _ = tx.send(Ok(pg.url()));
                    // Keep `pg` (and this thread, the server's parent) alive until
                    // the process exits; the exit handler cleans up.
                    loop {
                        thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            },
        );
    match spawned {
        Ok(_) => rx
            .recv()
            .unwrap_or_else(|_| Err("the thread starting it panicked".to_owned())),
        Err(e) => Err(format!("could not spawn a thread to start it: {e}")),
    }
}

/// Registers [`stop_shared_cluster_at_exit`] once.
fn register_exit_handler() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn` with no arguments.
        if unsafe { libc::atexit(stop_shared_cluster_at_exit) } != 0 {
            tracing::warn!("could not register the exit handler; the shared PostgreSQL cluster will be left behind");
        }
    });
}

/// Exit handler: stops the shared cluster (SIGINT, then SIGKILL after ~5 s) and
/// deletes its directory. Rust runs no destructors for the parked thread that
/// owns it, so this is the only cleanup it gets.
extern "C" fn stop_shared_cluster_at_exit() {
    let taken = match SHARED_CLUSTER.lock() {
        Ok(mut guard) => guard.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    let Some((pid, dir)) = taken else {
        return;
    };
    let pid = pid as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain syscalls on our own child, which nobody else reaps (its
    // owning thread is parked forever).
    unsafe {
        if libc::kill(pid, libc::SIGINT) == 0 {
            let deadline = Instant::now() + EXIT_STOP_TIMEOUT;
            let mut exited = false;
            while Instant::now() < deadline {
                let r = libc::waitpid(pid, &mut status, libc::WNOHANG);
                if r == pid || r < 0 {
                    exited = true;
                    break;
                }
                thread::sleep(POLL_INTERVAL);
            }
            if !exited {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Finds the directory holding `initdb` and `postgres`: `PG_BIN_DIR`, else the
/// first PATH entry having them, else the newest `/usr/lib/postgresql/<N>/bin`
/// (Debian installs them there, off PATH).
fn find_bin_dir() -> Result<PathBuf, EmbeddedError> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server_binaries(&dir) {
            Ok(dir)
        } else {
            Err(EmbeddedError::BadBinDir(dir))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if !is_executable(&initdb) {
                continue;
            }
            // Prefer the real directory behind symlinks such as
            // /usr/local/bin/initdb, where the rest of the installation lives.
            if let Some(real_dir) = fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                && has_server_binaries(&real_dir)
            {
                return Ok(real_dir);
            }
            if is_executable(&dir.join("postgres")) {
                return Ok(dir);
            }
        }
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<String> = fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|name| has_server_binaries(&root.join(name).join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| version_key(v));
    versions
        .pop()
        .map(|v| root.join(v).join("bin"))
        .ok_or(EmbeddedError::BinariesNotFound)
}

fn has_server_binaries(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Sort key for `/usr/lib/postgresql` entries such as `15` or `9.6`, so that
/// `15` beats `9.6` (string order would not); non-numeric names sort first.
fn version_key(name: &str) -> Vec<u64> {
    name.split('.')
        .map(|part| part.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()
        .unwrap_or_default()
}

/// The account to run `initdb`/`postgres` as: `None` unless we are root, since
/// both refuse to run as root.
fn unprivileged_user() -> Option<RunAs> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let user = lookup_user("postgres")
        .or_else(|| lookup_user("nobody"))
        .unwrap_or(RunAs {
            uid: 65534,
            gid: 65534,
        });
    Some(user)
}

/// uid and gid of a local account; uses the reentrant `getpwnam_r` because
/// several test threads may start clusters at once.
fn lookup_user(name: &str) -> Option<RunAs> {
    let name = CString::new(name).ok()?;
    // SAFETY: `passwd` is plain data; all-zero is a valid (empty) value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call and `buf.len()` is the
    // buffer's real size; `pwd` only borrows from `buf`, which we do not use
    // afterwards beyond the two integer fields.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some(RunAs {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// Creates a unique `command-coordinator-pg-<pid>-<nanos>-<n>` directory in the
/// temp dir, owned by the server's user.
fn create_base_dir(run_as: Option<RunAs>) -> Result<PathBuf, EmbeddedError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "command-coordinator-pg-{}-{nanos}-{n}",
        std::process::id()
    ));
    create_private_dir(&dir, run_as)?;
    Ok(dir)
}

/// Creates `dir` (which must not exist) with mode 0700, owned by `run_as`.
fn create_private_dir(dir: &Path, run_as: Option<RunAs>) -> Result<(), EmbeddedError> {
    let ctx = |what: &str| format!("{what} {}", dir.display());
    fs::create_dir(dir).map_err(|e| EmbeddedError::io(ctx("creating"), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| EmbeddedError::io(ctx("setting permissions of"), e))?;
    if let Some(user) = run_as {
        chown(dir, Some(user.uid), Some(user.gid))
            .map_err(|e| EmbeddedError::io(ctx("changing owner of"), e))?;
    }
    Ok(())
}

/// A currently free loopback port. Another process may take it before the
/// server binds it; `start` retries in that case.
fn free_port() -> Result<u16, EmbeddedError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| EmbeddedError::io("binding 127.0.0.1:0 to find a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| EmbeddedError::io("reading the address of a bound socket", e))
}

/// Whether `postmaster.pid` belongs to `pid` and reports the server ready
/// (line 8 is the padded status `ready   `). Checking the pid ignores a stale
/// file left by a killed previous server.
fn pid_file_says_ready(contents: &str, pid: u32) -> bool {
    let owner_matches = contents
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
        .is_some_and(|p| p == pid);
    owner_matches && contents.lines().any(|l| l.trim() == "ready")
}

/// Whether the server log says the listen port was taken.
fn log_says_port_in_use(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not create any TCP/IP sockets")
}

/// The last `n` lines of `text`, for error messages.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_key_orders_numerically() {
        let mut versions = vec!["9.6", "15", "10", "13", "junk", "9.5"];
        versions.sort_by_key(|v| version_key(v));
        assert_eq!(versions, ["junk", "9.5", "9.6", "10", "13", "15"]);
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a\nb", 5), "a\nb");
        assert_eq!(tail_lines("", 3), "");
    }

    #[test]
    fn pid_file_readiness() {
        let ready = "4242\n/tmp/data\n1700000000\n5432\n/tmp/socket\n127.0.0.1\n  1 2\nready   \n";
        assert!(pid_file_says_ready(ready, 4242));
        assert!(
            !pid_file_says_ready(ready, 4243),
            "stale file of another server"
        );
        let starting = ready.replace("ready   ", "starting");
        assert!(!pid_file_says_ready(&starting, 4242));
        assert!(!pid_file_says_ready("", 4242));
    }

    #[test]
    fn detects_port_in_use() {
        assert!(log_says_port_in_use(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"
        ));
        assert!(!log_says_port_in_use(
            "FATAL:  data directory has wrong ownership"
        ));
    }

    #[test]
    fn default_options_are_not_durable() {
        assert!(!EmbeddedOptions::default().durable);
    }
}
