//! Runtime settings, with named defaults and validation at the edge.

use std::time::Duration;

use crate::writer::WriterConfig;

/// First poll interval of a command (oVirt: 1 s).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The poll interval doubles up to this while a command keeps running (oVirt: 10 s).
pub const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Attempts of an end method before it is given up (oVirt: 5).
pub const DEFAULT_END_ATTEMPTS: u32 = 5;
/// Pause before the first retry of a failed end method; doubles each time, up
/// to the max poll interval.
pub const DEFAULT_END_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a command may stay active (oVirt's CoCoLifeInMinutes: 3000 min).
pub const DEFAULT_LIFE_TIME: Duration = Duration::from_secs(3000 * 60);
/// Panics of a command's code (each followed by a restart from the database)
/// before the command is failed.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// How long ended hierarchies stay for operators to inspect. oVirt keeps 30
/// days, River 24 h; commands here are long-running infrastructure work whose
/// failures are looked at by people, so a failure on Friday night must still be
/// there on Monday: one week.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the cleanup actor runs (oVirt: daily). Hourly keeps each pass small.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);
/// Hierarchies removed per cleanup statement.
pub const DEFAULT_CLEANUP_BATCH: u32 = 1_000;
/// Pause between cleanup batches, so that cleanup yields to the rest of the
/// work on the database between statements without stretching a large
/// backlog over minutes (50 ms after every 1,000 rows capped cleanup at
/// ~13,000 rows/s).
pub const DEFAULT_CLEANUP_PAUSE: Duration = Duration::from_millis(2);

/// How often a host looks for cancellations requested through the database
/// (by the CLI or another process); `Coordinator::cancel` acts at once.
pub const DEFAULT_CANCEL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often a host reads the registry of hosts: whether its lease still
/// runs, who stands still, what to adopt. Cheap (a small table).
pub const DEFAULT_HOST_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often a host renews its heartbeat, on a connection of its own.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// The lease: a host whose heartbeats have not been acknowledged for this
/// long stops writing (on its own monotonic clock), and other hosts may
/// declare it dead once its heartbeat is this old on the database's clock.
/// Recovery after a crash waits about this long; a shorter lease declares
/// hosts dead that were only slow (a long GC, a stalled disk, a failover
/// of the database). See docs/operations.md, "Picking the lease".
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Unfinished rows picked per adoption statement (`FOR UPDATE SKIP
/// LOCKED`; each brings its whole hierarchy): several hosts adopting at once
/// share the work in such slices.
pub const DEFAULT_ADOPT_BATCH: u32 = 500;

/// How often the ends of commands that run on another host are looked for
/// (for `wait_for` and `execute` on a host that does not run them), while
/// there are such waiters.
pub const DEFAULT_REMOTE_WAIT_INTERVAL: Duration = Duration::from_millis(200);

/// Where a new hierarchy (a root submitted by the host's code) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the host that submitted it (the default): in an embedded
    /// library, the caller is there.
    Local,
    /// On the less loaded of two live hosts picked at random (by the
    /// commands each ran at its last heartbeat): for a front end that
    /// submits everything. The caller's `execute()` still resolves when the
    /// hierarchy ends there. Children always run on their root's host.
    LeastLoaded,
}

/// What a host does when it finds itself declared dead (it was paused or
/// cut off for longer than the lease, and its hierarchies were adopted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDeclaredDead {
    /// Stop every command at once and join again under a new host id (the
    /// default): the process keeps serving, and adopts work like any other.
    Rejoin,
    /// Stop every command and stay stopped (`Coordinator::is_acting` is
    /// false from then on): for hosts that prefer to exit and be restarted
    /// by their supervisor.
    Stop,
}

/// What happens to a root's hierarchy when the root ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRootEnd {
    /// Leave the rows for the cleanup actor (the default), so operators can
    /// inspect what happened.
    KeepForCleanup,
    /// Remove the hierarchy at once, as oVirt's parent callbacks did.
    Remove,
}

/// Settings of the cleanup actor.
#[derive(Debug, Clone)]
pub struct CleanupConfig {
    pub interval: Duration,
    pub retention: Duration,
    pub batch: u32,
    pub pause: Duration,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_CLEANUP_INTERVAL,
            retention: DEFAULT_RETENTION,
            batch: DEFAULT_CLEANUP_BATCH,
            pause: DEFAULT_CLEANUP_PAUSE,
        }
    }
}

