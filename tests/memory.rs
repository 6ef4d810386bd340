//! Long-lived commands don't leak: memory stays flat over many polls, and a
//! host holds nothing for commands that ended. One test per binary, so that
//! the process's RSS belongs to it alone.

mod support;

use std::time::Duration;

use support::commands::Poller;
use support::{builder, fresh_db, within};

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

async fn run_batch(co: &command_coordinator::Coordinator, commands: usize, polls: u32) {
    let mut running = Vec::with_capacity(commands);
    for _ in 0..commands {
        let co = co.clone();
        running.push(actix::spawn(async move {
            co.execute(Poller { polls, seen: 0 }).await
        }));
    }
    for r in running {
        let outcome = r.await.unwrap().unwrap();
        assert_eq!(outcome.output, Some(polls));
    }
}

#[actix::test]
async fn memory_stays_flat_over_many_polls_and_many_finished_commands() {
    let db = fresh_db().await;
    let co = builder(&db)
        // As short as timers go (they round up to 1 ms): many polls quickly.
        .poll_interval(Duration::from_micros(1))
        .max_poll_interval(Duration::from_micros(1))
        .start()
        .await
        .unwrap();

    // 100 commands × 1,000 polls = 100,000 polls, twice; the second round
    // must not need more memory than the first.
    within("first poll round", run_batch(&co, 100, 1_000)).await;
    let after_first = rss();
    within("second poll round", run_batch(&co, 100, 1_000)).await;
    let growth = rss().saturating_sub(after_first);
    assert!(
        growth < 2 << 20,
        "100,000 more polls grew RSS by {growth} bytes"
    );

    // Commands run to the end leave nothing behind. The allocator needs a few
    // batches to reach its working set; after that, three more batches of
    // 5,000 must not grow RSS (a leak of 150 bytes per command would).
    for _ in 0..3 {
        within("warm-up batch", run_batch(&co, 5_000, 1)).await;
    }
    let after_warm_up = rss();
    for _ in 0..3 {
        within("measured batch", run_batch(&co, 5_000, 1)).await;
    }
    let growth = rss().saturating_sub(after_warm_up);
    assert!(
        growth < 2 << 20,
        "15,000 more finished commands grew RSS by {growth} bytes ({} per command)",
        growth / 15_000
    );
    assert_eq!(co.live_count().await.unwrap(), 0);
}
