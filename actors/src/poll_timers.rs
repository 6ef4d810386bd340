//! One timer for every command's next poll, instead of one per command.
//!
//! An idle command spends its life waiting for its next poll. A tokio timer
//! per command (what `ctx.notify_later` arms) costs each one a boxed timer
//! entry of about 128 bytes, re-allocated at every poll, and a registration
//! in the runtime's timer wheel. Here a waiting command costs one 20-byte
//! entry in a map of due times, shared (same thread) by the coordinator's
//! command actors; one driver task sleeps until the earliest due time and
//! hands the coordinator every command due then, in one message.
//!
//! Entries are never removed early: an actor that no longer wants its poll
//! (it was cancelled, a child's end made it evaluate at once, it restarted)
//! bumps its generation, and a [`Poll`](crate::messages::Poll) carrying an
//! older one is ignored. A stale entry lives at most one poll interval.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::model::CommandId;

/// Due times are rounded up to this: commands due within the same
/// millisecond are handed over together. tokio's own timers have the same
/// resolution.
const RESOLUTION: Duration = Duration::from_millis(1);

/// A command due for a poll, and the generation of the timer that asked.
pub(crate) type Due = (CommandId, u32);

/// The shared map of due polls; cheap to clone (same thread only), and one
/// pointer in each actor.
#[derive(Clone)]
pub(crate) struct PollTimers(Rc<Shared>);

struct Shared {
    inner: RefCell<Inner>,
    /// Wakes the driver when a poll is due earlier than the one it sleeps for.
    wake: Notify,
}

struct Inner {
    /// Milliseconds since `origin` → the commands due then.
    slots: BTreeMap<u64, Vec<Due>>,
    origin: Instant,
    /// The slot the driver sleeps until, if it sleeps for one.
    armed_for: Option<u64>,
}

impl PollTimers {
    pub(crate) fn new() -> Self {
        Self(Rc::new(Shared {
            inner: RefCell::new(Inner {
                slots: BTreeMap::new(),
                origin: Instant::now(),
                armed_for: None,
            }),
            wake: Notify::new(),
        }))
    }

    /// Asks for a poll of `id` after `delay`, under `generation`.
    pub(crate) fn schedule(&self, id: CommandId, generation: u32, delay: Duration) {
        let mut inner = self.0.inner.borrow_mut();
        let at = Instant::now() + delay;
        let slot = inner.slot_of(at);
        inner.slots.entry(slot).or_default().push((id, generation));
        if inner.armed_for.is_none_or(|armed| slot < armed) {
            drop(inner);
            self.0.wake.notify_one();
        }
    }

    /// Commands waiting (stale entries included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.inner.borrow().slots.values().map(Vec::len).sum()
    }

    /// Waits until some polls are due, then takes them all, oldest first.
    /// Returns an empty list only if woken without anything due.
    pub(crate) async fn next_due(&self) -> Vec<Due> {
        loop {
            let next = {
                let mut inner = self.0.inner.borrow_mut();
                let next = inner.slots.keys().next().copied();
                inner.armed_for = next;
                next.map(|slot| inner.time_of(slot))
            };
            match next {
                None => self.0.wake.notified().await,
                Some(at) if at > Instant::now() => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.0.wake.notified() => continue,
                    }
                }
                // Due already: take it below. (`time_of` is exact for any
                // slot, so a slot in the future is never mistaken for one in
                // the past and this loop always sleeps when nothing is due.)
                Some(_) => {}
            }
            let mut inner = self.0.inner.borrow_mut();
            // Whole slots that have begun: a slot is due once its time came
            // (rounding now up would fire entries up to one slot early).
            let now = inner.slots_passed(Instant::now());
            // Everything due up to now: split off what is later, keep it.
            let later = inner.slots.split_off(&(now + 1));
            let due = std::mem::replace(&mut inner.slots, later);
            inner.armed_for = None;
            if !due.is_empty() {
                return due.into_values().flatten().collect();
            }
        }
    }
}

