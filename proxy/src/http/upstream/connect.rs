//! A new upstream connection: TCP (no Nagle), then TLS for `https` upstreams with the
//! target's server name and ALPN; what the upstream chose (HTTP/2 or HTTP/1.1) comes back
//! with the stream.

use super::Target;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An upstream connection's byte stream, plain or TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The stream as hyper reads and writes it.
pub(crate) type Io = TokioIo<Stream>;

/// The TLS settings every connection of one [`super::Upstreams`] uses: the upstream trust
/// offering h2 and http/1.1 by ALPN, and the same trust offering h2 alone (backends with
/// `protocol: http2`).
pub(super) struct TlsConfigs {
    pub any: Arc<ClientConfig>,
    pub h2: Arc<ClientConfig>,
}

impl TlsConfigs {
    pub fn new(tls: &ClientConfig) -> Self {
        let with_alpn = |protocols: &[&[u8]]| {
            let mut c = tls.clone();
            c.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        Self {
            any: with_alpn(&[b"h2", b"http/1.1"]),
            h2: with_alpn(&[b"h2"]),
        }
    }
}

/// Opens a connection to `target`; true when it speaks HTTP/2 (ALPN chose h2, or the target
/// asks for it by prior knowledge). The caller bounds the time it takes.
pub(super) async fn connect(target: &Target, tls: &TlsConfigs) -> io::Result<(Io, bool)> {
    let tcp = TcpStream::connect(target.authority.as_str()).await?;
    tcp.set_nodelay(true)?;
    if !target.https {
        return Ok((TokioIo::new(Stream::Plain(tcp)), target.http2));
    }
    let name = target.server_name.clone().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} names no TLS server", target.authority),
        )
    })?;
    let config = if target.http2 { &tls.h2 } else { &tls.any };
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let stream = connector.connect(name, tcp).await?;
    let h2 = target.http2 || stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((TokioIo::new(Stream::Tls(Box::new(stream))), h2))
}

// === impl Stream ===

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
