//! The persisted shape of a command: what one `command_entities` row means.
//!
//! These types are shared by the store (which reads and writes rows) and the
//! runtime (which keeps live commands in memory). They are plain data: no I/O.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// The identity of one command: the `command_id` primary key.
///
/// A newtype rather than a bare [`Uuid`] so that a command id cannot be passed
/// where a job or step id is expected.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(Uuid);

impl CommandId {
    /// A fresh random (v4) id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps an id read from elsewhere (a row, a URL, a CLI argument).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The underlying UUID, as stored in PostgreSQL.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for CommandId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandId({})", self.0)
    }
}

impl FromStr for CommandId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl From<Uuid> for CommandId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl From<CommandId> for Uuid {
    fn from(id: CommandId) -> Self {
        id.0
    }
}

/// Where a command is in its life, with oVirt's `CommandStatus` values.
///
/// Stored in the `status` column as the upper-case name (`"ENDED_SUCCESSFULLY"`),
/// exactly as oVirt stores it, so rows stay readable with plain SQL.
///
/// ```text
/// NOT_STARTED ─► ACTIVE ─► SUCCEEDED ─► ENDED_SUCCESSFULLY
///                  │   └──► FAILED ────► ENDED_WITH_FAILURE
///                  └──────► EXECUTION_FAILED ─► ENDED_WITH_FAILURE
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandStatus {
    /// The runtime cannot tell (oVirt's value for a command it lost track of).
    Unknown,
    /// Persisted, not yet running. Persisting this *before* anything runs is what
    /// keeps queued commands from being lost on a restart.
    NotStarted,
    /// Running: `execute` was started, the command is being polled.
    Active,
    /// The command's work failed; its end method (`end_with_failure`) has not run yet.
    Failed,
    /// `execute` itself failed, or was interrupted by a restart before it finished.
    ExecutionFailed,
    /// The command's work succeeded; its end method (`end_successfully`) has not run yet.
    Succeeded,
    /// Final: the end method ran after success.
    EndedSuccessfully,
    /// Final: the end method ran after a failure.
    EndedWithFailure,
}

impl CommandStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [CommandStatus; 8] = [
        CommandStatus::Unknown,
        CommandStatus::NotStarted,
        CommandStatus::Active,
        CommandStatus::Failed,
        CommandStatus::ExecutionFailed,
        CommandStatus::Succeeded,
        CommandStatus::EndedSuccessfully,
        CommandStatus::EndedWithFailure,
    ];

    /// The name stored in the `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Unknown => "UNKNOWN",
            CommandStatus::NotStarted => "NOT_STARTED",
            CommandStatus::Active => "ACTIVE",
            CommandStatus::Failed => "FAILED",
            CommandStatus::ExecutionFailed => "EXECUTION_FAILED",
            CommandStatus::Succeeded => "SUCCEEDED",
            CommandStatus::EndedSuccessfully => "ENDED_SUCCESSFULLY",
            CommandStatus::EndedWithFailure => "ENDED_WITH_FAILURE",
        }
    }

    /// True once the end method has run: nothing more will happen to the command.
    ///
    /// A parent counts a child as done only when this is true, not when the child
    /// merely `SUCCEEDED` (oVirt 7340c94ef5b: parents finished before their
    /// children's end methods ran).
    pub const fn is_ended(self) -> bool {
        matches!(
            self,
            CommandStatus::EndedSuccessfully | CommandStatus::EndedWithFailure
        )
    }

    /// True when the command's work has an outcome and only its end method is left.
    pub const fn awaits_end_action(self) -> bool {
        matches!(
            self,
            CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::ExecutionFailed
        )
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `status` value this version does not know (for example written by a newer one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown command status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for CommandStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommandStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A serialized value with the Rust type it came from: the `command_parameters` /
/// `command_params_class` and `return_value` / `return_value_class` column pairs.
///
/// The JSON is kept as validated raw text: a live command does not pay for
/// deserializing its parameters until it needs them, and a row whose text is not
/// JSON at all is rejected when it is read, with its id.
/// Width of the `command_params_class` / `return_value_class` columns
/// (`varchar(256)`, in characters).
pub const MAX_CLASS_CHARS: usize = 256;

#[derive(Clone)]
pub struct JsonPayload {
    /// The type name: borrowed when encoded here (no allocation per command),
    /// owned when read from a row.
    class: std::borrow::Cow<'static, str>,
    json: Box<RawValue>,
}

impl JsonPayload {
    /// Serializes `value`, recording `std::any::type_name::<T>()` as its class.
    ///
    /// The class is cut to [`MAX_CLASS_CHARS`] characters, the width of the
    /// `*_class` columns: a generic type's name can be longer, and the
    /// database refusing it would fail the write for good. The class is
    /// informational (decoding never reads it).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        let json = serde_json::value::to_raw_value(value)?;
        let name = std::any::type_name::<T>();
        let class = match name.char_indices().nth(MAX_CLASS_CHARS) {
            Some((cut, _)) => &name[..cut],
            None => name,
        };
        Ok(Self {
            class: std::borrow::Cow::Borrowed(class),
            json,
        })
    }

    /// Rebuilds a payload from stored text, checking that it is JSON.
    pub fn from_stored(class: String, json: String) -> Result<Self, serde_json::Error> {
        let json = RawValue::from_string(json)?;
        Ok(Self {
            class: class.into(),
            json,
        })
    }

    /// Deserializes the payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.json.get())
    }

    /// The Rust type name recorded when the value was encoded.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.json.get()
    }
}

