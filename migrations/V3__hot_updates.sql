-- Let most status changes be HOT updates (heap-only: no index touched).
-- PostgreSQL can update a row in place only when no indexed column changes,
-- and columns in partial-index predicates and index expressions count. The V1
-- cleanup index (on coalesce(ended_at, updated_at), partial on status) and the
-- V2 cancellation index (partial on status) made every update non-HOT, so each
-- of a lifecycle's four updates wrote every index. Now only the update that
-- ends a command (ended_at, callback_notified) touches indexes.

-- Cleanup finds ended roots by their end time alone; status is checked on the row.
DROP INDEX idx_command_entities_ended_roots;
CREATE INDEX idx_command_entities_ended_roots ON command_entities (ended_at)
    WHERE parent_command_id IS NULL AND ended_at IS NOT NULL;

-- Cancellation requests are rare: index them alone, check status on the row.
DROP INDEX idx_command_entities_cancel_requested;
CREATE INDEX idx_command_entities_cancel_requested ON command_entities (command_id)
    WHERE cancel_requested_at IS NOT NULL;

-- Room on each page for the new row versions of HOT updates.
ALTER TABLE command_entities SET (fillfactor = 80);
