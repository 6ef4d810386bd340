//! `hosts`: the registry of hosts (V6): who runs, how fresh each heartbeat
//! is on the database's clock, and how much unfinished work each owns;
//! plus the work no live host owns (waiting to be adopted).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::db::{Db, Result};
use crate::duration::human;
use crate::output::{cell, emit, emit_json, table};

/// Hosts that left or died longer ago than this are shown only with `--all`.
pub const RECENT: Duration = Duration::from_secs(3600);

struct Host {
    id: Uuid,
    name: String,
    state: String,
    heartbeat_age: f64,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    pid: Option<i32>,
    live: i64,
    hierarchies: i64,
    rows: i64,
}

pub async fn run(db: &Db, all: bool, json: bool) -> Result<()> {
    let t = db.table();
    let h = db.hosts();
    let recent = RECENT.as_secs_f64();
    let hosts: Vec<Host> = db
        .query(
            &format!(
                "SELECT h.host_id, h.name, h.state, \
                        extract(epoch FROM now() - h.heartbeat_at)::float8, \
                        h.started_at, h.ended_at, h.pid, h.live_commands, \
                        coalesce(o.hierarchies, 0), coalesce(o.rows, 0) \
                 FROM {h} h \
                 LEFT JOIN ( \
                   SELECT owner_host, \
                          count(DISTINCT coalesce(root_command_id, command_id)) AS hierarchies, \
                          count(*) AS rows \
                   FROM {t} WHERE callback_enabled AND callback_notified IS NOT TRUE \
                   GROUP BY owner_host) o ON o.owner_host = h.host_id \
                 WHERE $1 OR h.state = 'alive' OR coalesce(o.rows, 0) > 0 \
                    OR h.ended_at > now() - make_interval(secs => $2) \
                 ORDER BY h.state = 'alive' DESC, h.started_at DESC"
            ),
            &[&all, &recent],
        )
        .await?
        .iter()
        .map(|r| Host {
            id: r.get(0),
            name: r.get(1),
            state: r.get(2),
            heartbeat_age: r.get(3),
            started_at: r.get(4),
            ended_at: r.get(5),
            pid: r.get(6),
            live: r.get(7),
            hierarchies: r.get(8),
            rows: r.get(9),
        })
        .collect();
    // Unfinished work whose owner is not alive (or none): what adoption
    // takes next.
    let orphaned = db
        .query(
            &format!(
                "SELECT count(DISTINCT coalesce(c.root_command_id, c.command_id)), count(*) \
                 FROM {t} c LEFT JOIN {h} o ON o.host_id = c.owner_host \
                 WHERE c.callback_enabled AND c.callback_notified IS NOT TRUE \
                   AND (c.owner_host IS NULL OR o.state IS DISTINCT FROM 'alive')"
            ),
            &[],
        )
        .await?;
    let (orphan_hierarchies, orphan_rows): (i64, i64) =
        orphaned.first().map_or((0, 0), |r| (r.get(0), r.get(1)));

    if json {
        let list: Vec<_> = hosts
            .iter()
            .map(|x| {
                json!({
                    "host_id": x.id,
                    "name": x.name,
                    "state": x.state,
                    "heartbeat_age_seconds": (x.heartbeat_age * 1000.0).round() / 1000.0,
                    "started_at": x.started_at,
                    "ended_at": x.ended_at,
                    "pid": x.pid,
                    "live_commands": x.live,
                    "owned_hierarchies": x.hierarchies,
                    "owned_unfinished_rows": x.rows,
                })
            })
            .collect();
        emit_json(&json!({
            "schema": db.schema().as_str(),
            "hosts": list,
            "without_live_owner": {
                "hierarchies": orphan_hierarchies,
                "rows": orphan_rows,
            },
        }));
        return Ok(());
    }

    let now = Utc::now();
    let mut out = String::new();
    if hosts.is_empty() {
        out.push_str(&format!(
            "no hosts{} on schema {}\n",
            if all {
                ""
            } else {
                " running or ended in the last hour"
            },
            db.schema()
        ));
    } else {
        let rows: Vec<_> = hosts
            .iter()
            .map(|x| {
                let id = x.id.to_string();
                let age = chrono::TimeDelta::milliseconds((x.heartbeat_age * 1000.0) as i64);
                vec![
                    cell(id[..8].to_owned()),
                    cell(x.name.clone()),
                    cell(match (x.state.as_str(), x.ended_at) {
                        ("alive", _) => "alive".to_owned(),
                        (state, Some(ended)) => format!("{state} {} ago", human(now - ended)),
                        (state, None) => state.to_owned(),
                    }),
                    cell(human(age)),
                    cell(x.pid.map_or("-".into(), |p| p.to_string())),
                    cell(x.live.to_string()),
                    cell(format!(
                        "{} {} ({} rows)",
                        x.hierarchies,
                        if x.hierarchies == 1 {
                            "hierarchy"
                        } else {
                            "hierarchies"
                        },
                        x.rows
                    )),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "HOST",
                "NAME",
                "STATE",
                "HEARTBEAT AGE",
                "PID",
                "LIVE",
                "OWNS",
            ],
            &rows,
        ));
    }
    out.push_str(&format!(
        "\nunfinished, without a live owner (adopted by the next live host): \
         {orphan_hierarchies} hierarchies ({orphan_rows} rows)\n"
    ));
    emit(&out);
    Ok(())
}