/// Payloads compare by class and exact JSON text (as stored), not by meaning.
impl PartialEq for JsonPayload {
    fn eq(&self, other: &Self) -> bool {
        self.class == other.class && self.json.get() == other.json.get()
    }
}

impl Eq for JsonPayload {}

impl fmt::Debug for JsonPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parameters can be large; show their size rather than all of them.
        const SHOWN: usize = 120;
        let json = self.json.get();
        let mut f = f.debug_struct("JsonPayload");
        f.field("class", &self.class);
        if json.len() <= SHOWN {
            f.field("json", &json);
        } else {
            let cut = (0..=SHOWN)
                .rev()
                .find(|i| json.is_char_boundary(*i))
                .unwrap_or(0);
            f.field(
                "json",
                &format_args!("{:?}… ({} bytes)", &json[..cut], json.len()),
            );
        }
        f.finish()
    }
}

/// One command as persisted: a typed view of a `command_entities` row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandEntity {
    /// `command_id`.
    pub id: CommandId,
    /// `command_type`: the stable number the command type registered under.
    pub command_type: i32,
    /// `root_command_id`: the top of this command's hierarchy. The runtime
    /// writes the command's own id for a root, so that one index lookup finds a
    /// whole hierarchy; rows written by others may leave it NULL.
    pub root_id: Option<CommandId>,
    /// `parent_command_id`: the command that submitted this one, if any.
    pub parent_id: Option<CommandId>,
    /// `command_parameters` / `command_params_class`.
    pub parameters: JsonPayload,
    /// `created_at`: set on the first save and never changed after.
    pub created_at: DateTime<Utc>,
    /// `updated_at`: the time of the last change to the row.
    pub updated_at: DateTime<Utc>,
    /// `ended_at`: when the command reached an `ENDED_*` status.
    pub ended_at: Option<DateTime<Utc>>,
    /// `status`.
    pub status: CommandStatus,
    /// `callback_enabled`: the runtime manages (polls, ends, recovers) this command.
    pub callback_enabled: bool,
    /// `callback_notified`: the end action ran and its outcome was delivered.
    pub callback_notified: bool,
    /// `executed`: `execute` ran to completion. False after a crash inside it.
    pub executed: bool,
    /// `return_value` / `return_value_class`: the command's typed output.
    pub return_value: Option<JsonPayload>,
    /// `failure_reason`: why the command failed, for operators and parents.
    pub failure_reason: Option<String>,
    /// `job_id`, kept from oVirt for hosts that group commands into jobs.
    pub job_id: Option<Uuid>,
    /// `step_id`, kept from oVirt for hosts that track steps of a job.
    pub step_id: Option<Uuid>,
    /// `owner_host`: the host that runs the command (read from the row; a
    /// new command belongs to the host whose writer inserts it, or to the
    /// host it was placed on).
    pub owner: Option<crate::hosts::HostId>,
    /// `owner_epoch`: how many times its hierarchy changed hands; 0 while
    /// it is offered to the host it was placed on and not claimed yet.
    pub owner_epoch: i32,
    /// `idempotency_key`: the caller's name for this submission (unique per
    /// command type while the row exists; see [`crate::SubmitOptions::key`]).
    pub idempotency_key: Option<String>,
    /// `not_before`: no step runs before this time (a delayed start, or the
    /// next attempt after a transient error).
    pub not_before: Option<DateTime<Utc>>,
    /// `failed_attempts`: transient failures in a row of the current step.
    pub failed_attempts: i32,
    /// `last_error`: the message of the last transient failure.
    pub last_error: Option<String>,
}

