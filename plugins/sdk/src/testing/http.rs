//! The fake `http` capability.

use std::collections::BTreeMap;

use super::{Script, ThreadBound, not_granted, with_state};
use crate::http::{Error, Method, Request, Response, ServerInfo};

/// One request the plugin sent.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    /// The connection alias it went to.
    pub connection: String,
    /// The request as the plugin built it.
    pub request: Request,
}

impl HttpCall {
    /// The body parsed as JSON (`Null` without a body); panics, failing the
    /// test, when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        match &self.request.body {
            None => serde_json::Value::Null,
            Some(body) => serde_json::from_slice(body).expect("the request body is not JSON"),
        }
    }
}

#[derive(Default)]
pub(super) struct State {
    granted: BTreeMap<String, ServerInfo>,
    script: Script<HttpCall, Result<Response, Error>>,
}

/// Scripts and inspects the fake `http` capability.
pub struct Http(pub(super) ThreadBound);

impl Http {
    /// Grants `connection`, with its public base URL.
    pub fn grant(&self, connection: &str, base_url: &str) {
        let server = ServerInfo {
            base_url: base_url.to_owned(),
        };
        with_state(|state| state.http.granted.insert(connection.to_owned(), server));
    }

    /// Every `method` request whose path starts with `path` gets `response`.
    pub fn reply(&self, method: Method, path: &str, response: Response) {
        self.add(false, method, path, Ok(response));
    }

    /// The next `method` request whose path starts with `path` gets `response`.
    pub fn reply_once(&self, method: Method, path: &str, response: Response) {
        self.add(true, method, path, Ok(response));
    }

    /// Every `method` request whose path starts with `path` fails with
    /// `error` (no answer at all: refused, timed out ...).
    pub fn fail(&self, method: Method, path: &str, error: Error) {
        self.add(false, method, path, Err(error));
    }

    /// Answers every request `respond` returns `Some` for.
    pub fn respond(
        &self,
        respond: impl FnMut(&HttpCall) -> Option<Result<Response, Error>> + 'static,
    ) {
        with_state(|state| state.http.script.add(false, respond));
    }

    /// The requests sent so far.
    pub fn calls(&self) -> Vec<HttpCall> {
        with_state(|state| state.http.script.seen.clone())
    }

    /// The requests sent so far as `"PUT /api/vhosts/x"`.
    pub fn requests(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|call| format!("{} {}", method_name(call.request.method), call.request.path))
            .collect()
    }

    fn add(&self, once: bool, method: Method, path: &str, answer: Result<Response, Error>) {
        let path = path.to_owned();
        with_state(|state| {
            state.http.script.add(once, move |call: &HttpCall| {
                (call.request.method == method && call.request.path.starts_with(&path))
                    .then(|| answer.clone())
            })
        });
    }
}

/// A response with `status` and `body`, no headers.
pub fn response(status: u16, body: &str) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
    }
}

pub(crate) fn get_server_info(connection: &str) -> Result<ServerInfo, Error> {
    with_state(|state| state.http.granted.get(connection).cloned())
        .ok_or_else(|| Error::NotGranted(not_granted("http", connection)))
}

pub(crate) fn send(connection: &str, request: &Request) -> Result<Response, Error> {
    get_server_info(connection)?;
    let call = HttpCall {
        connection: connection.to_owned(),
        request: request.clone(),
    };
    with_state(|state| state.http.script.answer(call)).unwrap_or_else(|| Ok(response(204, "")))
}
