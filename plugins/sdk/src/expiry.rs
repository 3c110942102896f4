//! Bindings whose credentials expire: the OSB 2.17 binding `metadata`
//! (`expires_at`, `renew_before`).
//!
//! A plugin whose backend can refuse credentials after a given instant
//! accepts the binding parameter [`PARAMETER`] (whole days, so that every
//! backend can honour it; MariaDB expires passwords in days), makes the
//! backend enforce the expiry, and tells the platform when the credentials
//! stop working (`expires_at`) and when to rotate them (`renew_before`, a
//! fifth of the lifetime earlier). An operator can make every binding expire
//! with the plugin setting [`DEFAULT_SETTING`] in
//! `[plugins.<name>.config]`; the parameter overrides it.
//!
//! The instants are computed from a reading of the backend's clock, not
//! the broker host's: the backend enforces the expiry, so the metadata must
//! agree with its clock, whatever the skew between the machines.

use serde_json::{Value, json};
use time::macros::format_description;
use time::{Duration, OffsetDateTime};

use crate::{BindOutcome, BindingMetadata, BrokerError, config};

/// The binding parameter: days until the credentials stop working.
pub const PARAMETER: &str = "expires_in_days";
/// The plugin setting: the lifetime of bindings that do not ask for one.
pub const DEFAULT_SETTING: &str = "binding_expires_in_days";
/// The longest lifetime a binding may ask for (ten years).
pub const MAX_DAYS: u32 = 3650;

const SECONDS_PER_DAY: i64 = 86_400;

/// How long a binding's credentials stay valid, in whole days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    days: u32,
}

impl Lifetime {
    /// The lifetime a bind gets: `requested` (the binding's
    /// [`PARAMETER`]) if present, else the operator's [`DEFAULT_SETTING`],
    /// else none (the credentials never expire).
    pub fn for_binding(requested: Option<i64>) -> Result<Option<Self>, BrokerError> {
        if let Some(days) = requested {
            return Self::requested(days).map(Some);
        }
        match config::get(DEFAULT_SETTING) {
            None => Ok(None),
            Some(text) => Self::configured(&text).map(Some),
        }
    }

    /// `days` as the binding parameter asked for it.
    pub fn requested(days: i64) -> Result<Self, BrokerError> {
        Self::checked(days).ok_or_else(|| {
            BrokerError::BadRequest(format!(
                "parameters.{PARAMETER}: {days} is not a lifetime between 1 and {MAX_DAYS} days"
            ))
        })
    }

    /// The operator's [`DEFAULT_SETTING`]; a wrong value is the operator's
    /// mistake, so an internal error naming the setting.
    pub fn configured(text: &str) -> Result<Self, BrokerError> {
        text.trim()
            .parse()
            .ok()
            .and_then(Self::checked)
            .ok_or_else(|| {
                BrokerError::Internal(format!(
                    "plugin setting `{DEFAULT_SETTING}` = {text:?} (broker.toml [plugins.<name>.config]) \
                     is not a number of days between 1 and {MAX_DAYS}"
                ))
            })
    }

    fn checked(days: i64) -> Option<Self> {
        u32::try_from(days)
            .ok()
            .filter(|days| (1..=MAX_DAYS).contains(days))
            .map(|days| Self { days })
    }

    /// The lifetime in days.
    pub fn days(self) -> u32 {
        self.days
    }

    /// The JSON Schema of [`PARAMETER`], for a plan's binding schema.
    pub fn schema_property() -> Value {
        json!({
            "description": "Days until the binding's credentials stop working; rotate the binding (predecessor_binding_id) before then. Without it they never expire, unless the operator set a default lifetime.",
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_DAYS,
        })
    }
}

/// When a binding's credentials stop working and when the platform should
/// rotate them, as ISO 8601 UTC `yyyy-mm-ddThh:mm:ss.sZ`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    expires_at: String,
    renew_before: String,
}

impl Expiry {
    /// A `lifetime` that started at `start`, seconds since the Unix epoch on
    /// the backend's clock.
    pub fn starting_at(start: i64, lifetime: Lifetime) -> Result<Self, BrokerError> {
        let length = Duration::seconds(i64::from(lifetime.days) * SECONDS_PER_DAY);
        let start = OffsetDateTime::from_unix_timestamp(start).map_err(|error| {
            BrokerError::Internal(format!(
                "the backend's clock reads {start} seconds since the epoch: {error}"
            ))
        })?;
        let expires_at = start.checked_add(length).ok_or_else(|| {
            BrokerError::Internal(format!(
                "{start} plus {} days is out of range",
                lifetime.days
            ))
        })?;
        let renew_before = expires_at - length / 5;
        Ok(Self {
            expires_at: format_instant(expires_at)?,
            renew_before: format_instant(renew_before)?,
        })
    }

