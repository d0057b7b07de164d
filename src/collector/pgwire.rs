//! The wire to a PostgreSQL or PgBouncer server, owned by loopwatch rather
//! than tokio-postgres (#15): the socket, the TLS negotiation (libpq's
//! `sslmode` through rustls with the ring provider), and a guard over every
//! byte the server sends that fails the connection
//!
//! - on a message header announcing more than `max_message_bytes`, before
//!   tokio-postgres reserves a buffer of that size (a hostile "server" made
//!   loopwatch allocate 2 GiB per connection attempt), and
//! - on `AuthenticationCleartextPassword` unless the target allows it or the
//!   session is TLS with a verified certificate (libpq's `require_auth`,
//!   with a safe default).
//!
//! tokio-postgres is then handed the ready stream (`connect_raw`,
//! `sslmode=disable` to it) and does the startup and the queries. Failures
//! travel as an I/O error whose inner error is a [`WireError`], which
//! [`WireError::reason`] maps to a bounded collector reason.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::Reason;
use crate::config::{PgWire, SslMode};

/// What went wrong on the wire; carried inside an [`io::Error`].
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("no connection to {0} within connect_timeout")]
    ConnectTimeout(String),
    #[error("TLS with {addr} failed (sslmode={mode}): {message}")]
    Tls {
        addr: String,
        mode: &'static str,
        message: String,
    },
    #[error(
        "the server asked for the password in cleartext; refused (allow_cleartext_password is false and the session is not TLS with a verified certificate)"
    )]
    Cleartext,
    #[error(
        "the server announced a {len}-byte message (type {kind:?}), larger than max_message_bytes ({limit}); connection closed"
    )]
    TooLarge { kind: char, len: u64, limit: usize },
    #[error("the server sent a message with an impossible length {len} (type {kind:?})")]
    BadLength { kind: char, len: u32 },
}

impl WireError {
    pub fn reason(&self) -> Reason {
        match self {
            WireError::Connect { .. } => Reason::Connect,
            WireError::ConnectTimeout(_) => Reason::Timeout,
            WireError::Tls { .. } => Reason::Tls,
            WireError::Cleartext => Reason::Auth,
            WireError::TooLarge { .. } | WireError::BadLength { .. } => Reason::Parse,
        }
    }
}

/// The [`WireError`] behind a tokio-postgres error, if the wire failed.
pub fn wire_error(e: &tokio_postgres::Error) -> Option<&WireError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(w) = s
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<WireError>())
        {
            return Some(w);
        }
        if let Some(w) = s.downcast_ref::<WireError>() {
            return Some(w);
        }
        source = s.source();
    }
    None
}

/// Whether the current connection of a target is TLS: unknown until one is made.
#[derive(Debug, Default)]
pub struct TlsState(AtomicU8);

impl TlsState {
    const PLAIN: u8 = 1;
    const TLS: u8 = 2;

    /// `Some(true)` for TLS, `Some(false)` for plaintext, `None` before any connection.
    pub fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            Self::PLAIN => Some(false),
            Self::TLS => Some(true),
            _ => None,
        }
    }

    fn set(&self, tls: bool) {
        self.0
            .store(if tls { Self::TLS } else { Self::PLAIN }, Ordering::Relaxed);
    }
}

/// Opens connections to one target with its wire settings.
pub struct Connector {
    wire: PgWire,
    tls: Option<tokio_rustls::TlsConnector>,
    pub state: Arc<TlsState>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("ssl_mode", &self.wire.ssl_mode)
            .finish_non_exhaustive()
    }
}

/// The stream tokio-postgres runs on.
pub type PgConnection = Connection<Guarded, NoTlsStream>;

impl Connector {
    pub fn new(wire: &PgWire) -> Result<Self, rustls::Error> {
        let tls = match wire.ssl_mode {
            SslMode::Disable => None,
            _ => Some(tokio_rustls::TlsConnector::from(Arc::new(client_config(
                wire,
            )?))),
        };
        Ok(Self {
            wire: wire.clone(),
            tls,
            state: Arc::default(),
        })
    }

