-- As migrations/sqlite/0004_served_services.sql: which plugin version
-- served each service last, so a retired plugin can be loaded again after
-- a restart for the instances it left.

CREATE TABLE served_services (
    service_id   TEXT PRIMARY KEY NOT NULL,
    service_name TEXT NOT NULL,
    plugin       TEXT NOT NULL,
    digest       TEXT NOT NULL,
    version      TEXT NOT NULL
);
