//! The `sql` capability: statements on the MySQL/MariaDB and PostgreSQL
//! connections broker.toml grants a plugin. The host holds the DSN and the
//! admin credentials; the plugin sends text and gets typed values back.
//! A grant's policy may make statements read-only and cap their rows and
//! bytes (`crate::policy`); a statement still running at the call's
//! deadline ends there, its connection closed and its server session ended.

use std::sync::Arc;

use futures_util::TryStreamExt;
use sqlx::database::HasStatementCache;
use sqlx::mysql::{MySql, MySqlQueryResult, MySqlRow};
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgQueryResult, PgRow, PgTypeInfo, PgValueFormat, Postgres};
use sqlx::query::Query;
use sqlx::{
    Column, Database, Decode, Either, Encode, Executor, IntoArguments, Pool, Row, TypeInfo,
    ValueRef,
};
use wasmtime::component::{HasSelf, Linker};

use super::connections::{Grants, SqlPool, sql_wire_allowance};
use super::refusal::Refusals;
use super::{CallContext, Capability};
use crate::contract::wasm_broker::plugin::sql::{
    self as wit, Dialect, Error, QueryResult, ServerInfo, Value,
};
use crate::limits::{ByteBudget, CallDeadline, DeadlineExceeded};
use session::{Running, Sessions};

mod session;

/// The `sql` import of one plugin call.
pub struct SqlHost {
    grants: Grants,
    max_host_call_bytes: u64,
    deadline: CallDeadline,
    refusals: Refusals,
}

impl SqlHost {
    /// `grants` maps the alias the plugin uses to a `[connections.<name>]`.
    pub fn new(grants: Grants, max_host_call_bytes: u64) -> Self {
        Self {
            grants,
            max_host_call_bytes,
            deadline: CallDeadline::distant(),
            refusals: Refusals::new(Arc::from("unnamed")),
        }
    }

    /// The same host, serving a call of `plugin` that ends at `deadline`.
    pub(crate) fn in_call(self, plugin: Arc<str>, deadline: CallDeadline) -> Self {
        Self {
            deadline,
            refusals: Refusals::new(plugin),
            ..self
        }
    }

    async fn run(
        &self,
        alias: &str,
        statement: String,
        params: Vec<Value>,
    ) -> Result<Result<QueryResult, Error>, DeadlineExceeded> {
        let connection = match self.grants.sql(alias) {
            Ok(connection) => connection,
            Err(reason) => return Ok(Err(Error::NotGranted(reason))),
        };
        let request_size = statement.len() + params.iter().map(value_size).sum::<usize>();
        let within_limit = ByteBudget::new(self.max_host_call_bytes)
            .take(request_size, "the statement with its parameters");
        if let Err(reason) = within_limit {
            return Ok(Err(Error::LimitExceeded(reason)));
        }
        let policy = self.grants.policy(alias);
        let max_bytes = policy.sql_max_bytes(self.max_host_call_bytes);
        let mut limits = StatementLimits {
            read_only: policy.read_only,
            max_rows: policy.max_rows,
            budget: ByteBudget::new(max_bytes),
            deadline: self.deadline,
        };
        let outcome = match &connection.pool {
            SqlPool::Mysql(pool) => execute(pool, &statement, params, &mut limits).await?,
            SqlPool::Postgres(pool, None) => execute(pool, &statement, params, &mut limits).await?,
            SqlPool::Postgres(pool, Some(relay)) => {
                relay.set_allowance(sql_wire_allowance(max_bytes));
                let trips = relay.trips();
                let outcome = execute(pool, &statement, params, &mut limits).await?;
                match outcome {
                    // The relay cut an answer of this plugin's while this
                    // statement ran, and this statement lost its connection.
                    Err(Error::Failed(_)) if relay.trips() > trips => {
                        Err(Error::LimitExceeded(format!(
                            "the result exceeds the host-call data limit of {max_bytes} bytes (abandoned while read)"
                        )))
                    }
                    other => other,
                }
            }
        };
        Ok(outcome.map_err(|error| match error {
            Error::Denied(reason) => Error::Denied(self.refusals.denied("sql", alias, reason)),
            other => other,
        }))
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
                    SqlPool::Postgres(..) => Dialect::Postgres,
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
        self.run(&connection, statement, params)
            .await
            .map_err(wasmtime::Error::new)
    }
}

