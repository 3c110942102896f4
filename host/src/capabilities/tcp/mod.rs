//! The `tcp` capability: byte streams to the endpoints of a
//! `[connections.<name>] kind = "tcp"` section granted to the plugin, for
//! backends whose admin protocol is none of the other capabilities' (MQTT,
//! NATS, AMQP, SMTP, LDAP ...).
//!
//! Why a stream resource of our own rather than opening `wasi:sockets` to
//! the granted addresses: the host must see the bytes. It writes the admin
//! secret in place of a placeholder token and masks it in what is read back
//! (`placeholder`), so the plugin never holds the secret; it terminates TLS
//! (`endpoint`), so the plugin carries no TLS stack and the operator's CA
//! settings apply; and it counts bytes and streams per call. `wasi:sockets`
//! hands the guest the socket itself and allows none of that. The price: a
//! plugin uses the SDK's stream (which implements `std::io::Read`/`Write`)
//! rather than `std::net::TcpStream`. `wasi:sockets` stays closed: no other
//! address, port, UDP or name lookup is reachable.
//!
//! A call's streams are closed when the call ends (its host is dropped with
//! the store), and a connect, write or read still waiting at the call's
//! deadline traps there, failing the call.

mod endpoint;
mod placeholder;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::{HasSelf, Linker, Resource};

pub(crate) use self::endpoint::TcpConnection;
use self::endpoint::Transport;
use self::placeholder::{Incoming, Outgoing, Placeholder, with_secrets};
use super::connections::{Grants, REQUEST_TIMEOUT};
use super::{CallContext, Capability};
use crate::contract::wasm_broker::plugin::tcp::{
    self as wit, ByteStream, Credentials, Encoding, Error, ServerInfo,
};
use crate::limits::{ByteBudget, CallDeadline};

/// Streams one call may have open at once: an admin session rarely needs
/// more than one; a plugin opening streams in a loop stops here instead of
/// exhausting the backend's connection slots.
pub const MAX_STREAMS_PER_CALL: usize = 4;

/// Largest read handed to the plugin at once, whatever it asks for: the
/// host allocates this much per read.
const MAX_READ_CHUNK: usize = 64 * 1024;

/// When what arrived ends in what may be the start of the secret, the host
/// waits this long for the rest before handing those bytes over as they are.
const HOLD_WAIT: Duration = Duration::from_millis(50);

/// An open stream, owned by the call's [`TcpHost`]; the guest holds a
/// `byte-stream` handle whose number keys it.
struct OpenStream {
    transport: Box<dyn Transport>,
    outgoing: Outgoing,
    incoming: Incoming,
    /// Bytes unmasked but not yet handed over (a read asked for fewer).
    ready: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

/// The `tcp` import of one plugin call.
pub struct TcpHost {
    grants: Grants,
    /// This call's open streams, by the handle number the guest holds.
    streams: BTreeMap<u32, OpenStream>,
    next_handle: u32,
    /// Tokens handed out in this call, by connection name: the same within
    /// a call, fresh in the next.
    placeholders: BTreeMap<String, Vec<Placeholder>>,
    /// Bytes written and read in this call, over all its streams.
    written: ByteBudget,
    read: ByteBudget,
    /// When the call ends: a connect, write or read still waiting then
    /// traps, failing the call there.
    deadline: CallDeadline,
}

impl TcpHost {
    pub fn new(grants: Grants, max_host_call_bytes: u64) -> Self {
        Self {
            grants,
            streams: BTreeMap::new(),
            next_handle: 0,
            placeholders: BTreeMap::new(),
            written: ByteBudget::new(max_host_call_bytes),
            read: ByteBudget::new(max_host_call_bytes),
            deadline: CallDeadline::distant(),
        }
    }

    /// The placeholders of connection `name` for this call, made on first use.
    fn placeholders_of(&mut self, name: &str, connection: &TcpConnection) -> Vec<Placeholder> {
        if connection.reveal_credentials {
            return Vec::new();
        }
        self.placeholders
            .entry(name.to_owned())
            .or_insert_with(|| {
                [&connection.username, &connection.password]
                    .into_iter()
                    .flatten()
                    .map(|secret| Placeholder::new(secret))
                    .collect()
            })
            .clone()
    }

