//! The tcp capability against real sockets: a local server that records
//! what it receives and answers with a script, plain and over TLS.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wit::{Host as _, HostByteStream as _};

use super::*;
use crate::capabilities::connections::tests::connections;

const SECRET: &str = "admin-s3cret-password";

/// A server on a free loopback port: for each connection it sends
/// everything it receives to the test, and echoes it back if `echo`.
async fn server(echo: bool) -> (u16, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (sent, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                while let Ok(count) = socket.read(&mut buffer).await {
                    if count == 0 {
                        break;
                    }
                    let _ = sent.send(buffer[..count].to_vec());
                    if echo && socket.write_all(&buffer[..count]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, received)
}

fn host_for(tables: &[(&str, &str)], limit: u64) -> TcpHost {
    let grants: BTreeMap<String, String> = tables
        .iter()
        .map(|(name, _)| ((*name).to_owned(), (*name).to_owned()))
        .collect();
    TcpHost::new(Grants::new(connections(tables), Arc::new(grants)), limit)
}

fn plain(port: u16) -> String {
    format!("kind = 'tcp'\nurl = 'tcp://admin:{SECRET}@127.0.0.1:{port}'")
}

async fn drain(received: &mut mpsc::UnboundedReceiver<Vec<u8>>, until_len: usize) -> Vec<u8> {
    let mut all = Vec::new();
    while all.len() < until_len {
        match tokio::time::timeout(Duration::from_secs(5), received.recv()).await {
            Ok(Some(bytes)) => all.extend(bytes),
            _ => break,
        }
    }
    all
}

fn own(stream: &Resource<ByteStream>) -> Resource<ByteStream> {
    Resource::new_borrow(stream.rep())
}

/// Reads from `stream` until `len` bytes came back from the echo server.
async fn read_echo(host: &mut TcpHost, stream: &Resource<ByteStream>, len: usize) -> Vec<u8> {
    let mut echoed = Vec::new();
    while echoed.len() < len {
        let bytes = host
            .read(own(stream), 4096, 2000)
            .await
            .expect("no trap")
            .expect("read");
        assert!(!bytes.is_empty(), "the echo server closed early");
        echoed.extend(bytes);
    }
    echoed
}

#[tokio::test]
async fn the_peer_gets_the_secret_and_the_plugin_only_ever_sees_the_token() {
    let (port, mut received) = server(true).await;
    let mut host = host_for(&[("broker", &plain(port))], 1 << 20);
    let credentials = host
        .get_credentials("broker".to_owned())
        .await
        .expect("no trap")
        .expect("granted");
    assert!(!credentials.revealed);
    let token = credentials.password.expect("a password token");
    assert_eq!(token.len(), SECRET.len());
    assert_ne!(token, SECRET);
    assert_eq!(credentials.username.as_deref().map(str::len), Some(5));

    let stream = host
        .connect("broker".to_owned())
        .await
        .expect("no trap")
        .expect("connects");
    // The token split across two writes, then written a second time.
    let (first, second) = token.split_at(7);
    for part in [format!("AUTH {first}"), format!("{second}\n")] {
        host.write(own(&stream), part.into_bytes())
            .await
            .expect("no trap")
            .expect("written");
    }
    host.write(own(&stream), format!("AGAIN {token}\n").into_bytes())
        .await
        .expect("no trap")
        .expect("written");
    let expected_len = "AUTH \n".len() + SECRET.len() + "AGAIN \n".len() + token.len();
    let at_peer = drain(&mut received, expected_len).await;
    assert_eq!(
        String::from_utf8_lossy(&at_peer),
        format!("AUTH {SECRET}\nAGAIN {token}\n"),
        "the first token became the secret, the second stayed a token"
    );

    // The echo carries the secret back: the plugin sees the token.
    let echoed = read_echo(&mut host, &stream, expected_len).await;
    let echoed = String::from_utf8_lossy(&echoed);
    assert!(!echoed.contains(SECRET), "{echoed}");
    assert_eq!(echoed, format!("AUTH {token}\nAGAIN {token}\n"));
}

#[tokio::test]
async fn revealed_credentials_are_the_real_ones_and_pass_untouched() {
    let (port, mut received) = server(false).await;
    let table = format!("{}\nreveal_credentials = true", plain(port));
    let mut host = host_for(&[("broker", &table)], 1 << 20);
    let credentials = host
        .get_credentials("broker".to_owned())
        .await
        .expect("no trap")
        .expect("granted");
    assert!(credentials.revealed);
    assert_eq!(credentials.password.as_deref(), Some(SECRET));
    let stream = host
        .connect("broker".to_owned())
        .await
        .expect("no trap")
        .expect("connects");
    host.write(own(&stream), SECRET.as_bytes().to_vec())
        .await
        .expect("no trap")
        .expect("written");
    assert_eq!(drain(&mut received, SECRET.len()).await, SECRET.as_bytes());
}

#[tokio::test]
async fn only_granted_tcp_connections_open() {
    let (port, _received) = server(false).await;
    let mut host = host_for(
        &[
            ("broker", &plain(port)),
            ("cache", "kind = 'redis'\nurl = 'redis://127.0.0.1:6379'"),
        ],
        1 << 20,
    );
    let Ok(Err(Error::NotGranted(why))) = host.connect("other".to_owned()).await else {
        panic!("an alias that is not granted connected")
    };
    assert!(why.contains("not granted"), "{why}");
    let Ok(Err(Error::NotGranted(why))) = host.connect("cache".to_owned()).await else {
        panic!("a redis connection opened as a stream")
    };
    assert!(why.contains("not a TCP one"), "{why}");
}

#[tokio::test]
async fn a_call_opens_a_bounded_number_of_streams_and_moves_bounded_bytes() {
    let (port, _received) = server(false).await;
    let mut host = host_for(&[("broker", &plain(port))], 1000);
    let mut streams = Vec::new();
    for _ in 0..MAX_STREAMS_PER_CALL {
        streams.push(
            host.connect("broker".to_owned())
                .await
                .expect("no trap")
                .expect("within the limit"),
        );
    }
    assert!(matches!(
        host.connect("broker".to_owned()).await,
        Ok(Err(Error::LimitExceeded(_)))
    ));
    // Closing one makes room for another.
    let closed = streams.pop().expect("one");
    host.drop(closed).await.expect("closed");
    let stream = host
        .connect("broker".to_owned())
        .await
        .expect("no trap")
        .expect("room again");

    host.write(own(&stream), vec![b'x'; 600])
        .await
        .expect("no trap")
        .expect("within the byte limit");
    assert!(matches!(
        host.write(own(&stream), vec![b'x'; 600]).await,
        Ok(Err(Error::LimitExceeded(_)))
    ));
}

#[tokio::test]
async fn reads_time_out_and_see_the_end_of_the_stream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Ok((socket, _)) = listener.accept().await {
            let _ = closed.await;
            drop(socket);
        }
    });
    let mut host = host_for(&[("broker", &plain(port))], 1 << 20);
    let stream = host
        .connect("broker".to_owned())
        .await
        .expect("no trap")
        .expect("connects");
    let started = std::time::Instant::now();
    assert!(matches!(
        host.read(own(&stream), 100, 200).await,
        Ok(Err(Error::TimedOut))
    ));
    assert!(started.elapsed() >= Duration::from_millis(200));
    let _ = close.send(());
    let end = host
        .read(own(&stream), 100, 2000)
        .await
        .expect("no trap")
        .expect("end of stream is not an error");
    assert!(end.is_empty());
}

