//! A grant's SQL policy (read-only, row and byte caps) and the call's
//! deadline, against the local MariaDB and PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::capabilities::connections::tests::{connections, reachable_or_skip};
use crate::policy::GrantPolicy;
use wit::Host as _;

const MARIADB: &str = "127.0.0.1:3306";
const POSTGRES: &str = "127.0.0.1:5432";

/// A host with aliases `my` and `pg` under `policy`, and `my-plain` and
/// `pg-plain` without one, on the same connections: one each, so a
/// connection left busy or read-only would show in the next statement.
fn host(policy: GrantPolicy, max_host_call_bytes: u64) -> SqlHost {
    let connections = connections(&[
        (
            "mariadb",
            "kind = 'mysql'\nurl = 'mysql://root@127.0.0.1:3306'\nmax_connections = 1",
        ),
        (
            "pg",
            "kind = 'postgres'\nurl = 'postgres://postgres@127.0.0.1:5432/postgres'\nmax_connections = 1",
        ),
    ]);
    let aliases = BTreeMap::from([
        ("my".to_owned(), "mariadb".to_owned()),
        ("pg".to_owned(), "pg".to_owned()),
        ("my-plain".to_owned(), "mariadb".to_owned()),
        ("pg-plain".to_owned(), "pg".to_owned()),
    ]);
    let policies = BTreeMap::from([("my".to_owned(), policy.clone()), ("pg".to_owned(), policy)]);
    let grants = Grants::new(connections, Arc::new(aliases)).with_policies(Arc::new(policies));
    SqlHost::new(grants, max_host_call_bytes)
}

async fn query(host: &mut SqlHost, alias: &str, statement: &str) -> Result<QueryResult, Error> {
    host.query(alias.to_owned(), statement.to_owned(), Vec::new())
        .await
        .expect("no trap")
}

fn temp_name() -> String {
    format!("wb_test_{:016x}", rand::random::<u64>())
}

fn read_only() -> GrantPolicy {
    GrantPolicy {
        read_only: true,
        max_rows: Some(3),
        ..GrantPolicy::default()
    }
}

/// Writes are `denied`, a `COMMIT` in front does not help, reads work, and
/// the connection serves a write-allowed grant afterwards as before.
async fn read_only_grant(alias: &str, create: &str, many_rows: &str, exists: &str) {
    let mut host = host(read_only(), 64 * 1024);
    let result = query(&mut host, alias, create).await;
    assert!(
        matches!(&result, Err(Error::Denied(message)) if message.contains("read-only")),
        "{result:?}"
    );
    let escape = query(&mut host, alias, &format!("COMMIT; {create}")).await;
    assert!(escape.is_err(), "{escape:?}");
    let rows = query(&mut host, alias, "SELECT 1").await.expect("a read");
    assert_eq!(rows.rows, [vec![Value::Int(1)]]);
    let result = query(&mut host, alias, many_rows).await;
    assert!(
        matches!(&result, Err(Error::LimitExceeded(message)) if message.contains("max_rows")),
        "{result:?}"
    );

    // The same connection, through a grant without a policy: nothing written.
    let found = query(&mut host, &format!("{alias}-plain"), exists)
        .await
        .expect("a read");
    assert!(
        found.rows.is_empty(),
        "the read-only grant wrote: {found:?}"
    );
}

#[tokio::test]
async fn a_read_only_postgres_grant_cannot_write() {
    if !reachable_or_skip("PostgreSQL", POSTGRES).await {
        return;
    }
    let table = temp_name();
    read_only_grant(
        "pg",
        &format!("CREATE TABLE {table} (a int)"),
        "SELECT generate_series(1, 10)",
        &format!("SELECT 1 FROM pg_tables WHERE tablename = '{table}'"),
    )
    .await;
}

#[tokio::test]
async fn a_read_only_mariadb_grant_cannot_write() {
    if !reachable_or_skip("MariaDB", MARIADB).await {
        return;
    }
    let database = temp_name();
    read_only_grant(
        "my",
        &format!("CREATE DATABASE {database}"),
        "SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4",
        &format!("SELECT 1 FROM information_schema.schemata WHERE schema_name = '{database}'"),
    )
    .await;
}

