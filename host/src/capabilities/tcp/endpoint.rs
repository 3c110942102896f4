//! A `[connections.<name>] kind = "tcp"` section: the endpoints the host
//! connects to for a plugin, TLS, and the admin credentials it keeps.
//!
//! ```toml
//! [connections.mosquitto]
//! kind = "tcp"
//! url = "tcp://admin:secret@127.0.0.1:1884"     # or tls://...?ca=ca.pem
//! endpoints = ["mqtt-2.internal:1884"]          # tried in order after the url's
//! reveal_credentials = false                    # true only for SCRAM, nkeys ...
//! ```

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use url::Url;

use super::super::connections::{
    ACQUIRE_TIMEOUT, CONNECT_TIMEOUT, ConnectionError, PerPlugin, PublicAddress, decode_userinfo,
    invalid_url, permit_count,
};
use crate::config::ConnectionConfig;

/// A byte stream to an endpoint: plain TCP or TLS over it.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Transport for T {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

pub(crate) struct TcpConnection {
    /// Tried in order; the first that accepts serves the stream.
    endpoints: Vec<Endpoint>,
    tls: Option<TlsConnector>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The operator lets the plugin hold the real credentials.
    pub reveal_credentials: bool,
    /// One permit per open stream, per plugin, so at most `max_connections`
    /// exist for each plugin and one plugin's streams never hold another's.
    max_connections: usize,
    permits: PerPlugin<Arc<Semaphore>>,
    pub address: PublicAddress,
}

impl TcpConnection {
    pub(crate) fn from_url(
        name: &str,
        config: &ConnectionConfig,
        url: &Url,
    ) -> Result<Self, ConnectionError> {
        let invalid = |reason: String| ConnectionError::Invalid {
            connection: name.to_owned(),
            reason,
        };
        let tls = match url.scheme() {
            "tcp" => None,
            "tls" => Some(tls_connector(name, url)?),
            _ => {
                return Err(invalid_url(
                    name,
                    "a tcp connection needs a tcp://host:port or tls://host:port url",
                ));
            }
        };
        if url.scheme() == "tcp" && url.query().is_some() {
            return Err(invalid_url(name, "a tcp:// url takes no query"));
        }
        if !matches!(url.path(), "" | "/") || url.fragment().is_some() {
            return Err(invalid_url(name, "a tcp url names only host and port"));
        }
        let first = Endpoint {
            host: url
                .host_str()
                .map(|host| {
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned()
                })
                .filter(|host| !host.is_empty())
                .ok_or_else(|| invalid_url(name, "the url names no host"))?,
            port: url
                .port()
                .ok_or_else(|| invalid_url(name, "the url names no port"))?,
        };
        let mut endpoints = vec![first.clone()];
        for extra in &config.endpoints {
            endpoints.push(
                parse_endpoint(extra)
                    .ok_or_else(|| invalid(format!("endpoint {extra:?} is not host:port")))?,
            );
        }
        let username = config.username.clone().or_else(|| {
            Some(url.username())
                .filter(|user| !user.is_empty())
                .map(decode_userinfo)
        });
        let password = config
            .effective_password()
            .or_else(|| url.password().map(decode_userinfo));
        let address =
            super::super::connections::public_address(name, config, Some(&first.host), first.port)?;
        if config.reveal_credentials {
            tracing::warn!(
                connection = name,
                "reveal_credentials = true: plugins granted this connection hold its admin credentials"
            );
        }
        Ok(Self {
            endpoints,
            tls,
            username,
            password,
            reveal_credentials: config.reveal_credentials,
            max_connections: permit_count(config.max_connections),
            permits: PerPlugin::default(),
            address,
        })
    }

    pub(crate) fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A new stream for `plugin` to the first endpoint that accepts, TLS
    /// included. The permit, out of the plugin's own, lives as long as the
    /// stream.
    pub(crate) async fn open(
        &self,
        plugin: &Arc<str>,
    ) -> Result<(Box<dyn Transport>, OwnedSemaphorePermit), String> {
        let permits = self
            .permits
            .get(plugin, || Arc::new(Semaphore::new(self.max_connections)));
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, permits.acquire_owned())
            .await
            .map_err(|_| {
                format!(
                    "all connections are busy (waited {} s)",
                    ACQUIRE_TIMEOUT.as_secs()
                )
            })?
            .map_err(|_| "the connection is shutting down".to_owned())?;
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            match self.open_one(endpoint).await {
                Ok(transport) => return Ok((transport, permit)),
                Err(why) => failures.push(format!("{endpoint}: {why}")),
            }
        }
        Err(format!("cannot connect: {}", failures.join("; ")))
    }

    async fn open_one(&self, endpoint: &Endpoint) -> Result<Box<dyn Transport>, String> {
        let connect = TcpStream::connect((endpoint.host.as_str(), endpoint.port));
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|error| error.to_string())?;
        // Admin protocols are request/answer: small writes must go out now.
        stream
            .set_nodelay(true)
            .map_err(|error| error.to_string())?;
        let Some(connector) = &self.tls else {
            return Ok(Box::new(stream));
        };
        let server_name = ServerName::try_from(endpoint.host.clone())
            .map_err(|error| format!("not a TLS server name: {error}"))?;
        let handshake = connector.connect(server_name, stream);
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| format!("no TLS handshake within {} s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|error| format!("TLS: {error}"))?;
        Ok(Box::new(tls))
    }
}

/// `host:port` or `[v6]:port`.
fn parse_endpoint(text: &str) -> Option<Endpoint> {
    let (host, port) = text.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some(Endpoint {
        host: host.to_owned(),
        port: port.parse().ok()?,
    })
}

/// Verifies the server against `?ca=<PEM file>` if given, else the bundled
/// webpki roots (as the other kinds do, so no OS trust store is needed).
fn tls_connector(name: &str, url: &Url) -> Result<TlsConnector, ConnectionError> {
    let mut roots = RootCertStore::empty();
    let mut ca_file = None;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "ca" => ca_file = Some(value.into_owned()),
            other => {
                return Err(invalid_url(
                    name,
                    format!("unknown tls:// option {other:?} (only `ca` is known)"),
                ));
            }
        }
    }
    match ca_file {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(&path)
                .map_err(|error| invalid_url(name, format!("cannot read ca {path}: {error}")))?;
            for certificate in certificates {
                let certificate = certificate
                    .map_err(|error| invalid_url(name, format!("ca {path}: {error}")))?;
                roots
                    .add(certificate)
                    .map_err(|error| invalid_url(name, format!("ca {path}: {error}")))?;
            }
            if roots.is_empty() {
                return Err(invalid_url(name, format!("ca {path} holds no certificate")));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid_url(name, format!("TLS setup: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_and_without_brackets() {
        assert_eq!(
            parse_endpoint("mqtt.internal:1884"),
            Some(Endpoint {
                host: "mqtt.internal".to_owned(),
                port: 1884
            })
        );
        assert_eq!(
            parse_endpoint("[::1]:1884").map(|e| e.to_string()),
            Some("[::1]:1884".to_owned())
        );
        assert_eq!(parse_endpoint("no-port"), None);
        assert_eq!(parse_endpoint(":1884"), None);
        assert_eq!(parse_endpoint("host:99999"), None);
    }
}
