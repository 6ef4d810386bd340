//! What a parent knows of its children, and the rules that read it.

use crate::command::ChildView;
use crate::model::{CommandId, CommandStatus};

use super::Extra;

/// Records what is known of a child, never moving it backwards (a child's
/// pushed end may arrive before the store's older view of it, and a stale
/// or duplicate message must not reopen an ended child).
pub(super) fn merge(children: &mut Vec<ChildView>, parent: CommandId, news: ChildView) {
    if news.id == parent {
        return; // a corrupt self-parent row: never its own child
    }
    match children.iter_mut().find(|c| c.id == news.id) {
        Some(child) => {
            if child.status.is_ended() && !news.status.is_ended() {
                return;
            }
            if child.status.is_ended() {
                // Ended twice (a duplicate, or a row read after the push):
                // the first end is the one the parent may have acted on.
                return;
            }
            child.status = news.status;
            child.output = news.output.or(child.output.take());
            child.failure_reason = news.failure_reason.or(child.failure_reason.take());
        }
        None => children.push(news),
    }
}

/// Children submitted by a call into the command's code: known from now on,
/// not started until their own actor says otherwise.
pub(super) fn record_submitted(
    children: &mut Vec<ChildView>,
    parent: CommandId,
    submitted: &[(CommandId, i32)],
) {
    for &(id, command_type) in submitted {
        if id != parent && !children.iter().any(|c| c.id == id) {
            children.push(ChildView {
                id,
                command_type,
                status: CommandStatus::NotStarted,
                output: None,
                failure_reason: None,
            });
        }
    }
}

/// Some child has not ended: a parent decides nothing before they all have.
pub(super) fn any_open(children: &[ChildView]) -> bool {
    children.iter().any(|c| !c.status.is_ended())
}

pub(super) fn open_ids(children: &[ChildView]) -> Vec<CommandId> {
    children
        .iter()
        .filter(|c| !c.status.is_ended())
        .map(|c| c.id)
        .collect()
}

/// The reason a parent fails when a child ended with failure.
pub(super) fn failure(children: &[ChildView]) -> Option<String> {
    let failed = children
        .iter()
        .find(|c| c.status == CommandStatus::EndedWithFailure)?;
    Some(format!(
        "child {} failed: {}",
        failed.id,
        failed
            .failure_reason
            .as_deref()
            .unwrap_or("no reason recorded")
    ))
}

/// Serial mode: the children to start now. The next one when none is
/// running; once one failed (or the parent itself did), every one not
/// started yet, to fail without running. Each is returned once.
pub(super) fn serial_starts(
    extra: &mut Extra,
    parent_failed: bool,
) -> Vec<(CommandId, Option<String>)> {
    let started = |c: &ChildView, started: &[CommandId]| {
        c.status != CommandStatus::NotStarted || started.contains(&c.id)
    };
    let failed = parent_failed
        || extra
            .children
            .iter()
            .any(|c| c.status == CommandStatus::EndedWithFailure);
    let running = extra
        .children
        .iter()
        .any(|c| !c.status.is_ended() && started(c, &extra.started_children));
    let waiting: Vec<CommandId> = extra
        .children
        .iter()
        .filter(|c| !started(c, &extra.started_children))
        .map(|c| c.id)
        .collect();
    let mut starts = Vec::new();
    if failed {
        for id in waiting {
            extra.started_children.push(id);
            starts.push((
                id,
                Some("not run: an earlier child of its serial parent failed".to_owned()),
            ));
        }
    } else if !running && let Some(&next) = waiting.first() {
        extra.started_children.push(next);
        starts.push((next, None));
    }
    starts
}
