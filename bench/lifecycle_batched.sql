-- The same five lifecycle steps as lifecycle_single.sql, for :batch commands
-- per statement (ceiling.sh passes -D batch=100): what a perfect group commit
-- would send. Each statement is its own (autocommitted, durable) transaction.
-- One execution of this script = :batch lifecycles = 5 commits.

-- 1. submit :batch rows, NOT_STARTED; their ids come back as one uuid[].
WITH g AS (SELECT gen_random_uuid() AS id FROM generate_series(1, :batch)),
     ins AS (
        INSERT INTO command_entities (command_id, command_type, root_command_id,
            command_parameters, command_params_class, created_at, updated_at, status,
            callback_enabled, callback_notified, executed)
        SELECT id, 1, id, '{"i":0}', 'load::Noop', now(), now(), 'NOT_STARTED', true, false, false
        FROM g
        RETURNING command_id)
SELECT array_agg(command_id) AS ids FROM ins \gset
-- 2. ACTIVE.
UPDATE command_entities SET status = 'ACTIVE', updated_at = now()
WHERE command_id = ANY (:ids::uuid[]);
-- 3. executed + parameters.
UPDATE command_entities SET executed = true, command_parameters = '{"i":0}', updated_at = now()
WHERE command_id = ANY (:ids::uuid[]);
-- 4. SUCCEEDED + return value.
UPDATE command_entities SET status = 'SUCCEEDED', return_value = 'null', return_value_class = '()',
    updated_at = now()
WHERE command_id = ANY (:ids::uuid[]);
-- 5. ENDED + notified + ended_at.
UPDATE command_entities SET status = 'ENDED_SUCCESSFULLY', callback_notified = true,
    ended_at = now(), updated_at = now()
WHERE command_id = ANY (:ids::uuid[]);
