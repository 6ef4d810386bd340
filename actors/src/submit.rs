//! What a submit may ask for beyond "run this now": an idempotency key and a
//! later start. See [`Coordinator::submit_with`](crate::Coordinator::submit_with).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{CommandEntity, CommandId};

/// The longest idempotency key, in bytes: keys are names (an order number, a
/// request id, a hash), not payloads, and every one is in a unique index.
pub const MAX_KEY_BYTES: usize = 512;

/// Options of one submit ([`Coordinator::submit_with`](crate::Coordinator::submit_with)).
///
/// ```
/// use std::time::Duration;
/// use command_coordinator_actors::SubmitOptions;
///
/// let options = SubmitOptions::new()
///     .key("invoice-2026-0042")          // at most one such command per type
///     .delay(Duration::from_secs(15 * 60)); // and not before a quarter hour
/// assert_eq!(options.idempotency_key(), Some("invoice-2026-0042"));
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmitOptions {
    key: Option<String>,
    not_before: Option<DateTime<Utc>>,
}

impl SubmitOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// An idempotency key: while a command of the same type with this key
    /// exists (until cleanup removes its hierarchy), submitting again
    /// returns that command's id ([`Submitted::duplicate`]) and inserts
    /// nothing; also when the first submit's reply was lost, and also while
    /// the first is still uncommitted in another transaction (the second
    /// waits for it to commit or roll back).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Start no earlier than `at` (a time in the past starts at once). The
    /// row is persisted now; the command starts at `at`, within the
    /// coordinator's timer resolution, also after a restart of the host.
    pub fn not_before(mut self, at: DateTime<Utc>) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Start no earlier than `delay` from now.
    pub fn delay(self, delay: Duration) -> Self {
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        let at = Utc::now()
            .checked_add_signed(delay)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.not_before(at)
    }

    pub fn idempotency_key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub fn start_time(&self) -> Option<DateTime<Utc>> {
        self.not_before
    }

    /// Refuses what the database could not store or would store wrongly.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(key) = &self.key {
            if key.is_empty() {
                return Err("the idempotency key is empty".to_owned());
            }
            if key.len() > MAX_KEY_BYTES {
                return Err(format!(
                    "the idempotency key has {} bytes; at most {MAX_KEY_BYTES}",
                    key.len()
                ));
            }
            if key.contains('\0') {
                return Err("the idempotency key contains a NUL character".to_owned());
            }
        }
        if let Some(at) = self.not_before
            && at.timestamp() > 253_402_300_799
        {
            // PostgreSQL's timestamptz reaches further, but a start after
            // the year 9999 is a unit mistake, not a plan.
            return Err(format!("not_before {at} is after the year 9999"));
        }
        Ok(())
    }

    /// Writes the options into a new command's row.
    pub(crate) fn apply_to(&self, entity: &mut CommandEntity) {
        entity.idempotency_key = self.key.clone();
        entity.not_before = self.not_before;
    }
}

/// What a submit with [`SubmitOptions`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// The command's id: the new one, or the one already holding the key.
    pub id: CommandId,
    /// True when a command of this type with this key existed: nothing was
    /// inserted, and `id` is that command's.
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_cannot_be_stored_are_refused() {
        assert!(SubmitOptions::new().key("").validate().is_err());
        assert!(SubmitOptions::new().key("a\0b").validate().is_err());
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(SubmitOptions::new().key(long).validate().is_err());
        assert!(
            SubmitOptions::new()
                .key("k".repeat(MAX_KEY_BYTES))
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_delay_is_a_start_time_from_now_and_saturates() {
        let before = Utc::now();
        let at = SubmitOptions::new()
            .delay(Duration::from_secs(60))
            .start_time()
            .unwrap();
        assert!(at >= before + chrono::Duration::seconds(60));
        assert!(at <= Utc::now() + chrono::Duration::seconds(60));
        let far = SubmitOptions::new().delay(Duration::MAX);
        assert!(far.validate().is_err(), "absurd delays are refused");
    }
}