/// Every setting of a coordinator. Build it through
/// [`crate::CoordinatorBuilder`]; [`RuntimeConfig::validate`] runs at start.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub poll_interval: Duration,
    pub max_poll_interval: Duration,
    pub end_attempts: u32,
    pub end_retry_delay: Duration,
    pub life_time: Duration,
    pub max_restarts: u32,
    pub on_root_end: OnRootEnd,
    pub cancel_check_interval: Duration,
    /// How often the registry of hosts is read ([`DEFAULT_HOST_CHECK_INTERVAL`]).
    pub host_check_interval: Duration,
    /// ([`DEFAULT_HEARTBEAT_INTERVAL`])
    pub heartbeat_interval: Duration,
    /// ([`DEFAULT_LEASE`])
    pub lease: Duration,
    /// ([`DEFAULT_ADOPT_BATCH`])
    pub adopt_batch: u32,
    /// ([`DEFAULT_REMOTE_WAIT_INTERVAL`])
    pub remote_wait_interval: Duration,
    /// What operators see in the registry; the machine's name (`HOSTNAME`)
    /// when `None`.
    pub host_name: Option<String>,
    pub on_declared_dead: OnDeclaredDead,
    pub placement: Placement,
    pub cleanup: CleanupConfig,
    pub writer: WriterConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_poll_interval: DEFAULT_MAX_POLL_INTERVAL,
            end_attempts: DEFAULT_END_ATTEMPTS,
            end_retry_delay: DEFAULT_END_RETRY_DELAY,
            life_time: DEFAULT_LIFE_TIME,
            max_restarts: DEFAULT_MAX_RESTARTS,
            on_root_end: OnRootEnd::KeepForCleanup,
            cancel_check_interval: DEFAULT_CANCEL_CHECK_INTERVAL,
            host_check_interval: DEFAULT_HOST_CHECK_INTERVAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            lease: DEFAULT_LEASE,
            adopt_batch: DEFAULT_ADOPT_BATCH,
            remote_wait_interval: DEFAULT_REMOTE_WAIT_INTERVAL,
            host_name: None,
            on_declared_dead: OnDeclaredDead::Rejoin,
            placement: Placement::Local,
            cleanup: CleanupConfig::default(),
            writer: WriterConfig::default(),
        }
    }
}

/// Longest poll-like interval (poll, end retry, cancellation check): a
/// longer one is a mistake, and `Instant + Duration::MAX` panics.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Longest life time or retention: a hundred years (beyond it dates
/// overflow).
pub const MAX_SPAN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Shortest retention: a waiter of a command whose rows cleanup removed
/// before the end reached it would be dropped.
pub const MIN_RETENTION: Duration = Duration::from_secs(60);

/// Shortest heartbeat interval: each is a write on the database.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);
/// Longest host name kept.
pub const MAX_HOST_NAME_CHARS: usize = 200;

