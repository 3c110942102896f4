//! The fake `tcp` capability: streams to a peer the test plays.

use std::collections::{BTreeMap, VecDeque};

use super::{ThreadBound, not_granted, with_state};
use crate::tcp::{Credentials, Encoding, Error, ServerInfo};

/// The test's side of a stream: called with every write, returns the bytes
/// the plugin reads back (possibly none).
type Peer = Box<dyn FnMut(&[u8]) -> Vec<u8>>;

struct Grant {
    server: ServerInfo,
    credentials: Credentials,
    peer: Option<Peer>,
    /// `connect` fails with this.
    refusal: Option<Error>,
}

#[derive(Default)]
pub(super) struct State {
    granted: BTreeMap<String, Grant>,
    /// Each stream's connection and the bytes waiting to be read.
    streams: Vec<(String, VecDeque<u8>)>,
    /// Every write, per connection, in order.
    written: BTreeMap<String, Vec<Vec<u8>>>,
}

/// Scripts and inspects the fake `tcp` capability.
pub struct Tcp(pub(super) ThreadBound);

impl Tcp {
    /// Grants `connection`, with the endpoint applications use and the admin
    /// login the plugin gets (placeholders, unless `revealed`).
    pub fn grant(&self, connection: &str, server: ServerInfo, credentials: Credentials) {
        let grant = Grant {
            server,
            credentials,
            peer: None,
            refusal: None,
        };
        with_state(|state| state.tcp.granted.insert(connection.to_owned(), grant));
    }

    /// Plays the server behind `connection` (granted first): `peer` gets
    /// every write on any of its streams and returns what the plugin then
    /// reads. A read with nothing waiting times out at once.
    pub fn serve(&self, connection: &str, peer: impl FnMut(&[u8]) -> Vec<u8> + 'static) {
        with_state(|state| {
            if let Some(grant) = state.tcp.granted.get_mut(connection) {
                grant.peer = Some(Box::new(peer));
            }
        });
    }

    /// Makes `connect` on `connection` fail with `error`.
    pub fn refuse(&self, connection: &str, error: Error) {
        with_state(|state| {
            if let Some(grant) = state.tcp.granted.get_mut(connection) {
                grant.refusal = Some(error);
            }
        });
    }

    /// The writes on `connection`'s streams so far, each as the plugin made it.
    pub fn written(&self, connection: &str) -> Vec<Vec<u8>> {
        with_state(|state| {
            state
                .tcp
                .written
                .get(connection)
                .cloned()
                .unwrap_or_default()
        })
    }

    /// How many streams the plugin opened.
    pub fn streams_opened(&self) -> usize {
        with_state(|state| state.tcp.streams.len())
    }
}

/// A stream to the test's peer, standing in for the host's resource.
pub(crate) struct ByteStream {
    index: usize,
}

impl ByteStream {
    /// The peer answers each write at once; its answer waits to be read.
    pub(crate) fn write(&self, data: &[u8]) -> Result<(), Error> {
        with_state(|state| {
            let tcp = &mut state.tcp;
            let connection = tcp.streams[self.index].0.clone();
            tcp.written
                .entry(connection.clone())
                .or_default()
                .push(data.to_vec());
            let peer = tcp
                .granted
                .get_mut(&connection)
                .and_then(|grant| grant.peer.as_mut())
                .ok_or_else(|| Error::Failed(format!("no peer serves `{connection}`")))?;
            let answer = peer(data);
            tcp.streams[self.index].1.extend(answer);
            Ok(())
        })
    }

    /// What is waiting, up to `max` bytes; nothing waiting times out.
    pub(crate) fn read(&self, max: u32, _timeout_ms: u32) -> Result<Vec<u8>, Error> {
        with_state(|state| {
            let inbox = &mut state.tcp.streams[self.index].1;
            if inbox.is_empty() {
                return Err(Error::TimedOut);
            }
            let take = inbox.len().min(max as usize);
            Ok(inbox.drain(..take).collect())
        })
    }
}

fn granted<T>(connection: &str, f: impl FnOnce(&Grant) -> T) -> Result<T, Error> {
    with_state(|state| state.tcp.granted.get(connection).map(f))
        .ok_or_else(|| Error::NotGranted(not_granted("tcp", connection)))
}

pub(crate) fn get_server_info(connection: &str) -> Result<ServerInfo, Error> {
    granted(connection, |grant| grant.server.clone())
}

pub(crate) fn get_credentials(connection: &str) -> Result<Credentials, Error> {
    granted(connection, |grant| grant.credentials.clone())
}

/// A token naming what it stands for; the fake substitutes nothing.
pub(crate) fn encoded_placeholder(
    connection: &str,
    text: &str,
    _encoding: Encoding,
) -> Result<String, Error> {
    granted(connection, |_| {
        format!("<encoded placeholder for {text:?}>")
    })
}

pub(crate) fn connect(connection: &str) -> Result<ByteStream, Error> {
    if let Some(error) = granted(connection, |grant| grant.refusal.clone())? {
        return Err(error);
    }
    with_state(|state| {
        state
            .tcp
            .streams
            .push((connection.to_owned(), VecDeque::new()));
        Ok(ByteStream {
            index: state.tcp.streams.len() - 1,
        })
    })
}
