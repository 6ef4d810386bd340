-- The cancellation check runs every second on every host. Its partial index
-- kept every command ever cancelled until cleanup removed the row, so each
-- check grew with the past. Only commands not yet notified are of interest.
-- callback_notified changes once per command, at its end, and already
-- belongs to idx_command_entities_unnotified's predicate, so this costs no
-- HOT update that was not lost already.
--
-- Plain (not CONCURRENTLY) CREATE INDEX: refinery runs each migration in a
-- transaction. The index is small (cancelled, unnotified rows only) and is
-- built in a moment even on a large table; see docs/operations.md
-- ("Upgrading") for building it beforehand on a very large one.
DROP INDEX idx_command_entities_cancel_requested;
CREATE INDEX idx_command_entities_cancel_requested ON command_entities (command_id)
    WHERE cancel_requested_at IS NOT NULL AND callback_notified IS NOT TRUE;
