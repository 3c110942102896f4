-- As migrations/sqlite/0005_catalog_owners.sql: which plugin owns each
-- offering id, plan id and offering name (the one that served it first).

CREATE TABLE catalog_owners (
    kind   TEXT NOT NULL,
    name   TEXT NOT NULL,
    plugin TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);

INSERT INTO catalog_owners (kind, name, plugin)
    SELECT 'service-id', service_id, plugin FROM served_services
    ON CONFLICT DO NOTHING;
INSERT INTO catalog_owners (kind, name, plugin)
    SELECT 'service-name', service_name, plugin FROM served_services
    ON CONFLICT DO NOTHING;