#[tokio::test]
async fn a_read_only_mariadb_session_is_writable_again_for_the_next_grant() {
    if !reachable_or_skip("MariaDB", MARIADB).await {
        return;
    }
    let mut host = host(read_only(), 64 * 1024);
    query(&mut host, "my", "SELECT 1").await.expect("a read");
    let database = temp_name();
    query(
        &mut host,
        "my-plain",
        &format!("CREATE DATABASE {database}"),
    )
    .await
    .expect("a write-allowed grant on the same connection writes");
    query(&mut host, "my-plain", &format!("DROP DATABASE {database}"))
        .await
        .expect("dropped");
}

#[tokio::test]
async fn max_bytes_caps_a_result_below_the_call_limit() {
    if !reachable_or_skip("PostgreSQL", POSTGRES).await {
        return;
    }
    let policy = GrantPolicy {
        max_bytes: Some(100),
        ..GrantPolicy::default()
    };
    let mut host = host(policy, 64 * 1024);
    let result = query(&mut host, "pg", "SELECT repeat('a', 200)").await;
    assert!(
        matches!(&result, Err(Error::LimitExceeded(message)) if message.contains("100 bytes")),
        "{result:?}"
    );
    query(&mut host, "pg", "SELECT repeat('a', 50)")
        .await
        .expect("within");
}

/// A statement running past the deadline traps there; its connection is
/// closed, so the pool's only connection slot serves the next statement at
/// once instead of after the statement; and the server stops the statement
/// too, rather than go on with it (and keep one of its connections) to the
/// end. (MariaDB notices a closed client during `SLEEP` within 5 s, but not
/// during `BENCHMARK`, which burns a server core meanwhile.)
async fn running_past_the_deadline(alias: &str, statement: &str) {
    let mut host = host(GrantPolicy::default(), 64 * 1024);
    let mut late = SqlHost::new(host.grants.clone(), 64 * 1024).in_call(
        Arc::from("test"),
        CallDeadline::after(Duration::from_millis(500)),
    );
    // The tag finds this statement among the server's sessions.
    let tag = temp_name();
    let started = Instant::now();
    let trap = late
        .query(
            alias.to_owned(),
            format!("{statement} /* {tag} */"),
            Vec::new(),
        )
        .await
        .expect_err("a trap at the deadline");
    assert!(
        trap.downcast_ref::<DeadlineExceeded>().is_some(),
        "{trap:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let rows = query(&mut host, alias, "SELECT 1").await.expect("served");
    assert_eq!(rows.rows.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the next statement waited {:?}",
        started.elapsed()
    );

    let mut running = sessions_running(alias, &tag).await;
    while running > 0 && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        running = sessions_running(alias, &tag).await;
    }
    assert_eq!(
        running,
        0,
        "the server still runs the abandoned statement {:?} after the deadline",
        started.elapsed()
    );
}

/// Sessions of the server behind `alias` running a statement that holds
/// `tag`, seen from a connection of the test's own.
async fn sessions_running(alias: &str, tag: &str) -> i64 {
    use sqlx::Connection as _;
    if alias.starts_with("pg") {
        let mut connection =
            sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
                .await
                .expect("connected");
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'active' AND strpos(query, $1) > 0 AND pid <> pg_backend_pid()",
        )
        .bind(tag)
        .fetch_one(&mut connection)
        .await
        .expect("counted")
    } else {
        let mut connection = sqlx::MySqlConnection::connect("mysql://root@127.0.0.1:3306")
            .await
            .expect("connected");
        sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.processlist \
             WHERE command = 'Query' AND instr(info, ?) > 0 AND id <> CONNECTION_ID()",
        )
        .bind(tag)
        .fetch_one(&mut connection)
        .await
        .expect("counted")
    }
}

#[tokio::test]
async fn a_postgres_statement_ends_at_the_deadline() {
    if !reachable_or_skip("PostgreSQL", POSTGRES).await {
        return;
    }
    running_past_the_deadline("pg", "SELECT pg_sleep(30)").await;
}

#[tokio::test]
async fn a_mariadb_statement_ends_at_the_deadline() {
    if !reachable_or_skip("MariaDB", MARIADB).await {
        return;
    }
    // About 110 s of one core if it were not ended.
    running_past_the_deadline("my", "SELECT BENCHMARK(300000000, MD5('wasm-broker'))").await;
}
