use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::capabilities::connections::tests::{connections, reachable_or_skip};
use wit::Host as _;

const MARIADB: &str = "127.0.0.1:3306";
const POSTGRES: &str = "127.0.0.1:5432";
const LIMIT: u64 = 64 * 1024;

fn host(max_host_call_bytes: u64) -> SqlHost {
    let connections = connections(&[
        (
            "mariadb",
            "kind = 'mysql'\nurl = 'mysql://root@127.0.0.1:3306'\nmax_connections = 1",
        ),
        (
            "pg",
            "kind = 'postgres'\nurl = 'postgres://postgres@127.0.0.1:5432/postgres'\nmax_connections = 1",
        ),
        (
            "pg-tls",
            "kind = 'postgres'\nurl = 'postgres://postgres@127.0.0.1:5432/postgres?sslmode=require'\nmax_connections = 1",
        ),
    ]);
    let grants = BTreeMap::from([
        ("my".to_owned(), "mariadb".to_owned()),
        ("pg".to_owned(), "pg".to_owned()),
        ("pg-tls".to_owned(), "pg-tls".to_owned()),
    ]);
    SqlHost::new(
        Grants::new(connections, Arc::new(grants)),
        max_host_call_bytes,
    )
}

async fn query(
    host: &mut SqlHost,
    alias: &str,
    statement: &str,
    params: Vec<Value>,
) -> Result<QueryResult, Error> {
    host.query(alias.to_owned(), statement.to_owned(), params)
        .await
        .expect("no trap")
}

async fn ok(host: &mut SqlHost, alias: &str, statement: &str, params: Vec<Value>) -> QueryResult {
    query(host, alias, statement, params)
        .await
        .unwrap_or_else(|error| panic!("{statement}: {error:?}"))
}

fn temp_name() -> String {
    format!("wb_test_{:016x}", rand::random::<u64>())
}

#[tokio::test]
async fn mariadb_returns_typed_values_from_both_protocols() {
    if !reachable_or_skip("MariaDB", MARIADB).await {
        return;
    }
    let mut host = host(LIMIT);
    let text = ok(
        &mut host,
        "my",
        "SELECT 1 AS i, 2.5e0 AS f, 'x' AS t, NULL AS n, BINARY 'ab' AS b",
        vec![],
    )
    .await;
    assert_eq!(text.columns, ["i", "f", "t", "n", "b"]);
    assert_eq!(
        text.rows,
        [vec![
            Value::Int(1),
            Value::Float(2.5),
            Value::Text("x".into()),
            Value::Null,
            Value::Bytes(b"ab".to_vec()),
        ]],
    );

    let database = temp_name();
    ok(
        &mut host,
        "my",
        &format!("CREATE DATABASE `{database}`"),
        vec![],
    )
    .await;
    let table = format!("`{database}`.t");
    ok(
        &mut host,
        "my",
        &format!(
            "CREATE TABLE {table} (id BIGINT, flag BOOLEAN, name VARCHAR(20), data BLOB, amount DOUBLE, \
             big BIGINT UNSIGNED, born DATETIME)"
        ),
        vec![],
    )
    .await;
    let inserted = ok(
        &mut host,
        "my",
        &format!("INSERT INTO {table} VALUES (?, ?, ?, ?, ?, 18446744073709551615, '2024-01-02 03:04:05'), (?, ?, ?, ?, ?, 1, NULL)"),
        vec![
            Value::Int(-7),
            Value::Boolean(true),
            Value::Text("hé".into()),
            Value::Bytes(vec![0, 255]),
            Value::Float(0.5),
            Value::Int(8),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ],
    )
    .await;
    assert_eq!(inserted.rows_affected, 2);

    let prepared = ok(
        &mut host,
        "my",
        &format!("SELECT id, flag, name, data, amount, big FROM {table} WHERE id = ? OR id = ? ORDER BY id"),
        vec![Value::Int(-7), Value::Int(8)],
    )
    .await;
    assert_eq!(
        prepared.rows,
        [
            vec![
                Value::Int(-7),
                Value::Boolean(true),
                Value::Text("hé".into()),
                Value::Bytes(vec![0, 255]),
                Value::Float(0.5),
                Value::Text("18446744073709551615".into()),
            ],
            vec![
                Value::Int(8),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Int(1),
            ],
        ],
    );
    let born = ok(
        &mut host,
        "my",
        &format!("SELECT born FROM {table} WHERE id = -7"),
        vec![],
    )
    .await;
    assert_eq!(born.rows, [vec![Value::Text("2024-01-02 03:04:05".into())]]);
    let binary_date = query(
        &mut host,
        "my",
        &format!("SELECT born FROM {table} WHERE id = ?"),
        vec![Value::Int(-7)],
    )
    .await;
    assert!(
        matches!(&binary_date, Err(Error::Failed(message)) if message.contains("cast it to text")),
        "{binary_date:?}"
    );

    ok(
        &mut host,
        "my",
        &format!("DROP DATABASE `{database}`"),
        vec![],
    )
    .await;
    let gone = ok(
        &mut host,
        "my",
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?",
        vec![Value::Text(database)],
    )
    .await;
    assert_eq!(gone.rows, [vec![Value::Int(0)]]);
}

