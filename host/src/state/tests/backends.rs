//! What each backend must be given: indexes for every lookup, SQLite's
//! session settings, PostgreSQL over TLS.

use super::*;
use crate::state::{kv, tables};

#[tokio::test]
async fn lookups_use_indexes() {
    let scratch = Scratch::new(StateBackend::Sqlite)
        .await
        .expect("a directory");
    let store = open(&scratch).await;
    for (statement, parameters) in [
        (tables::SELECT_INSTANCE, 1),
        (tables::SELECT_INSTANCES_IN_PHASE, 1),
        (tables::SELECT_BINDING, 1),
        (tables::SELECT_LIVE_BINDINGS, 2),
        (tables::SELECT_BINDINGS_IN_PHASE, 1),
        (kv::KEYS_IN_RANGE, 3),
        (kv::KEYS_FROM, 2),
    ] {
        let explain = format!("EXPLAIN QUERY PLAN {statement}");
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
        for _ in 0..parameters {
            query = query.bind("x");
        }
        let plan = query.fetch_all(&store.pool).await.expect("plan");
        let details: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
        assert!(
            details.iter().all(|detail| !detail.starts_with("SCAN")),
            "{statement}: {details:?}"
        );
    }
}

/// The settings the `Any` driver's URL cannot carry reach every SQLite
/// connection: WAL, and a sync of the WAL at every commit.
#[tokio::test]
async fn sqlite_connections_use_the_wal_and_sync_every_commit() {
    let scratch = Scratch::new(StateBackend::Sqlite)
        .await
        .expect("a directory");
    let store = open(&scratch).await;
    let mut connections = Vec::new();
    for _ in 0..3 {
        let mut connection = store.pool.acquire().await.expect("connection");
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *connection)
            .await
            .expect("journal mode");
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *connection)
            .await
            .expect("synchronous");
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *connection)
            .await
            .expect("foreign keys");
        assert_eq!((journal.as_str(), synchronous, foreign_keys), ("wal", 2, 1));
        // Held, so the next round gets another connection.
        connections.push(connection);
    }
    // And the batch writer, which the transitions commit through.
    let config = scratch.config(None);
    let writer = crate::state::writer::WriterSource::new(&config.path)
        .open()
        .expect("a batch writer");
    assert_eq!(
        writer.settings().expect("settings"),
        ("wal".to_owned(), 2, 1)
    );
}

/// Managed PostgreSQL services require TLS: a store URL asking for it gets
/// an encrypted connection (the local server has a self-signed certificate,
/// which `sslmode=require` encrypts to without verifying).
#[tokio::test]
async fn a_postgres_store_connects_over_tls_when_the_url_asks() {
    let Some(scratch) = Scratch::new(StateBackend::Postgres).await else {
        return;
    };
    let mut config = scratch.config(Some(&new_key()));
    let Some(url) = config.url.as_ref() else {
        panic!("a postgres scratch store has a URL");
    };
    config.url = Some(format!("{}?sslmode=require", url.expose_secret()).into());
    let store = StateStore::open(&config)
        .await
        .expect("store opens over TLS");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&store.pool)
            .await
            .expect("pg_stat_ssl");
    assert!(encrypted, "the store's connection is not encrypted");
    store.close().await;
}
