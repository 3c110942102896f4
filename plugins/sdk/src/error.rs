//! [`BrokerError`]: the OSB-typed failure of every plugin operation.

use crate::BrokerError;

impl BrokerError {
    /// The human-readable description the platform user sees.
    pub fn description(&self) -> &str {
        match self {
            Self::BadRequest(text)
            | Self::Conflict(text)
            | Self::Gone(text)
            | Self::NotFound(text)
            | Self::AsyncRequired(text)
            | Self::ConcurrencyError(text)
            | Self::RequiresApp(text)
            | Self::MaintenanceInfoConflict(text)
            | Self::Unprocessable(text)
            | Self::Internal(text) => text,
        }
    }

    /// The same error with every occurrence of `secret` masked.
    ///
    /// DDL cannot bind parameters, so a password travels inside the statement
    /// text, and a backend may quote that text back in its error message.
    /// Descriptions reach the platform user and the logs: pass every such
    /// error through this.
    #[must_use]
    pub fn redact(self, secret: &str) -> Self {
        if secret.is_empty() {
            return self;
        }
        let mask = |text: String| text.replace(secret, "[redacted]");
        match self {
            Self::BadRequest(text) => Self::BadRequest(mask(text)),
            Self::Conflict(text) => Self::Conflict(mask(text)),
            Self::Gone(text) => Self::Gone(mask(text)),
            Self::NotFound(text) => Self::NotFound(mask(text)),
            Self::AsyncRequired(text) => Self::AsyncRequired(mask(text)),
            Self::ConcurrencyError(text) => Self::ConcurrencyError(mask(text)),
            Self::RequiresApp(text) => Self::RequiresApp(mask(text)),
            Self::MaintenanceInfoConflict(text) => Self::MaintenanceInfoConflict(mask(text)),
            Self::Unprocessable(text) => Self::Unprocessable(mask(text)),
            Self::Internal(text) => Self::Internal(mask(text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_masks_every_occurrence_and_keeps_the_kind() {
        let error = BrokerError::Internal("near 'Abc123' ... 'Abc123'".to_owned()).redact("Abc123");
        assert_eq!(
            error,
            BrokerError::Internal("near '[redacted]' ... '[redacted]'".to_owned())
        );
    }

    #[test]
    fn redact_with_an_empty_secret_changes_nothing() {
        let error = BrokerError::BadRequest("x".to_owned());
        assert_eq!(error.clone().redact(""), error);
    }
}
