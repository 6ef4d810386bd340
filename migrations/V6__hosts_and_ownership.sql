-- Several hosts on one database (docs/operations.md, "Several hosts").
--
-- Every process that runs a coordinator registers here under a fresh id and
-- keeps its row's heartbeat fresh on a connection of its own. Liveness is
-- judged on the database's clock only (now() - heartbeat_at), never by
-- comparing machines' clocks. A host is never alive again once it is
-- 'leaving' or 'dead': a process that finds itself marked dead joins again
-- under a new id. That is what makes a host id a fencing token.
CREATE TABLE command_hosts (
    host_id uuid NOT NULL,
    -- What operators call it (--host-name, the machine's name by default).
    name text NOT NULL,
    state varchar(10) NOT NULL DEFAULT 'alive'
        CONSTRAINT command_hosts_state CHECK (state IN ('alive', 'leaving', 'dead')),
    started_at timestamp with time zone NOT NULL DEFAULT now(),
    heartbeat_at timestamp with time zone NOT NULL DEFAULT now(),
    -- When it left or was declared dead.
    ended_at timestamp with time zone,
    -- Who declared it dead (a host id), for the post-mortem.
    ended_by uuid,
    -- The operating system's process id and the commands it ran at its last
    -- heartbeat: for operators, and for placing new hierarchies.
    pid integer,
    live_commands bigint NOT NULL DEFAULT 0,
    CONSTRAINT pk_command_hosts PRIMARY KEY (host_id)
);

-- Ownership. Every row of a hierarchy that has not been notified carries the
-- host that runs it; a host's writes take effect only on rows it owns (the
-- check rides in the writer's batched statements and the end transaction,
-- on the row being written: no extra round trip, no extra lock). Adoption
-- moves the rows of a dead host's hierarchies to the adopter and counts the
-- move in owner_epoch. NULL: no owner (rows written before V6, or by a tool):
-- any live host adopts them.
--
-- Neither column changes on a status update, so those stay HOT (V3).
ALTER TABLE command_entities
    ADD COLUMN owner_host uuid,
    ADD COLUMN owner_epoch integer NOT NULL DEFAULT 0;

-- What a host rebuilds (its own unfinished rows) and what adoption looks for
-- (rows of dead hosts, or of none): the V1 index of unfinished rows, keyed by
-- owner instead of id. Same rows, same predicate: it costs nothing more.
DROP INDEX idx_command_entities_unnotified;
CREATE INDEX idx_command_entities_owned ON command_entities (owner_host, created_at)
    WHERE callback_enabled AND callback_notified IS NOT TRUE;
