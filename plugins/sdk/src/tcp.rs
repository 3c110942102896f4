//! Byte streams to a TCP endpoint broker.toml grants to the plugin
//! (`[connections.<name>] kind = "tcp"`), for a backend whose admin protocol
//! is none of the host's own capabilities: MQTT, NATS, AMQP, SMTP, LDAP ...
//! The plugin speaks the protocol; the host resolves the name, connects, and
//! speaks TLS when the connection's URL is `tls://`, so the plugin needs no
//! TLS stack. Nothing but the granted endpoints is reachable.
//!
//! The admin secret stays with the host. [`credentials`] hands out
//! placeholder tokens as long as the real user name and password; write them
//! where the protocol carries the login (an MQTT CONNECT, an AMQP PLAIN
//! response, a Redis `AUTH` ...) and the host writes the real value in their
//! place on the way out, the first time each appears on a stream. It writes
//! the token back in place of the secret in what a stream reads, so the
//! plugin's memory never holds the secret. A challenge-response protocol
//! (SCRAM, nkeys) cannot work with a stand-in: it needs the operator to set
//! `reveal_credentials = true` on the connection, and then
//! [`Credentials::revealed`] is true and the values are the secrets. A
//! protocol that sends the login base64-encoded gets a token for the encoded
//! text from [`encoded_placeholder`].
//!
//! ```ignore
//! use wasm_broker_sdk::tcp;
//!
//! let login = tcp::credentials("admin")?;          // placeholder tokens
//! let mut stream = tcp::connect("admin")?;
//! stream.write_all(&my_protocol::hello(login.username.as_deref()))?;
//! let greeting = stream.read(4096, Duration::from_secs(5))?;
//! ```
//!
//! A stream is closed when dropped, and at the latest when the plugin call
//! ends: nothing carries over to the next call. Every read waits at most
//! until the call's deadline, and the bytes a call moves and the streams it
//! opens are capped by the host (errors say so).
//!
//! [`Stream`] also implements [`std::io::Read`] and [`std::io::Write`], so
//! ordinary blocking client code can sit on it. Each `read` and `write` is
//! one host call: wrap the stream in a [`std::io::BufReader`] for byte-wise
//! parsers, and write whole messages at once.

use std::io;
use std::time::{Duration, Instant};

use crate::BrokerError;
use crate::bindings::wasm_broker::plugin::tcp as host;
use crate::imports::tcp as calls;

pub use host::{Credentials, Encoding, Error, ServerInfo};

/// Where applications reach the endpoint behind `connection`, and whether
/// the host speaks TLS to it. Never includes credentials.
pub fn server_info(connection: &str) -> Result<ServerInfo, BrokerError> {
    calls::get_server_info(connection)
        .map_err(|error| to_broker_error(connection, "the server info", error))
}

/// The connection's admin login as the plugin may use it: placeholder
/// tokens the host swaps for the secrets on a stream, unless the operator
/// revealed them (see the module documentation). Never log them.
pub fn credentials(connection: &str) -> Result<Credentials, BrokerError> {
    calls::get_credentials(connection)
        .map_err(|error| to_broker_error(connection, "the credentials", error))
}

/// For a protocol that sends the login encoded rather than as it is (SMTP
/// `AUTH PLAIN`, HTTP basic, SASL PLAIN carried base64-encoded): a new
/// placeholder token standing for `text`, with this call's tokens in it
/// replaced by the secrets, then encoded. Write the returned token where the
/// encoded text goes; the host writes the encoded secret instead. For SMTP
/// `AUTH PLAIN`, `text` is `"\0<username token>\0<password token>"`. Ask
/// for it before [`connect`]: it applies to streams opened afterwards.
pub fn encoded_placeholder(
    connection: &str,
    text: &str,
    encoding: Encoding,
) -> Result<String, BrokerError> {
    calls::encoded_placeholder(connection, text, encoding)
        .map_err(|error| to_broker_error(connection, "an encoded placeholder", error))
}

/// Opens a stream to the first endpoint of `connection` that accepts.
pub fn connect(connection: &str) -> Result<Stream, BrokerError> {
    let inner = calls::connect(connection)
        .map_err(|error| to_broker_error(connection, "connecting", error))?;
    Ok(Stream {
        inner,
        connection: connection.to_owned(),
        read_timeout: None,
    })
}

/// An open byte stream to a granted endpoint.
pub struct Stream {
    inner: calls::ByteStream,
    connection: String,
    /// How long an [`io::Read`] read waits; `None`: until the call's deadline.
    read_timeout: Option<Duration>,
}

