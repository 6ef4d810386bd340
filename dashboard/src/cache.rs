//! Exact counts over the whole table, computed in the background.
//!
//! Counting a million rows by status is a sequential scan (a status index
//! would cost every status change its HOT update), so no request does it: one
//! task per dashboard counts every [`Counts::refresh`] (or ten times as long as
//! the last count took, whichever is longer), and the overview shows the last
//! result with its age. The same scan yields the last hour's throughput.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use crate::Inner;
use crate::queries::{DbError, Sql};

/// Minutes of throughput the overview draws.
pub(crate) const MINUTES: usize = 60;

/// The background count of one dashboard.
pub(crate) struct Counts {
    refresh: Duration,
    started: AtomicBool,
    /// Replaced whole by each count; readers clone the `Arc`.
    last: Mutex<Arc<Snapshot>>,
}

/// One count of the whole table.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// When the count finished; `None` before the first.
    pub(crate) at: Option<DateTime<Utc>>,
    pub(crate) took: Duration,
    /// Rows by status (NULL included), largest first.
    pub(crate) by_status: Vec<(Option<String>, i64)>,
    /// The last [`MINUTES`] minutes, oldest first: (minute, ended
    /// successfully, ended with failure).
    pub(crate) per_minute: Vec<(DateTime<Utc>, i64, i64)>,
    /// The last count failed (the previous numbers are kept).
    pub(crate) error: Option<String>,
}

impl Snapshot {
    pub(crate) fn total(&self) -> i64 {
        self.by_status.iter().map(|(_, n)| n).sum()
    }
}

impl Counts {
    pub(crate) fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            started: AtomicBool::new(false),
            last: Mutex::new(Arc::new(Snapshot::default())),
        }
    }

    /// The latest count.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.last.lock().expect("counts lock").clone()
    }

    /// Starts the counting task on the current actix-web worker, once. It
    /// holds only a weak reference, so it ends with the dashboard.
    pub(crate) fn ensure_started(inner: &Arc<Inner>) {
        if inner.counts.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(inner);
        actix_web::rt::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let began = Instant::now();
                let result = count_all(&inner).await;
                let took = began.elapsed();
                let previous = inner.counts.snapshot();
                let next = match result {
                    Ok((by_status, per_minute)) => Snapshot {
                        at: Some(Utc::now()),
                        took,
                        by_status,
                        per_minute,
                        error: None,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e.message, "dashboard: counting commands failed");
                        Snapshot {
                            at: previous.at,
                            took: previous.took,
                            by_status: previous.by_status.clone(),
                            per_minute: previous.per_minute.clone(),
                            error: Some(e.message),
                        }
                    }
                };
                *inner.counts.last.lock().expect("counts lock") = Arc::new(next);
                let wait = inner.counts.refresh.max(took * 10);
                drop(inner);
                actix_web::rt::time::sleep(wait).await;
            }
        });
    }
}

type Counted = (Vec<(Option<String>, i64)>, Vec<(DateTime<Utc>, i64, i64)>);

/// One scan: rows by status, and ends per minute over the last hour.
async fn count_all(inner: &Inner) -> Result<Counted, DbError> {
    let now = Utc::now();
    let this_minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
    let first = this_minute - TimeDelta::minutes(MINUTES as i64 - 1);
    let mut sql = Sql::new(String::new());
    let since = sql.bind(first);
    sql.push(&format!(
        "SELECT status, CASE WHEN ended_at >= {since} \
                  THEN date_trunc('minute', ended_at) END AS minute, count(*) \
         FROM {} GROUP BY 1, 2",
        inner.table
    ));
    let rows = inner.query(&sql).await?;
    let mut by_status: Vec<(Option<String>, i64)> = Vec::new();
    let mut per_minute: Vec<(DateTime<Utc>, i64, i64)> = (0..MINUTES as i64)
        .map(|i| (first + TimeDelta::minutes(i), 0, 0))
        .collect();
    for row in &rows {
        let status: Option<String> = row.get(0);
        let minute: Option<DateTime<Utc>> = row.get(1);
        let n: i64 = row.get(2);
        match by_status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, total)) => *total += n,
            None => by_status.push((status.clone(), n)),
        }
        if let Some(m) = minute {
            let slot = (m - first).num_minutes();
            if let Some(entry) = usize::try_from(slot)
                .ok()
                .and_then(|i| per_minute.get_mut(i))
            {
                match status.as_deref() {
                    Some("ENDED_SUCCESSFULLY") => entry.1 += n,
                    Some("ENDED_WITH_FAILURE") => entry.2 += n,
                    _ => {}
                }
            }
        }
    }
    by_status.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok((by_status, per_minute))
}