    fn credentials_of(&mut self, alias: &str) -> Result<Credentials, Error> {
        let (name, connection) = self.grants.tcp(alias).map_err(Error::NotGranted)?;
        if connection.reveal_credentials {
            return Ok(Credentials {
                username: connection.username.clone(),
                password: connection.password.clone(),
                revealed: true,
            });
        }
        let (name, connection) = (name.to_owned(), connection.clone());
        let placeholders = self.placeholders_of(&name, &connection);
        let mut tokens = placeholders.iter().map(Placeholder::token);
        Ok(Credentials {
            username: connection.username.as_ref().and_then(|_| tokens.next()),
            password: connection.password.as_ref().and_then(|_| tokens.next()),
            revealed: false,
        })
    }

    fn encoded_placeholder_of(
        &mut self,
        alias: &str,
        text: &str,
        encoding: Encoding,
    ) -> Result<String, Error> {
        use base64::Engine as _;
        let (name, connection) = self.grants.tcp(alias).map_err(Error::NotGranted)?;
        let (name, connection) = (name.to_owned(), connection.clone());
        let placeholders = self.placeholders_of(&name, &connection);
        let plain = with_secrets(text, &placeholders);
        let encoded = match encoding {
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(plain),
        };
        if connection.reveal_credentials {
            // The plugin holds the secrets anyway; the text was real already.
            return Ok(encoded);
        }
        let derived = Placeholder::for_bytes(encoded.into_bytes());
        let token = derived.token();
        self.placeholders.entry(name).or_default().push(derived);
        Ok(token)
    }

    async fn open_stream(&mut self, alias: &str) -> Result<OpenStream, Error> {
        if self.streams.len() >= MAX_STREAMS_PER_CALL {
            return Err(Error::LimitExceeded(format!(
                "a call may have at most {MAX_STREAMS_PER_CALL} streams open"
            )));
        }
        let (name, connection) = self.grants.tcp(alias).map_err(Error::NotGranted)?;
        let (name, connection) = (name.to_owned(), connection.clone());
        let plugin = self.grants.plugin().clone();
        let (transport, permit) = connection.open(&plugin).await.map_err(Error::Failed)?;
        let placeholders = self.placeholders_of(&name, &connection);
        Ok(OpenStream {
            transport,
            outgoing: Outgoing::new(placeholders.clone()),
            incoming: Incoming::new(placeholders),
            ready: Vec::new(),
            _permit: permit,
        })
    }

