//! Small helpers for what the CLI prints.

use std::io::{IsTerminal, Write};

use command_coordinator::CommandStatus;
use serde_json::Value;

use crate::db::{CliError, Result};

/// Whether to colour: stdout is a terminal and `NO_COLOR` is not set.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Writes `text` to stdout. A closed pipe (`| head`) is not an error.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes `value` to stdout as pretty JSON, the output of `--json`.
pub fn emit_json(value: &Value) {
    emit(&format!(
        "{}\n",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    ));
}

/// What an action will do, said before it asks: on stdout, unless stdout
/// carries `--json` (which must stay one JSON document), then on stderr.
pub fn note(text: &str, json: bool) {
    if json {
        eprint!("{text}");
    } else {
        emit(text);
    }
}

/// Goes on when `yes`, or when the user at the terminal answers yes to
/// `question`. With no terminal on stdin there is nobody to ask: refusing
/// beats hanging on a read, or taking end-of-input for consent.
pub fn confirm(question: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::usage(
            "not confirmed: stdin is not a terminal, so there is nobody to ask; \
             pass --yes to confirm (nothing was changed)",
        ));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .read_line(&mut answer)
        .map_err(|e| CliError::new(format!("cannot read the answer: {e}")))?;
    if is_yes(&answer) {
        Ok(())
    } else {
        Err(CliError::new("not confirmed: nothing was changed"))
    }
}

/// "y" or "yes", in any case; anything else (an empty line too) is no.
fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// `2 Merge`: the type number and the last path segment of its class.
pub fn type_label(command_type: i32, class: Option<&str>) -> String {
    match class.map(short_class).filter(|c| !c.is_empty()) {
        Some(name) => format!("{command_type} {name}"),
        None => command_type.to_string(),
    }
}

/// `live_merge::Merge` → `Merge`; `a::Wrapper<b::C>` → `Wrapper`;
/// `org.ovirt.RemoveSnapshotParameters` → `RemoveSnapshotParameters`.
pub fn short_class(class: &str) -> &str {
    let base = class.split('<').next().unwrap_or(class);
    base.rsplit([':', '.']).next().unwrap_or(base).trim()
}

/// `text` on one line: a reason with newlines or tabs would break the
/// table or the tree it is shown in.
pub fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most `max` characters, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// True for the statuses that mean the command failed.
pub fn is_failure(status: &str) -> bool {
    matches!(
        status,
        "FAILED" | "EXECUTION_FAILED" | "ENDED_WITH_FAILURE" | "UNKNOWN"
    )
}

/// The status name, coloured with ANSI escapes when `colour`: green success,
/// red failure, yellow running, grey not started.
pub fn paint(status: &str, colour: bool) -> String {
    if !colour {
        return status.to_owned();
    }
    let code = match status.parse::<CommandStatus>() {
        Ok(CommandStatus::EndedSuccessfully) => "32",
        Ok(CommandStatus::Active | CommandStatus::Succeeded) => "33",
        Ok(CommandStatus::NotStarted) => "90",
        _ if is_failure(status) => "31",
        _ => "35",
    };
    format!("\x1b[{code}m{status}\x1b[0m")
}

/// Pads `text` (which may hold ANSI escapes) to `width` visible characters.
pub fn pad(text: &str, visible_len: usize, width: usize) -> String {
    format!("{text}{}", " ".repeat(width.saturating_sub(visible_len)))
}

/// A table with a header row, columns separated by two spaces. Cells are
/// `(shown, visible length)` so that coloured cells line up.
pub fn table(header: &[&str], rows: &[Vec<(String, usize)>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, (_, len)) in row.iter().enumerate() {
            widths[i] = widths[i].max(*len);
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<(String, usize)>| {
        let last = cells.len() - 1;
        let mut text = String::new();
        for (i, (cell, len)) in cells.into_iter().enumerate() {
            if i == last {
                text.push_str(&cell);
            } else {
                text.push_str(&pad(&cell, len, widths[i]));
                text.push_str("  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(
        header
            .iter()
            .map(|h| (h.to_string(), h.chars().count()))
            .collect(),
    );
    for row in rows {
        line(row.clone());
    }
    out
}

/// A plain cell.
pub fn cell(text: impl Into<String>) -> (String, usize) {
    let text = text.into();
    let len = text.chars().count();
    (text, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_shortened() {
        assert_eq!(short_class("live_merge::Merge"), "Merge");
        assert_eq!(short_class("a::Wrapper<b::C>"), "Wrapper");
        assert_eq!(short_class("org.ovirt.Params"), "Params");
        assert_eq!(short_class("Merge"), "Merge");
        assert_eq!(type_label(2, Some("x::Merge")), "2 Merge");
        assert_eq!(type_label(2, None), "2");
    }

    #[test]
    fn only_yes_is_yes() {
        for yes in ["y", "Y", "yes", "YES\n", " yes \r\n"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yess", "ja", "q"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("ééé", 2), "éé…");
    }
}