impl CommandEntity {
    /// A new, not yet started command with the given type and parameters.
    ///
    /// It is its own root and has callbacks enabled; timestamps are now.
    pub fn new(id: CommandId, command_type: i32, parameters: JsonPayload) -> Self {
        let now = Utc::now();
        Self {
            id,
            command_type,
            root_id: Some(id),
            parent_id: None,
            parameters,
            created_at: now,
            updated_at: now,
            ended_at: None,
            status: CommandStatus::NotStarted,
            callback_enabled: true,
            callback_notified: false,
            executed: false,
            return_value: None,
            failure_reason: None,
            job_id: None,
            step_id: None,
            owner: None,
            owner_epoch: 0,
            idempotency_key: None,
            not_before: None,
            failed_attempts: 0,
            last_error: None,
        }
    }

    /// Makes this command a child of `parent`, inheriting the parent's root.
    pub fn with_parent(mut self, parent: &CommandEntity) -> Self {
        self.parent_id = Some(parent.id);
        self.root_id = Some(parent.root());
        self
    }

    /// The root of this command's hierarchy (itself when it has none recorded).
    pub fn root(&self) -> CommandId {
        self.root_id.unwrap_or(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_name() {
        for status in CommandStatus::ALL {
            assert_eq!(status.as_str().parse::<CommandStatus>(), Ok(status));
        }
        assert_eq!(
            "FAILED_RESTARTED".parse::<CommandStatus>(),
            Err(UnknownStatus("FAILED_RESTARTED".into()))
        );
    }

    #[test]
    fn serde_uses_the_stored_names() {
        let json = serde_json::to_string(&CommandStatus::EndedWithFailure).unwrap();
        assert_eq!(json, "\"ENDED_WITH_FAILURE\"");
    }

    #[test]
    fn only_ended_statuses_are_ended() {
        let ended: Vec<_> = CommandStatus::ALL
            .into_iter()
            .filter(|s| s.is_ended())
            .collect();
        assert_eq!(
            ended,
            [
                CommandStatus::EndedSuccessfully,
                CommandStatus::EndedWithFailure
            ]
        );
    }

    #[test]
    fn payload_keeps_its_type_name_and_rejects_non_json() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Merge {
            disk: String,
        }
        let p = JsonPayload::encode(&Merge { disk: "d1".into() }).unwrap();
        assert!(p.class().ends_with("Merge"), "{}", p.class());
        assert_eq!(p.decode::<Merge>().unwrap(), Merge { disk: "d1".into() });
        assert!(JsonPayload::from_stored("x".into(), "{not json".into()).is_err());
    }

    #[test]
    fn a_child_inherits_the_root_of_its_parent() {
        let p = JsonPayload::encode(&1).unwrap();
        let root = CommandEntity::new(CommandId::new(), 1, p.clone());
        let child = CommandEntity::new(CommandId::new(), 2, p.clone()).with_parent(&root);
        let grandchild = CommandEntity::new(CommandId::new(), 2, p).with_parent(&child);
        assert_eq!(grandchild.root(), root.id);
        assert_eq!(grandchild.parent_id, Some(child.id));
    }
}