#[tokio::test]
async fn nothing_listening_fails_and_other_endpoints_are_tried_in_order() {
    // Bound but not listening: the port stays ours (no other test's server
    // can get it, as one did when it was only bound and dropped), and a
    // connection to it is refused.
    let dead = tokio::net::TcpSocket::new_v4().expect("socket");
    dead.bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let dead_port = dead.local_addr().expect("address").port();
    let (port, mut received) = server(false).await;
    let mut host = host_for(
        &[
            ("dead", &plain(dead_port)),
            (
                "failover",
                &format!("{}\nendpoints = ['127.0.0.1:{port}']", plain(dead_port)),
            ),
        ],
        1 << 20,
    );
    let Ok(Err(Error::Failed(why))) = host.connect("dead".to_owned()).await else {
        panic!("connected to nothing")
    };
    assert!(why.contains(&format!("127.0.0.1:{dead_port}")), "{why}");
    let stream = host
        .connect("failover".to_owned())
        .await
        .expect("no trap")
        .expect("the second endpoint accepts");
    host.write(own(&stream), b"hi".to_vec())
        .await
        .expect("no trap")
        .expect("written");
    assert_eq!(drain(&mut received, 2).await, b"hi");
    drop(dead);
}

#[tokio::test]
async fn the_host_speaks_tls_verified_against_the_configured_ca() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, certified.cert.pem()).expect("ca written");

    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(
        certified.signing_key.serialize_der(),
    )
    .expect("key");
    let server_config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(socket).await {
                    let mut buffer = [0; 64];
                    if let Ok(count) = tls.read(&mut buffer).await {
                        let _ = tls.write_all(&buffer[..count]).await;
                        let _ = tls.flush().await;
                    }
                }
            });
        }
    });

    let trusted = format!(
        "kind = 'tcp'\nurl = 'tls://localhost:{port}?ca={}'",
        ca_path.display()
    );
    let untrusted = format!("kind = 'tcp'\nurl = 'tls://localhost:{port}'");
    let mut host = host_for(&[("trusted", &trusted), ("untrusted", &untrusted)], 1 << 20);
    let info = host
        .get_server_info("trusted".to_owned())
        .await
        .expect("no trap")
        .expect("granted");
    assert!(info.tls);
    let stream = host
        .connect("trusted".to_owned())
        .await
        .expect("no trap")
        .expect("TLS handshake with the configured CA");
    host.write(own(&stream), b"over tls".to_vec())
        .await
        .expect("no trap")
        .expect("written");
    let echoed = host
        .read(own(&stream), 64, 5000)
        .await
        .expect("no trap")
        .expect("read");
    assert_eq!(echoed, b"over tls");

    let Ok(Err(Error::Failed(why))) = host.connect("untrusted".to_owned()).await else {
        panic!("a certificate no configured root signed was accepted")
    };
    assert!(why.contains("TLS"), "{why}");
}

