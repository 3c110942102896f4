-- Broker state shared by every replica (broker process) of one broker: the
-- schema of migrations/sqlite, column for column, so both backends run the
-- same statements (host/src/state/tables.rs).
--
-- Timestamps are UTC RFC 3339 text, as in SQLite: they sort as they compare,
-- and the driver the store uses for both backends has no date type.
-- Identifiers and keys compare byte by byte (COLLATE "C"), as SQLite's
-- BINARY collation does: the key-value prefix listing depends on it.

CREATE TABLE instances (
    id              TEXT COLLATE "C" PRIMARY KEY,
    service_id      TEXT NOT NULL,
    plan_id         TEXT NOT NULL,
    status          TEXT NOT NULL,
    -- Instance fields, dashboard_url and metadata (JSON).
    record          TEXT NOT NULL,
    -- Latest OperationRecord (JSON), NULL before the first one.
    operation       TEXT,
    operation_phase TEXT,
    created_at      TEXT NOT NULL DEFAULT (to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')),
    updated_at      TEXT NOT NULL DEFAULT (to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
);

CREATE INDEX instances_by_operation_phase ON instances (operation_phase);

CREATE TABLE bindings (
    id              TEXT COLLATE "C" PRIMARY KEY,
    -- Instances are never deleted (a deleted one stays as a tombstone), so a
    -- binding always has its instance row.
    instance_id     TEXT COLLATE "C" NOT NULL REFERENCES instances (id),
    status          TEXT NOT NULL,
    record          TEXT NOT NULL,
    -- The encrypted BindingResult: the credentials live apart from
    -- everything else.
    result          BYTEA,
    operation       TEXT,
    operation_phase TEXT,
    created_at      TEXT NOT NULL DEFAULT (to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')),
    updated_at      TEXT NOT NULL DEFAULT (to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
);

CREATE INDEX bindings_by_instance ON bindings (instance_id, status);
CREATE INDEX bindings_by_operation_phase ON bindings (operation_phase);

-- Append-only history: one row each time a resource's operation record gets
-- a new id or phase, for operators and audits.
CREATE TABLE operations (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_kind  TEXT NOT NULL CHECK (resource_kind IN ('instance', 'binding')),
    resource_id    TEXT COLLATE "C" NOT NULL,
    operation_id   TEXT NOT NULL,
    kind           TEXT NOT NULL,
    phase          TEXT NOT NULL,
    description    TEXT,
    at             TEXT NOT NULL DEFAULT (to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
);

CREATE INDEX operations_by_resource ON operations (resource_kind, resource_id);

-- Each plugin's private key-value store; listing by prefix is a range scan
-- of the primary key.
CREATE TABLE plugin_kv (
    plugin TEXT COLLATE "C" NOT NULL,
    key    TEXT COLLATE "C" NOT NULL,
    value  BYTEA NOT NULL,
    PRIMARY KEY (plugin, key)
);