impl RuntimeConfig {
    /// The host name to register: the configured one, else the machine's.
    pub fn effective_host_name(&self) -> String {
        self.host_name.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                        .filter(|h| !h.is_empty())
                })
                .unwrap_or_else(|| "host".to_owned())
        })
    }

    /// Checks the settings; the message says which one is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.poll_interval.is_zero() {
            return Err("poll_interval must be greater than zero".into());
        }
        for (name, value, max) in [
            ("poll_interval", self.poll_interval, MAX_INTERVAL),
            ("max_poll_interval", self.max_poll_interval, MAX_INTERVAL),
            ("end_retry_delay", self.end_retry_delay, MAX_INTERVAL),
            (
                "cancel_check_interval",
                self.cancel_check_interval,
                MAX_INTERVAL,
            ),
            (
                "host_check_interval",
                self.host_check_interval,
                MAX_INTERVAL,
            ),
            ("heartbeat_interval", self.heartbeat_interval, MAX_INTERVAL),
            ("lease", self.lease, MAX_INTERVAL),
            (
                "remote_wait_interval",
                self.remote_wait_interval,
                MAX_INTERVAL,
            ),
            ("cleanup interval", self.cleanup.interval, MAX_INTERVAL),
            ("cleanup pause", self.cleanup.pause, MAX_INTERVAL),
            ("life_time", self.life_time, MAX_SPAN),
            ("retention", self.cleanup.retention, MAX_SPAN),
        ] {
            if value > max {
                return Err(format!("{name} ({value:?}) must be at most {max:?}"));
            }
        }
        if self.cleanup.retention < MIN_RETENTION {
            return Err(format!(
                "retention ({:?}) must be at least {MIN_RETENTION:?}: ended rows must outlive \
                 the delivery of their end (use OnRootEnd::Remove to drop hierarchies at once)",
                self.cleanup.retention
            ));
        }
        if self.max_poll_interval < self.poll_interval {
            return Err(format!(
                "max_poll_interval ({:?}) must not be shorter than poll_interval ({:?})",
                self.max_poll_interval, self.poll_interval
            ));
        }
        if self.end_attempts == 0 {
            return Err("end_attempts must be at least 1".into());
        }
        if self.life_time.is_zero() {
            return Err("life_time must be greater than zero".into());
        }
        if self.cancel_check_interval.is_zero() {
            return Err("cancel_check_interval must be greater than zero".into());
        }
        if self.host_check_interval.is_zero() {
            return Err("host_check_interval must be greater than zero".into());
        }
        if self.heartbeat_interval < MIN_HEARTBEAT_INTERVAL {
            return Err(format!(
                "heartbeat_interval ({:?}) must be at least {MIN_HEARTBEAT_INTERVAL:?}",
                self.heartbeat_interval
            ));
        }
        // Two missed heartbeats must not cost the lease: a host is declared
        // dead only after it missed several.
        if self.lease < self.heartbeat_interval * 3 {
            return Err(format!(
                "lease ({:?}) must be at least three heartbeat intervals ({:?})",
                self.lease,
                self.heartbeat_interval * 3
            ));
        }
        if self.host_check_interval > self.lease {
            return Err(format!(
                "host_check_interval ({:?}) must not be longer than the lease ({:?})",
                self.host_check_interval, self.lease
            ));
        }
        if self.remote_wait_interval.is_zero() {
            return Err("remote_wait_interval must be greater than zero".into());
        }
        if self.adopt_batch == 0 {
            return Err("adopt_batch must be at least 1".into());
        }
        if let Some(name) = &self.host_name
            && (name.is_empty() || name.chars().count() > MAX_HOST_NAME_CHARS)
        {
            return Err(format!(
                "host_name must have 1 to {MAX_HOST_NAME_CHARS} characters"
            ));
        }
        if self.cleanup.interval.is_zero() {
            return Err("cleanup interval must be greater than zero".into());
        }
        if self.cleanup.batch == 0 {
            return Err("cleanup batch must be at least 1".into());
        }
        self.writer.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(RuntimeConfig::default().validate(), Ok(()));
        let mut c = RuntimeConfig {
            poll_interval: Duration::from_secs(20),
            ..RuntimeConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("max_poll_interval"));
        c.poll_interval = Duration::ZERO;
        assert!(c.validate().unwrap_err().contains("poll_interval"));
        let c = RuntimeConfig {
            end_attempts: 0,
            ..RuntimeConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("end_attempts"));
    }

    #[test]
    fn values_that_would_panic_spin_or_drop_waiters_are_refused() {
        let huge = RuntimeConfig {
            max_poll_interval: Duration::MAX,
            ..RuntimeConfig::default()
        };
        assert!(huge.validate().unwrap_err().contains("max_poll_interval"));
        let mut spin = RuntimeConfig::default();
        spin.writer.retry_min = Duration::ZERO;
        assert!(spin.validate().unwrap_err().contains("retry_min"));
        let mut no_retention = RuntimeConfig::default();
        no_retention.cleanup.retention = Duration::ZERO;
        assert!(no_retention.validate().unwrap_err().contains("retention"));
        let mut forever = RuntimeConfig::default();
        forever.cleanup.retention = Duration::MAX;
        assert!(forever.validate().unwrap_err().contains("retention"));
    }
}
