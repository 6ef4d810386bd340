//! Long-lived commands don't leak: memory stays flat over many polls, and a
//! host holds nothing for commands that ended. One test per binary, so that
//! the process's RSS belongs to it alone.

mod support;

use std::time::Duration;

use support::commands::Poller;
use support::{builder, fresh_db, within};

/// Bytes of heap in use (glibc's `mallinfo2().uordblks`): what a leak grows.
/// Unlike RSS, it does not move when the allocator keeps freed memory or
/// when a burst sets a new peak. (Other C libraries: RSS, a coarser measure.)
#[cfg(not(target_env = "gnu"))]
fn heap_in_use() -> u64 {
    rss()
}

#[cfg(target_env = "gnu")]
fn heap_in_use() -> u64 {
    #[repr(C)]
    struct MallInfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }
    unsafe extern "C" {
        fn mallinfo2() -> MallInfo2;
    }
    // SAFETY: mallinfo2 only reads the allocator's statistics (glibc >= 2.33).
    let info = unsafe { mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

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

    // Commands run to the end leave nothing behind. The runtime's tables
    // (maps, batch vectors, connection buffers) grow in steps to the largest
    // batch seen so far: measured with mallinfo2, the heap in use steps up
    // until about 12 batches, then stays flat, but a rare larger batch can
    // add one more step of 1-2 MiB later. A leak grows every window alike,
    // a step only one: after 12 warm-up batches, of two windows of eight
    // batches of 5,000, the smaller growth must stay under 2 MiB (a leak of
    // 53 bytes per command would not). RSS is no measure here: it moves
    // with every new peak of a burst.
    for _ in 0..12 {
        within("warm-up batch", run_batch(&co, 5_000, 1)).await;
    }
    let mut growths = Vec::new();
    for _ in 0..2 {
        let before = heap_in_use();
        for _ in 0..8 {
            within("measured batch", run_batch(&co, 5_000, 1)).await;
        }
        growths.push(heap_in_use().saturating_sub(before));
    }
    let growth = growths.iter().copied().min().unwrap();
    assert!(
        growth < 2 << 20,
        "40,000 more finished commands grew the heap by {growth} bytes ({} per command) \
         in each of two windows ({growths:?})",
        growth / 40_000
    );
    assert_eq!(co.live_count().await.unwrap(), 0);
}
