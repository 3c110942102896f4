-- As migrations/sqlite/0003_inventory.sql: `wasm-broker instances list`
-- reads only the rows it prints, newest first, optionally of one status or
-- one service.

CREATE INDEX instances_by_created ON instances (created_at, id);
CREATE INDEX instances_by_status ON instances (status, created_at, id);
CREATE INDEX instances_by_service ON instances (service_id, created_at, id);
