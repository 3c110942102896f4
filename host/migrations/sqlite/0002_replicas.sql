-- The broker process (replica) calling the plugin while an operation is in
-- the `calling` phase, NULL in every other phase. A SQLite store has one
-- broker, which fails all of them at startup; the column is here so both
-- backends share their statements (see migrations/postgres/0002_replicas.sql).
ALTER TABLE instances ADD COLUMN calling_replica TEXT;
ALTER TABLE bindings ADD COLUMN calling_replica TEXT;
