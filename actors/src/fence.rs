//! Whether this host may act on the store: shared by the coordinator, its
//! writer and its command actors.
//!
//! A host acts only while it holds the host lock. When the lock's connection
//! dies, another host may start and rebuild the same commands; this host
//! must then stop acting at once (no write, no step, no end method) until it
//! holds the lock again, and then rebuild its commands from the database,
//! because what it knew may be stale. Every actor is born in an epoch;
//! taking the lock again starts a new one, so an actor of an older epoch
//! (still finishing a call into command code, say) can never write again:
//! the writer refuses its transitions.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The host's right to act, and its epoch.
#[derive(Debug, Default)]
pub(crate) struct Fence {
    epoch: AtomicU32,
    /// False from the moment the host lock was found lost until it is held
    /// again (and the new epoch begun).
    fenced: AtomicBool,
}

impl Fence {
    /// The current epoch.
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// True while the host holds its lock.
    pub(crate) fn acting(&self) -> bool {
        !self.fenced.load(Ordering::Acquire)
    }

    /// May an actor born in `epoch` act now?
    pub(crate) fn allows(&self, epoch: u32) -> bool {
        self.acting() && self.epoch() == epoch
    }

    /// The host lock was lost: nothing acts until [`Fence::reopen`].
    pub(crate) fn close(&self) {
        self.fenced.store(true, Ordering::Release);
    }

    /// The lock is held again: a new epoch begins (actors of older ones stay
    /// fenced); returns it.
    pub(crate) fn reopen(&self) -> u32 {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        self.fenced.store(false, Ordering::Release);
        epoch
    }
}
