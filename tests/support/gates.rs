//! Gates that command code waits at until a test opens them, and the moments
//! events happened: how tests place faults by events instead of sleeps.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

static GATES: Mutex<Option<HashMap<String, Arc<Semaphore>>>> = Mutex::new(None);
static TIMES: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

fn gate(key: &str) -> Arc<Semaphore> {
    let mut gates = GATES.lock().unwrap_or_else(|p| p.into_inner());
    gates
        .get_or_insert_with(HashMap::new)
        .entry(key.to_owned())
        .or_insert_with(|| Arc::new(Semaphore::new(0)))
        .clone()
}

/// Lets `n` waiters of `key` through (now or when they arrive).
pub fn open_n(key: &str, n: usize) {
    gate(key).add_permits(n);
}

/// Lets one waiter of `key` through.
pub fn open(key: &str) {
    open_n(key, 1);
}

/// Waits at gate `key` until it is opened for this waiter.
pub async fn pass(key: &str) {
    gate(key).acquire().await.expect("gate").forget();
}

/// Records that `key` happened now.
pub fn mark(key: String) {
    let mut times = TIMES.lock().unwrap_or_else(|p| p.into_inner());
    times
        .get_or_insert_with(HashMap::new)
        .insert(key, Instant::now());
}

/// When `key` happened, if it did.
pub fn time_of(key: &str) -> Option<Instant> {
    let times = TIMES.lock().unwrap_or_else(|p| p.into_inner());
    times.as_ref().and_then(|t| t.get(key).copied())
}

/// Waits (at most a minute) until `condition` holds, looking every 5 ms.
pub async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
}
