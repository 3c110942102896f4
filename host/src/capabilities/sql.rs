//! The `sql` capability: statements on the MySQL/MariaDB and PostgreSQL
//! connections broker.toml grants a plugin. The host holds the DSN and the
//! admin credentials; the plugin sends text and gets typed values back.

use futures_util::TryStreamExt;
use sqlx::mysql::{MySql, MySqlQueryResult, MySqlRow};
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgQueryResult, PgRow, PgTypeInfo, PgValueFormat, Postgres};
use sqlx::query::Query;
use sqlx::{
    Column, Database, Decode, Either, Encode, Executor, IntoArguments, Pool, Row, TypeInfo,
    ValueRef,
};
use wasmtime::component::{HasSelf, Linker};

use super::connections::{Grants, SqlPool};
use super::{CallContext, Capability};
use crate::contract::wasm_broker::plugin::sql::{
    self as wit, Dialect, Error, QueryResult, ServerInfo, Value,
};
use crate::limits::ByteBudget;

/// The `sql` import of one plugin call.
pub struct SqlHost {
    grants: Grants,
    max_host_call_bytes: u64,
}

impl SqlHost {
    /// `grants` maps the alias the plugin uses to a `[connections.<name>]`.
    pub fn new(grants: Grants, max_host_call_bytes: u64) -> Self {
        Self {
            grants,
            max_host_call_bytes,
        }
    }

    async fn run(
        &self,
        alias: &str,
        statement: String,
        params: Vec<Value>,
    ) -> Result<QueryResult, Error> {
        let connection = self.grants.sql(alias).map_err(Error::NotGranted)?;
        let request_size = statement.len() + params.iter().map(value_size).sum::<usize>();
        ByteBudget::new(self.max_host_call_bytes)
            .take(request_size, "the statement with its parameters")
            .map_err(Error::LimitExceeded)?;
        let mut result_budget = ByteBudget::new(self.max_host_call_bytes);
        match &connection.pool {
            SqlPool::Mysql(pool) => execute(pool, &statement, params, &mut result_budget).await,
            SqlPool::Postgres(pool) => execute(pool, &statement, params, &mut result_budget).await,
        }
    }
}

impl wit::Host for SqlHost {
    async fn get_server_info(
        &mut self,
        connection: String,
    ) -> wasmtime::Result<Result<ServerInfo, Error>> {
        Ok(self
            .grants
            .sql(&connection)
            .map_err(Error::NotGranted)
            .map(|sql| ServerInfo {
                dialect: match sql.pool {
                    SqlPool::Mysql(_) => Dialect::Mysql,
                    SqlPool::Postgres(_) => Dialect::Postgres,
                },
                host: sql.address.host.clone(),
                port: sql.address.port,
            }))
    }

    async fn query(
        &mut self,
        connection: String,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<QueryResult, Error>> {
        Ok(self.run(&connection, statement, params).await)
    }
}

impl Capability for SqlHost {
    fn for_call(call: &CallContext<'_>) -> Self {
        Self::new(call.connections(), call.max_host_call_bytes())
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}

/// Bytes a value moves across the sandbox boundary.
fn value_size(value: &Value) -> usize {
    match value {
        Value::Text(text) => text.len(),
        Value::Bytes(bytes) => bytes.len(),
        Value::Null | Value::Boolean(_) | Value::Int(_) | Value::Float(_) => 8,
    }
}

/// How the server encoded a row: the text protocol sends every value as
/// text, prepared statements send most types in binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Text,
    Binary,
}

/// What differs between MySQL and PostgreSQL; [`execute`] is the rest.
trait Engine: Database {
    fn bind<'q>(
        query: Query<'q, Self, <Self as Database>::Arguments<'q>>,
        value: Value,
    ) -> Query<'q, Self, <Self as Database>::Arguments<'q>>;

