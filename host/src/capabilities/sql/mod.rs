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
mod share_tests;
#[cfg(test)]
mod tests;