impl Inner {
    /// When `slot` begins. In whole `u64` slots: a `u32` factor (as
    /// `Duration * u32` takes) wraps after 2^32 ms, 49.7 days of uptime,
    /// and put every later wake-up in the past, so that the driver spun
    /// without ever awaiting and starved the arbiter.
    fn time_of(&self, slot: u64) -> Instant {
        let nanos = u128::from(slot) * RESOLUTION.as_nanos();
        let since = Duration::new(
            (nanos / 1_000_000_000) as u64,
            (nanos % 1_000_000_000) as u32,
        );
        self.origin + since
    }

    /// The slot of `at`, rounded up (a poll never comes early).
    fn slot_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        since.as_nanos().div_ceil(RESOLUTION.as_nanos()) as u64
    }

    /// The slots whose time has come by `now`, rounded down.
    fn slots_passed(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / RESOLUTION.as_nanos()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn polls_come_due_in_order_never_early() {
        let timers = PollTimers::new();
        let (a, b, c) = (CommandId::new(), CommandId::new(), CommandId::new());
        // Off the millisecond grid, so that rounding has something to round.
        tokio::time::advance(Duration::from_micros(300)).await;
        let start = Instant::now();
        timers.schedule(b, 1, Duration::from_millis(20));
        timers.schedule(a, 7, Duration::from_millis(10));
        timers.schedule(c, 2, Duration::from_millis(20));
        assert_eq!(timers.len(), 3);

        assert_eq!(timers.next_due().await, vec![(a, 7)]);
        assert!(start.elapsed() >= Duration::from_millis(10));
        assert_eq!(timers.next_due().await, vec![(b, 1), (c, 2)]);
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn a_slot_maps_back_to_its_own_time_far_beyond_49_days() {
        let timers = PollTimers::new();
        let inner = timers.0.inner.borrow();
        // 2^32 ms is 49.7 days; a host runs for years.
        for slot in [
            0,
            1,
            u32::MAX as u64,
            u32::MAX as u64 + 2,
            10 * 365 * 86_400_000,
        ] {
            let at = inner.time_of(slot);
            assert_eq!(inner.slot_of(at), slot, "slot {slot}");
            assert_eq!(inner.slots_passed(at), slot, "slot {slot}");
        }
    }

    /// The driver, after more than 2^32 ms of uptime, sleeps until a poll is
    /// due instead of spinning. Run on a thread of its own so that a spinning
    /// driver (which never yields) fails the test instead of hanging it.
    #[test]
    fn the_driver_sleeps_after_fifty_days_of_uptime() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let result = runtime.block_on(async {
                let timers = PollTimers::new();
                tokio::time::advance(Duration::from_secs(50 * 86_400)).await;
                let start = Instant::now();
                let id = CommandId::new();
                timers.schedule(id, 1, Duration::from_secs(2));
                let due = timers.next_due().await;
                (due == vec![(id, 1)], start.elapsed())
            });
            let _ = done_tx.send(result);
        });
        let (got_it, waited) = done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the poll driver spun instead of sleeping until the poll was due");
        assert!(got_it);
        assert!(waited >= Duration::from_secs(2), "came early: {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_poll_wakes_a_driver_sleeping_for_a_later_one() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let timers = PollTimers::new();
                let (late, early) = (CommandId::new(), CommandId::new());
                timers.schedule(late, 1, Duration::from_secs(60));
                let driver = {
                    let timers = timers.clone();
                    tokio::task::spawn_local(async move { timers.next_due().await })
                };
                // The driver goes to sleep for the 60 s poll.
                tokio::task::yield_now().await;
                let start = Instant::now();
                timers.schedule(early, 3, Duration::from_millis(5));
                // Paused time jumps to the next timer when idle: a driver
                // still sleeping for 60 s would return `late`.
                assert_eq!(driver.await.unwrap(), vec![(early, 3)]);
                assert!(start.elapsed() < Duration::from_secs(1));
                assert_eq!(timers.len(), 1);
            })
            .await;
    }
}
