//! The plugin's private, durable key-value store, kept by the host: what a
//! plugin must remember across calls (e.g. the progress of a long operation).

use crate::BrokerError;
use crate::bindings::wasm_broker::plugin::kv as host;

pub fn get(key: &str) -> Result<Option<Vec<u8>>, BrokerError> {
    host::get(key).map_err(to_broker_error)
}

pub fn set(key: &str, value: &[u8]) -> Result<(), BrokerError> {
    host::set(key, value).map_err(to_broker_error)
}

pub fn delete(key: &str) -> Result<(), BrokerError> {
    host::delete(key).map_err(to_broker_error)
}

/// Keys starting with `prefix`, in order.
pub fn list_keys(prefix: &str) -> Result<Vec<String>, BrokerError> {
    host::list_keys(prefix).map_err(to_broker_error)
}

fn to_broker_error(error: host::Error) -> BrokerError {
    BrokerError::Internal(match error {
        host::Error::LimitExceeded(message) => {
            format!("plugin key-value store limit exceeded: {message}")
        }
        host::Error::Failed(message) => format!("plugin key-value store failed: {message}"),
    })
}
