//! Whether this host may act on the store: shared by the coordinator, its
//! writer, its heartbeat thread and its command actors.
//!
//! A host acts only while its lease runs: its last heartbeat that the
//! database acknowledged was *sent* less than a lease ago, on this
//! process's monotonic clock. Other hosts declare it dead only once its
//! heartbeat is older than a lease on the database's clock and they saw it
//! stand still, so a host stops acting before anyone may adopt its work
//! (and the database's ownership check refuses whatever a paused process
//! sends late).
//!
//! While the lease is out the host pauses: the writer keeps every write
//! (as in an outage), no poll is delivered, so no step starts. When a
//! heartbeat is acknowledged again the host is still alive, and nobody can
//! have adopted its work (only the work of hosts that are not alive is
//! adopted): it resumes where it was. When it finds itself declared dead
//! instead, the fence closes: its actors stop for good, and it rejoins under
//! a new id in a new epoch; an actor of an older epoch (still finishing a
//! call into command code, say) can never write again: the writer refuses
//! its transitions.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::hosts::HostId;

/// The host's right to act, its identity and its epoch.
#[derive(Debug)]
pub(crate) struct Fence {
    epoch: AtomicU32,
    /// True from the moment the host found it may not act until it holds
    /// a lease again and the new epoch has begun.
    fenced: AtomicBool,
    /// The lease's end, in nanoseconds after `anchor`.
    lease_until: AtomicU64,
    anchor: Instant,
    host: Mutex<HostId>,
}

impl Fence {
    /// A fence for `host`, closed until its first lease.
    pub(crate) fn new(host: HostId) -> Self {
        Self {
            epoch: AtomicU32::new(0),
            fenced: AtomicBool::new(false),
            lease_until: AtomicU64::new(0),
            anchor: Instant::now(),
            host: Mutex::new(host),
        }
    }

    /// The current epoch.
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The host id this process writes under now.
    pub(crate) fn host(&self) -> HostId {
        *self.host.lock().expect("never poisoned")
    }

    /// True while the host is not fenced and its lease runs.
    pub(crate) fn acting(&self) -> bool {
        !self.fenced.load(Ordering::Acquire) && self.lease_runs()
    }

    /// True while the last acknowledged heartbeat is less than a lease old.
    pub(crate) fn lease_runs(&self) -> bool {
        self.nanos(Instant::now()) < self.lease_until.load(Ordering::Acquire)
    }

    /// True when the host fenced itself (until [`Fence::reopen`]).
    pub(crate) fn is_closed(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// May an actor born in `epoch` still act? (While the lease is out it
    /// may, but its writes wait in the writer and no poll reaches it.)
    pub(crate) fn allows(&self, epoch: u32) -> bool {
        !self.is_closed() && self.epoch() == epoch
    }

    /// A heartbeat sent at `sent` was acknowledged: the lease runs until
    /// `sent + lease` (never shortened by a late answer to an older one).
    pub(crate) fn extend_lease(&self, sent: Instant, lease: Duration) {
        let until = self.nanos(sent + lease);
        self.lease_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Nothing acts until [`Fence::reopen`].
    pub(crate) fn close(&self) {
        self.fenced.store(true, Ordering::Release);
    }

    /// The host acts again, under `host` (a new id after it rejoined): a
    /// new epoch begins (actors of older ones stay fenced); returns it.
    pub(crate) fn reopen(&self, host: HostId) -> u32 {
        *self.host.lock().expect("never poisoned") = host;
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        self.fenced.store(false, Ordering::Release);
        epoch
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.anchor).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_the_sending_of_the_last_acknowledged_heartbeat() {
        let fence = Fence::new(HostId::new());
        assert!(!fence.acting(), "no lease before the first heartbeat");
        let sent = Instant::now();
        fence.extend_lease(sent, Duration::from_secs(60));
        assert!(fence.acting());
        // A late answer to an older heartbeat does not shorten it.
        fence.extend_lease(sent - Duration::from_secs(59), Duration::from_secs(60));
        assert!(fence.acting());
        let expired = Fence::new(HostId::new());
        expired.extend_lease(Instant::now(), Duration::ZERO);
        assert!(!expired.acting());
    }

    #[test]
    fn a_closed_fence_reopens_in_a_new_epoch_under_the_new_id() {
        let fence = Fence::new(HostId::new());
        fence.extend_lease(Instant::now(), Duration::from_secs(60));
        let epoch = fence.epoch();
        assert!(fence.allows(epoch));
        fence.close();
        assert!(!fence.allows(epoch));
        let rejoined = HostId::new();
        let next = fence.reopen(rejoined);
        assert_eq!(fence.host(), rejoined);
        assert!(fence.allows(next));
        assert!(!fence.allows(epoch));
    }
}
