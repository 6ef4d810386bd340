//! Which other hosts may be declared dead: the decision, apart from the
//! queries (the coordinator's host tick feeds it what the registry said).
//!
//! A host is declared dead only when all of these hold, so that a busy,
//! paused or cut-off *observer* cannot kill a healthy host, and no clock is
//! compared with another machine's:
//! - its heartbeat is older than the lease on the database's clock (the
//!   registry computes the age);
//! - this host saw that heartbeat stand still, with its own eyes, for at
//!   least two heartbeat intervals of its own monotonic clock (a database
//!   clock that jumps forward makes every heartbeat look old at once);
//! - this host's own heartbeats have been succeeding for a full lease: after
//!   an outage of the database every heartbeat is old, and the others need
//!   a lease to renew theirs, as this one did (temporal #9987: a node that
//!   came back from a blip alone and took everything).
//!
//! The database applies the verdict only if the heartbeat is still the one
//! seen (compare-and-set), so a host that beat meanwhile survives.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::hosts::{HostId, HostRecord, HostState};

/// What this host saw of another's heartbeat.
#[derive(Debug, Clone, Copy)]
struct Seen {
    heartbeat_at: DateTime<Utc>,
    since: Instant,
}

/// The observations and the rules (see the module documentation).
#[derive(Debug)]
pub(crate) struct Membership {
    lease: Duration,
    /// How long a heartbeat must be seen standing still.
    still_for: Duration,
    seen: HashMap<HostId, Seen>,
}

impl Membership {
    pub(crate) fn new(lease: Duration, heartbeat_interval: Duration) -> Self {
        Self {
            lease,
            still_for: heartbeat_interval * 2,
            seen: HashMap::new(),
        }
    }

    /// Forgets every observation: after this host's own heartbeats failed,
    /// what it saw before may be stale.
    pub(crate) fn forget(&mut self) {
        self.seen.clear();
    }

    /// Takes in the registry as read at `now` by host `me`, whose unbroken
    /// run of acknowledged heartbeats began at `streak_since`; returns the
    /// hosts to declare dead, with the heartbeat that was seen standing
    /// still (the database checks it is still that one).
    pub(crate) fn observe(
        &mut self,
        me: HostId,
        hosts: &[HostRecord],
        now: Instant,
        streak_since: Option<Instant>,
    ) -> Vec<(HostId, DateTime<Utc>)> {
        let alive: HashMap<HostId, &HostRecord> = hosts
            .iter()
            .filter(|h| h.state == HostState::Alive && h.id != me)
            .map(|h| (h.id, h))
            .collect();
        self.seen.retain(|id, _| alive.contains_key(id));
        for host in alive.values() {
            let seen = self.seen.entry(host.id).or_insert(Seen {
                heartbeat_at: host.heartbeat_at,
                since: now,
            });
            if seen.heartbeat_at != host.heartbeat_at {
                *seen = Seen {
                    heartbeat_at: host.heartbeat_at,
                    since: now,
                };
            }
        }
        let judged =
            streak_since.is_some_and(|since| now.saturating_duration_since(since) >= self.lease);
        if !judged {
            return Vec::new();
        }
        let mut dead: Vec<(HostId, DateTime<Utc>)> = alive
            .values()
            .filter(|h| h.heartbeat_age > self.lease)
            .filter_map(|h| {
                let seen = self.seen.get(&h.id)?;
                (now.saturating_duration_since(seen.since) >= self.still_for)
                    .then_some((h.id, seen.heartbeat_at))
            })
            .collect();
        dead.sort();
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);
    const BEAT: Duration = Duration::from_secs(2);

    fn host(id: HostId, beat: i64, age: u64) -> HostRecord {
        HostRecord {
            id,
            name: "h".into(),
            state: HostState::Alive,
            heartbeat_at: DateTime::from_timestamp(beat, 0).unwrap(),
            heartbeat_age: Duration::from_secs(age),
            started_at: DateTime::from_timestamp(0, 0).unwrap(),
            pid: None,
            live_commands: 0,
        }
    }

    #[test]
    fn a_host_is_declared_dead_only_when_old_seen_still_and_judged_by_a_healthy_observer() {
        let me = HostId::new();
        let other = HostId::new();
        let t0 = Instant::now();
        let mut m = Membership::new(LEASE, BEAT);
        // Old on the database's clock, but first seen now: not yet.
        assert!(
            m.observe(me, &[host(other, 100, 30)], t0, Some(t0 - LEASE))
                .is_empty()
        );
        // Seen standing still for two beats: dead.
        let later = t0 + BEAT * 2;
        assert_eq!(
            m.observe(me, &[host(other, 100, 34)], later, Some(t0 - LEASE)),
            vec![(other, DateTime::from_timestamp(100, 0).unwrap())]
        );
        // It beat meanwhile: the observation starts again.
        assert!(
            m.observe(
                me,
                &[host(other, 101, 0)],
                later + BEAT * 3,
                Some(t0 - LEASE)
            )
            .is_empty()
        );
    }

    #[test]
    fn after_an_outage_nobody_is_judged_until_the_observer_had_a_full_lease_of_heartbeats() {
        let me = HostId::new();
        let other = HostId::new();
        let t0 = Instant::now();
        let mut m = Membership::new(LEASE, BEAT);
        // Every heartbeat is old after the outage; this host's own streak
        // just began.
        for step in 0..5u32 {
            let now = t0 + BEAT * step;
            assert!(
                m.observe(me, &[host(other, 100, 40)], now, Some(t0))
                    .is_empty()
            );
        }
        // No streak at all: never.
        assert!(
            m.observe(me, &[host(other, 100, 60)], t0 + LEASE * 3, None)
                .is_empty()
        );
    }

    #[test]
    fn young_heartbeats_self_and_hosts_not_alive_are_never_candidates() {
        let me = HostId::new();
        let young = HostId::new();
        let leaving = HostId::new();
        let t0 = Instant::now();
        let mut m = Membership::new(LEASE, BEAT);
        let mut gone = host(leaving, 100, 60);
        gone.state = HostState::Leaving;
        let hosts = [host(me, 1, 60), host(young, 100, 5), gone];
        m.observe(me, &hosts, t0, Some(t0 - LEASE));
        assert!(
            m.observe(me, &hosts, t0 + LEASE, Some(t0 - LEASE))
                .is_empty()
        );
    }
}
