-- One no-op command's lifecycle as the runtime writes it without batching:
-- five statements, each its own (autocommitted, durable) transaction.
-- One execution of this script = 1 lifecycle = 5 commits.
-- Run by ceiling.sh with `pgbench -M prepared` (so :id is bound as a uuid
-- parameter) and search_path set to the ceiling's schema.

-- 1. submit: the row, NOT_STARTED (a root is its own root).
WITH g AS (SELECT gen_random_uuid() AS id)
INSERT INTO command_entities (command_id, command_type, root_command_id,
    command_parameters, command_params_class, created_at, updated_at, status,
    callback_enabled, callback_notified, executed)
SELECT id, 1, id, '{"i":0}', 'load::Noop', now(), now(), 'NOT_STARTED', true, false, false
FROM g
RETURNING command_id AS id \gset
-- 2. the actor starts it.
UPDATE command_entities SET status = 'ACTIVE', updated_at = now() WHERE command_id = :id;
-- 3. execute returned: executed + the re-serialized command.
UPDATE command_entities SET executed = true, command_parameters = '{"i":0}', updated_at = now()
WHERE command_id = :id;
-- 4. the first poll succeeded: outcome + return value.
UPDATE command_entities SET status = 'SUCCEEDED', return_value = 'null', return_value_class = '()',
    updated_at = now()
WHERE command_id = :id;
-- 5. the end method ran: ENDED + notified + ended_at.
UPDATE command_entities SET status = 'ENDED_SUCCESSFULLY', callback_notified = true,
    ended_at = now(), updated_at = now()
WHERE command_id = :id;