    /// The column's value, chosen by the column's type.
    fn column_value(row: &Self::Row, index: usize, protocol: Protocol) -> Result<Value, String>;

    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// Runs one statement and collects its rows, stopping as soon as they exceed
/// the budget so a large result is never buffered whole.
async fn execute<DB: Engine>(
    pool: &Pool<DB>,
    statement: &str,
    params: Vec<Value>,
    budget: &mut ByteBudget,
) -> Result<QueryResult, Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    let mut connection = pool.acquire().await.map_err(failed)?;
    // Only the text protocol runs DDL (CREATE USER, GRANT, CREATE DATABASE),
    // which never has parameters.
    let (mut stream, protocol) = if params.is_empty() {
        (
            connection.fetch_many(sqlx::raw_sql(statement)),
            Protocol::Text,
        )
    } else {
        let query = params
            .into_iter()
            .fold(sqlx::query::<DB>(statement), DB::bind);
        (connection.fetch_many(query), Protocol::Binary)
    };
    let mut result = QueryResult {
        columns: Vec::new(),
        rows: Vec::new(),
        rows_affected: 0,
    };
    while let Some(item) = stream.try_next().await.map_err(failed)? {
        match item {
            Either::Left(done) => {
                result.rows_affected = result
                    .rows_affected
                    .saturating_add(DB::rows_affected(&done))
            }
            Either::Right(row) => {
                if result.columns.is_empty() {
                    result.columns = row
                        .columns()
                        .iter()
                        .map(|column| column.name().to_owned())
                        .collect();
                    let names_size = result.columns.iter().map(String::len).sum();
                    budget
                        .take(names_size, "the result")
                        .map_err(Error::LimitExceeded)?;
                }
                let values = (0..row.len())
                    .map(|index| DB::column_value(&row, index, protocol))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(Error::Failed)?;
                budget
                    .take(values.iter().map(value_size).sum(), "the result")
                    .map_err(Error::LimitExceeded)?;
                result.rows.push(values);
            }
        }
    }
    Ok(result)
}

fn failed(error: sqlx::Error) -> Error {
    Error::Failed(error.to_string())
}

fn decode<'r, DB: Database, T: Decode<'r, DB>>(
    value: <DB as Database>::ValueRef<'r>,
) -> Result<T, String> {
    T::decode(value).map_err(|error| error.to_string())
}

/// The column's name and type, for messages.
fn describe_column<R: Row>(row: &R, index: usize, type_name: &str) -> String {
    let name = row.columns().get(index).map_or("?", |column| column.name());
    format!("column {name:?} ({type_name})")
}

fn unconvertible(column: &str) -> String {
    format!("{column} has a type the host does not convert; cast it to text in the statement")
}

impl Engine for MySql {
    fn bind<'q>(
        query: Query<'q, Self, <Self as Database>::Arguments<'q>>,
        value: Value,
    ) -> Query<'q, Self, <Self as Database>::Arguments<'q>> {
        match value {
            Value::Null => query.bind(None::<String>),
            Value::Boolean(flag) => query.bind(flag),
            Value::Int(number) => query.bind(number),
            Value::Float(number) => query.bind(number),
            Value::Text(text) => query.bind(text),
            Value::Bytes(bytes) => query.bind(bytes),
        }
    }

    fn column_value(row: &MySqlRow, index: usize, protocol: Protocol) -> Result<Value, String> {
        let raw = row.try_get_raw(index).map_err(|error| error.to_string())?;
        if raw.is_null() {
            return Ok(Value::Null);
        }
        let type_name = raw.type_info().name().to_owned();
        let column = || describe_column(row, index, &type_name);
        let value = match type_name.as_str() {
            "BOOLEAN" => decode::<MySql, bool>(raw).map(Value::Boolean),
            "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => {
                decode::<MySql, i64>(raw).map(Value::Int)
            }
            name if name.ends_with(" UNSIGNED") || name == "YEAR" || name == "BIT" => {
                // BIGINT UNSIGNED may not fit an s64; its decimal text always does.
                decode::<MySql, u64>(raw).map(|number| {
                    i64::try_from(number)
                        .map_or_else(|_| Value::Text(number.to_string()), Value::Int)
                })
            }
            "FLOAT" | "DOUBLE" => decode::<MySql, f64>(raw).map(Value::Float),
            "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB"
            | "GEOMETRY" => decode::<MySql, Vec<u8>>(raw).map(Value::Bytes),
            // Prepared statements send these as binary structs, which would
            // need a date library; the text protocol sends them as text.
            "DATE" | "TIME" | "DATETIME" | "TIMESTAMP" if protocol == Protocol::Binary => {
                return Err(unconvertible(&column()));
            }
            // Strings, DECIMAL, JSON, ENUM, SET, and everything of the text protocol.
            _ => decode::<MySql, String>(raw).map(Value::Text),
        };
        value.map_err(|error| format!("{}: {error}", column()))
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// A NULL parameter whose type PostgreSQL infers from the statement: a typed
/// NULL (e.g. text) would fail where the column is an integer.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        // OID 0 in a Parse message means "unspecified".
        PgTypeInfo::with_oid(Oid(0))
    }
}

