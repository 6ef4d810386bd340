//! Metrics recorded through the `metrics` facade, observed with a test
//! recorder (this binary installs it globally, so it holds this one test).

mod support;

use std::time::Duration;

use command_coordinator::{CommandStatus, actors::metrics as m};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::commands::{Behaviour, Job, Parent, tag};
use support::{builder, fresh_db, within};

#[actix::test]
async fn the_runtime_records_its_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test binary");

    let db = fresh_db().await;
    let co = builder(&db).start().await.unwrap();
    let t = tag();
    let parent = Parent::new(
        &t,
        "p",
        vec![
            Job::new(&t, "panics", Behaviour::PollPanicsOnce),
            Job::new(&t, "end_fails", Behaviour::EndFailsTimes(1)),
        ],
    );
    let outcome = within("parent", co.execute(parent)).await.unwrap();
    assert!(outcome.succeeded());
    let stuck = co
        .submit(Job::new(&t, "stuck", Behaviour::NeverDone))
        .await
        .unwrap();
    within("stuck job polled", async {
        while co.status(stuck).await.unwrap() != Some(CommandStatus::Active) {
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    co.cancel(stuck).await.unwrap();
    within("cancelled", co.wait_for(stuck)).await.unwrap();
    // Past the (default, one week) retention.
    db.sql(&format!(
        "UPDATE {} SET ended_at = now() - interval '8 days' WHERE ended_at IS NOT NULL",
        db.table()
    ))
    .await;
    assert!(co.cleanup_now().await.unwrap() >= 4);

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str| -> u64 {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Counter(v) => *v,
                _ => 0,
            })
            .sum()
    };
    let histogram_len = |name: &str| -> usize {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Histogram(v) => v.len(),
                _ => 0,
            })
            .sum()
    };
    let gauge = |name: &str| -> f64 {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Gauge(v) => v.into_inner(),
                _ => 0.0,
            })
            .sum()
    };
    // 4 commands × (ACTIVE, SUCCEEDED or FAILED, ENDED_*) at least.
    assert!(counter(m::TRANSITIONS) >= 12, "{}", counter(m::TRANSITIONS));
    assert!(counter(m::POLLS) >= 3);
    assert_eq!(counter(m::RESTARTS), 1);
    assert_eq!(counter(m::END_RETRIES), 1);
    assert_eq!(counter(m::CANCELLATIONS), 1);
    assert!(counter(m::CLEANUP_REMOVED) >= 4);
    assert_eq!(
        histogram_len(m::CHILD_TO_PARENT_SECONDS),
        2,
        "one per child"
    );
    assert!(histogram_len(m::WRITE_BATCH_SIZE) >= 1);
    assert_eq!(gauge(m::LIVE_COMMANDS), 0.0, "nothing live at the end");
    assert_eq!(
        gauge(m::COMMANDS),
        0.0,
        "the per-status gauges add up to nothing live"
    );
}