    /// The instant the backend stops accepting the credentials.
    pub fn expires_at(&self) -> &str {
        &self.expires_at
    }

    /// When the platform should rotate the credentials (ISO 8601).
    pub fn renew_before(&self) -> &str {
        &self.renew_before
    }

    /// The binding metadata telling the platform both instants.
    pub fn metadata(&self) -> BindingMetadata {
        BindingMetadata {
            expires_at: Some(self.expires_at.clone()),
            renew_before: Some(self.renew_before.clone()),
        }
    }
}

impl BindOutcome {
    /// A finished bind telling the platform when its credentials expire.
    /// An accepted bind reports its metadata later, from `get-binding`.
    #[must_use]
    pub fn expiring(self, expiry: Option<&Expiry>) -> Self {
        match self {
            Self::Done(mut result) => {
                result.metadata = expiry.map(Expiry::metadata);
                Self::Done(result)
            }
            accepted @ Self::Accepted(_) => accepted,
        }
    }
}

fn format_instant(instant: OffsetDateTime) -> Result<String, BrokerError> {
    instant
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:1]Z"
        ))
        .map_err(|error| BrokerError::Internal(format!("cannot format {instant}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_outside_the_range_name_the_parameter() {
        assert_eq!(Lifetime::requested(30).map(Lifetime::days), Ok(30));
        assert_eq!(
            Lifetime::requested(i64::from(MAX_DAYS)).map(Lifetime::days),
            Ok(MAX_DAYS)
        );
        for days in [0, -1, i64::from(MAX_DAYS) + 1, i64::MAX] {
            let error = Lifetime::requested(days).expect_err("out of range");
            assert_eq!(
                error,
                BrokerError::BadRequest(format!(
                    "parameters.expires_in_days: {days} is not a lifetime between 1 and 3650 days"
                ))
            );
        }
    }

    #[test]
    fn a_wrong_setting_is_an_internal_error_naming_it() {
        assert_eq!(Lifetime::configured(" 90 ").map(Lifetime::days), Ok(90));
        for text in ["0", "ninety", "\"90\"", "4000"] {
            let error = Lifetime::configured(text).expect_err("invalid");
            assert!(matches!(error, BrokerError::Internal(_)), "{error:?}");
            assert!(
                error
                    .description()
                    .starts_with("plugin setting `binding_expires_in_days` = "),
                "{error}"
            );
        }
    }

    #[test]
    fn renewal_comes_a_fifth_of_the_lifetime_before_the_expiry() {
        // 2026-01-01T00:00:00Z
        let expiry = Expiry::starting_at(1_767_225_600, Lifetime { days: 5 }).expect("in range");
        assert_eq!(expiry.expires_at(), "2026-01-06T00:00:00.0Z");
        assert_eq!(expiry.renew_before(), "2026-01-05T00:00:00.0Z");
        let expiry = Expiry::starting_at(1_767_225_600, Lifetime { days: 1 }).expect("in range");
        assert_eq!(expiry.expires_at(), "2026-01-02T00:00:00.0Z");
        assert_eq!(expiry.renew_before(), "2026-01-01T19:12:00.0Z");
    }

    #[test]
    fn only_a_finished_bind_carries_the_metadata() {
        let expiry = Expiry::starting_at(0, Lifetime { days: 1 }).expect("in range");
        let done = crate::Credentials::new("x", "h", 1).into_bind_outcome();
        let BindOutcome::Done(result) = done.expiring(Some(&expiry)) else {
            panic!("still done");
        };
        assert_eq!(
            result.metadata,
            Some(BindingMetadata {
                expires_at: Some("1970-01-02T00:00:00.0Z".to_owned()),
                renew_before: Some("1970-01-01T19:12:00.0Z".to_owned()),
            })
        );
        let accepted = BindOutcome::Accepted(crate::Accepted {
            operation: None,
            dashboard_url: None,
        });
        assert_eq!(accepted.clone().expiring(Some(&expiry)), accepted);
    }
}
