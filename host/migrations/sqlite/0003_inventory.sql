-- `wasm-broker instances list` shows the newest instances first, optionally
-- of one status or one service, and stops after a page: with these indexes
-- it reads only the rows it prints, however many instances there are.

CREATE INDEX instances_by_created ON instances (created_at, id);
CREATE INDEX instances_by_status ON instances (status, created_at, id);
CREATE INDEX instances_by_service ON instances (service_id, created_at, id);
