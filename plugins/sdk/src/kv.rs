//! The plugin's private, durable key-value store, kept by the host: what a
//! plugin must remember across calls (e.g. the progress of a long operation).

use crate::BrokerError;
use crate::bindings::wasm_broker::plugin::kv as host;
use crate::imports::kv as calls;

pub use host::Error;

/// The value stored under `key`.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, BrokerError> {
    calls::get(key).map_err(to_broker_error)
}

/// Stores `value` under `key`, within the plugin's quota.
pub fn set(key: &str, value: &[u8]) -> Result<(), BrokerError> {
    calls::set(key, value).map_err(to_broker_error)
}

/// Removes `key`; nothing stored there is not an error.
pub fn delete(key: &str) -> Result<(), BrokerError> {
    calls::delete(key).map_err(to_broker_error)
}

/// Keys starting with `prefix`, in order.
pub fn list_keys(prefix: &str) -> Result<Vec<String>, BrokerError> {
    calls::list_keys(prefix).map_err(to_broker_error)
}

fn to_broker_error(error: host::Error) -> BrokerError {
    BrokerError::Internal(match error {
        host::Error::LimitExceeded(message) => {
            format!("plugin key-value store limit exceeded: {message}")
        }
        host::Error::Failed(message) => format!("plugin key-value store failed: {message}"),
    })
}
