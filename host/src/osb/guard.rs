//! What every OSB request passes before a handler sees it, in the order
//! the conformance suites check it: basic auth (401), then the API version
//! header (412/400), then whether the broker has loaded its plugins (503);
//! the request identity is echoed on every answer.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::future::{Either, Ready, ready};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::config::{MissingVersionStatus, parse_api_version};
use crate::model::OriginatingIdentity;

use super::error::ApiError;

// Typed names: a lookup by `&str` parses and lowercases the name each time.
pub const API_VERSION: HeaderName = HeaderName::from_static("x-broker-api-version");
pub const REQUEST_IDENTITY: HeaderName = HeaderName::from_static("x-broker-api-request-identity");
pub const ORIGINATING_IDENTITY: HeaderName =
    HeaderName::from_static("x-broker-api-originating-identity");

/// Credentials and version policy, fixed at startup.
pub struct GuardConfig {
    username_digest: [u8; 32],
    password_digest: [u8; 32],
    /// Of `Basic base64(username:password)`, the header as clients write
    /// it: checking that takes one digest and no decoding.
    header_digest: [u8; 32],
    min_version: (u32, u32),
    missing_version_status: MissingVersionStatus,
}

impl GuardConfig {
    pub fn new(
        username: &str,
        password: &str,
        min_version: (u32, u32),
        missing: MissingVersionStatus,
    ) -> Self {
        let header = format!(
            "Basic {}",
            STANDARD.encode(format!("{username}:{password}"))
        );
        Self {
            username_digest: Sha256::digest(username.as_bytes()).into(),
            password_digest: Sha256::digest(password.as_bytes()).into(),
            header_digest: Sha256::digest(header.as_bytes()).into(),
            min_version,
            missing_version_status: missing,
        }
    }

    /// Compares digests in constant time, so neither the content nor the
    /// length of the configured credentials leaks through timing.
    fn authenticates(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        if bool::from(Sha256::digest(value.as_bytes()).ct_eq(&self.header_digest)) {
            return true;
        }
        // Other spellings of the same credentials (scheme in lower case,
        // extra spaces) are decoded and compared part by part.
        let Some((username, password)) = basic_credentials(value) else {
            return false;
        };
        let username_ok = Sha256::digest(username.as_bytes()).ct_eq(&self.username_digest);
        let password_ok = Sha256::digest(password.as_bytes()).ct_eq(&self.password_digest);
        (username_ok & password_ok).into()
    }

    fn check_version(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let sent = headers
            .get(&API_VERSION)
            .and_then(|value| value.to_str().ok())
            .map(str::trim);
        let Some(sent) = sent.filter(|value| !value.is_empty()) else {
            let status = match self.missing_version_status {
                MissingVersionStatus::BadRequest => StatusCode::BAD_REQUEST,
                MissingVersionStatus::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            };
            return Err(ApiError::new(
                status,
                "MissingApiVersion",
                format!(
                    "the X-Broker-API-Version header is required; this broker serves 2.{}-2.17",
                    self.min_version.1
                ),
            ));
        };
        match parse_api_version(sent) {
            Some((2, minor)) if (2, minor) >= self.min_version => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "UnsupportedApiVersion",
                format!(
                    "X-Broker-API-Version {sent:?} is not supported; use 2.{} or later 2.x (2.17 recommended)",
                    self.min_version.1
                ),
            )),
        }
    }
}

fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (username, password) = decoded.split_once(':')?;
    Some((username.to_owned(), password.to_owned()))
}

/// Whether the broker is still loading its plugins.
pub type Loading = Arc<dyn Fn() -> bool + Send + Sync>;

/// Auth, version and loading check for the OSB routes. A tower service
/// rather than `middleware::from_fn`, which boxes and clones the rest of
/// the stack for every request: a request that passes goes on with no
/// allocation.
#[derive(Clone)]
pub struct GuardLayer {
    config: Arc<GuardConfig>,
    loading: Loading,
}

impl GuardLayer {
    pub fn new(config: Arc<GuardConfig>, loading: Loading) -> Self {
        Self { config, loading }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            config: self.config.clone(),
            loading: self.loading.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    config: Arc<GuardConfig>,
    loading: Loading,
}

impl<S> Service<Request> for Guarded<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let refusal = self
            .config
            .refusal(request.headers())
            .or_else(|| (self.loading)().then(while_loading));
        match refusal {
            Some(refusal) => Either::Left(ready(Ok(refusal))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

/// Until the plugins are loaded (the listener opens before), OSB calls get
/// a 503 that says so: an empty catalog would tell the platform every
/// service is gone.
fn while_loading() -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "the broker is starting and its plugins are still loading; retry in a few seconds",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

impl GuardConfig {
    /// The answer to a request that may not pass, in the order the
    /// conformance suites check: 401 before 412.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        self.auth_refusal(headers).or_else(|| {
            self.check_version(headers)
                .err()
                .map(IntoResponse::into_response)
        })
    }

