//! A bound on what one PostgreSQL answer may make the host buffer. sqlx
//! reads a whole protocol message before the host sees any of it, and even
//! before the message arrives it reserves and zero-fills as much memory as
//! the message's header declares: a single value may be a gigabyte (`SELECT
//! repeat('a', 300000000)` cost about 0.4 GB of broker memory per
//! statement). MySQL and MariaDB are bounded by the server's
//! `max_allowed_packet`, PostgreSQL by nothing.
//!
//! So each plugin's PostgreSQL pool reaches its server through a relay of
//! its own: sqlx connects to a Unix socket in a private directory, the
//! relay connects to the server over TCP and copies both ways. It reads the
//! server's message headers ([`Framing`]) and closes both sides before
//! passing on a header that declares more than the allowance; it also
//! counts the bytes the server sends since the client last sent anything
//! and closes past the allowance. sqlx then fails the statement with an I/O
//! error, which the `sql` capability reports as `limit-exceeded` (the relay
//! counts it in `trips`).
//!
//! TLS ([`ServerTls`]): with sslmode `prefer` (the default) or `require`,
//! which check no certificate, the relay itself asks the server for TLS
//! (as sqlx would, checking no certificate either) and reads the messages
//! inside; sqlx then talks plain text over the private socket. With
//! `verify-ca` or `verify-full` sqlx keeps the TLS session end to end and
//! checks the certificate (against the configured host name: sqlx uses the
//! host, not the socket, as the TLS name); the relay then sees only
//! encrypted bytes, and only the byte count holds: sqlx still reserves what
//! a header declares (not done: the relay would need the certificate
//! settings to end a verified session itself). Each connection's answers
//! are sequential (sqlx reads one before sending the next request), so the
//! bytes between two requests belong to one answer.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::CONNECT_TIMEOUT;

/// One read or write of the relay; the most it holds per direction.
const CHUNK: usize = 64 * 1024;

/// Wire bytes an answer may take for `max_bytes` of data: the protocol's
/// framing of many small values (a 4-byte length per value, 7 bytes per
/// row) and TLS records can double it.
pub(crate) fn wire_allowance(max_bytes: u64) -> u64 {
    max_bytes.saturating_mul(2).saturating_add(64 * 1024)
}

/// Who does TLS with the server, from the connection's sslmode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerTls {
    /// `disable`, `allow`: plain text.
    Plain,
    /// `prefer`: the relay asks for TLS, and goes on in plain text if the
    /// server has none.
    Prefer,
    /// `require`: the relay asks for TLS and closes if the server has none.
    Require,
    /// `verify-ca`, `verify-full`: sqlx's own session, end to end.
    Passthrough,
}

impl ServerTls {
    /// Whether sqlx should talk plain text to the relay (the relay then
    /// does what TLS there is).
    pub(crate) fn relay_ends_tls(self) -> bool {
        self != Self::Passthrough
    }
}

/// A relay between one pool and its server; stops (and removes its socket)
/// when dropped.
pub(crate) struct Relay {
    allowance: Arc<AtomicU64>,
    trips: Arc<AtomicU64>,
    accepting: JoinHandle<()>,
    /// Removed with the socket in it when the relay is dropped.
    directory: tempfile::TempDir,
}

impl Relay {
    /// Listens in a fresh private directory; must run inside a Tokio
    /// runtime. `host`/`port` is the server.
    pub(crate) fn start(
        host: String,
        port: u16,
        tls: ServerTls,
        allowance: u64,
    ) -> io::Result<Self> {
        super::stale_relays::sweep_once();
        // tempfile makes the directory 0700: only this user reaches the socket.
        let directory = tempfile::Builder::new()
            .prefix(super::stale_relays::PREFIX)
            .tempdir()?;
        // sqlx takes a directory and connects to `.s.PGSQL.<port>` in it, as
        // libpq does.
        let socket = directory.path().join(format!(".s.PGSQL.{port}"));
        let listener = UnixListener::bind(&socket)?;
        let allowance = Arc::new(AtomicU64::new(allowance));
        let trips = Arc::new(AtomicU64::new(0));
        let server = Server {
            host: Arc::from(host),
            port,
            tls,
        };
        let accepting = tokio::spawn(accept(listener, server, allowance.clone(), trips.clone()));
        Ok(Self {
            allowance,
            trips,
            accepting,
            directory,
        })
    }

