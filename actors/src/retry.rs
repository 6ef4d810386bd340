//! How a command type retries transient errors of `execute` and `poll`.
//!
//! A [`CommandError::transient`](crate::CommandError::transient) says "this
//! may work if tried again" (a timeout, a connection refused, a 503); any
//! other error is permanent and fails the command at once, as before. A type
//! opts in with [`Command::RETRY`](crate::Command::RETRY):
//!
//! ```
//! use std::time::Duration;
//! use command_coordinator_actors::RetryPolicy;
//!
//! // Up to 5 tries of each step: waits of about 1 s, 2 s, 4 s, 8 s between
//! // them (each somewhere in its upper half, at random), never over 30 s.
//! const RETRY: RetryPolicy = RetryPolicy::exponential(5)
//!     .initial_backoff(Duration::from_secs(1))
//!     .max_backoff(Duration::from_secs(30));
//! assert!(RETRY.validate().is_ok());
//! ```
//!
//! The count of failures in a row and the last error are stored in the
//! command's row (`failed_attempts`, `last_error`), so that a restart
//! continues the count instead of starting over, and operators see both.
//! The wait before the next try is computed here, purely: the "random" part
//! is derived from the command's id and the attempt number, so commands
//! that failed together (their database went away) spread their retries,
//! and a test can predict every wait.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::model::CommandId;

/// The first wait of [`RetryPolicy::exponential`].
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait of [`RetryPolicy::exponential`].
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// The most tries a policy may ask for: a step that fails this often is
/// not transiently failing.
pub const MAX_ATTEMPTS: u32 = 1_000;

/// How often, and after how long, a step that failed transiently is tried
/// again. See the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of one step in all, the first included: 1 never retries.
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles after each one.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
    /// Wait a random time in the upper half of the computed wait (on by
    /// default): without it, every command that failed at the same moment
    /// retries at the same moment.
    pub jitter: bool,
}

impl RetryPolicy {
    /// No retries: a transient error fails the command like any other (the
    /// default of every command type).
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        initial_backoff: DEFAULT_INITIAL_BACKOFF,
        max_backoff: DEFAULT_MAX_BACKOFF,
        jitter: true,
    };

    /// Up to `max_attempts` tries of each step, waiting
    /// [`DEFAULT_INITIAL_BACKOFF`] after the first failure and twice as long
    /// after each further one, up to [`DEFAULT_MAX_BACKOFF`], with jitter.
    pub const fn exponential(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..Self::NONE
        }
    }

    /// The same policy with this first wait.
    pub const fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// The same policy with this longest wait.
    pub const fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// The same policy waiting exactly the computed times.
    pub const fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Checked when the type is registered: a policy that cannot work is a
    /// start-up error, not a surprise at the first failure.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            return Err(format!(
                "max_attempts must be between 1 and {MAX_ATTEMPTS} (it counts the first try), not {}",
                self.max_attempts
            ));
        }
        if self.initial_backoff < Duration::from_millis(1) {
            return Err("initial_backoff must be at least 1 ms".to_owned());
        }
        if self.max_backoff < self.initial_backoff {
            return Err(format!(
                "max_backoff ({:?}) must not be shorter than initial_backoff ({:?})",
                self.max_backoff, self.initial_backoff
            ));
        }
        if self.max_backoff > Duration::from_secs(7 * 24 * 3600) {
            return Err(format!(
                "max_backoff ({:?}) must be at most 7 days",
                self.max_backoff
            ));
        }
        Ok(())
    }

    /// True when a step that failed `failed` times in a row is tried again.
    pub fn retries_after(&self, failed: u32) -> bool {
        failed < self.max_attempts
    }

    /// The wait before the next try of `command`'s step after its
    /// `failed`-th failure in a row (1 for the first).
    pub fn backoff(&self, command: CommandId, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(40);
        let full = self
            .initial_backoff
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_backoff);
        if !self.jitter {
            return full;
        }
        // Upper half, by a hash of (id, attempt): spread, yet reproducible.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        command.hash(&mut hasher);
        failed.hash(&mut hasher);
        let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
        full.mul_f64(0.5 + fraction / 2.0)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_without_jitter() {
        let policy = RetryPolicy::exponential(10)
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(500))
            .without_jitter();
        let id = CommandId::new();
        let waits: Vec<_> = (1..=5).map(|n| policy.backoff(id, n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        // No overflow however long the run of failures.
        assert_eq!(policy.backoff(id, u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_in_the_upper_half_is_reproducible_and_spreads() {
        let policy = RetryPolicy::exponential(10).initial_backoff(Duration::from_secs(8));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let id = CommandId::new();
            let wait = policy.backoff(id, 1);
            assert!(wait >= Duration::from_secs(4) && wait <= Duration::from_secs(8));
            assert_eq!(wait, policy.backoff(id, 1));
            seen.insert(wait.as_millis());
        }
        assert!(seen.len() > 50, "jitter spreads the waits: {}", seen.len());
    }

    #[test]
    fn retries_until_max_attempts_tries() {
        let policy = RetryPolicy::exponential(3);
        assert!(policy.retries_after(1));
        assert!(policy.retries_after(2));
        assert!(!policy.retries_after(3));
        assert!(!RetryPolicy::NONE.retries_after(1));
    }

    #[test]
    fn policies_that_cannot_work_are_refused() {
        assert!(RetryPolicy::exponential(0).validate().is_err());
        assert!(
            RetryPolicy::exponential(MAX_ATTEMPTS + 1)
                .validate()
                .is_err()
        );
        assert!(
            RetryPolicy::exponential(3)
                .initial_backoff(Duration::ZERO)
                .validate()
                .is_err()
        );
        let inverted = RetryPolicy::exponential(3)
            .initial_backoff(Duration::from_secs(10))
            .max_backoff(Duration::from_secs(1));
        assert!(inverted.validate().unwrap_err().contains("max_backoff"));
        assert!(RetryPolicy::NONE.validate().is_ok());
    }
}
