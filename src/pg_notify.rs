//! Notices between hosts with PostgreSQL's LISTEN/NOTIFY: a cancellation
//! for the host that runs the command, a hierarchy handed over, a command
//! waited for on another host, its end. They only make things prompt:
//! every one of them is also found by polling (the cancellation check, the
//! host check, the remote waits), so a notice lost (a reconnect, a
//! failover) costs latency, never correctness. Payloads are ids only.
//!
//! The listener holds a connection of its own, made from the
//! [`DatabaseConfig`] (the pool's connections drop notifications): see
//! [`PgStore::with_notifications`](crate::PgStore::with_notifications).

use std::time::Duration;

use command_coordinator_actors::{CommandId, Notice};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::config::{DatabaseConfig, SchemaName};

/// First pause before the listener connects again after it lost its
/// connection; doubles up to [`MAX_RECONNECT_PAUSE`].
const MIN_RECONNECT_PAUSE: Duration = Duration::from_millis(100);
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// The channel of a schema's hosts (a quoted identifier in `LISTEN`, a
/// parameter of `pg_notify`). PostgreSQL cuts channel names to 63 bytes;
/// the schema name is at most 63 and validated, so the name stays plain.
pub(crate) fn channel(schema: &SchemaName) -> String {
    let mut name = format!("cc:{}", schema.as_str());
    name.truncate(63);
    name
}

/// A notice as sent: `cancel`, `adopt`, `wait:<id>`, `end:<id>`.
pub(crate) fn payload(notice: &Notice) -> String {
    match notice {
        Notice::Cancel => "cancel".into(),
        Notice::Adopt => "adopt".into(),
        Notice::Waited(id) => format!("wait:{id}"),
        Notice::Ended(id) => format!("end:{id}"),
        Notice::Offered(host) => format!("offer:{host}"),
        Notice::Resubscribed => "resubscribed".into(),
    }
}

fn parse(payload: &str) -> Option<Notice> {
    let id = |s: &str| s.parse::<CommandId>().ok();
    match payload.split_once(':') {
        None if payload == "cancel" => Some(Notice::Cancel),
        None if payload == "adopt" => Some(Notice::Adopt),
        Some(("wait", rest)) => id(rest).map(Notice::Waited),
        Some(("end", rest)) => id(rest).map(Notice::Ended),
        Some(("offer", rest)) => rest
            .parse::<uuid::Uuid>()
            .ok()
            .map(|u| Notice::Offered(command_coordinator_actors::HostId::from_uuid(u))),
        _ => None,
    }
}

/// Listens until the receiver is dropped, connecting again (with backoff)
/// whenever the connection is lost; after every (re)connection it sends
/// [`Notice::Resubscribed`], so that what was missed meanwhile is looked
/// for at once.
pub(crate) fn listen(
    config: DatabaseConfig,
    schema: SchemaName,
) -> mpsc::UnboundedReceiver<Notice> {
    let (tx, rx) = mpsc::unbounded_channel();
    actix::spawn(async move {
        let channel = channel(&schema);
        let mut pause = MIN_RECONNECT_PAUSE;
        while !tx.is_closed() {
            match session(&config, &channel, &tx).await {
                Ok(()) => pause = MIN_RECONNECT_PAUSE,
                Err(e) => {
                    tracing::debug!(error = %e, retry_in = ?pause, "notice listener: no connection; polling meanwhile");
                }
            }
            if tx.is_closed() {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
        }
    });
    rx
}

/// One connection's life: LISTEN, then forward notices until it breaks.
/// `Ok` when it had been listening (the caller reconnects at once).
async fn session(
    config: &DatabaseConfig,
    channel: &str,
    tx: &mpsc::UnboundedSender<Notice>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (client, mut messages) = config.connect_notifications().await?;
    // An identifier cannot be a parameter: the channel is built from a
    // validated schema name, and quoted.
    client
        .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
        .await?;
    let _ = tx.send(Notice::Resubscribed);
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(AsyncMessage::Notification(n)) => {
                    if let Some(notice) = parse(n.payload())
                        && tx.send(notice).is_err()
                    {
                        return Ok(());
                    }
                }
                Some(_) => {}
                None => return Ok(()),
            },
            () = tx.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_back() {
        let id = CommandId::new();
        for notice in [
            Notice::Cancel,
            Notice::Adopt,
            Notice::Waited(id),
            Notice::Ended(id),
            Notice::Offered(command_coordinator_actors::HostId::new()),
        ] {
            assert_eq!(parse(&payload(&notice)), Some(notice));
        }
        assert_eq!(parse("end:not-an-id"), None);
        assert_eq!(parse("something else"), None);
    }
}