#[tokio::test]
async fn an_encoded_placeholder_stands_for_the_encoded_secrets() {
    use base64::Engine as _;
    let (port, mut received) = server(true).await;
    let mut host = host_for(&[("smtp", &plain(port))], 1 << 20);
    let credentials = host
        .get_credentials("smtp".to_owned())
        .await
        .expect("no trap")
        .expect("granted");
    let (user, password) = (
        credentials.username.expect("user token"),
        credentials.password.expect("password token"),
    );
    let token = host
        .encoded_placeholder(
            "smtp".to_owned(),
            format!("\0{user}\0{password}"),
            Encoding::Base64,
        )
        .await
        .expect("no trap")
        .expect("granted");
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("\0admin\0{SECRET}"));
    assert_eq!(token.len(), encoded.len());
    assert_ne!(token, encoded);

    let stream = host
        .connect("smtp".to_owned())
        .await
        .expect("no trap")
        .expect("connects");
    host.write(own(&stream), format!("AUTH PLAIN {token}\r\n").into_bytes())
        .await
        .expect("no trap")
        .expect("written");
    let line = format!("AUTH PLAIN {encoded}\r\n");
    assert_eq!(
        String::from_utf8_lossy(&drain(&mut received, line.len()).await),
        line
    );
    let echoed = read_echo(&mut host, &stream, line.len()).await;
    assert_eq!(
        String::from_utf8_lossy(&echoed),
        format!("AUTH PLAIN {token}\r\n")
    );
}

#[tokio::test]
async fn a_plugin_holding_every_stream_does_not_stall_another() {
    let (port, _received) = server(false).await;
    let table = format!("{}\nmax_connections = 1", plain(port));
    let connections = connections(&[("broker", &table)]);
    let grants = Arc::new(BTreeMap::from([("broker".to_owned(), "broker".to_owned())]));
    let host_of = |plugin: &str| {
        TcpHost::new(
            Grants::new(connections.clone(), grants.clone()).of_plugin(Arc::from(plugin)),
            1 << 20,
        )
    };
    let mut hog = host_of("hog");
    let _held = hog
        .connect("broker".to_owned())
        .await
        .expect("no trap")
        .expect("the hog's one stream");
    let mut other = host_of("other");
    let started = std::time::Instant::now();
    let answer = other.connect("broker".to_owned()).await.expect("no trap");
    assert!(
        answer.is_ok(),
        "another plugin waited for the hog's stream: {:?}",
        answer.err()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let refused = hog.connect("broker".to_owned()).await.expect("no trap");
    assert!(
        matches!(&refused, Err(Error::Failed(why)) if why.contains("busy")),
        "the hog is held to its own max_connections"
    );
}