impl Capability for SqlHost {
    fn for_call(call: &CallContext<'_>) -> Self {
        Self::new(call.connections(), call.max_host_call_bytes())
            .in_call(call.plugin().clone(), call.deadline)
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
trait Engine: Sessions + HasStatementCache {
    /// Makes what follows on the connection read-only, until
    /// [`Self::READ_ONLY_END`]. MariaDB commits implicitly before DDL, which
    /// then escapes a `START TRANSACTION READ ONLY`: the session is made
    /// read-only instead. PostgreSQL: a read-only transaction.
    const READ_ONLY_BEGIN: &'static str;
    const READ_ONLY_END: &'static str;

    fn bind<'q>(
        query: Query<'q, Self, <Self as Database>::Arguments<'q>>,
        value: Value,
    ) -> Query<'q, Self, <Self as Database>::Arguments<'q>>;

    /// The column's value, chosen by the column's type.
    fn column_value(row: &Self::Row, index: usize, protocol: Protocol) -> Result<Value, String>;

    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// What one statement may do and return: the grant's policy with the
/// call's byte limit and deadline.
struct StatementLimits {
    read_only: bool,
    max_rows: Option<u64>,
    budget: ByteBudget,
    deadline: CallDeadline,
}

/// Why a statement stopped, and whether its connection can serve again.
enum Stop {
    /// The exchange with the server ended cleanly (e.g. an error reply).
    Clean(Error),
    /// Rows or a reply are still coming: the connection is closed, never
    /// returned to the pool, whose next user would have to read them all.
    Midway(Error),
}

/// Runs one statement on a connection of `pool`. Past the deadline, or
/// when the result passes a limit, the connection is closed at once rather
/// than returned to the pool with the statement still running or its rows
/// still coming, and the statement's session is ended on the server, which
/// would otherwise go on with it until it next wrote to the closed
/// connection (`session`).
async fn execute<DB: Engine>(
    pool: &Pool<DB>,
    statement: &str,
    params: Vec<Value>,
    limits: &mut StatementLimits,
) -> Result<Result<QueryResult, Error>, DeadlineExceeded>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    let deadline = limits.deadline;
    let mut connection = match deadline.bound("sql", pool.acquire()).await? {
        Ok(connection) => connection,
        Err(error) => return Ok(Err(failed(error, false))),
    };
    let session = match deadline.bound("sql", DB::session(&mut *connection)).await {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => {
            drop(connection.detach());
            return Ok(Err(failed(error, false)));
        }
        Err(exceeded) => {
            drop(connection.detach());
            return Err(exceeded);
        }
    };
    // Ends the session on the server unless the statement finishes.
    let running = Running::<DB>::new(pool.connect_options(), session);
    let outcome = deadline
        .bound(
            "sql",
            run_statement(&mut *connection, statement, params, limits),
        )
        .await;
    match outcome {
        Ok(Ok(result)) => {
            running.finished();
            Ok(Ok(result))
        }
        Ok(Err(Stop::Clean(error))) => {
            running.finished();
            Ok(Err(error))
        }
        Ok(Err(Stop::Midway(error))) => {
            drop(connection.detach());
            Ok(Err(error))
        }
        Err(exceeded) => {
            drop(connection.detach());
            Err(exceeded)
        }
    }
}

/// The statement, inside the read-only bracket when the grant asks for it.
async fn run_statement<DB: Engine>(
    connection: &mut DB::Connection,
    statement: &str,
    params: Vec<Value>,
    limits: &mut StatementLimits,
) -> Result<QueryResult, Stop>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    if !limits.read_only {
        return collect(connection, statement, params, limits).await;
    }
    connection
        .execute(DB::READ_ONLY_BEGIN)
        .await
        .map_err(|error| Stop::Midway(failed(error, false)))?;
    let result = collect(connection, statement, params, limits).await;
    if let Err(Stop::Midway(_)) = result {
        return result;
    }
    connection
        .execute(DB::READ_ONLY_END)
        .await
        .map_err(|error| Stop::Midway(failed(error, false)))?;
    result
}

