//! OSB error bodies: every failure the platform sees is
//! `{"error": "...", "description": "..."}` with the status the spec demands.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::BrokerError;
use crate::model::Refusal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// A single CamelCase word; the spec's own codes where it defines one.
    pub error: &'static str,
    pub description: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    description: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }

    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", description)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error,
            description: &self.description,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<Refusal> for ApiError {
    fn from(error: Refusal) -> Self {
        let (status, code) = match &error {
            Refusal::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            Refusal::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            Refusal::Gone(_) => (StatusCode::GONE, "Gone"),
            Refusal::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            Refusal::AsyncRequired(_) => (StatusCode::UNPROCESSABLE_ENTITY, "AsyncRequired"),
            Refusal::ConcurrencyError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "ConcurrencyError"),
            Refusal::RequiresApp(_) => (StatusCode::UNPROCESSABLE_ENTITY, "RequiresApp"),
            Refusal::MaintenanceInfoConflict(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "MaintenanceInfoConflict")
            }
            Refusal::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "UnprocessableEntity"),
            Refusal::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::Refused(refusal) => refusal.into(),
            BrokerError::Plugin(_) | BrokerError::PluginContract(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "PluginFailure",
                error.to_string(),
            ),
            BrokerError::State(error) => {
                tracing::error!(%error, "state store failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    error.to_string(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_error_codes_are_exact() {
        let cases = [
            (Refusal::AsyncRequired(String::new()), 422, "AsyncRequired"),
            (
                Refusal::ConcurrencyError(String::new()),
                422,
                "ConcurrencyError",
            ),
            (Refusal::RequiresApp(String::new()), 422, "RequiresApp"),
            (
                Refusal::MaintenanceInfoConflict(String::new()),
                422,
                "MaintenanceInfoConflict",
            ),
            (Refusal::Gone(String::new()), 410, "Gone"),
            (Refusal::Conflict(String::new()), 409, "Conflict"),
            (Refusal::BadRequest(String::new()), 400, "BadRequest"),
        ];
        for (error, status, code) in cases {
            let api = ApiError::from(error);
            assert_eq!(api.status.as_u16(), status);
            assert_eq!(api.error, code);
        }
    }
}
