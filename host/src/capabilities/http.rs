//! The `http` capability: requests to the HTTP services broker.toml grants a
//! plugin (e.g. RabbitMQ's management API). The plugin gives only a path:
//! the host prefixes the connection's base URL and adds its authentication,
//! so no other host can be reached and the admin password stays here.

use std::sync::Arc;

use reqwest::header::{HeaderName, HeaderValue};
use url::Url;
use wasmtime::component::{HasSelf, Linker};

use super::connections::{ACQUIRE_TIMEOUT, Grants};
use super::refusal::Refusals;
use super::{CallContext, Capability};
use crate::contract::wasm_broker::plugin::http::{
    self as wit, Error, Method, Request, Response, ServerInfo,
};
use crate::limits::{ByteBudget, CallDeadline};
use crate::policy::HttpMethod;

/// Headers the host owns: authentication is the connection's, and framing
/// is the HTTP client's (a plugin's Content-Length could desynchronise it).
const HOST_OWNED_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// The `http` import of one plugin call.
pub struct HttpHost {
    grants: Grants,
    max_host_call_bytes: u64,
    deadline: CallDeadline,
    refusals: Refusals,
}

impl HttpHost {
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

    async fn run(&self, alias: &str, request: Request) -> Result<Response, Error> {
        let http = self.grants.http(alias).map_err(Error::NotGranted)?;
        let url = target_url(&http.base_url, &request.path).map_err(|reason| {
            tracing::warn!(connection = alias, path = ?request.path, reason, "http request denied");
            Error::Denied(format!("path {:?} denied: {reason}", request.path))
        })?;
        // The path as the server sees it: below the base path, dot segments
        // resolved; the query is not part of the policy.
        let below_base = url
            .path()
            .get(http.base_url.path().trim_end_matches('/').len()..)
            .unwrap_or_default();
        self.grants
            .policy(alias)
            .check_http(
                policy_method(request.method),
                below_base,
                request.body.as_deref(),
            )
            .map_err(|reason| Error::Denied(self.refusals.denied("http", alias, reason)))?;

        let request_size = request.path.len()
            + request
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
            + request.body.as_ref().map_or(0, Vec::len);
        ByteBudget::new(self.max_host_call_bytes)
            .take(request_size, "the request")
            .map_err(Error::LimitExceeded)?;

        let mut builder = http.client.request(method(request.method), url);
        for (name, value) in &request.headers {
            let header = HeaderName::try_from(name.as_str())
                .map_err(|_| Error::Denied(format!("{name:?} is not a valid header name")))?;
            if HOST_OWNED_HEADERS.contains(&header.as_str()) {
                continue;
            }
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| Error::Denied(format!("the value of header {name:?} is not valid")))?;
            builder = builder.header(header, value);
        }
        if let Some(username) = &http.username {
            builder = builder.basic_auth(username, http.password.as_ref());
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }

        let _permit = tokio::time::timeout(ACQUIRE_TIMEOUT, http.permits.acquire())
            .await
            .map_err(|_| {
                Error::Failed(format!(
                    "all connections are busy (waited {} s)",
                    ACQUIRE_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|_| Error::Failed("the connection is shutting down".to_owned()))?;
        let response = builder
            .send()
            .await
            .map_err(|error| request_failed(&request.path, error))?;
        read_response(
            response,
            &request.path,
            ByteBudget::new(self.max_host_call_bytes),
        )
        .await
    }
}

impl wit::Host for HttpHost {
    async fn get_server_info(
        &mut self,
        connection: String,
    ) -> wasmtime::Result<Result<ServerInfo, Error>> {
        Ok(self
            .grants
            .http(&connection)
            .map_err(Error::NotGranted)
            .map(|http| ServerInfo {
                base_url: http.public_base_url.clone(),
            }))
    }

    async fn send(
        &mut self,
        connection: String,
        request: Request,
    ) -> wasmtime::Result<Result<Response, Error>> {
        self.deadline
            .bound("http", self.run(&connection, request))
            .await
            .map_err(wasmtime::Error::new)
    }
}

impl Capability for HttpHost {
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

fn method(method: Method) -> reqwest::Method {
    match method {
        Method::Get => reqwest::Method::GET,
        Method::Head => reqwest::Method::HEAD,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
    }
}

fn policy_method(method: Method) -> HttpMethod {
    match method {
        Method::Get => HttpMethod::Get,
        Method::Head => HttpMethod::Head,
        Method::Post => HttpMethod::Post,
        Method::Put => HttpMethod::Put,
        Method::Patch => HttpMethod::Patch,
        Method::Delete => HttpMethod::Delete,
    }
}

/// Why `path` is not a plain path below a base URL, if it is not.
fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("it must start with '/'");
    }
    if path.starts_with("//") {
        return Err("it must not start with '//' (an authority)");
    }
    if path.contains("://") {
        return Err("it must not contain a scheme");
    }
    if path.contains('\\') || path.chars().any(char::is_control) {
        return Err("it must not contain backslashes or control characters");
    }
    let path_only = path.split(['?', '#']).next().unwrap_or_default();
    // Decoded, so `%2e%2e` and `..%2f` count too: a server or proxy that
    // decodes before normalising would climb out of the base path.
    let climbs = path_only.split('/').any(|segment| {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        decoded.split(['/', '\\']).any(|part| part == "..")
    });
    if climbs {
        return Err("it must not contain '..' segments");
    }
    Ok(())
}

/// The base URL with `path` appended. `Url::join` would drop a base path
/// prefix (`/rabbitmq/` + `/api` -> `/api`), so the path is appended as text,
/// and the result is checked to still be below the base.
fn target_url(base: &Url, path: &str) -> Result<Url, &'static str> {
    check_path(path)?;
    let base_path = base.path().trim_end_matches('/');
    let joined = format!("{}{path}", base.as_str().trim_end_matches('/'));
    let url = Url::parse(&joined).map_err(|_| "it does not form a valid URL")?;
    let same_origin = url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    if !same_origin || !url.path().starts_with(&format!("{base_path}/")) {
        return Err("it leaves the base URL");
    }
    Ok(url)
}

