-- What the operator dashboard (crate command-coordinator-dashboard) reads on
-- every request, so that no page scans the table. Both keys are set when a row
-- is inserted and never change afterwards, and ended_at (the partial index's
-- predicate) already had an index since V3: the status changes that V3 made
-- HOT stay HOT. What they cost is three index entries per command (two at its
-- insert, one at the update that ends it, which was not HOT already): about
-- 10 % of the flat write benchmark (docs/benchmarks.md, "The dashboard").
-- (Numbered with a gap after V3, so that migrations written at the same time
-- on other branches keep their numbers.)

-- The command list, newest first, paginated by key (created_at, command_id).
CREATE INDEX idx_command_entities_created ON command_entities (created_at, command_id);

-- Commands not ended, oldest first: the overview's oldest active commands and
-- stuck hierarchies, capped counts of what is running, and the list filtered
-- by statuses that are not ENDED_*.
CREATE INDEX idx_command_entities_not_ended ON command_entities (created_at, command_id)
    WHERE ended_at IS NULL;
