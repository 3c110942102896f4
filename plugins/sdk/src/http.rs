//! HTTP requests to a service broker.toml grants to the plugin (e.g.
//! RabbitMQ's management API). The host prefixes the connection's base URL
//! and adds its authentication: a plugin sends paths only.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;

use crate::BrokerError;
use crate::bindings::wasm_broker::plugin::http as host;
use crate::imports::http as calls;

pub use host::{Error, Method, Request, Response, ServerInfo};

/// Everything but RFC 3986's unreserved characters, so an encoded value is
/// one opaque path segment, user or password, whatever it holds (`/`, `%`,
/// `@`, `:` ...).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` percent-encoded as one URI component: `my/vhost` -> `my%2Fvhost`.
pub fn encode_segment(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// The public base URL of the service behind `connection` (no credentials).
pub fn server_info(connection: &str) -> Result<ServerInfo, BrokerError> {
    calls::get_server_info(connection).map_err(|error| to_broker_error(connection, error))
}

/// Sends `request` as it is (see [`send_json`] for JSON APIs).
pub fn send(connection: &str, request: &Request) -> Result<Response, BrokerError> {
    calls::send(connection, request).map_err(|error| to_broker_error(connection, error))
}

/// Sends `body` as JSON (if any) and prefers JSON back. `path` must already
/// be encoded: build it with [`encode_segment`].
pub fn send_json(
    connection: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<Response, BrokerError> {
    // Not a bare `application/json`: RabbitMQ's management API answers 406 to
    // that on endpoints that reply with an empty 204.
    let mut headers = vec![(
        "accept".to_owned(),
        "application/json, */*;q=0.5".to_owned(),
    )];
    if body.is_some() {
        headers.push(("content-type".to_owned(), "application/json".to_owned()));
    }
    let request = Request {
        method,
        path: path.to_owned(),
        headers,
        body: body.map(|body| body.to_string().into_bytes()),
    };
    send(connection, &request)
}

fn to_broker_error(connection: &str, error: host::Error) -> BrokerError {
    BrokerError::Internal(match error {
        host::Error::NotGranted(message) => {
            format!(
                "connection `{connection}` is not granted to this plugin in broker.toml: {message}"
            )
        }
        host::Error::Denied(message) => {
            format!("HTTP on connection `{connection}` refused by the host: {message}")
        }
        host::Error::Failed(message) => {
            format!("HTTP on connection `{connection}` failed: {message}")
        }
        host::Error::LimitExceeded(message) => {
            format!("HTTP on connection `{connection}` exceeded the host-call limit: {message}")
        }
    })
}

impl Response {
    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, BrokerError> {
        serde_json::from_slice(&self.body).map_err(|error| {
            BrokerError::Internal(format!("the response is not the expected JSON: {error}"))
        })
    }

    /// `Ok(self)` for a 2xx answer, else an internal error with `what`, the
    /// status and the start of the body (services explain refusals there).
    pub fn success_or(self, what: &str) -> Result<Self, BrokerError> {
        if self.is_success() {
            return Ok(self);
        }
        let body = String::from_utf8_lossy(&self.body);
        let excerpt: String = body.chars().take(300).collect();
        Err(BrokerError::Internal(format!(
            "{what}: HTTP {} {excerpt}",
            self.status
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn segments_keep_only_unreserved_characters() {
        assert_eq!(encode_segment("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(encode_segment("/ %@:?#é"), "%2F%20%25%40%3A%3F%23%C3%A9");
    }

    #[test]
    fn failures_carry_status_and_body() {
        let error = response(400, r#"{"error":"bad_request"}"#)
            .success_or("creating vhost")
            .expect_err("fails");
        assert_eq!(
            error,
            BrokerError::Internal(r#"creating vhost: HTTP 400 {"error":"bad_request"}"#.to_owned())
        );
        assert!(response(204, "").success_or("x").is_ok());
    }

    #[test]
    fn json_bodies_are_parsed() {
        let value: serde_json::Value = response(200, r#"{"a":1}"#).json().expect("json");
        assert_eq!(value["a"], 1);
        assert!(response(200, "<html>").json::<serde_json::Value>().is_err());
    }
}