/// Why a request failed, with the causes reqwest keeps in its source chain
/// (its own message is only "error sending request"). The URL is left out:
/// the plugin knows the path, and nothing else is its business.
fn request_failed(path: &str, error: reqwest::Error) -> Error {
    let kind = if error.is_timeout() {
        "timed out"
    } else {
        "failed"
    };
    let error = error.without_url();
    let mut message = format!("request to {path:?} {kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Error::Failed(message)
}

/// The status, headers and body, refused as soon as they exceed the budget
/// so a large body is never buffered whole.
async fn read_response(
    mut response: reqwest::Response,
    path: &str,
    mut budget: ByteBudget,
) -> Result<Response, Error> {
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect::<Vec<_>>();
    let headers_size = headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    budget
        .take(headers_size, "the response")
        .map_err(Error::LimitExceeded)?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| request_failed(path, error))?
    {
        budget
            .take(chunk.len(), "the response")
            .map_err(Error::LimitExceeded)?;
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::capabilities::connections::tests::{connections, reachable_or_skip};
    use wit::Host as _;

    const RABBITMQ_MANAGEMENT: &str = "127.0.0.1:15672";

    fn host(max_host_call_bytes: u64) -> HttpHost {
        let connections = connections(&[(
            "rabbitmq",
            "kind = 'http'\nurl = 'http://127.0.0.1:15672'\nusername = 'guest'\npassword = 'guest'",
        )]);
        let aliases = BTreeMap::from([("admin".to_owned(), "rabbitmq".to_owned())]);
        HttpHost::new(
            Grants::new(connections, Arc::new(aliases)),
            max_host_call_bytes,
        )
    }

    fn get(path: &str) -> Request {
        Request {
            method: Method::Get,
            path: path.to_owned(),
            headers: Vec::new(),
            body: None,
        }
    }

    #[test]
    fn plain_paths_below_the_base_are_allowed() {
        let base = Url::parse("http://127.0.0.1:15672/").expect("valid");
        for path in [
            "/",
            "/api/overview",
            "/api/vhosts/%2F",
            "/api/queues?page=2&name=a..b",
            "/api/x..y/..z",
            "/a/./b",
        ] {
            let url = target_url(&base, path).unwrap_or_else(|reason| panic!("{path}: {reason}"));
            assert_eq!(
                (url.host_str(), url.port()),
                (Some("127.0.0.1"), Some(15672)),
                "{path}"
            );
        }
        let prefixed = Url::parse("https://mq.example/rabbitmq/").expect("valid");
        let url = target_url(&prefixed, "/api/overview").expect("allowed");
        assert_eq!(url.as_str(), "https://mq.example/rabbitmq/api/overview");
    }

    #[test]
    fn paths_that_could_leave_the_base_are_denied() {
        let base = Url::parse("http://127.0.0.1:15672/rabbitmq/").expect("valid");
        for path in [
            "",
            "api/overview",
            "//evil.example/api",
            "/redirect?to=http://evil.example",
            "/api/../../etc",
            "/..",
            "/api/%2e%2e/x",
            "/api/%2E%2E",
            "/api/.%2e/x",
            "/api/..%2fx",
            "/api/%2e%2e%5cx",
            "/api\\..\\x",
            "/api/overview\r\nHost: evil",
            "/api/\u{7f}",
            "/api/\u{85}",
        ] {
            assert!(target_url(&base, path).is_err(), "{path:?} was allowed");
        }
    }

    #[tokio::test]
    async fn denied_and_ungranted_requests_never_reach_the_network() {
        // Port 9 (discard) on loopback: nothing listens, and nothing may be sent.
        let connections = connections(&[("closed", "kind = 'http'\nurl = 'http://127.0.0.1:9'")]);
        let aliases = BTreeMap::from([("svc".to_owned(), "closed".to_owned())]);
        let mut host = HttpHost::new(Grants::new(connections, Arc::new(aliases)), 1024);
        let result = host
            .send("svc".to_owned(), get("//evil.example/"))
            .await
            .expect("no trap");
        let Err(Error::Denied(message)) = result else {
            panic!("{result:?}")
        };
        assert!(message.contains("//evil.example/"), "{message}");
        let result = host
            .send("closed".to_owned(), get("/"))
            .await
            .expect("no trap");
        assert!(matches!(result, Err(Error::NotGranted(_))), "{result:?}");
        let result = host
            .send("svc".to_owned(), get("/"))
            .await
            .expect("no trap");
        assert!(
            matches!(&result, Err(Error::Failed(message)) if message.contains("refused")),
            "{result:?}"
        );
        let info = host
            .get_server_info("svc".to_owned())
            .await
            .expect("no trap")
            .expect("granted");
        assert_eq!(info.base_url, "http://127.0.0.1:9");
    }

    #[tokio::test]
    async fn the_grant_policy_refuses_before_the_network() {
        use crate::policy::{GrantPolicy, HttpMethod, PathPrefix};
        // Port 9: nothing listens, so an allowed request fails to connect.
        let connections =
            connections(&[("closed", "kind = 'http'\nurl = 'http://127.0.0.1:9/base/'")]);
        let aliases = BTreeMap::from([("svc".to_owned(), "closed".to_owned())]);
        let policy = GrantPolicy {
            methods: Some(vec![HttpMethod::Put]),
            paths: Some(vec![PathPrefix::parse("/api/users/").expect("valid")]),
            ..GrantPolicy::default()
        };
        let policies = BTreeMap::from([("svc".to_owned(), policy)]);
        let grants = Grants::new(connections, Arc::new(aliases)).with_policies(Arc::new(policies));
        let mut host = HttpHost::new(grants, 1024);
        let mut send = async |method, path: &str| {
            let mut request = get(path);
            request.method = method;
            host.send("svc".to_owned(), request).await.expect("no trap")
        };
        for (method, path) in [
            (Method::Get, "/api/users/u_1"),
            (Method::Put, "/api/users"),
            (Method::Put, "/api/users-evil/x"),
            (Method::Put, "/api/./users"),
            (Method::Put, "/api/overview"),
        ] {
            let result = send(method, path).await;
            assert!(
                matches!(&result, Err(Error::Denied(_))),
                "{path}: {result:?}"
            );
        }
        // Allowed: normalised, below the base path; then the network refuses.
        for path in ["/api/users/u_1", "/api/./users/u_1?x=1", "/api/%75sers/u_1"] {
            let result = send(Method::Put, path).await;
            assert!(
                matches!(&result, Err(Error::Failed(_))),
                "{path}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn requests_carry_the_connection_credentials_not_the_plugin_ones() {
        if !reachable_or_skip("RabbitMQ management API", RABBITMQ_MANAGEMENT).await {
            return;
        }
        let mut host = host(1024 * 1024);
        let mut request = get("/api/overview");
        // A plugin's own Authorization is dropped: this one would be refused.
        request.headers = vec![(
            "Authorization".to_owned(),
            "Basic bm9ib2R5Om5vcGU=".to_owned(),
        )];
        let response = host
            .send("admin".to_owned(), request)
            .await
            .expect("no trap")
            .expect("sent");
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let overview: serde_json::Value =
            serde_json::from_slice(&response.body).expect("JSON body");
        assert!(overview.get("rabbitmq_version").is_some(), "{overview}");
        assert!(
            response
                .headers
                .iter()
                .any(|(name, value)| name == "content-type" && value.contains("json"))
        );

        let missing = host
            .send("admin".to_owned(), get("/api/vhosts/wb_test_no_such_vhost"))
            .await
            .expect("no trap");
        assert_eq!(missing.expect("an HTTP answer, not an error").status, 404);
    }

    #[tokio::test]
    async fn responses_over_the_limit_are_refused() {
        if !reachable_or_skip("RabbitMQ management API", RABBITMQ_MANAGEMENT).await {
            return;
        }
        let mut host = host(512);
        let result = host
            .send("admin".to_owned(), get("/api/overview"))
            .await
            .expect("no trap");
        let Err(Error::LimitExceeded(message)) = result else {
            panic!("{result:?}")
        };
        assert!(
            message.contains("the response exceeds the host-call data limit of 512 bytes"),
            "{message}"
        );
        let mut large = get("/api/vhosts/x");
        large.body = Some(vec![b' '; 600]);
        let result = host.send("admin".to_owned(), large).await.expect("no trap");
        assert!(matches!(result, Err(Error::LimitExceeded(_))), "{result:?}");
    }
}