    /// The stream behind a guest's handle. The guest cannot forge one: the
    /// component model only passes handles this host gave out.
    fn stream(&mut self, stream: &Resource<ByteStream>) -> wasmtime::Result<&mut OpenStream> {
        self.streams
            .get_mut(&stream.rep())
            .ok_or_else(|| wasmtime::format_err!("unknown byte-stream handle"))
    }
}

impl OpenStream {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        let write = async {
            self.transport.write_all(bytes).await?;
            self.transport.flush().await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::Failed(format!("write: {error}"))),
            Err(_) => Err(Error::Failed(format!(
                "write: the peer took no data for {} s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let bytes = self.outgoing.write(data);
        self.send(&bytes).await
    }

    /// Up to `max` bytes, masked, waiting at most `timeout`.
    async fn read(&mut self, max: usize, timeout: Duration) -> Result<Vec<u8>, Error> {
        // Whatever is held back of a token cannot be completed any more: the
        // plugin now waits for an answer to what it wrote.
        let held = self.outgoing.flush();
        self.send(&held).await?;
        if self.ready.is_empty() {
            self.ready = self.receive(timeout).await?;
            if self.ready.is_empty() {
                return Ok(Vec::new());
            }
        }
        let rest = self.ready.split_off(max.min(self.ready.len()));
        Ok(std::mem::replace(&mut self.ready, rest))
    }

    /// The next bytes the plugin may see; empty at the end of the stream.
    async fn receive(&mut self, timeout: Duration) -> Result<Vec<u8>, Error> {
        let mut buffer = vec![0; MAX_READ_CHUNK];
        let mut wait = timeout;
        loop {
            match tokio::time::timeout(wait, self.transport.read(&mut buffer)).await {
                Err(_) if self.incoming.is_holding() => return Ok(self.incoming.release()),
                Err(_) => return Err(Error::TimedOut),
                Ok(Err(error)) => return Err(Error::Failed(format!("read: {error}"))),
                Ok(Ok(0)) => return Ok(self.incoming.release()),
                Ok(Ok(count)) => {
                    let visible = self.incoming.read(&buffer[..count]);
                    if !visible.is_empty() {
                        return Ok(visible);
                    }
                    // All of it may be the start of the secret: wait briefly
                    // for the rest.
                    wait = HOLD_WAIT;
                }
            }
        }
    }
}

impl wit::HostByteStream for TcpHost {
    async fn write(
        &mut self,
        stream: Resource<ByteStream>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        if let Err(why) = self
            .written
            .take(data.len(), "the bytes written in this call")
        {
            return Ok(Err(Error::LimitExceeded(why)));
        }
        let deadline = self.deadline;
        let open = self.stream(&stream)?;
        deadline
            .bound("tcp", open.write(&data))
            .await
            .map_err(wasmtime::Error::new)
    }

    async fn read(
        &mut self,
        stream: Resource<ByteStream>,
        max: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let max = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_READ_CHUNK);
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let deadline = self.deadline;
        let open = self.stream(&stream)?;
        let bytes = match deadline
            .bound("tcp", open.read(max, timeout))
            .await
            .map_err(wasmtime::Error::new)?
        {
            Ok(bytes) => bytes,
            Err(error) => return Ok(Err(error)),
        };
        if let Err(why) = self.read.take(bytes.len(), "the bytes read in this call") {
            return Ok(Err(Error::LimitExceeded(why)));
        }
        Ok(Ok(bytes))
    }

    async fn drop(&mut self, stream: Resource<ByteStream>) -> wasmtime::Result<()> {
        let Some(mut stream) = self.streams.remove(&stream.rep()) else {
            return Err(wasmtime::format_err!("unknown byte-stream handle"));
        };
        // A token still held back goes out as it is; then a clean close.
        let held = stream.outgoing.flush();
        let _ = stream.send(&held).await;
        let _ = tokio::time::timeout(HOLD_WAIT, stream.transport.shutdown()).await;
        Ok(())
    }
}

impl wit::Host for TcpHost {
    async fn get_server_info(
        &mut self,
        connection: String,
    ) -> wasmtime::Result<Result<ServerInfo, Error>> {
        Ok(self
            .grants
            .tcp(&connection)
            .map_err(Error::NotGranted)
            .map(|(_, tcp)| ServerInfo {
                host: tcp.address.host.clone(),
                port: tcp.address.port,
                tls: tcp.tls(),
            }))
    }

    async fn get_credentials(
        &mut self,
        connection: String,
    ) -> wasmtime::Result<Result<Credentials, Error>> {
        Ok(self.credentials_of(&connection))
    }

    async fn encoded_placeholder(
        &mut self,
        connection: String,
        text: String,
        encoding: Encoding,
    ) -> wasmtime::Result<Result<String, Error>> {
        Ok(self.encoded_placeholder_of(&connection, &text, encoding))
    }

    async fn connect(
        &mut self,
        connection: String,
    ) -> wasmtime::Result<Result<Resource<ByteStream>, Error>> {
        let deadline = self.deadline;
        let opened = deadline
            .bound("tcp", self.open_stream(&connection))
            .await
            .map_err(wasmtime::Error::new)?;
        match opened {
            Ok(stream) => {
                let handle = self.next_handle;
                self.next_handle = self
                    .next_handle
                    .checked_add(1)
                    .ok_or_else(|| wasmtime::format_err!("out of stream handles"))?;
                self.streams.insert(handle, stream);
                Ok(Ok(Resource::new_own(handle)))
            }
            Err(error) => Ok(Err(error)),
        }
    }
}

impl Capability for TcpHost {
    fn for_call(call: &CallContext<'_>) -> Self {
        Self {
            deadline: call.deadline,
            ..Self::new(call.connections(), call.max_host_call_bytes())
        }
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}
