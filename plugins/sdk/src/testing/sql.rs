//! The fake `sql` capability.

use std::collections::BTreeMap;

use super::{Script, ThreadBound, not_granted, with_state};
use crate::sql::{Error, QueryResult, ServerInfo, Value};

/// One statement the plugin ran.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlCall {
    /// The connection alias it ran on.
    pub connection: String,
    /// The statement text.
    pub statement: String,
    /// The bound parameters (empty for text-protocol statements).
    pub params: Vec<Value>,
}

#[derive(Default)]
pub(super) struct State {
    granted: BTreeMap<String, ServerInfo>,
    script: Script<SqlCall, Result<QueryResult, Error>>,
}

/// Scripts and inspects the fake `sql` capability.
pub struct Sql(pub(super) ThreadBound);

impl Sql {
    /// Grants `connection`, with the server behind it.
    pub fn grant(&self, connection: &str, server: ServerInfo) {
        with_state(|state| state.sql.granted.insert(connection.to_owned(), server));
    }

    /// Every statement containing `fragment` gets `result`.
    pub fn reply(&self, fragment: &str, result: QueryResult) {
        self.add(false, fragment, Ok(result));
    }

    /// The next statement containing `fragment` gets `result`.
    pub fn reply_once(&self, fragment: &str, result: QueryResult) {
        self.add(true, fragment, Ok(result));
    }

    /// Every statement containing `fragment` fails with `error`.
    pub fn fail(&self, fragment: &str, error: Error) {
        self.add(false, fragment, Err(error));
    }

    /// The next statement containing `fragment` fails with `error`.
    pub fn fail_once(&self, fragment: &str, error: Error) {
        self.add(true, fragment, Err(error));
    }

    /// Answers every statement `respond` returns `Some` for: a backend with
    /// state of the test's own.
    pub fn respond(
        &self,
        respond: impl FnMut(&SqlCall) -> Option<Result<QueryResult, Error>> + 'static,
    ) {
        with_state(|state| state.sql.script.add(false, respond));
    }

    /// The statements run so far, with connection and parameters.
    pub fn calls(&self) -> Vec<SqlCall> {
        with_state(|state| state.sql.script.seen.clone())
    }

    /// The statement texts run so far.
    pub fn statements(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .map(|call| call.statement)
            .collect()
    }

    fn add(&self, once: bool, fragment: &str, answer: Result<QueryResult, Error>) {
        let fragment = fragment.to_owned();
        with_state(|state| {
            state.sql.script.add(once, move |call: &SqlCall| {
                call.statement.contains(&fragment).then(|| answer.clone())
            })
        });
    }
}

/// A result of `columns` and `rows`, e.g.
/// `rows(&["count"], vec![vec![Value::Int(5)]])`.
pub fn rows(columns: &[&str], rows: Vec<Vec<Value>>) -> QueryResult {
    QueryResult {
        columns: columns.iter().map(|column| (*column).to_owned()).collect(),
        rows,
        rows_affected: 0,
    }
}

pub(crate) fn get_server_info(connection: &str) -> Result<ServerInfo, Error> {
    with_state(|state| state.sql.granted.get(connection).cloned())
        .ok_or_else(|| Error::NotGranted(not_granted("sql", connection)))
}

pub(crate) fn query(
    connection: &str,
    statement: &str,
    params: &[Value],
) -> Result<QueryResult, Error> {
    get_server_info(connection)?;
    let call = SqlCall {
        connection: connection.to_owned(),
        statement: statement.to_owned(),
        params: params.to_vec(),
    };
    with_state(|state| state.sql.script.answer(call)).unwrap_or_else(|| Ok(rows(&[], Vec::new())))
}