    /// The socket's directory, for `PgConnectOptions::socket`.
    pub(crate) fn directory(&self) -> &std::path::Path {
        self.directory.path()
    }

    /// What each answer may take from now on (a plugin's limit may change
    /// with a live reload of broker.toml).
    pub(crate) fn set_allowance(&self, allowance: u64) {
        self.allowance.store(allowance, Ordering::Relaxed);
    }

    /// How many answers were cut so far.
    pub(crate) fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Open relays end when sqlx closes their connections.
        self.accepting.abort();
    }
}

/// Where and how the relay reaches the server.
#[derive(Clone)]
struct Server {
    host: Arc<str>,
    port: u16,
    tls: ServerTls,
}

async fn accept(
    listener: UnixListener,
    server: Server,
    allowance: Arc<AtomicU64>,
    trips: Arc<AtomicU64>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                tracing::warn!(%error, "the PostgreSQL relay could not accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = server.clone();
        let allowance = allowance.clone();
        let trips = trips.clone();
        tokio::spawn(async move {
            // On an error sqlx sees the socket close and reports a
            // connection error; the cause is logged here.
            match relay(client, &server, &allowance).await {
                Ok(Ended::Cut) => {
                    trips.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ended::Closed) => {}
                Err(error) => tracing::warn!(
                    %error,
                    host = &*server.host,
                    port = server.port,
                    "the PostgreSQL relay could not reach the server"
                ),
            }
        });
    }
}

/// Connects to the server (with TLS as `server.tls` says) and relays.
async fn relay(client: UnixStream, server: &Server, allowance: &AtomicU64) -> io::Result<Ended> {
    let mut stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((&*server.host, server.port)),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    if matches!(server.tls, ServerTls::Plain | ServerTls::Passthrough) {
        return Ok(pipe(
            client,
            stream,
            allowance,
            server.tls == ServerTls::Passthrough,
        )
        .await);
    }
    stream.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    match (answer[0], server.tls) {
        (b'S', _) => {
            let name = ServerName::try_from(server.host.to_string())
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
            let tls = TlsConnector::from(unverified_tls()?)
                .connect(name, stream)
                .await?;
            Ok(pipe(client, tls, allowance, false).await)
        }
        (_, ServerTls::Prefer) => Ok(pipe(client, stream, allowance, false).await),
        _ => Err(io::Error::other(
            "sslmode=require, and the server does not offer TLS",
        )),
    }
}

/// TLS that checks no certificate, as sslmode `prefer` and `require` do in
/// sqlx (and libpq without a root certificate): it encrypts, it does not
/// authenticate. Handshake signatures are still checked.
fn unverified_tls() -> io::Result<Arc<ClientConfig>> {
    let provider = Arc::new(ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Closed,
    Cut,
}

/// The 8 bytes of PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// What the relay knows of the server's byte stream: where each message
/// header is, so that a message declaring more than the allowance is cut
/// before sqlx sees its header.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// The client opened with an SSLRequest: the server answers one byte,
    /// `S` (TLS follows) or `N` (messages follow).
    SslAnswer,
    /// Messages: `have` bytes of the 5-byte header (type, length) gathered,
    /// or `body_left` bytes of a message's body still to pass.
    Messages {
        header: [u8; 5],
        have: usize,
        body_left: u64,
    },
    /// TLS: nothing to read but the byte count.
    Opaque,
}

impl Framing {
    fn messages() -> Self {
        Self::Messages {
            header: [0; 5],
            have: 0,
            body_left: 0,
        }
    }