/// Runs one statement and collects its rows, stopping as soon as they exceed
/// a limit so a large result is never buffered whole.
async fn collect<DB: Engine>(
    connection: &mut DB::Connection,
    statement: &str,
    params: Vec<Value>,
    limits: &mut StatementLimits,
) -> Result<QueryResult, Stop>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    let read_only = limits.read_only;
    // Only the text protocol runs DDL (CREATE USER, GRANT, CREATE DATABASE),
    // which never has parameters. A read-only statement is prepared even
    // without parameters: the prepared-statement protocol takes one
    // statement, so a `COMMIT; CREATE ...` cannot leave the read-only bracket.
    let (mut stream, protocol) = if params.is_empty() && !read_only {
        (
            connection.fetch_many(sqlx::raw_sql(statement)),
            Protocol::Text,
        )
    } else {
        let query = params
            .into_iter()
            .fold(sqlx::query::<DB>(statement).persistent(false), DB::bind);
        (connection.fetch_many(query), Protocol::Binary)
    };
    let mut result = QueryResult {
        columns: Vec::new(),
        rows: Vec::new(),
        rows_affected: 0,
    };
    let over_limit = |reason: String| Stop::Midway(Error::LimitExceeded(reason));
    while let Some(item) = stream
        .try_next()
        .await
        .map_err(|error| Stop::Clean(failed(error, read_only)))?
    {
        match item {
            Either::Left(done) => {
                result.rows_affected = result
                    .rows_affected
                    .saturating_add(DB::rows_affected(&done))
            }
            Either::Right(row) => {
                if let Some(max_rows) = limits.max_rows
                    && u64::try_from(result.rows.len()).unwrap_or(u64::MAX) >= max_rows
                {
                    return Err(over_limit(format!(
                        "the result has more than the {max_rows} rows the grant allows (max_rows)"
                    )));
                }
                if result.columns.is_empty() {
                    result.columns = row
                        .columns()
                        .iter()
                        .map(|column| column.name().to_owned())
                        .collect();
                    let names_size = result.columns.iter().map(String::len).sum();
                    limits
                        .budget
                        .take(names_size, "the result")
                        .map_err(over_limit)?;
                }
                let values = (0..row.len())
                    .map(|index| DB::column_value(&row, index, protocol))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| Stop::Midway(Error::Failed(reason)))?;
                limits
                    .budget
                    .take(values.iter().map(value_size).sum(), "the result")
                    .map_err(over_limit)?;
                result.rows.push(values);
            }
        }
    }
    Ok(result)
}

/// The database's refusal; `denied` when a read-only grant's statement
/// tried to write (SQLSTATE 25006, `read_only_sql_transaction`, on both
/// MySQL/MariaDB and PostgreSQL).
fn failed(error: sqlx::Error, read_only: bool) -> Error {
    let read_only_refusal = read_only
        && error
            .as_database_error()
            .and_then(|error| error.code())
            .is_some_and(|code| code == "25006");
    if read_only_refusal {
        Error::Denied(format!("the grant is read-only in broker.toml: {error}"))
    } else {
        Error::Failed(error.to_string())
    }
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
    const READ_ONLY_BEGIN: &'static str = "SET SESSION TRANSACTION READ ONLY";
    const READ_ONLY_END: &'static str = "SET SESSION TRANSACTION READ WRITE";

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
    const READ_ONLY_BEGIN: &'static str = "BEGIN READ ONLY";
    const READ_ONLY_END: &'static str = "ROLLBACK";

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

#[cfg(test)]
mod policy_tests;
