//! Redis commands on a connection broker.toml grants to the plugin.

use crate::BrokerError;
use crate::bindings::wasm_broker::plugin::redis as host;
use crate::imports::redis as calls;

pub use host::{Error, Reply, ReplyItem, ServerInfo};

/// Where applications reach the server behind `connection`.
pub fn server_info(connection: &str) -> Result<ServerInfo, BrokerError> {
    calls::get_server_info(connection).map_err(|error| to_broker_error(connection, error))
}

/// Runs one command, e.g. `command("admin", &["ACL", "DELUSER", &user])`.
pub fn command<A: AsRef<[u8]>>(connection: &str, args: &[A]) -> Result<Reply, BrokerError> {
    let args: Vec<Vec<u8>> = args.iter().map(|arg| arg.as_ref().to_vec()).collect();
    calls::command(connection, &args).map_err(|error| to_broker_error(connection, error))
}

fn to_broker_error(connection: &str, error: host::Error) -> BrokerError {
    BrokerError::Internal(match error {
        host::Error::NotGranted(message) => {
            format!(
                "connection `{connection}` is not granted to this plugin in broker.toml: {message}"
            )
        }
        host::Error::Failed(message) => {
            format!("Redis on connection `{connection}` failed: {message}")
        }
        host::Error::LimitExceeded(message) => {
            format!("Redis on connection `{connection}` exceeded the host-call limit: {message}")
        }
        host::Error::Denied(message) => {
            format!("Redis on connection `{connection}` refused by the grant's policy: {message}")
        }
    })
}

/// A `SCAN` page: the next cursor (`"0"` when done) and the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Where the next `SCAN` goes on.
    pub cursor: String,
    /// The keys of this page.
    pub keys: Vec<Vec<u8>>,
}

impl Reply {
    /// Reads the `[cursor, [keys...]]` reply of `SCAN`.
    pub fn into_scan_page(self) -> Result<ScanPage, BrokerError> {
        match self {
            Self::Array(items) => match <[ReplyItem; 2]>::try_from(items) {
                Ok([ReplyItem::Data(cursor), ReplyItem::Nested(keys)]) => Ok(ScanPage {
                    cursor: String::from_utf8_lossy(&cursor).into_owned(),
                    keys,
                }),
                Ok(other) => Err(unexpected_scan_reply(&other)),
                Err(items) => Err(unexpected_scan_reply(&items)),
            },
            other => Err(unexpected_scan_reply(&other)),
        }
    }
}

fn unexpected_scan_reply(reply: &dyn std::fmt::Debug) -> BrokerError {
    BrokerError::Internal(format!("unexpected SCAN reply: {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_pages_are_read() {
        let reply = Reply::Array(vec![
            ReplyItem::Data(b"17".to_vec()),
            ReplyItem::Nested(vec![b"a:1".to_vec(), b"a:2".to_vec()]),
        ]);
        assert_eq!(
            reply.into_scan_page().expect("a page"),
            ScanPage {
                cursor: "17".to_owned(),
                keys: vec![b"a:1".to_vec(), b"a:2".to_vec()]
            }
        );
    }

    #[test]
    fn other_replies_are_internal_errors() {
        assert!(matches!(
            Reply::Integer(1).into_scan_page(),
            Err(BrokerError::Internal(_))
        ));
        assert!(matches!(
            Reply::Array(vec![]).into_scan_page(),
            Err(BrokerError::Internal(_))
        ));
    }
}