impl Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

impl Engine for Postgres {
    fn bind<'q>(
        query: Query<'q, Self, <Self as Database>::Arguments<'q>>,
        value: Value,
    ) -> Query<'q, Self, <Self as Database>::Arguments<'q>> {
        match value {
            Value::Null => query.bind(UntypedNull),
            Value::Boolean(flag) => query.bind(flag),
            Value::Int(number) => query.bind(number),
            Value::Float(number) => query.bind(number),
            Value::Text(text) => query.bind(text),
            Value::Bytes(bytes) => query.bind(bytes),
        }
    }

    fn column_value(row: &PgRow, index: usize, _: Protocol) -> Result<Value, String> {
        let raw = row.try_get_raw(index).map_err(|error| error.to_string())?;
        if raw.is_null() {
            return Ok(Value::Null);
        }
        let type_name = raw.type_info().name().to_owned();
        let column = || describe_column(row, index, &type_name);
        let value = match type_name.as_str() {
            "BOOL" => decode::<Postgres, bool>(raw).map(Value::Boolean),
            "INT2" => decode::<Postgres, i16>(raw).map(|number| Value::Int(number.into())),
            "INT4" => decode::<Postgres, i32>(raw).map(|number| Value::Int(number.into())),
            "INT8" => decode::<Postgres, i64>(raw).map(Value::Int),
            "OID" => decode::<Postgres, Oid>(raw).map(|oid| Value::Int(oid.0.into())),
            "FLOAT4" => decode::<Postgres, f32>(raw).map(|number| Value::Float(number.into())),
            "FLOAT8" => decode::<Postgres, f64>(raw).map(Value::Float),
            "BYTEA" => decode::<Postgres, Vec<u8>>(raw).map(Value::Bytes),
            "JSON" | "JSONB" => {
                decode::<Postgres, serde_json::Value>(raw).map(|json| Value::Text(json.to_string()))
            }
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "\"CHAR\"" | "CITEXT" | "UNKNOWN" => {
                decode::<Postgres, String>(raw).map(Value::Text)
            }
            // NUMERIC, timestamps, UUIDs, arrays ...: as PostgreSQL prints them
            // when it sent text; binary encodings would need a library each.
            _ if raw.format() == PgValueFormat::Text => raw
                .as_str()
                .map(|text| Value::Text(text.to_owned()))
                .map_err(|error| error.to_string()),
            _ => return Err(unconvertible(&column())),
        };
        value.map_err(|error| format!("{}: {error}", column()))
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

#[cfg(test)]
mod tests {
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

    async fn ok(
        host: &mut SqlHost,
        alias: &str,
        statement: &str,
        params: Vec<Value>,
    ) -> QueryResult {
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
}
