-- What a submit may ask for beyond "run this now" (docs/guide.md,
-- "Idempotency keys", "Delayed start", "Retrying transient errors").
--
-- idempotency_key: a caller's name for one submission. A second submit of the
--   same command type with the same key returns the first command's id
--   instead of inserting a second row: also when the first submit's reply
--   was lost, and also while the first is still uncommitted in another
--   transaction (the unique index makes the second wait for it). The key is
--   taken for as long as the row exists: cleanup frees it with the row.
-- not_before: no step of the command runs before this time. Set by a
--   delayed submit (the command starts then) and by a retry after a
--   transient error (the next attempt of execute or poll is not earlier).
-- failed_attempts: transient failures in a row of the current step (execute,
--   then poll); 0 again once the step succeeds. Persisted, so a restart
--   continues the count instead of starting over.
-- last_error: the message of the last transient failure, kept for operators.
--
-- None of the three changing columns is indexed, so the updates that write
-- them stay HOT (V3).
ALTER TABLE command_entities
    ADD COLUMN idempotency_key text,
    ADD COLUMN not_before timestamp with time zone,
    ADD COLUMN failed_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text;

-- The index holds only keyed rows, but building it reads the whole table
-- under a lock that blocks writes (seconds per few million rows). IF NOT
-- EXISTS lets an operator build it beforehand without blocking, with the
-- same statement and CONCURRENTLY (docs/operations.md, "Upgrading to V8").
CREATE UNIQUE INDEX IF NOT EXISTS idx_command_entities_idempotency
    ON command_entities (command_type, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