    /// The 401 for a request without the broker's credentials. The admin
    /// routes check only this: they are not OSB, so no version header.
    pub(super) fn auth_refusal(&self, headers: &HeaderMap) -> Option<Response> {
        if self.authenticates(headers) {
            return None;
        }
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "valid HTTP basic credentials are required",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"wasm-broker\""),
        );
        Some(response)
    }
}

/// `Platform base64(json)` -> the decoded identity; 400 if malformed.
pub fn originating_identity(headers: &HeaderMap) -> Result<Option<OriginatingIdentity>, ApiError> {
    let Some(value) = headers.get(&ORIGINATING_IDENTITY) else {
        return Ok(None);
    };
    let malformed = |why: &str| {
        ApiError::bad_request(format!(
            "X-Broker-API-Originating-Identity must be `platform base64(json object)`: {why}"
        ))
    };
    let text = value.to_str().map_err(|_| malformed("not ASCII"))?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (platform, encoded) = text
        .split_once(' ')
        .ok_or_else(|| malformed("no space between platform and value"))?;
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed("value is not base64"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&decoded).map_err(|_| malformed("value is not JSON"))?;
    if !value.is_object() || platform.is_empty() {
        return Err(malformed("value is not a JSON object"));
    }
    Ok(Some(OriginatingIdentity {
        platform: platform.to_owned(),
        value,
    }))
}

/// The API version the platform sent (already validated by the guard).
pub fn api_version(headers: &HeaderMap) -> String {
    headers
        .get(&API_VERSION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub fn request_identity(headers: &HeaderMap) -> Option<String> {
    headers
        .get(&REQUEST_IDENTITY)
        .and_then(|value| value.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> GuardConfig {
        GuardConfig::new(
            "user",
            "secret",
            (2, 13),
            MissingVersionStatus::PreconditionFailed,
        )
    }

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name, HeaderValue::from_str(value).expect("valid header"));
        }
        map
    }

    #[test]
    fn basic_auth_needs_both_parts_right() {
        let good = format!("Basic {}", STANDARD.encode("user:secret"));
        assert!(guard().authenticates(&headers(&[(header::AUTHORIZATION, &good)])));
        for wrong in ["user:wrong", "other:secret", "user", ":"] {
            let value = format!("Basic {}", STANDARD.encode(wrong));
            assert!(
                !guard().authenticates(&headers(&[(header::AUTHORIZATION, &value)])),
                "{wrong}"
            );
        }
        assert!(!guard().authenticates(&headers(&[(header::AUTHORIZATION, "Bearer x")])));
        // Not the usual spelling, so not the precomputed header: still the
        // same credentials.
        for spelling in ["basic", "BASIC", "Basic "] {
            let value = format!("{spelling} {}", STANDARD.encode("user:secret"));
            assert!(
                guard().authenticates(&headers(&[(header::AUTHORIZATION, &value)])),
                "{value}"
            );
        }
        assert!(!guard().authenticates(&HeaderMap::new()));
    }

    #[test]
    fn version_rules() {
        assert!(
            guard()
                .check_version(&headers(&[(API_VERSION, "2.17")]))
                .is_ok()
        );
        assert!(
            guard()
                .check_version(&headers(&[(API_VERSION, "2.13")]))
                .is_ok()
        );
        for bad in ["2.12", "3.0", "1.99", "abc", ""] {
            let error = guard()
                .check_version(&headers(&[(API_VERSION, bad)]))
                .unwrap_err();
            assert_eq!(error.status, StatusCode::PRECONDITION_FAILED, "{bad}");
        }
        let lenient = GuardConfig::new("u", "p", (2, 13), MissingVersionStatus::BadRequest);
        assert_eq!(
            lenient.check_version(&HeaderMap::new()).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn originating_identity_is_decoded_or_refused() {
        let value = format!("cloudfoundry {}", STANDARD.encode(r#"{"user_id":"u1"}"#));
        let identity = originating_identity(&headers(&[(ORIGINATING_IDENTITY, &value)]))
            .unwrap()
            .unwrap();
        assert_eq!(identity.platform, "cloudfoundry");
        assert_eq!(identity.value["user_id"], "u1");
        assert!(
            originating_identity(&headers(&[(ORIGINATING_IDENTITY, "cloudfoundry !!!")])).is_err()
        );
        assert!(originating_identity(&headers(&[(ORIGINATING_IDENTITY, "nospace")])).is_err());
    }
}
