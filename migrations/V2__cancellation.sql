-- Cancellation requested (by the API or the CLI, possibly while no host runs):
-- a running host picks it up, a starting host honours it.
ALTER TABLE command_entities ADD COLUMN cancel_requested_at timestamp with time zone;

-- What hosts check: requests on commands that have not ended.
CREATE INDEX idx_command_entities_cancel_requested ON command_entities (command_id)
    WHERE cancel_requested_at IS NOT NULL
      AND status NOT IN ('ENDED_SUCCESSFULLY', 'ENDED_WITH_FAILURE');
