//! OSB error bodies: every failure the platform sees is
//! `{"error": "...", "description": "..."}` with the status the spec demands.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::Failure;
use crate::model::BrokerError;

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

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        let (status, code) = match &error {
            BrokerError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            BrokerError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            BrokerError::Gone(_) => (StatusCode::GONE, "Gone"),
            BrokerError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            BrokerError::AsyncRequired(_) => (StatusCode::UNPROCESSABLE_ENTITY, "AsyncRequired"),
            BrokerError::ConcurrencyError(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "ConcurrencyError")
            }
            BrokerError::RequiresApp(_) => (StatusCode::UNPROCESSABLE_ENTITY, "RequiresApp"),
            BrokerError::MaintenanceInfoConflict(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "MaintenanceInfoConflict")
            }
            BrokerError::Unprocessable(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "UnprocessableEntity")
            }
            BrokerError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Refused(refusal) => refusal.into(),
            Failure::Plugin(description) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "PluginFailure",
                description,
            ),
            Failure::State(error) => {
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
            (
                BrokerError::AsyncRequired(String::new()),
                422,
                "AsyncRequired",
            ),
            (
                BrokerError::ConcurrencyError(String::new()),
                422,
                "ConcurrencyError",
            ),
            (BrokerError::RequiresApp(String::new()), 422, "RequiresApp"),
            (
                BrokerError::MaintenanceInfoConflict(String::new()),
                422,
                "MaintenanceInfoConflict",
            ),
            (BrokerError::Gone(String::new()), 410, "Gone"),
            (BrokerError::Conflict(String::new()), 409, "Conflict"),
            (BrokerError::BadRequest(String::new()), 400, "BadRequest"),
        ];
        for (error, status, code) in cases {
            let api = ApiError::from(error);
            assert_eq!(api.status.as_u16(), status);
            assert_eq!(api.error, code);
        }
    }
}
