//! Extractors whose every rejection is an OSB error body, never axum's plain
//! text: malformed JSON -> 400, oversized body -> 413, wrong content type -> 400.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body.
pub struct OsbJson<T>(pub T);

impl<S, T> FromRequest<S> for OsbJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(content_type) = content_type {
            let essence = content_type
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::bad_request(format!(
                    "Content-Type must be application/json, not {content_type:?}"
                )));
            }
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("a JSON request body is required"));
        }
        let invalid = |error: serde_json::Error| {
            ApiError::bad_request(format!("the request body is not valid: {error}"))
        };
        // Through a Value first: serde would fill a struct from a JSON array
        // by position, and OSB bodies are objects.
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(invalid)?;
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        serde_json::from_value(value).map(OsbJson).map_err(invalid)
    }
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            "the request body is larger than this broker accepts",
        )
    } else {
        ApiError::bad_request(format!("cannot read the request body: {rejection}"))
    }
}

/// Query parameters.
pub struct OsbQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for OsbQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(query)| OsbQuery(query))
            .map_err(|rejection| {
                ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
            })
    }
}

/// Path parameters (percent-decoded ids).
pub struct OsbPath<T>(pub T);

impl<S, T> FromRequestParts<S> for OsbPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(path)| OsbPath(path))
            .map_err(|rejection| {
                ApiError::bad_request(format!("invalid path: {}", rejection.body_text()))
            })
    }
}

/// `accepts_incomplete` and friends: only `true`/`false` are booleans.
pub fn parse_flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "query parameter {name} must be true or false, not {other:?}"
        ))),
    }
}

/// A mandatory non-empty id: OSB treats an empty string as missing.
pub fn required(name: &str, value: Option<String>) -> Result<String, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("{name} is required and must not be empty")))
}

/// An optional string where empty means absent.
pub fn optional(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// An optional JSON object field; anything else is a 400.
pub fn object(
    name: &str,
    value: Option<serde_json::Value>,
) -> Result<Option<serde_json::Value>, ApiError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) if value.is_object() => Ok(Some(value)),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be a JSON object"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_ids() {
        assert_eq!(parse_flag("a", Some("true")), Ok(true));
        assert_eq!(parse_flag("a", None), Ok(false));
        assert!(parse_flag("a", Some("yes")).is_err());
        assert!(required("service_id", Some(String::new())).is_err());
        assert!(required("service_id", None).is_err());
        assert_eq!(required("service_id", Some("x".into())), Ok("x".into()));
        assert!(object("context", Some(serde_json::json!([1]))).is_err());
        assert_eq!(object("context", Some(serde_json::Value::Null)), Ok(None));
    }
}