    /// A connection by `config` (hosts tried in order, each attempt within
    /// `connect_timeout`), its stream guarded.
    pub async fn connect(
        &self,
        config: &Config,
    ) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let hosts = config.get_hosts();
        let ports = config.get_ports();
        let hostaddrs = config.get_hostaddrs();
        let mut last = None;
        let count = hosts.len().max(hostaddrs.len()).max(1);
        for i in 0..count {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            let host = hosts.get(i).cloned();
            let hostaddr = hostaddrs.get(i).copied();
            let attempt = self.attempt(config, host.as_ref(), hostaddr, port);
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(done)) => return Ok(done),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    let addr = describe(host.as_ref(), hostaddr, port);
                    last = Some(fail(config, WireError::ConnectTimeout(addr)).await);
                }
            }
        }
        Err(match last {
            Some(e) => e,
            None => {
                fail(
                    config,
                    WireError::Connect {
                        addr: "(no host)".into(),
                        source: io::Error::other("the DSN names no host"),
                    },
                )
                .await
            }
        })
    }

    async fn attempt(
        &self,
        config: &Config,
        host: Option<&Host>,
        hostaddr: Option<IpAddr>,
        port: u16,
    ) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        let addr = describe(host, hostaddr, port);
        let (inner, tls, verified) = match self.open(host, hostaddr, port, &addr).await {
            Ok(opened) => opened,
            Err(e) => return Err(fail(config, e).await),
        };
        self.state.set(tls);
        let allow_cleartext = self.wire.allow_cleartext_password || verified;
        let guarded = Guarded {
            inner,
            scanner: Scanner::new(self.wire.max_message_bytes, allow_cleartext),
        };
        config.connect_raw(guarded, NoTls).await
    }

    /// The socket, TLS negotiated: (stream, is TLS, is the certificate verified).
    async fn open(
        &self,
        host: Option<&Host>,
        hostaddr: Option<IpAddr>,
        port: u16,
        addr: &str,
    ) -> Result<(Inner, bool, bool), WireError> {
        let connect_error = |source| WireError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let name = match (host, hostaddr) {
            (Some(Host::Unix(dir)), None) => {
                // As libpq: no TLS over a Unix socket, whatever sslmode says.
                let path = Path::new(dir).join(format!(".s.PGSQL.{port}"));
                let socket = UnixStream::connect(&path).await.map_err(connect_error)?;
                return Ok((Inner::Unix(socket), false, false));
            }
            (Some(Host::Tcp(name)), _) => Some(name.as_str()),
            _ => None,
        };
        let mut socket = match hostaddr {
            Some(ip) => TcpStream::connect((ip, port)).await,
            None => TcpStream::connect((name.unwrap_or("localhost"), port)).await,
        }
        .map_err(connect_error)?;
        let _ = socket.set_nodelay(true);
        let Some(connector) = &self.tls else {
            return Ok((Inner::Tcp(socket), false, false));
        };
        let mode = self.wire.ssl_mode;
        let tls_error = |message: String| WireError::Tls {
            addr: addr.to_owned(),
            mode: mode.as_str(),
            message,
        };
        // SSLRequest: length 8, code 80877103.
        socket
            .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .map_err(connect_error)?;
        let answer = socket.read_u8().await.map_err(connect_error)?;
        match answer {
            b'S' => {}
            b'N' if mode == SslMode::Prefer => {
                tracing::warn!(
                    server = addr,
                    "Server refused TLS; connected in plaintext as sslmode=prefer allows"
                );
                return Ok((Inner::Tcp(socket), false, false));
            }
            b'N' => return Err(tls_error("the server does not accept TLS".into())),
            other => {
                return Err(tls_error(format!(
                    "unexpected answer {:?} to the TLS request",
                    char::from(other)
                )));
            }
        }
        let peer_ip = socket.peer_addr().map(|a| a.ip()).ok();
        let server_name = name
            .and_then(|n| ServerName::try_from(n.to_owned()).ok())
            .or_else(|| hostaddr.or(peer_ip).map(ServerName::from))
            .ok_or_else(|| tls_error("no host name to verify".into()))?;
        let stream = connector
            .connect(server_name, socket)
            .await
            .map_err(|e| tls_error(e.to_string()))?;
        Ok((Inner::Tls(Box::new(stream)), true, mode.verifies()))
    }
}

fn describe(host: Option<&Host>, hostaddr: Option<IpAddr>, port: u16) -> String {
    match (host, hostaddr) {
        (_, Some(ip)) => format!("{ip}:{port}"),
        (Some(Host::Tcp(name)), None) => format!("{name}:{port}"),
        (Some(Host::Unix(dir)), None) => format!("{}/.s.PGSQL.{port}", dir.display()),
        (None, None) => format!("localhost:{port}"),
    }
}

/// A tokio-postgres error carrying `e`. deadpool's `Connect` wants a
/// `tokio_postgres::Error`, which has no public constructor: the failure is
/// handed to tokio-postgres as the I/O error of a stream that fails at once.
async fn fail(config: &Config, e: WireError) -> tokio_postgres::Error {
    let stream = Failing(Some(io::Error::other(e)));
    match config.connect_raw(stream, NoTls).await {
        Err(e) => e,
        // A stream that fails every call cannot connect; were it to, the
        // attempt still failed.
        Ok(_) => tokio_postgres::Error::__private_api_timeout(),
    }
}

struct Failing(Option<io::Error>);

impl Failing {
    fn error(&mut self) -> io::Error {
        self.0
            .take()
            .unwrap_or_else(|| io::Error::other("connection already failed"))
    }
}

impl AsyncRead for Failing {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.get_mut().error()))
    }
}

