//! A small Redis client: RESP2 over TCP or TLS, a few pooled connections, Sentinel discovery
//! of the master, `AUTH` and `SELECT`. Only what the affinity store needs (`GETEX`, `SET`,
//! `DEL`); every reply is bounded as a whole ([`MAX_REPLY`]). Why this is not redis-rs:
//! docs/architecture.md, "Hand-written infrastructure".

use keyway_api::model::{RedisStore, RedisTarget};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Idle connections kept per client.
const MAX_IDLE: usize = 8;
/// Largest bulk string or array accepted from the server.
const MAX_BULK: usize = 1 << 20;
const MAX_ARRAY: usize = 1024;
/// Largest whole reply, nested arrays included: the bounds per element alone would allow
/// 1024 × 1024 × ... × 1 MiB.
pub const MAX_REPLY: usize = 2 << 20;

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis i/o: {0}")]
    Io(#[from] std::io::Error),
    /// An error reply (`-ERR ...`): the server is up, the command failed.
    #[error("redis error reply: {0}")]
    Server(String),
    #[error("redis protocol: {0}")]
    Protocol(&'static str),
    #[error("no sentinel knows master {0:?}")]
    NoMaster(String),
}

/// A client for one configured server (or Sentinel-managed master).
pub struct RedisClient {
    target: RedisTarget,
    db: u32,
    password: Option<String>,
    /// TLS to the server (and the sentinels), verified with this trust; `None`: plain TCP.
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

/// A plain or TLS connection.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    stream: BufReader<Box<dyn Io>>,
}

impl RedisClient {
    /// A client; a TLS server is verified with the webpki roots alone.
    pub fn new(settings: &RedisStore) -> Self {
        let roots = || {
            Arc::new(
                crate::tls::upstream_config(None)
                    .expect("the webpki roots make a valid client config"),
            )
        };
        Self::build(settings, settings.tls.then(roots))
    }

    /// A client verifying a TLS server with `trust` (the proxy's upstream trust).
    pub fn with_trust(settings: &RedisStore, trust: Arc<rustls::ClientConfig>) -> Self {
        Self::build(settings, settings.tls.then_some(trust))
    }

    fn build(settings: &RedisStore, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        // A Secret's password wins over the environment's.
        let password = match &settings.password {
            Some(p) => Some(p.expose().to_owned()),
            None => settings
                .password_env
                .as_ref()
                .and_then(|name| std::env::var(name).ok()),
        };
        Self {
            target: settings.target.clone(),
            db: settings.db,
            password,
            tls,
            connect_timeout: settings.timeout.max(Duration::from_millis(100)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs one command on a pooled connection. A connection that failed is dropped.
    pub async fn command(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect().await?,
        };
        let reply = conn.call(args).await;
        match reply {
            Ok(r) => {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
                match r {
                    Reply::Simple(s) if s.starts_with('-') => Err(RedisError::Server(s)),
                    r => Ok(r),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Drops pooled connections (after the server went away, so the next command reconnects).
    pub fn reset(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        let addr = match &self.target {
            RedisTarget::Direct(a) => a.clone(),
            RedisTarget::Sentinel { sentinels, master } => {
                self.master_from_sentinels(sentinels, master).await?
            }
        };
        let mut conn = self.open(&addr).await?;
        if let Some(p) = &self.password {
            expect_ok(conn.call(&[b"AUTH", p.as_bytes()]).await?)?;
        }
        if self.db != 0 {
            let db = self.db.to_string();
            expect_ok(conn.call(&[b"SELECT", db.as_bytes()]).await?)?;
        }
        Ok(conn)
    }

    async fn open(&self, addr: &str) -> Result<Conn, RedisError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        let stream: Box<dyn Io> = if let Some(trust) = &self.tls {
            let name = crate::http::client::server_name(addr).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{addr:?} names no TLS server"),
                )
            })?;
            let connector = tokio_rustls::TlsConnector::from(trust.clone());
            let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name, stream))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Box::new(tls)
        } else {
            Box::new(stream)
        };
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    async fn master_from_sentinels(
        &self,
        sentinels: &[String],
        master: &str,
    ) -> Result<String, RedisError> {
        for s in sentinels {
            let Ok(mut conn) = self.open(s).await else {
                continue;
            };
            let reply = conn
                .call(&[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()])
                .await;
            if let Ok(Reply::Array(Some(parts))) = reply
                && let [Reply::Bulk(Some(host)), Reply::Bulk(Some(port))] = parts.as_slice()
            {
                let host = String::from_utf8_lossy(host);
                let port = String::from_utf8_lossy(port);
                return Ok(if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                });
            }
        }
        Err(RedisError::NoMaster(master.to_string()))
    }
}

fn expect_ok(r: Reply) -> Result<(), RedisError> {
    match r {
        Reply::Simple(s) if s.starts_with('-') => Err(RedisError::Server(s)),
        _ => Ok(()),
    }
}

impl Conn {
    async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut buf = Vec::with_capacity(64);
        encode(args, &mut buf);
        self.stream.get_mut().write_all(&buf).await?;
        read_reply(&mut self.stream, 0).await
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one reply of at most [`MAX_REPLY`] bytes. Error replies come back as
/// `Simple("-...")` so the caller decides.
pub async fn read_reply<R>(r: &mut R, depth: usize) -> Result<Reply, RedisError>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut budget = MAX_REPLY;
    read_bounded(r, depth, &mut budget).await
}

/// [`read_reply`], charging every byte read (and every element's bookkeeping) to `budget`.
async fn read_bounded<R>(r: &mut R, depth: usize, budget: &mut usize) -> Result<Reply, RedisError>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    if depth > 4 {
        return Err(RedisError::Protocol("nested too deep"));
    }
    let mut line = Vec::with_capacity(32);
    let n = (&mut *r)
        .take((64 * 1024).min(*budget as u64))
        .read_until(b'\n', &mut line)
        .await?;
    // An element costs at least its Reply, even when its line is short (`*0`, `$-1`).
    let cost = n.max(std::mem::size_of::<Reply>());
    *budget = budget
        .checked_sub(cost)
        .ok_or(RedisError::Protocol("reply too large"))?;
    if n == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(RedisError::Protocol("reply line not terminated"));
    }
    let body = &line[1..line.len() - 2];
    let text = || String::from_utf8_lossy(body).into_owned();
    let int = || -> Result<i64, RedisError> {
        std::str::from_utf8(body)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(RedisError::Protocol("bad integer"))
    };
    Ok(match line[0] {
        b'+' => Reply::Simple(text()),
        b'-' => Reply::Simple(format!("-{}", text())),
        b':' => Reply::Int(int()?),
        b'$' => {
            let len = int()?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let len = len as usize;
            if len > MAX_BULK {
                return Err(RedisError::Protocol("bulk string too large"));
            }
            *budget = budget
                .checked_sub(len + 2)
                .ok_or(RedisError::Protocol("reply too large"))?;
            let mut data = vec![0; len + 2];
            r.read_exact(&mut data).await?;
            if !data.ends_with(b"\r\n") {
                return Err(RedisError::Protocol("bulk string not terminated"));
            }
            data.truncate(len);
            Reply::Bulk(Some(data))
        }
        b'*' => {
            let len = int()?;
            if len < 0 {
                return Ok(Reply::Array(None));
            }
            let len = len as usize;
            if len > MAX_ARRAY {
                return Err(RedisError::Protocol("array too large"));
            }
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(Box::pin(read_bounded(r, depth + 1, budget)).await?);
            }
            Reply::Array(Some(items))
        }
        _ => return Err(RedisError::Protocol("unknown reply type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Reply, RedisError> {
        let mut r = BufReader::new(bytes);
        read_reply(&mut r, 0).await
    }

    #[tokio::test]
    async fn parses_replies() {
        assert_eq!(parse(b"+OK\r\n").await.unwrap(), Reply::Simple("OK".into()));
        assert_eq!(
            parse(b"-ERR bad\r\n").await.unwrap(),
            Reply::Simple("-ERR bad".into())
        );
        assert_eq!(parse(b":42\r\n").await.unwrap(), Reply::Int(42));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Reply::Bulk(None));
        assert_eq!(
            parse(b"$5\r\nhe\r\no\r\n").await.unwrap(),
            Reply::Bulk(Some(b"he\r\no".to_vec()))
        );
        assert_eq!(
            parse(b"*2\r\n$1\r\na\r\n:1\r\n").await.unwrap(),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"a".to_vec())), Reply::Int(1)]))
        );
    }

    #[tokio::test]
    async fn rejects_garbage_without_panicking() {
        for bad in [
            &b""[..],
            b"OK\r\n",
            b"+OK\n",
            b":x\r\n",
            b"$3\r\nab",
            b"$99999999999\r\n",
            b"*9999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bad).await.is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn bounds_the_whole_reply_not_only_each_element() {
        // Three bulk strings of 1 MiB each: every one within its own bound, 3 MiB together.
        let mut reply = b"*3\r\n".to_vec();
        for _ in 0..3 {
            reply.extend_from_slice(format!("${}\r\n", 1 << 20).as_bytes());
            reply.extend(std::iter::repeat_n(b'x', 1 << 20));
            reply.extend_from_slice(b"\r\n");
        }
        assert!(parse(&reply).await.is_err());
        // Nested arrays of tiny elements cost their bookkeeping too.
        let mut nested = b"*1000\r\n".to_vec();
        for _ in 0..1000 {
            nested.extend_from_slice(b"*1000\r\n");
            for _ in 0..1000 {
                nested.extend_from_slice(b"$-1\r\n");
            }
        }
        assert!(parse(&nested).await.is_err());
        // One large reply within the budget is fine.
        let mut one = format!("${}\r\n", 1 << 20).into_bytes();
        one.extend(std::iter::repeat_n(b'y', 1 << 20));
        one.extend_from_slice(b"\r\n");
        assert!(parse(&one).await.is_ok());
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode(&[b"GET", b"k"], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
