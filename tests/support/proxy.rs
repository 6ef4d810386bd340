//! A TCP proxy between a test and PostgreSQL that loses traffic on command.
//!
//! Network failures that TCP cannot see quickly (a black hole: the peer's
//! kernel, or a proxy, accepts the bytes and nothing ever answers) and replies
//! lost at the worst moment (a `COMMIT` that committed, whose answer never
//! arrives) cannot be produced by stopping the server: that closes sockets,
//! which every client notices at once. This proxy produces them on demand:
//!
//! ```ignore
//! let proxy = Proxy::start(upstream_of(&database_url())).await;
//! let config = DatabaseConfig::from_url(&proxy.url(&database_url()))?;
//! // ... traffic flows ...
//! proxy.wait_for("the first query", |s| s.forwarded_to_server > 0).await;
//! proxy.black_hole();                 // every open and new connection goes silent
//! proxy.forward();                    // new connections work again
//! let lost = proxy.arm(&simple_query("COMMIT"), Action::Cut);
//! // ... the next COMMIT reaches the server, its reply never reaches the client
//! lost.wait().await;
//! ```
//!
//! Faults are placed by events: [`Proxy::wait_for`] waits on the traffic
//! counters ([`Stats`]) and [`Trigger::wait`] on an armed pattern, so a test
//! knows the connection it targets has carried traffic before it cuts it.
//!
//! Listens on 127.0.0.1 only. Every loop is bounded in time: the accept loop
//! and each connection's pumps end at the latest [`LIFETIME`] after the proxy
//! started, and all of its tasks are aborted when the [`Proxy`] is dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// No proxy task outlives this, even if a test forgets its proxy.
pub const LIFETIME: Duration = Duration::from_secs(300);
/// How long a connection to the server may take before the client's
/// connection is closed.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest [`Proxy::wait_for`] / [`Trigger::wait`]: a test that waits for an
/// event that never comes fails with a message instead of hanging.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// What the proxy does with the traffic of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Passes bytes both ways.
    Forward,
    /// Keeps both sockets open, reads what arrives and forwards nothing, in
    /// either direction: the client's writes succeed, its reads never return.
    /// A black-holed connection never comes back, like one whose packets a
    /// network dropped.
    BlackHole,
    /// Closes both sockets.
    Cut,
}

/// What an armed [`Trigger`] does to the connection it fires on, after
/// forwarding the client's bytes that matched to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Drops the server's reply (and everything after it) and closes both
    /// sockets: the client sees its connection break while waiting.
    Cut,
    /// Drops the server's reply and everything after it, both ways, and keeps
    /// the sockets open: the client waits until its own timeouts fire.
    BlackHole,
}

/// Traffic counters, for [`Proxy::wait_for`] and assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections that ended (closed by either side or cut).
    pub closed: u64,
    /// Client connections that ended because the client closed its side.
    pub closed_by_client: u64,
    /// Bytes passed from clients to the server.
    pub forwarded_to_server: u64,
    /// Bytes passed from the server to clients.
    pub forwarded_to_client: u64,
    /// Bytes from clients that were swallowed (black hole, armed action).
    pub dropped_from_client: u64,
    /// Bytes from the server that were swallowed.
    pub dropped_from_server: u64,
}

/// A proxy listening on 127.0.0.1, forwarding to one upstream address.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

/// A pattern armed with [`Proxy::arm`]: fires once, on the first connection
/// whose client-to-server traffic contains it.
pub struct Trigger {
    fired: watch::Receiver<Option<u64>>,
}

