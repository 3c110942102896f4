-- Broker state. Records are JSON written and read by host/src/state; the
-- plain columns beside them are copies the queries filter on, written from
-- the same struct in the same statement, so they cannot drift apart.
-- Timestamps are UTC RFC 3339 text so the file stays readable with sqlite3.

CREATE TABLE instances (
    id              TEXT PRIMARY KEY NOT NULL,
    service_id      TEXT NOT NULL,
    plan_id         TEXT NOT NULL,
    status          TEXT NOT NULL,
    -- Instance fields, dashboard_url and metadata.
    record          TEXT NOT NULL,
    -- Latest OperationRecord, NULL before the first one.
    operation       TEXT,
    operation_phase TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- Startup looks for operations cut short by a crash (and polling resumes
-- in-progress ones) without scanning every instance.
CREATE INDEX instances_by_operation_phase ON instances (operation_phase);

CREATE TABLE bindings (
    id              TEXT PRIMARY KEY NOT NULL,
    -- Instances are never deleted (a deleted one stays as a tombstone), so a
    -- binding always has its instance row.
    instance_id     TEXT NOT NULL REFERENCES instances (id),
    status          TEXT NOT NULL,
    -- Binding fields.
    record          TEXT NOT NULL,
    -- BindingResult JSON. It holds the credentials, so it lives apart from
    -- everything else: encryption at rest replaces only this column.
    result          BLOB,
    operation       TEXT,
    operation_phase TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE INDEX bindings_by_instance ON bindings (instance_id, status);
CREATE INDEX bindings_by_operation_phase ON bindings (operation_phase);

-- Append-only history: one row each time a resource's operation record gets
-- a new id or phase, for operators and audits.
CREATE TABLE operations (
    seq            INTEGER PRIMARY KEY,
    resource_kind  TEXT NOT NULL CHECK (resource_kind IN ('instance', 'binding')),
    resource_id    TEXT NOT NULL,
    operation_id   TEXT NOT NULL,
    kind           TEXT NOT NULL,
    phase          TEXT NOT NULL,
    description    TEXT,
    at             TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE INDEX operations_by_resource ON operations (resource_kind, resource_id);

-- Each plugin's private key-value store; listing by prefix is a range scan
-- of the primary key.
CREATE TABLE plugin_kv (
    plugin TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  BLOB NOT NULL,
    PRIMARY KEY (plugin, key)
) STRICT, WITHOUT ROWID;