impl Stream {
    /// The connection alias the stream was opened on.
    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// Writes all of `data`.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), BrokerError> {
        self.inner
            .write(data)
            .map_err(|error| to_broker_error(&self.connection, "writing", error))
    }

    /// What arrives within `timeout`, up to `max` bytes; empty when the
    /// peer closed the stream. Nothing arriving in time is an error; see
    /// [`Stream::try_read`] to poll.
    pub fn read(&mut self, max: usize, timeout: Duration) -> Result<Vec<u8>, BrokerError> {
        self.try_read(max, timeout)?.ok_or_else(|| {
            BrokerError::Internal(format!(
                "reading on connection `{}`: nothing arrived within {} ms",
                self.connection,
                timeout.as_millis()
            ))
        })
    }

    /// Like [`Stream::read`], but `None` when nothing arrived within
    /// `timeout` (the stream stays usable).
    pub fn try_read(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, BrokerError> {
        match self.host_read(max, Some(timeout)) {
            Ok(data) => Ok(Some(data)),
            Err(host::Error::TimedOut) => Ok(None),
            Err(error) => Err(to_broker_error(&self.connection, "reading", error)),
        }
    }

    /// Exactly `len` bytes, which must all arrive within `timeout`; the
    /// peer closing the stream before is an error.
    pub fn read_exact(&mut self, len: usize, timeout: Duration) -> Result<Vec<u8>, BrokerError> {
        let deadline = Instant::now() + timeout;
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = self.read(len - data.len(), left)?;
            if chunk.is_empty() {
                return Err(BrokerError::Internal(format!(
                    "reading on connection `{}`: the peer closed the stream after {} of {len} bytes",
                    self.connection,
                    data.len()
                )));
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }

    /// How long a read through [`io::Read`] waits before failing with
    /// [`io::ErrorKind::TimedOut`]; `None` (the default): until the call's
    /// deadline.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    fn host_read(&self, max: usize, timeout: Option<Duration>) -> Result<Vec<u8>, host::Error> {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        // The host caps every wait at the call's deadline.
        let timeout_ms = timeout.map_or(u32::MAX, |timeout| {
            u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX)
        });
        let data = self.inner.read(max, timeout_ms)?;
        if data.len() > max as usize {
            return Err(host::Error::Failed(format!(
                "the host returned {} bytes for a read of at most {max}",
                data.len()
            )));
        }
        Ok(data)
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.host_read(buf.len(), self.read_timeout) {
            Ok(data) => {
                buf[..data.len()].copy_from_slice(&data);
                Ok(data.len())
            }
            Err(host::Error::TimedOut) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("reading on connection `{}` timed out", self.connection),
            )),
            Err(error) => Err(to_io_error(&self.connection, error)),
        }
    }
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner
            .write(buf)
            .map_err(|error| to_io_error(&self.connection, error))?;
        Ok(buf.len())
    }

    /// Nothing to do: every write is handed to the host at once.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn to_io_error(connection: &str, error: host::Error) -> io::Error {
    let kind = match &error {
        host::Error::NotGranted(_) => io::ErrorKind::PermissionDenied,
        host::Error::TimedOut => io::ErrorKind::TimedOut,
        host::Error::Failed(_) | host::Error::LimitExceeded(_) => io::ErrorKind::Other,
    };
    io::Error::new(
        kind,
        to_broker_error(connection, "the stream", error)
            .description()
            .to_owned(),
    )
}

fn to_broker_error(connection: &str, what: &str, error: host::Error) -> BrokerError {
    BrokerError::Internal(match error {
        host::Error::NotGranted(message) => format!(
            "connection `{connection}` is not a tcp connection granted to this plugin in broker.toml: {message}"
        ),
        host::Error::Failed(message) => {
            format!("{what} on connection `{connection}` failed: {message}")
        }
        host::Error::TimedOut => format!("{what} on connection `{connection}` timed out"),
        host::Error::LimitExceeded(message) => {
            format!("{what} on connection `{connection}` exceeded the host's limits: {message}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_connection() {
        let error = to_broker_error("admin", "connecting", host::Error::Failed("refused".into()));
        assert_eq!(
            error,
            BrokerError::Internal("connecting on connection `admin` failed: refused".to_owned())
        );
        let error = to_broker_error("mq", "reading", host::Error::NotGranted("no grant".into()));
        assert!(error.description().contains("`mq`"), "{error:?}");
    }

    #[test]
    fn io_errors_keep_the_kind() {
        assert_eq!(
            to_io_error("admin", host::Error::TimedOut).kind(),
            io::ErrorKind::TimedOut
        );
        assert_eq!(
            to_io_error("admin", host::Error::NotGranted(String::new())).kind(),
            io::ErrorKind::PermissionDenied
        );
    }
}
