//! A bound on what one Redis reply may make the host buffer. redis-rs reads
//! a reply whole (a 300 MB bulk string is 300 MB in its buffer, then copied)
//! before the host's budget sees it, and has no size limit of its own. The
//! host gives it the socket through [`Metered`], which counts the bytes
//! read against what the command in flight may receive and fails the read
//! past it: the parser never holds more than that plus one read.
//!
//! Each plugin call has connections of its own and runs one command at a
//! time on them, so every byte read between two commands belongs to the
//! reply of the first.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::super::connections::CONNECT_TIMEOUT;

/// Wire bytes a reply may take, for `max_host_call_bytes` of data: the
/// RESP framing of small elements (`$2\r\nab\r\n`) can double it.
pub(crate) fn wire_allowance(max_host_call_bytes: u64) -> u64 {
    max_host_call_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
}

/// What the reply in flight may still read, shared by a connection's
/// socket and the host sending commands on it.
#[derive(Debug, Clone)]
pub(crate) struct ReplyMeter {
    remaining: Arc<AtomicU64>,
    tripped: Arc<AtomicBool>,
    allowance: u64,
}

impl ReplyMeter {
    pub(crate) fn new(allowance: u64) -> Self {
        Self {
            remaining: Arc::new(AtomicU64::new(allowance)),
            tripped: Arc::new(AtomicBool::new(false)),
            allowance,
        }
    }

    /// Before each command: its reply may read the whole allowance.
    pub(crate) fn next_reply(&self) {
        self.remaining.store(self.allowance, Ordering::Relaxed);
    }

    /// Whether a read was refused: the connection is then broken.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    /// A connection through `client` whose reads this meter bounds. Only
    /// plain TCP is metered; TLS and Unix sockets connect as redis-rs does
    /// (their replies are bounded after reading only).
    pub(crate) async fn connect(
        &self,
        client: &redis::Client,
        config: redis::AsyncConnectionConfig,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let info = client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = &info.addr else {
            return client
                .get_multiplexed_async_connection_with_config(&config)
                .await;
        };
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host.as_str(), *port)),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
        stream.set_nodelay(true)?;
        let metered = Metered {
            inner: stream,
            meter: self.clone(),
        };
        let (connection, driver) =
            MultiplexedConnection::new_with_config(&info.redis, metered, config).await?;
        // Ends when the connection is dropped (its request channel closes).
        tokio::spawn(driver);
        Ok(connection)
    }
}

/// A socket whose reads count against a [`ReplyMeter`].
struct Metered<S> {
    inner: S,
    meter: ReplyMeter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buffer.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(context, buffer);
        if let Poll::Ready(Ok(())) = &polled {
            let read = u64::try_from(buffer.filled().len() - before).unwrap_or(u64::MAX);
            let within = self
                .meter
                .remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |remaining| {
                    remaining.checked_sub(read)
                })
                .is_ok();
            if !within {
                self.meter.tripped.store(true, Ordering::Relaxed);
                buffer.set_filled(before);
                return Poll::Ready(Err(io::Error::other(
                    "the reply exceeds what the host may read for one command",
                )));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(context, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_past_the_allowance_fail_until_the_next_reply() {
        let (client, mut server) = tokio::io::duplex(1024);
        let meter = ReplyMeter::new(10);
        let mut metered = Metered {
            inner: client,
            meter: meter.clone(),
        };
        let mut buffer = [0u8; 64];
        server.write_all(b"12345678").await.expect("write");
        assert_eq!(metered.read(&mut buffer).await.expect("within"), 8);
        server.write_all(b"abc").await.expect("write");
        let error = metered.read(&mut buffer).await.expect_err("over");
        assert!(error.to_string().contains("exceeds"), "{error}");
        assert!(meter.tripped());
        meter.next_reply();
        server.write_all(b"xyz").await.expect("write");
        assert_eq!(metered.read(&mut buffer).await.expect("a new reply"), 3);
    }
}
