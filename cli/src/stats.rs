//! `stats`: counts by status and type, the oldest unfinished command, and
//! what cleanup would remove.

use std::time::Duration;

use chrono::{DateTime, Utc};
use command_coordinator::{CommandId, CommandStatus, CommandStore};
use serde_json::json;

use crate::db::{CliError, Db, ENDED, Result};
use crate::duration::{before_now, human};
use crate::output::{cell, colour, emit, emit_json, paint, short_class, table, type_label};

pub async fn run(db: &Db, retention: Duration, json: bool) -> Result<()> {
    let t = db.table();
    let cutoff = before_now(retention).map_err(CliError::usage)?;

    let mut by_status: Vec<(Option<String>, i64)> = db
        .query(
            &format!("SELECT status, count(*) FROM {t} GROUP BY status"),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Lifecycle order; statuses this version does not know at the end.
    let rank = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| s.parse::<CommandStatus>().ok())
            .and_then(|s| CommandStatus::ALL.iter().position(|a| *a == s))
            .unwrap_or(CommandStatus::ALL.len())
    };
    by_status.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(a.0.cmp(&b.0)));
    let total: i64 = by_status.iter().map(|(_, n)| n).sum();

    let by_type: Vec<(i32, Option<String>, i64)> = db
        .query(
            &format!(
                "SELECT command_type, min(command_params_class), count(*) FROM {t} \
                 GROUP BY command_type ORDER BY command_type"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();

    let oldest: Option<(CommandId, Option<DateTime<Utc>>, Option<String>)> = db
        .query(
            &format!(
                "SELECT command_id, created_at, status FROM {t} \
                 WHERE status IS NULL OR status NOT IN {ENDED} \
                 ORDER BY created_at NULLS LAST, command_id LIMIT 1"
            ),
            &[],
        )
        .await?
        .first()
        .map(|r| (CommandId::from_uuid(r.get(0)), r.get(1), r.get(2)));

    let cancel_pending = db
        .store
        .cancel_requested()
        .await
        .map_err(|e| db.store_error("count the cancellations not carried out yet", e))?
        .len();
    let expired = db
        .store
        .expired(cutoff)
        .await
        .map_err(|e| db.store_error("count what cleanup would remove", e))?;

    let now = Utc::now();
    if json {
        let statuses: serde_json::Map<String, serde_json::Value> = by_status
            .iter()
            .map(|(s, n)| (s.clone().unwrap_or_else(|| "NULL".into()), json!(n)))
            .collect();
        let types: Vec<_> = by_type
            .iter()
            .map(|(ty, class, n)| {
                json!({
                    "command_type": ty,
                    "type": class.as_deref().map(short_class),
                    "count": n,
                })
            })
            .collect();
        let value = json!({
            "schema": db.schema().as_str(),
            "total": total,
            "by_status": statuses,
            "by_type": types,
            "oldest_not_ended": oldest.as_ref().map(|(id, created, status)| json!({
                "id": id,
                "status": status,
                "created_at": created,
                "age_seconds": created.map(|c| (now - c).num_seconds()),
            })),
            "cancel_requested_not_ended": cancel_pending,
            "cleanup": {
                "retention_seconds": retention.as_secs(),
                "cutoff": cutoff,
                "hierarchies": expired.hierarchies,
                "rows": expired.rows,
            },
        });
        emit_json(&value);
        return Ok(());
    }

    let colour = colour();
    let mut out = format!("schema {}: {total} commands\n\n", db.schema());
    let rows: Vec<_> = by_status
        .iter()
        .map(|(s, n)| {
            let name = s.as_deref().unwrap_or("NULL");
            vec![
                (paint(name, colour), name.chars().count()),
                cell(n.to_string()),
            ]
        })
        .collect();
    out.push_str(&table(&["STATUS", "COUNT"], &rows));
    out.push('\n');
    let rows: Vec<_> = by_type
        .iter()
        .map(|(ty, class, n)| vec![cell(type_label(*ty, class.as_deref())), cell(n.to_string())])
        .collect();
    out.push_str(&table(&["TYPE", "COUNT"], &rows));
    out.push('\n');
    match &oldest {
        None => out.push_str("oldest not ended: none, every command ended\n"),
        Some((id, created, status)) => {
            let status = status.as_deref().unwrap_or("NULL");
            out.push_str(&format!(
                "oldest not ended: {id}  {}  {} old\n",
                paint(status, colour),
                created.map_or("?".into(), |c| human(now - c))
            ));
        }
    }
    out.push_str(&format!(
        "cancellation requested, not ended yet: {cancel_pending}\n"
    ));
    out.push_str(&format!(
        "waiting for cleanup (ended before {}, retention {}): {} hierarchies, {} rows\n",
        cutoff.format("%Y-%m-%d %H:%M:%S UTC"),
        human(chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX)),
        expired.hierarchies,
        expired.rows
    ));
    emit(&out);
    Ok(())
}
