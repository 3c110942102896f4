-- Which plugin (file stem) owns each offering id, plan id and offering
-- name: the one that served it first. Another plugin declaring an owned id
-- or name is refused, whatever the load order, until the operator releases
-- the owner (`wasm-broker plugins release NAME`). kind is 'service-id',
-- 'plan-id' or 'service-name'.

CREATE TABLE catalog_owners (
    kind   TEXT NOT NULL,
    name   TEXT NOT NULL,
    plugin TEXT NOT NULL,
    PRIMARY KEY (kind, name)
) STRICT, WITHOUT ROWID;

-- A broker upgraded from a version without owners: what served each
-- service last owns its id and name from now on.
INSERT OR IGNORE INTO catalog_owners (kind, name, plugin)
    SELECT 'service-id', service_id, plugin FROM served_services;
INSERT OR IGNORE INTO catalog_owners (kind, name, plugin)
    SELECT 'service-name', service_name, plugin FROM served_services;
