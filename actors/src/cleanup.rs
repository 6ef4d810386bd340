//! `CleanupActor`: expires ended hierarchies older than the retention.
//!
//! Like River's job cleaner: a config with named defaults, bounded batches with
//! a pause between them, a log line with the count, and a message
//! ([`RunCleanup`]) that lets tests run one pass and get the count back
//! instead of sleeping. Unlike oVirt's cleanup manager, it never removes a row
//! of a hierarchy that still has a command not ended, and it tells the
//! coordinator which rows went so that nothing of them stays in memory.

use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use tracing::{debug, info, warn};

use crate::config::CleanupConfig;
use crate::coordinator::{CoordinatorActor, Forget};
use crate::store::{CommandStore, StoreError};

pub(crate) struct CleanupActor {
    store: Arc<dyn CommandStore>,
    coordinator: Addr<CoordinatorActor>,
    config: CleanupConfig,
}

impl CleanupActor {
    pub(crate) fn new(
        store: Arc<dyn CommandStore>,
        coordinator: Addr<CoordinatorActor>,
        config: CleanupConfig,
    ) -> Self {
        Self {
            store,
            coordinator,
            config,
        }
    }
}

impl Actor for CleanupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.interval, |_, ctx| {
            ctx.notify(RunCleanup);
        });
    }
}

/// Runs one cleanup pass; answers how many rows were removed.
/// Stops the cleanup actor (see `Coordinator::shutdown`).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct StopCleanup;

impl Handler<StopCleanup> for CleanupActor {
    type Result = ();

    fn handle(&mut self, _: StopCleanup, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[derive(Message, Debug)]
#[rtype(result = "Result<u64, StoreError>")]
pub(crate) struct RunCleanup;

impl Handler<RunCleanup> for CleanupActor {
    // Atomic: a pass runs alone; a timer tick during a pass waits for it.
    type Result = AtomicResponse<Self, Result<u64, StoreError>>;

    fn handle(&mut self, _: RunCleanup, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let coordinator = self.coordinator.clone();
        let config = self.config.clone();
        AtomicResponse::new(Box::pin(
            async move {
                // A retention too large to subtract means "keep everything".
                let cutoff = chrono::Duration::from_std(config.retention)
                    .ok()
                    .and_then(|r| Utc::now().checked_sub_signed(r))
                    .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
                let mut total = 0u64;
                loop {
                    let batch = match store.remove_before_batch(cutoff, config.batch).await {
                        Ok(batch) => batch,
                        Err(e) => {
                            warn!(error = %e, removed = total, "cleanup pass stopped early; next pass will continue");
                            return Err(e);
                        }
                    };
                    total += batch.removed.len() as u64;
                    metrics::counter!(crate::metrics::CLEANUP_REMOVED)
                        .increment(batch.removed.len() as u64);
                    let full = batch.roots >= config.batch as usize;
                    if !batch.removed.is_empty() {
                        coordinator.do_send(Forget(batch.removed));
                    }
                    if !full {
                        break;
                    }
                    debug!(removed = total, "cleanup batch done; pausing");
                    actix::clock::sleep(config.pause).await;
                }
                if total > 0 {
                    info!(removed = total, %cutoff, "cleanup removed ended hierarchies");
                } else {
                    debug!(%cutoff, "cleanup found nothing to remove");
                }
                Ok(total)
            }
            .into_actor(self),
        ))
    }
}
