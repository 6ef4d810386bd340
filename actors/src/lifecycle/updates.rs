//! The status changes the lifecycle writes, and the rules that keep every
//! one of them storable.

use crate::model::{CommandId, CommandStatus};
use crate::store::CommandUpdate;

use super::LiveRow;

/// The failure reason of a cancelled command.
pub(crate) const CANCELLED: &str = "cancelled";

/// Times the database may refuse one status change (an error that is not an
/// outage: a constraint, a trigger, a value it cannot store) before the
/// command ends with failure instead. Retrying such a write forever left the
/// command, its parent and every waiter hanging.
pub(crate) const MAX_WRITE_FAILURES: u8 = 3;

/// Longest failure reason the runtime writes of its own (user reasons are
/// stored whole; `text` has no limit, but an error chain can be long).
const MAX_RUNTIME_REASON: usize = 4_000;

pub(super) fn fail(id: CommandId, status: CommandStatus, reason: String) -> CommandUpdate {
    let mut update = CommandUpdate::new(id);
    update.status = Some(status);
    update.failure_reason = Some(storable(reason));
    update
}

/// ENDED_* and callback_notified in one transition.
pub(super) fn ended(id: CommandId, succeeded: bool, reason: Option<String>) -> CommandUpdate {
    let mut update = CommandUpdate::new(id);
    update.status = Some(if succeeded {
        CommandStatus::EndedSuccessfully
    } else {
        CommandStatus::EndedWithFailure
    });
    update.notified = Some(true);
    update.failure_reason = reason.map(storable);
    update
}

/// True when `update`, applied to `row`, ends the command (ENDED_* and
/// notified): the writer then tells a live parent right after the commit.
pub(super) fn ends(row: &LiveRow, update: &CommandUpdate) -> bool {
    let status = update.status.unwrap_or(row.status);
    let notified = update.notified.unwrap_or(row.callback_notified);
    status.is_ended() && notified
}

/// A failure reason PostgreSQL can store: `text` refuses the NUL character,
/// which a reason taken from an external system may carry (it is written as
/// U+FFFD instead). Every reason passes through here, so no user-supplied
/// reason can make a status change fail forever.
pub(crate) fn storable(reason: String) -> String {
    if reason.contains('\0') {
        reason.replace('\0', "\u{FFFD}")
    } else {
        reason
    }
}

/// A reason of the runtime's own, storable and of bounded length.
pub(super) fn runtime_reason(reason: String) -> String {
    let mut reason = storable(reason);
    if reason.len() > MAX_RUNTIME_REASON {
        let mut cut = MAX_RUNTIME_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

/// The smallest update that still takes the command towards its end when
/// the database keeps refusing `update`: no parameters, no output, only a
/// status and a reason of our own that any database stores. A change that
/// was to end the command ends it with failure; any earlier one fails it
/// (its end method then runs as for any failure). `None` when `update` is
/// that smallest update already.
pub(super) fn fallback(
    row: &LiveRow,
    update: &CommandUpdate,
    encode_parameters: bool,
    error: &str,
) -> Option<CommandUpdate> {
    let target = update.status.unwrap_or(row.status);
    let ends = target.is_ended() || update.notified == Some(true);
    let status = if ends {
        CommandStatus::EndedWithFailure
    } else if row.executed || update.executed == Some(true) {
        CommandStatus::Failed
    } else {
        CommandStatus::ExecutionFailed
    };
    let reason = runtime_reason(format!(
        "the database refused to record this command's status change to {target} \
         {MAX_WRITE_FAILURES} times: {error}"
    ));
    let minimal = !encode_parameters
        && update.parameters.is_none()
        && update.return_value.is_none()
        && update.executed.is_none()
        && update.status == Some(status);
    if minimal {
        return None;
    }
    let mut fallback = CommandUpdate::new(row.id);
    fallback.status = Some(status);
    fallback.notified = ends.then_some(true);
    fallback.failure_reason = Some(reason);
    Some(fallback)
}