impl AsyncWrite for Failing {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(self.get_mut().error()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.get_mut().error()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------- TLS config

fn client_config(wire: &PgWire) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match wire.ssl_mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            for cert in &wire.root_certs {
                roots.add(cert.clone())?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            if wire.ssl_mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        _ => Arc::new(Unverified(provider.clone())),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &wire.client_identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key()),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the chain passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without `sslrootcert`: encryption without
/// verification, as libpq. The handshake signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
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

// ---------------------------------------------------------------- the guard

/// The socket under the guard.
pub enum Inner {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A stream whose incoming bytes are checked message by message (see the
/// module docs) before tokio-postgres sees them.
pub struct Guarded {
    inner: Inner,
    scanner: Scanner,
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().inner {
            Inner::Tcp($s) => $e,
            Inner::Unix($s) => $e,
            Inner::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.inner {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = polled {
            if let Err(e) = this.scanner.feed(&buf.filled()[before..]) {
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::other(e)));
            }
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, data))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Follows the backend messages (1 type byte, a 4-byte big-endian length
/// that counts itself, the body) through the byte stream.
#[derive(Debug)]
struct Scanner {
    limit: usize,
    allow_cleartext: bool,
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message not yet seen.
    body_left: u64,
    /// The first 4 body bytes of an `R` message: the authentication code.
    auth: [u8; 4],
    auth_left: usize,
}

/// `AuthenticationCleartextPassword`.
const AUTH_CLEARTEXT: u32 = 3;

impl Scanner {
    fn new(limit: usize, allow_cleartext: bool) -> Self {
        Self {
            limit,
            allow_cleartext,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
            auth: [0; 4],
            auth_left: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), WireError> {
        while !data.is_empty() {
            if self.body_left > 0 {
                if self.auth_left > 0 {
                    let n = self.auth_left.min(data.len());
                    let at = 4 - self.auth_left;
                    self.auth[at..at + n].copy_from_slice(&data[..n]);
                    self.auth_left -= n;
                    if self.auth_left == 0
                        && u32::from_be_bytes(self.auth) == AUTH_CLEARTEXT
                        && !self.allow_cleartext
                    {
                        return Err(WireError::Cleartext);
                    }
                }
                let n = (self.body_left.min(data.len() as u64)) as usize;
                // The auth bytes above are part of the body: skip them once.
                self.body_left -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len < 5 {
                break;
            }
            self.header_len = 0;
            let kind = char::from(self.header[0]);
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            if len < 4 {
                return Err(WireError::BadLength { kind, len });
            }
            if len as u64 > self.limit as u64 {
                return Err(WireError::TooLarge {
                    kind,
                    len: len.into(),
                    limit: self.limit,
                });
            }
            self.body_left = u64::from(len) - 4;
            self.auth_left = if kind == 'R' && self.body_left >= 4 {
                4
            } else {
                0
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn follows_messages_split_anywhere() {
        let mut stream = message(b'R', &0u32.to_be_bytes());
        stream.extend(message(b'S', b"server_version\x0016\0"));
        stream.extend(message(b'Z', b"I"));
        for chunk in 1..stream.len() {
            let mut s = Scanner::new(1024, false);
            for part in stream.chunks(chunk) {
                s.feed(part).unwrap();
            }
            assert_eq!((s.header_len, s.body_left), (0, 0));
        }
    }

    #[test]
    fn refuses_a_huge_header_before_its_body() {
        let mut s = Scanner::new(64 << 20, false);
        let mut header = vec![b'E'];
        header.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
        let e = s.feed(&header).unwrap_err();
        assert!(matches!(e, WireError::TooLarge { kind: 'E', .. }), "{e}");
        assert_eq!(e.reason(), Reason::Parse);
    }

    #[test]
    fn refuses_cleartext_unless_allowed_even_split() {
        let ask = message(b'R', &AUTH_CLEARTEXT.to_be_bytes());
        for chunk in 1..=ask.len() {
            let mut s = Scanner::new(1024, false);
            let e = ask.chunks(chunk).try_for_each(|p| s.feed(p)).unwrap_err();
            assert!(matches!(e, WireError::Cleartext));
            assert_eq!(e.reason(), Reason::Auth);
            let mut s = Scanner::new(1024, true);
            ask.chunks(chunk).try_for_each(|p| s.feed(p)).unwrap();
        }
        // md5 (5) and SASL (10) pass.
        let mut s = Scanner::new(1024, false);
        s.feed(&message(b'R', &[0, 0, 0, 5, 1, 2, 3, 4])).unwrap();
        s.feed(&message(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0"))
            .unwrap();
    }

    #[test]
    fn a_length_below_four_is_refused() {
        let e = Scanner::new(1024, false)
            .feed(&[b'Z', 0, 0, 0, 3])
            .unwrap_err();
        assert!(matches!(e, WireError::BadLength { .. }));
    }
}
