//! SQL on a connection broker.toml grants to the plugin.

use crate::BrokerError;
use crate::bindings::wasm_broker::plugin::sql as host;
use crate::imports::sql as calls;

pub use host::{Dialect, Error, QueryResult, ServerInfo, Value};

/// Where applications reach the server behind `connection`.
pub fn server_info(connection: &str) -> Result<ServerInfo, BrokerError> {
    calls::get_server_info(connection).map_err(|error| to_broker_error(connection, error))
}

/// Runs a prepared statement with `params` bound to its placeholders (`?`
/// for MySQL, `$1` ... for PostgreSQL).
pub fn query(
    connection: &str,
    statement: &str,
    params: &[Value],
) -> Result<QueryResult, BrokerError> {
    calls::query(connection, statement, params).map_err(|error| to_broker_error(connection, error))
}

/// Runs a statement without parameters through the text protocol, which DDL
/// needs (`CREATE DATABASE`, `CREATE USER`, `GRANT` ...). Quote names and
/// literals with [`crate::names`].
pub fn execute(connection: &str, statement: &str) -> Result<QueryResult, BrokerError> {
    query(connection, statement, &[])
}

fn to_broker_error(connection: &str, error: host::Error) -> BrokerError {
    BrokerError::Internal(match error {
        host::Error::NotGranted(message) => {
            format!(
                "connection `{connection}` is not granted to this plugin in broker.toml: {message}"
            )
        }
        host::Error::Failed(message) => {
            format!("SQL on connection `{connection}` failed: {message}")
        }
        host::Error::LimitExceeded(message) => {
            format!("SQL on connection `{connection}` exceeded the host-call limit: {message}")
        }
        host::Error::Denied(message) => {
            format!("SQL on connection `{connection}` refused by the grant's policy: {message}")
        }
    })
}

impl QueryResult {
    /// The values of the first column, e.g. the ids of `SELECT id FROM ...`.
    pub fn first_column(&self) -> impl Iterator<Item = &Value> {
        self.rows.iter().filter_map(|row| row.first())
    }
}

impl Value {
    /// An integer, also when the driver returned it as text or a float
    /// with no fraction (unsigned 64-bit columns, `NUMERIC` ...).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(value) => Some(*value),
            Self::Text(text) => text.parse().ok(),
            Self::Float(value) if value.fract() == 0.0 => Some(*value as i64),
            _ => None,
        }
    }

    /// The text of a `Text` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_from_every_representation() {
        assert_eq!(Value::Int(7).as_i64(), Some(7));
        assert_eq!(
            Value::Text("18446744".to_owned()).as_i64(),
            Some(18_446_744)
        );
        assert_eq!(Value::Float(3.0).as_i64(), Some(3));
        assert_eq!(Value::Float(3.5).as_i64(), None);
        assert_eq!(Value::Null.as_i64(), None);
    }

    #[test]
    fn first_column_skips_empty_rows() {
        let result = QueryResult {
            columns: vec!["id".to_owned()],
            rows: vec![vec![Value::Int(1)], vec![], vec![Value::Int(2)]],
            rows_affected: 0,
        };
        assert_eq!(
            result
                .first_column()
                .filter_map(Value::as_i64)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
    }
}
