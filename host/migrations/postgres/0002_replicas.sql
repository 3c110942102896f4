-- The replica (broker process) calling the plugin while an operation is in
-- the `calling` phase, NULL in every other phase: when its lease runs out,
-- another replica fails the operation.
ALTER TABLE instances ADD COLUMN calling_replica TEXT;
ALTER TABLE bindings ADD COLUMN calling_replica TEXT;

-- The live replicas: each renews its heartbeat (the database's clock, so
-- replicas' clocks need not agree) a few times per lease. Rows of replicas
-- whose lease ran out are removed once their operations are failed.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