    /// Follows `bytes` from the server; `Err` with the declared length of a
    /// message body larger than `allowance` (or a header no server sends).
    fn feed(&mut self, mut bytes: &[u8], allowance: u64) -> Result<(), u64> {
        while let Some(&first) = bytes.first() {
            match self {
                Self::SslAnswer => {
                    *self = if first == b'S' {
                        Self::Opaque
                    } else {
                        Self::messages()
                    };
                    bytes = &bytes[1..];
                }
                Self::Opaque => return Ok(()),
                Self::Messages {
                    header,
                    have,
                    body_left,
                } => {
                    if *body_left > 0 {
                        let passed = (*body_left).min(bytes.len() as u64);
                        *body_left -= passed;
                        bytes = &bytes[passed as usize..];
                        continue;
                    }
                    let taken = (header.len() - *have).min(bytes.len());
                    header[*have..*have + taken].copy_from_slice(&bytes[..taken]);
                    *have += taken;
                    bytes = &bytes[taken..];
                    if *have == header.len() {
                        // The length counts itself, not the type byte.
                        let length = u64::from(u32::from_be_bytes([
                            header[1], header[2], header[3], header[4],
                        ]));
                        let body = length.checked_sub(4).ok_or(length)?;
                        if body > allowance {
                            return Err(body);
                        }
                        *body_left = body;
                        *have = 0;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Copies both ways until either side closes, or an answer passes the
/// allowance.
/// `client_may_ask_tls`: sqlx does its own TLS through the relay (an
/// SSLRequest then makes the rest opaque).
async fn pipe<S: AsyncRead + AsyncWrite>(
    client: UnixStream,
    server: S,
    allowance: &AtomicU64,
    client_may_ask_tls: bool,
) -> Ended {
    let since_request = AtomicU64::new(0);
    // Set before the client's first bytes are passed on, so before the
    // server can answer them.
    let ssl_requested = std::sync::atomic::AtomicBool::new(false);
    let mut first_request = client_may_ask_tls;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let requests = async {
        let mut buffer = vec![0u8; CHUNK];
        loop {
            match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(read) => {
                    if std::mem::take(&mut first_request) {
                        let opening = &buffer[..read.min(SSL_REQUEST.len())];
                        ssl_requested.store(SSL_REQUEST.starts_with(opening), Ordering::Relaxed);
                    }
                    since_request.store(0, Ordering::Relaxed);
                    if server_write.write_all(&buffer[..read]).await.is_err() {
                        return Ended::Closed;
                    }
                }
            }
        }
    };
    let answers = async {
        let mut buffer = vec![0u8; CHUNK];
        let mut framing: Option<Framing> = None;
        loop {
            match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(read) => {
                    let allowed = allowance.load(Ordering::Relaxed);
                    let framing = framing.get_or_insert_with(|| {
                        if ssl_requested.load(Ordering::Relaxed) {
                            Framing::SslAnswer
                        } else {
                            Framing::messages()
                        }
                    });
                    if framing.feed(&buffer[..read], allowed).is_err() {
                        return Ended::Cut;
                    }
                    let answered =
                        since_request.fetch_add(read as u64, Ordering::Relaxed) + read as u64;
                    if answered > allowed {
                        return Ended::Cut;
                    }
                    if client_write.write_all(&buffer[..read]).await.is_err() {
                        return Ended::Closed;
                    }
                }
            }
        }
    };
    // Whichever ends first ends both: the halves drop, closing the sockets.
    tokio::select! {
        ended = requests => ended,
        ended = answers => ended,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Relay {
        fn socket(&self) -> std::path::PathBuf {
            // The one entry of its directory.
            std::fs::read_dir(self.directory())
                .expect("the relay's directory")
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .next()
                .expect("the socket")
        }
    }

    /// A message of `body` bytes, as a PostgreSQL server frames it.
    fn message(body: usize) -> Vec<u8> {
        let mut message = vec![b'D'];
        message.extend(u32::try_from(body + 4).expect("small").to_be_bytes());
        message.resize(5 + body, b'a');
        message
    }

    #[test]
    fn framing_finds_each_header_across_reads() {
        let mut stream = message(10);
        stream.extend(message(0));
        stream.extend(message(300));
        for split in [1, 3, 5, 7, 16, 100] {
            let mut framing = Framing::messages();
            for piece in stream.chunks(split) {
                framing.feed(piece, 300).expect("within the allowance");
            }
            assert!(
                matches!(
                    framing,
                    Framing::Messages {
                        have: 0,
                        body_left: 0,
                        ..
                    }
                ),
                "split {split}: {framing:?}"
            );
            let mut framing = Framing::messages();
            let outcome: Result<Vec<()>, u64> = stream
                .chunks(split)
                .map(|piece| framing.feed(piece, 299))
                .collect();
            assert_eq!(outcome, Err(300), "split {split}");
        }
    }

    #[test]
    fn framing_after_an_ssl_request() {
        let mut refused = Framing::SslAnswer;
        let mut stream = vec![b'N'];
        stream.extend(&message(50)[..3]);
        refused.feed(&stream, 10).expect("a partial header");
        assert_eq!(refused.feed(&message(50)[3..], 10), Err(50));
        let mut tls = Framing::SslAnswer;
        tls.feed(b"S\x16\x03\x03\xff\xff\xff\xff", 10)
            .expect("opaque");
        assert_eq!(tls, Framing::Opaque);
        // A length below its own 4 bytes: no server sends it.
        assert!(Framing::messages().feed(&[b'D', 0, 0, 0, 3], 10).is_err());
    }

    /// A server that answers each request with one message of `answer` bytes.
    async fn server(answer: usize) -> (String, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 16];
                    while stream.read(&mut request).await.is_ok_and(|read| read > 0) {
                        if stream.write_all(&message(answer)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ("127.0.0.1".to_owned(), port)
    }

    /// A server that answers an SSLRequest with `S` and then `answer` bytes
    /// of what would be TLS records.
    async fn tls_server(answer: usize) -> (String, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 8];
                if stream.read_exact(&mut request).await.is_err() {
                    continue;
                }
                let mut answer_bytes = vec![b'S'];
                answer_bytes.resize(1 + answer, 0x17);
                let _ = stream.write_all(&answer_bytes).await;
            }
        });
        ("127.0.0.1".to_owned(), port)
    }

    #[tokio::test]
    async fn through_tls_the_byte_count_cuts() {
        let (host, port) = tls_server(50_000_000).await;
        let relay = Relay::start(host, port, ServerTls::Passthrough, 1_000_000).expect("relay");
        let mut client = UnixStream::connect(relay.socket()).await.expect("connect");
        client.write_all(&SSL_REQUEST).await.expect("SSLRequest");
        let mut seen = 0;
        let mut buffer = vec![0u8; CHUNK];
        while let Ok(read @ 1..) = client.read(&mut buffer).await {
            seen += read;
        }
        assert!(seen > 0 && seen <= 1_000_000, "{seen} bytes passed");
    }

    /// Sends one request, reads until `expected` bytes or the end.
    async fn ask(stream: &mut UnixStream, expected: usize) -> usize {
        stream.write_all(b"q").await.expect("request");
        let mut seen = 0;
        let mut buffer = vec![0u8; CHUNK];
        while seen < expected {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => seen += read,
            }
        }
        seen
    }

    #[tokio::test]
    async fn answers_within_the_allowance_pass_each_time() {
        let (host, port) = server(100_000).await;
        let relay = Relay::start(host, port, ServerTls::Plain, 150_000).expect("relay");
        let mut client = UnixStream::connect(relay.socket()).await.expect("connect");
        // Three answers of 100 kB: 300 kB in all, each under 150 kB.
        for _ in 0..3 {
            assert_eq!(ask(&mut client, 100_005).await, 100_005);
        }
        assert_eq!(relay.trips(), 0);
    }

    #[tokio::test]
    async fn an_answer_past_the_allowance_is_cut_before_its_header_passes() {
        let (host, port) = server(50_000_000).await;
        let relay = Relay::start(host, port, ServerTls::Plain, 1_000_000).expect("relay");
        let mut client = UnixStream::connect(relay.socket()).await.expect("connect");
        let seen = ask(&mut client, 50_000_005).await;
        assert_eq!(seen, 0, "{seen} bytes passed");
        // The cut is counted once the relay's task has ended.
        for _ in 0..100 {
            if relay.trips() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(relay.trips(), 1);
    }

    #[tokio::test]
    async fn the_socket_goes_with_the_relay() {
        let (host, port) = server(1).await;
        let relay = Relay::start(host, port, ServerTls::Plain, 10).expect("relay");
        let socket = relay.socket();
        assert!(socket.exists());
        drop(relay);
        assert!(!socket.exists());
    }
}
