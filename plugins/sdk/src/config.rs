//! The plugin's settings: the `[plugins.<name>.config]` table of broker.toml.

use std::str::FromStr;

use crate::BrokerError;
use crate::imports::config as calls;

/// The setting `key`: strings as they are, other TOML values as JSON text.
pub fn get(key: &str) -> Option<String> {
    calls::get(key)
}

/// The setting `key` parsed as `T`, or `default` when it is not set. A value
/// that does not parse is the operator's mistake: an internal error naming
/// the key.
pub fn get_or<T>(key: &str, default: T) -> Result<T, BrokerError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match get(key) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|error| {
            BrokerError::Internal(format!(
                "plugin setting `{key}` = {text:?} (broker.toml [plugins.<name>.config]) is invalid: {error}"
            ))
        }),
    }
}
