//! The heartbeat: a thread of its own that renews this host's row in the
//! registry every heartbeat interval and extends the lease in the [`Fence`].
//!
//! Why a thread with its own runtime and its own connection: a host whose
//! command actors keep the actix arbiter busy, or whose pool is drained by
//! end transactions, must not miss heartbeats and be declared dead because
//! it was busy (quartznet #683). Nothing here waits for the arbiter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

use crate::fence::Fence;
use crate::hosts::{HostId, HostState};
use crate::store::CommandStore;

/// What the heartbeat thread knows, shared with the coordinator's host tick.
#[derive(Debug)]
pub(crate) struct Beat {
    /// The id to renew (changes when the host rejoins).
    pub(crate) host: HostId,
    /// Start of the current unbroken run of acknowledged heartbeats.
    pub(crate) streak_since: Option<Instant>,
    /// The registry said this host is not alive (declared dead, or its row
    /// is gone): it must stop and rejoin under a new id.
    pub(crate) lost: Option<String>,
}

/// Shared state of the heartbeat.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    pub(crate) beat: Mutex<Beat>,
    /// Commands this host runs, reported with each heartbeat.
    pub(crate) live: AtomicU64,
}

impl Heartbeat {
    pub(crate) fn new(host: HostId) -> Arc<Self> {
        Arc::new(Self {
            beat: Mutex::new(Beat {
                host,
                streak_since: None,
                lost: None,
            }),
            live: AtomicU64::new(0),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Beat> {
        self.beat.lock().expect("never poisoned")
    }
}

/// Stops the thread when dropped or told to.
pub(crate) struct HeartbeatThread {
    stop: Option<mpsc::Sender<()>>,
}

impl HeartbeatThread {
    /// Starts renewing every `every`; each heartbeat is given up after a
    /// third of the lease (and counts as missed): a slow answer still
    /// extends the lease from when it was sent, and two more attempts fit
    /// before the lease runs out.
    pub(crate) fn start(
        store: Arc<dyn CommandStore>,
        fence: Arc<Fence>,
        heartbeat: Arc<Heartbeat>,
        every: Duration,
        lease: Duration,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let patience = (lease / 3).max(every);
        std::thread::Builder::new()
            .name("cc-heartbeat".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        error!(error = %e, "cannot start the heartbeat's runtime: this host will not act");
                        return;
                    }
                };
                loop {
                    let sent = Instant::now();
                    let host = heartbeat.lock().host;
                    let live = heartbeat.live.load(Ordering::Relaxed);
                    let answer = runtime.block_on(async {
                        tokio::time::timeout(patience, store.heartbeat(host, live)).await
                    });
                    {
                        let mut beat = heartbeat.lock();
                        if beat.host == host {
                            match answer {
                                Ok(Ok(Some(HostState::Alive))) => {
                                    fence.extend_lease(sent, lease);
                                    beat.streak_since.get_or_insert(sent);
                                }
                                Ok(Ok(state)) => {
                                    beat.streak_since = None;
                                    if beat.lost.is_none() {
                                        let why = match state {
                                            Some(state) => format!("the registry says this host is {state}"),
                                            None => "this host's row is gone from the registry".into(),
                                        };
                                        error!(host = %host, %why, "HOST DECLARED DEAD: stopping every command of this host");
                                        beat.lost = Some(why);
                                    }
                                }
                                Ok(Err(e)) => {
                                    beat.streak_since = None;
                                    warn!(host = %host, error = %e, "heartbeat failed");
                                }
                                Err(_) => {
                                    beat.streak_since = None;
                                    warn!(host = %host, waited = ?patience, "heartbeat not answered in time");
                                }
                            }
                        }
                    }
                    match stopped.recv_timeout(every.saturating_sub(sent.elapsed())) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => {
                            debug!("heartbeat stopped");
                            return;
                        }
                    }
                }
            })?;
        Ok(Self { stop: Some(stop) })
    }

    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for HeartbeatThread {
    fn drop(&mut self) {
        self.stop();
    }
}