struct Shared {
    upstream: SocketAddr,
    deadline: Instant,
    /// Mode for new connections.
    mode: Mutex<Mode>,
    /// Mode senders of the open connections, by connection number.
    connections: Mutex<Vec<(u64, watch::Sender<Mode>)>>,
    armed: Mutex<Option<Armed>>,
    stats: watch::Sender<Stats>,
    next_id: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Armed {
    pattern: Vec<u8>,
    action: Action,
    fired: watch::Sender<Option<u64>>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free port of 127.0.0.1, forwarding.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            deadline: Instant::now() + LIFETIME,
            mode: Mutex::new(Mode::Forward),
            connections: Mutex::new(Vec::new()),
            armed: Mutex::new(None),
            stats: watch::Sender::new(Stats::default()),
            next_id: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
        });
        let acceptor = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy {
            addr,
            shared,
            acceptor,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `database_url` (a `postgres://` URL or `key=value` string) with its
    /// host and port replaced by the proxy's; user, password and database
    /// are kept.
    pub fn url(&self, database_url: &str) -> String {
        let config: command_coordinator::tokio_postgres::Config =
            database_url.parse().expect("a PostgreSQL URL");
        let user = config.get_user().unwrap_or("postgres");
        let password = config
            .get_password()
            .map(|p| format!(":{}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        let db = config.get_dbname().unwrap_or("postgres");
        format!(
            "postgres://{user}{password}@{}:{}/{db}",
            self.addr.ip(),
            self.addr.port()
        )
    }

    /// Passes traffic again, for connections made from now on. Connections
    /// black-holed before stay silent; cut ones stay closed.
    pub fn forward(&self) {
        *self.shared.mode.lock().unwrap() = Mode::Forward;
    }

    /// Silences every open connection and every new one (accepted, never
    /// connected to the server) until [`Proxy::forward`].
    pub fn black_hole(&self) {
        self.set_all(Mode::BlackHole);
    }

    /// Closes every open connection, and closes new ones as soon as they are
    /// accepted, until [`Proxy::forward`].
    pub fn cut(&self) {
        self.set_all(Mode::Cut);
    }

    /// Arms a one-shot trigger: the first client-to-server traffic that
    /// contains `pattern` (also across reads) is forwarded to the server, and
    /// then `action` applies to that connection, so the server's reply to it
    /// never reaches the client. Replaces a trigger armed before that has not
    /// fired. See [`simple_query`] for the bytes of a statement.
    pub fn arm(&self, pattern: &[u8], action: Action) -> Trigger {
        assert!(!pattern.is_empty(), "an empty pattern would match anything");
        let (fired, rx) = watch::channel(None);
        *self.shared.armed.lock().unwrap() = Some(Armed {
            pattern: pattern.to_vec(),
            action,
            fired,
        });
        Trigger { fired: rx }
    }

    /// The traffic counters now.
    pub fn stats(&self) -> Stats {
        self.shared.stats.borrow().clone()
    }

    /// Waits until the counters satisfy `condition` (at most [`WAIT_LIMIT`],
    /// then panics naming `what`); returns them.
    pub async fn wait_for(&self, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
        let mut rx = self.shared.stats.subscribe();
        match tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|s| condition(s))).await {
            Ok(Ok(stats)) => stats.clone(),
            Ok(Err(_)) => unreachable!("the proxy owns the sender"),
            Err(_) => panic!(
                "proxy: timed out waiting for {what}; traffic: {:?}",
                self.stats()
            ),
        }
    }

    fn set_all(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        for (_, conn) in self.shared.connections.lock().unwrap().iter() {
            conn.send_modify(|m| *m = escalate(*m, mode));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for task in self.shared.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Trigger {
    /// Whether the pattern was seen.
    pub fn fired(&self) -> bool {
        self.fired.borrow().is_some()
    }

    /// Waits until the pattern was seen and the action applied (at most
    /// [`WAIT_LIMIT`], then panics); returns the connection's number.
    pub async fn wait(&mut self) -> u64 {
        match tokio::time::timeout(WAIT_LIMIT, self.fired.wait_for(Option::is_some)).await {
            Ok(Ok(id)) => id.expect("fired"),
            Ok(Err(_)) => panic!("proxy: the trigger went away (proxy dropped?)"),
            Err(_) => panic!("proxy: timed out waiting for the armed pattern"),
        }
    }
}

/// The bytes of a PostgreSQL simple-query message ('Q', length, text, NUL),
/// as a client sends `sql`, e.g. `simple_query("COMMIT")`, which is how
/// `tokio_postgres` commits a transaction.
pub fn simple_query(sql: &str) -> Vec<u8> {
    let len = u32::try_from(4 + sql.len() + 1).expect("a short statement");
    let mut message = vec![b'Q'];
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(sql.as_bytes());
    message.push(0);
    message
}

/// The TCP address of the server in `database_url`, for [`Proxy::start`].
/// A proxy to the test server, and a store on `db`'s schema through it
/// (4 connections, queries bounded at 3 s).
pub async fn store_through_proxy(db: &super::TestDb) -> (Proxy, command_coordinator::PgStore) {
    let url = super::database_url();
    let proxy = Proxy::start(upstream_of(&url)).await;
    let store = command_coordinator::DatabaseConfig::from_url(&proxy.url(&url))
        .unwrap()
        .with_schema(db.config.schema().clone())
        .with_pool_size(4)
        .unwrap()
        .with_query_timeout(Some(Duration::from_secs(3)))
        .unwrap()
        .create_store()
        .unwrap();
    (proxy, store)
}

pub fn upstream_of(database_url: &str) -> SocketAddr {
    use command_coordinator::tokio_postgres::config::Host;
    use std::net::ToSocketAddrs;
    let config: command_coordinator::tokio_postgres::Config =
        database_url.parse().expect("a PostgreSQL URL");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        other => panic!("the proxy needs a TCP server, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    (host.as_str(), port)
        .to_socket_addrs()
        .expect("resolve the server")
        .next()
        .expect("an address for the server")
}

/// A mode never goes back: cut beats black hole beats forward.
fn escalate(current: Mode, wanted: Mode) -> Mode {
    match (current, wanted) {
        (Mode::Cut, _) | (_, Mode::Cut) => Mode::Cut,
        (Mode::BlackHole, _) | (_, Mode::BlackHole) => Mode::BlackHole,
        _ => Mode::Forward,
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tokio::time::sleep_until(shared.deadline) => return,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        let _ = client.set_nodelay(true);
        shared.stats.send_modify(|s| s.accepted += 1);
        let task = tokio::spawn(serve(client, shared.clone()));
        let mut tasks = shared.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

/// One client connection, from accept to close.
async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let initial = *shared.mode.lock().unwrap();
    let (mode, mode_rx) = watch::channel(initial);
    shared.connections.lock().unwrap().push((id, mode.clone()));
    let by_client = match initial {
        Mode::Cut => false,
        Mode::BlackHole => {
            // Like a hung proxy: accepted, and nothing behind it.
            let (read, _write) = client.into_split();
            let closed = pump(read, None, Direction::ToServer, id, &mode, mode_rx, &shared).await;
            closed == End::PeerClosed
        }
        Mode::Forward => {
            let connect = TcpStream::connect(shared.upstream);
            match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connect).await {
                Ok(Ok(server)) => {
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pump(
                        client_read,
                        Some(server_write),
                        Direction::ToServer,
                        id,
                        &mode,
                        mode_rx.clone(),
                        &shared,
                    );
                    let down = pump(
                        server_read,
                        Some(client_write),
                        Direction::ToClient,
                        id,
                        &mode,
                        mode_rx,
                        &shared,
                    );
                    // Either direction ending ends the connection: both
                    // sockets are dropped, i.e. closed, here.
                    let end = tokio::select! {
                        end = up => end,
                        end = down => if end == End::PeerClosed { End::ServerClosed } else { end },
                    };
                    end == End::PeerClosed
                }
                _ => false,
            }
        }
    };
    shared.connections.lock().unwrap().retain(|(c, _)| *c != id);
    shared.stats.send_modify(|s| {
        s.closed += 1;
        if by_client {
            s.closed_by_client += 1;
        }
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The reading side closed (or failed).
    PeerClosed,
    /// Only for the server-to-client pump, as seen by the connection.
    ServerClosed,
    /// Cut by the proxy, or its lifetime ran out.
    Cut,
}

/// Copies `from` to `to` while the connection's mode says forward; swallows
/// what arrives when it says black hole; returns when it says cut, when `from`
/// closes, or at the proxy's deadline.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: Option<tokio::net::tcp::OwnedWriteHalf>,
    direction: Direction,
    id: u64,
    mode: &watch::Sender<Mode>,
    mut mode_rx: watch::Receiver<Mode>,
    shared: &Shared,
) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    // The end of the previous read, to find a pattern split across reads.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        if *mode_rx.borrow_and_update() == Mode::Cut {
            return End::Cut;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return End::PeerClosed,
                Ok(n) => n,
            },
            _ = mode_rx.changed() => continue,
            _ = tokio::time::sleep_until(shared.deadline) => return End::Cut,
        };
        let chunk = &buf[..n];
        let mut then = None;
        // The server's replies dropped before this chunk reaches it: a reply
        // to it is one more (read before the write, so a fast reply is not
        // counted as an old one).
        let mut replies_before = 0;
        if direction == Direction::ToServer {
            then = fire_if_matched(shared, mode, &mut tail, chunk);
            replies_before = shared.stats.borrow().dropped_from_server;
        }
        // Read the mode only now: an armed action that fired on this chunk
        // already silenced the replies, and still lets this chunk through.
        let forward = *mode.borrow() == Mode::Forward || then.is_some();
        match (&mut to, forward) {
            (Some(to), true) => {
                if to.write_all(chunk).await.is_err() {
                    return End::PeerClosed;
                }
                shared.stats.send_modify(|s| match direction {
                    Direction::ToServer => s.forwarded_to_server += n as u64,
                    Direction::ToClient => s.forwarded_to_client += n as u64,
                });
            }
            _ => shared.stats.send_modify(|s| match direction {
                Direction::ToServer => s.dropped_from_client += n as u64,
                Direction::ToClient => s.dropped_from_server += n as u64,
            }),
        }
        if let Some((action, fired)) = then {
            if action == Action::Cut {
                // Close only once the server answered (so it processed the
                // message): a reset reaching the server first can discard
                // bytes still unread there, and the COMMIT with them.
                let mut stats = shared.stats.subscribe();
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stats.wait_for(|s| s.dropped_from_server > replies_before),
                )
                .await;
                mode.send_modify(|m| *m = Mode::Cut);
            }
            fired.send_replace(Some(id));
        }
    }
}

/// When the armed pattern is in `tail` + `chunk`: disarms it, black-holes the
/// connection at once (so that no reply can slip through), and returns the
/// action still to finish after the chunk was forwarded.
fn fire_if_matched(
    shared: &Shared,
    mode: &watch::Sender<Mode>,
    tail: &mut Vec<u8>,
    chunk: &[u8],
) -> Option<(Action, watch::Sender<Option<u64>>)> {
    let mut armed = shared.armed.lock().unwrap();
    let Some(pattern_len) = armed.as_ref().map(|a| a.pattern.len()) else {
        tail.clear();
        return None;
    };
    let mut window = std::mem::take(tail);
    window.extend_from_slice(chunk);
    let found = window
        .windows(pattern_len)
        .any(|w| w == armed.as_ref().unwrap().pattern.as_slice());
    if !found {
        let keep = window.len().min(pattern_len - 1);
        *tail = window[window.len() - keep..].to_vec();
        return None;
    }
    let Armed { action, fired, .. } = armed.take().unwrap();
    mode.send_modify(|m| *m = escalate(*m, Mode::BlackHole));
    Some((action, fired))
}