#[tokio::test]
async fn mariadb_rejections_come_back_as_failed() {
    if !reachable_or_skip("MariaDB", MARIADB).await {
        return;
    }
    let mut host = host(LIMIT);
    let result = query(&mut host, "my", "SELEC 1", vec![]).await;
    assert!(
        matches!(&result, Err(Error::Failed(message)) if message.contains("1064")),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_open_transaction_does_not_outlive_the_call() {
    if !reachable_or_skip("MariaDB", MARIADB).await
        || !reachable_or_skip("PostgreSQL", POSTGRES).await
    {
        return;
    }
    // One connection per pool, so the second call reuses (or replaces) the first one's.
    let mut host = host(LIMIT);
    ok(&mut host, "my", "START TRANSACTION", vec![]).await;
    let mariadb = ok(&mut host, "my", "SELECT @@in_transaction", vec![]).await;
    assert_eq!(mariadb.rows, [vec![Value::Int(0)]]);
    ok(&mut host, "pg", "BEGIN", vec![]).await;
    let postgres = ok(
        &mut host,
        "pg",
        "SELECT now() = statement_timestamp()",
        vec![],
    )
    .await;
    assert_eq!(postgres.rows, [vec![Value::Boolean(true)]]);
}

#[tokio::test]
async fn postgres_returns_typed_values_from_both_protocols() {
    if !reachable_or_skip("PostgreSQL", POSTGRES).await {
        return;
    }
    let mut host = host(LIMIT);
    let text = ok(
        &mut host,
        "pg",
        "SELECT 1::int4 AS i, 2.5::float8 AS f, 'x' AS t, NULL AS n, '\\x6162'::bytea AS b, true AS o, 1.5::numeric AS d",
        vec![],
    )
    .await;
    assert_eq!(text.columns, ["i", "f", "t", "n", "b", "o", "d"]);
    assert_eq!(
        text.rows,
        [vec![
            Value::Int(1),
            Value::Float(2.5),
            Value::Text("x".into()),
            Value::Null,
            Value::Bytes(b"ab".to_vec()),
            Value::Boolean(true),
            Value::Text("1.5".into()),
        ]],
    );

    let table = temp_name();
    ok(&mut host, "pg", &format!("CREATE TABLE {table} (id int4, flag bool, name text, data bytea, amount float8, doc jsonb)"), vec![])
        .await;
    let inserted = ok(
        &mut host,
        "pg",
        &format!("INSERT INTO {table} VALUES ($1, $2, $3, $4, $5, $6::jsonb), ($7, $8, $9, $10, $11, NULL)"),
        vec![
            Value::Int(-7),
            Value::Boolean(false),
            Value::Text("hé".into()),
            Value::Bytes(vec![0, 255]),
            Value::Float(0.25),
            Value::Text(r#"{"a": 1}"#.into()),
            // NULLs into int, bool, text, bytea, float columns: the server infers each type.
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ],
    )
    .await;
    assert_eq!(inserted.rows_affected, 2);
    let prepared = ok(
        &mut host,
        "pg",
        &format!("SELECT id, flag, name, data, amount, doc FROM {table} WHERE id = $1 OR id IS NULL ORDER BY id"),
        vec![Value::Int(-7)],
    )
    .await;
    assert_eq!(
        prepared.rows,
        [
            vec![
                Value::Int(-7),
                Value::Boolean(false),
                Value::Text("hé".into()),
                Value::Bytes(vec![0, 255]),
                Value::Float(0.25),
                Value::Text(r#"{"a":1}"#.into()),
            ],
            vec![Value::Null; 6],
        ],
    );
    let numeric = query(
        &mut host,
        "pg",
        "SELECT $1::numeric",
        vec![Value::Text("1.5".into())],
    )
    .await;
    assert!(
        matches!(&numeric, Err(Error::Failed(message)) if message.contains("cast it to text")),
        "{numeric:?}"
    );
    ok(&mut host, "pg", &format!("DROP TABLE {table}"), vec![]).await;
}

/// A connection URL asking for TLS gets it (the local server's
/// certificate is self-signed, so `require` encrypts without verifying).
#[tokio::test]
async fn a_postgres_connection_url_can_require_tls() {
    if !reachable_or_skip("PostgreSQL", POSTGRES).await {
        return;
    }
    let mut host = host(LIMIT);
    let result = ok(
        &mut host,
        "pg-tls",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        vec![],
    )
    .await;
    assert_eq!(result.rows, [vec![Value::Boolean(true)]]);
}

#[tokio::test]
async fn postgres_creates_and_drops_a_database_outside_a_transaction() {
    if !reachable_or_skip("PostgreSQL", POSTGRES).await {
        return;
    }
    let mut host = host(LIMIT);
    let database = temp_name();
    ok(
        &mut host,
        "pg",
        &format!("CREATE DATABASE \"{database}\""),
        vec![],
    )
    .await;
    let exists = "SELECT count(*) FROM pg_database WHERE datname = $1";
    let found = ok(&mut host, "pg", exists, vec![Value::Text(database.clone())]).await;
    assert_eq!(found.rows, [vec![Value::Int(1)]]);
    ok(
        &mut host,
        "pg",
        &format!("DROP DATABASE \"{database}\""),
        vec![],
    )
    .await;
    let found = ok(&mut host, "pg", exists, vec![Value::Text(database)]).await;
    assert_eq!(found.rows, [vec![Value::Int(0)]]);
}

#[tokio::test]
async fn server_info_tells_the_dialect_and_address() {
    let mut host = host(LIMIT);
    let info = host
        .get_server_info("pg".to_owned())
        .await
        .expect("no trap")
        .expect("granted");
    assert!(matches!(info.dialect, Dialect::Postgres));
    assert_eq!((info.host.as_str(), info.port), ("127.0.0.1", 5432));
    let info = host
        .get_server_info("my".to_owned())
        .await
        .expect("no trap")
        .expect("granted");
    assert!(matches!(info.dialect, Dialect::Mysql));
}

#[tokio::test]
async fn an_ungranted_alias_is_refused_without_the_dsn() {
    let mut host = host(LIMIT);
    // "mariadb" is the connection's name, not an alias granted to this plugin.
    for result in [
        query(&mut host, "mariadb", "SELECT 1", vec![])
            .await
            .map(|_| ()),
        host.get_server_info("nope".to_owned())
            .await
            .expect("no trap")
            .map(|_| ()),
    ] {
        let Err(Error::NotGranted(message)) = result else {
            panic!("granted: {result:?}")
        };
        assert!(
            message.contains("not granted to this plugin in broker.toml"),
            "{message}"
        );
        assert!(!message.contains("127.0.0.1"), "{message}");
    }
}

#[tokio::test]
async fn statements_and_results_over_the_limit_are_refused() {
    if !reachable_or_skip("PostgreSQL", POSTGRES).await {
        return;
    }
    let mut host = host(100);
    let long = format!("SELECT '{}'", "x".repeat(100));
    let result = query(&mut host, "pg", &long, vec![]).await;
    assert!(matches!(result, Err(Error::LimitExceeded(_))), "{result:?}");
    let result = query(
        &mut host,
        "pg",
        "SELECT $1",
        vec![Value::Bytes(vec![0; 100])],
    )
    .await;
    assert!(matches!(result, Err(Error::LimitExceeded(_))), "{result:?}");
    let result = query(&mut host, "pg", "SELECT repeat('x', 1000)", vec![]).await;
    let Err(Error::LimitExceeded(message)) = result else {
        panic!("{result:?}")
    };
    assert!(
        message.contains("the result exceeds the host-call data limit of 100 bytes"),
        "{message}"
    );
    // The connection is still usable after a result was cut short.
    ok(&mut host, "pg", "SELECT 1", vec![]).await;
}
