//! Messages between the coordinator and the command actors.
//!
//! Data flows one way: host → coordinator → command actor → store; completion
//! flows back child → coordinator → parent.

use actix::prelude::*;

use crate::model::{CommandId, CommandStatus, JsonPayload};

/// Time to look at the command's work again (its poll timer fired).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Poll {
    /// Which of the command's timers fired: an older one is ignored.
    pub(crate) generation: u32,
}

/// A child ended (its end method ran and ENDED_* is committed), or, during a
/// restart, a child's state as read from the store.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ChildCompleted {
    pub child: CommandId,
    pub command_type: i32,
    pub status: CommandStatus,
    pub output: Option<JsonPayload>,
    pub failure_reason: Option<String>,
    /// When the child's end was committed (in this process), for the
    /// child-to-parent latency metric; `None` when read from the store.
    pub ended: Option<std::time::Instant>,
}

/// Cancellation was requested for this command: it stops at its next step
/// and ends with failure, reason "cancelled".
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Cancel;

/// Asks a live command what it knows that its row does not say: its
/// children, including any submitted by a step still running.
#[derive(Message, Debug)]
#[rtype(result = "Inspection")]
pub struct Inspect;

/// A live command's answer to [`Inspect`].
#[derive(Debug, Clone, MessageResponse)]
pub struct Inspection {
    pub children: Vec<CommandId>,
}

/// How a command ended, as delivered to `execute`/`wait_for` callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// When the end was committed, in this process.
    pub ended: std::time::Instant,
    /// The child already told its parent directly.
    pub parent_told: bool,
    pub id: CommandId,
    pub parent_id: Option<CommandId>,
    pub command_type: i32,
    pub status: CommandStatus,
    pub output: Option<JsonPayload>,
    pub failure_reason: Option<String>,
}
