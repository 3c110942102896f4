-- kv values are sealed with the credentials key (AES-256-GCM, see
-- secrets.rs) when one is configured. Rows written before stay readable in
-- clear (sealed = 0) until `wasm-broker rotate-key` seals them.
ALTER TABLE plugin_kv ADD COLUMN sealed BIGINT NOT NULL DEFAULT 0;
