-- One batch of the cheapest cleanup PostgreSQL can do row by row: the :rows
-- oldest ended roots before the retention cutoff, by the cleanup index, with
-- none of the hierarchy checks the coordinator's cleanup adds. One execution
-- = :rows rows deleted, one commit. Used by cleanup_ceiling.sh.
DELETE FROM command_entities
WHERE command_id IN (
    SELECT command_id FROM command_entities
    WHERE parent_command_id IS NULL AND ended_at IS NOT NULL
      AND ended_at < now() - interval '7 days'
    ORDER BY ended_at
    LIMIT :rows);
