-- Which plugin version served each service last (its file stem and the
-- sha256 of its file), so that after a restart a plugin whose file is gone
-- can be loaded again, from the copy in the compile cache, for the
-- instances it left: they must stay fetchable, unbindable and
-- deprovisionable until none is left (a retired plugin). Rows of services
-- nothing serves and no instance uses are deleted.

CREATE TABLE served_services (
    service_id   TEXT PRIMARY KEY NOT NULL,
    service_name TEXT NOT NULL,
    plugin       TEXT NOT NULL,
    digest       TEXT NOT NULL,
    version      TEXT NOT NULL
) STRICT, WITHOUT ROWID;
