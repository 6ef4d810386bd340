//! Hosts: the processes that run coordinators on one database, as the
//! store records them (`command_hosts`).
//!
//! A host id is fresh at every start and at every rejoin, and a host is
//! never alive again once it left or was declared dead. That makes the id a
//! fencing token: the rows of a hierarchy carry their owner's id, every
//! write of a host checks it on the row it writes, and adoption replaces it.
//! A stale owner (a paused process that wakes up) can never match again;
//! unlike a counter, checking it needs no read before the write.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{CommandEntity, CommandId};
use crate::store::LoadedRows;

/// The identity of one run of one host process.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct HostId(Uuid);

impl HostId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for HostId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostId({})", self.0)
    }
}

/// What a host registers when it joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    pub id: HostId,
    /// What operators call it (`--host-name`; the machine's name by default).
    pub name: String,
    /// The operating system's process id.
    pub pid: u32,
}

/// A host's state in the registry. Only `Alive` hosts own work; the other
/// two are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostState {
    Alive,
    /// Shut down gracefully: its hierarchies are adopted at once, without
    /// waiting for its lease to run out.
    Leaving,
    /// Declared dead by another host after its heartbeat stood still for
    /// longer than the lease.
    Dead,
}

impl HostState {
    pub const fn as_str(self) -> &'static str {
        match self {
            HostState::Alive => "alive",
            HostState::Leaving => "leaving",
            HostState::Dead => "dead",
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HostState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "alive" => Ok(HostState::Alive),
            "leaving" => Ok(HostState::Leaving),
            "dead" => Ok(HostState::Dead),
            other => Err(format!("unknown host state {other:?}")),
        }
    }
}

/// One row of the registry, as other hosts and operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    pub id: HostId,
    pub name: String,
    pub state: HostState,
    /// The last heartbeat, on the database's clock.
    pub heartbeat_at: DateTime<Utc>,
    /// `now() - heartbeat_at`, computed by the database: no machine's
    /// clock is compared with another's.
    pub heartbeat_age: Duration,
    pub started_at: DateTime<Utc>,
    pub pid: Option<u32>,
    /// Commands it ran at its last heartbeat.
    pub live_commands: u64,
}

/// What a host rebuilds: its unfinished rows (all of them at start-up and
/// after a lost lease, or those of the hierarchies it just adopted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedRows {
    /// Unfinished commands, oldest first.
    pub unfinished: LoadedRows,
    /// The children of those commands (ended ones included), oldest first.
    pub children: LoadedRows,
    /// Those of the unfinished commands whose cancellation was requested.
    pub cancel_requested: Vec<CommandId>,
}

impl OwnedRows {
    /// The entities to rebuild.
    pub fn entities(&self) -> &[CommandEntity] {
        &self.unfinished.entities
    }
}
