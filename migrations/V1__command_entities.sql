-- The command_entities table of oVirt's CommandCoordinator, every seed column with
-- the seed's types and defaults, plus what this runtime needs beyond it.
CREATE TABLE command_entities (
    command_id uuid NOT NULL,
    command_type integer NOT NULL,
    root_command_id uuid,
    command_parameters text,
    command_params_class character varying(256),
    created_at timestamp with time zone,
    status character varying(20) DEFAULT NULL::character varying,
    callback_enabled boolean DEFAULT false,
    callback_notified boolean DEFAULT false,
    return_value text,
    return_value_class character varying(256),
    job_id uuid,
    step_id uuid,
    executed boolean DEFAULT false,
    -- Beyond the seed. The seed's page says the table carries the parent; oVirt's
    -- table then had no index on it, so every child lookup was a scan.
    parent_command_id uuid,
    -- Time of the last change: what an operator sorts by when something is stuck.
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    -- When the command reached ENDED_*: what cleanup's retention counts from.
    ended_at timestamp with time zone,
    -- Why the command failed, readable by its parent and by operators.
    failure_reason text,
    CONSTRAINT pk_command_entities PRIMARY KEY (command_id)
);

CREATE INDEX idx_root_command_id ON command_entities (root_command_id)
    WHERE root_command_id IS NOT NULL;

CREATE INDEX idx_parent_command_id ON command_entities (parent_command_id)
    WHERE parent_command_id IS NOT NULL;

-- What a restart loads: managed commands whose end has not been delivered.
CREATE INDEX idx_command_entities_unnotified ON command_entities (command_id)
    WHERE callback_enabled AND callback_notified IS NOT TRUE;

-- What cleanup scans: ended roots, oldest first.
CREATE INDEX idx_command_entities_ended_roots
    ON command_entities ((coalesce(ended_at, updated_at)))
    WHERE parent_command_id IS NULL
      AND status IN ('ENDED_SUCCESSFULLY', 'ENDED_WITH_FAILURE');
