-- Placement: a host may put a new hierarchy on another, less loaded host.
-- Such a row is inserted owned by that host with owner_epoch = 0 ("offered"):
-- the owner claims it (epoch 1) and starts it. This index finds a host's
-- offered rows without reading the rest of its work; rows inserted by their
-- own host (epoch 1) never enter it, so the write path pays nothing for it.
CREATE INDEX idx_command_entities_offered ON command_entities (owner_host)
    WHERE owner_epoch = 0 AND callback_notified IS NOT TRUE;
