//! Listing commands from the store without loading actors:
//! [`Coordinator::list`](crate::Coordinator::list) and the filters it takes.
//!
//! Pages are keyed by `(created_at, command_id)`, newest first: a page is
//! found by an index range, however deep, and rows inserted meanwhile never
//! shift the next page (an offset would skip or repeat them).
//!
//! ```no_run
//! # use command_coordinator_actors::*;
//! # async fn demo(coordinator: Coordinator) -> Result<(), CoordinatorError> {
//! let mut filter = ListFilter::default();
//! filter.statuses = vec![CommandStatus::Active];
//! filter.limit = 50;
//! loop {
//!     let page = coordinator.list(&filter).await?;
//!     for row in &page.rows {
//!         println!("{} {}", row.id, row.status);
//!     }
//!     match page.next {
//!         Some(next) => filter.after = Some(next),
//!         None => break,
//!     }
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::model::{CommandEntity, CommandId, CommandStatus};
use crate::store::BadRow;

/// Rows per page unless the filter says otherwise.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Most rows per page.
pub const MAX_LIST_LIMIT: u32 = 1_000;

/// What [`Coordinator::list`](crate::Coordinator::list) returns; every field
/// narrows the list (empty or `None`: no condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListFilter {
    /// Any of these statuses.
    pub statuses: Vec<CommandStatus>,
    /// This command type.
    pub command_type: Option<i32>,
    /// The hierarchy of this root (the root included).
    pub root: Option<CommandId>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Rows per page: 1 to [`MAX_LIST_LIMIT`].
    pub limit: u32,
    /// The page after this one ([`Page::next`] of the previous page).
    pub after: Option<Cursor>,
}

impl Default for ListFilter {
    fn default() -> Self {
        Self {
            statuses: Vec::new(),
            command_type: None,
            root: None,
            created_after: None,
            created_before: None,
            limit: DEFAULT_LIST_LIMIT,
            after: None,
        }
    }
}

impl ListFilter {
    /// Checks the filter; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.limit == 0 || self.limit > MAX_LIST_LIMIT {
            return Err(format!(
                "limit {} must be between 1 and {MAX_LIST_LIMIT}",
                self.limit
            ));
        }
        if let (Some(after), Some(before)) = (self.created_after, self.created_before)
            && after >= before
        {
            return Err(format!(
                "created_after ({after}) must be earlier than created_before ({before})"
            ));
        }
        Ok(())
    }
}

/// Where a page ends: the last row's `(created_at, command_id)`. Written as
/// text (`<microseconds since the epoch>.<id>`) for URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: CommandId,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.created_at.timestamp_micros(), self.id)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a page cursor (expected <microseconds>.<command id>)");
        let (micros, id) = s.split_once('.').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        Ok(Cursor {
            created_at: DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// One page of rows, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub rows: Vec<CommandEntity>,
    /// Rows of the page that could not be read (by id, with why).
    pub bad_rows: Vec<BadRow>,
    /// The cursor of the next page; `None` on the last one.
    pub next: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_bad_filters_are_named() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: CommandId::new(),
        };
        assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
        assert!("nonsense".parse::<Cursor>().is_err());
        let mut filter = ListFilter::default();
        assert_eq!(filter.validate(), Ok(()));
        filter.limit = 0;
        assert!(filter.validate().unwrap_err().contains("limit"));
        filter.limit = 10;
        filter.created_after = Some(Utc::now());
        filter.created_before = filter.created_after;
        assert!(filter.validate().unwrap_err().contains("created_after"));
    }
}
