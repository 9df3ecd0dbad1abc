//! The TLS and WebSocket transports from a client's side: a throwaway certificate made with
//! the `openssl` CLI, a server with its TLS and WebSocket listeners on OS-chosen ports, a
//! blocking TLS client speaking the framed protocol (rustls), and WebSocket clients
//! (tungstenite, over TCP or over TLS).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use plex::Config;
use plex::protocol::{ByteOrder, Codec, Decoder, Message, uri, ws};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};
use tungstenite::protocol::CloseFrame;
use tungstenite::{ClientRequestBuilder, WebSocket};

use super::{TestServer, WAIT, bind, wait_until};

/// The test certificate's PEM files: `CN=localhost`, valid for `127.0.0.1` and `localhost`.
pub struct Cert {
    pub cert: String,
    pub key: String,
}

/// The test certificate, made once per test process in the target's scratch directory.
pub fn cert() -> &'static Cert {
    static CERT: OnceLock<Cert> = OnceLock::new();
    CERT.get_or_init(|| make_cert(&format!("transport-{}", std::process::id())))
}

/// A new self-signed certificate for 127.0.0.1 in the scratch directory `name`.
pub fn make_cert(name: &str) -> Cert {
    {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args([
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            // `req -x509` makes a CA certificate by default, which webpki refuses as a
            // server's own.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl: {out:?}");
        let path = |p: PathBuf| p.into_os_string().into_string().expect("UTF-8 path");
        Cert {
            cert: path(cert),
            key: path(key),
        }
    }
}

/// `config` with the test certificate, a TLS listener and a wss listener.
pub fn secure(config: Config) -> Config {
    let cert = cert();
    Config {
        tls_cert: Some(cert.cert.clone()),
        tls_key: Some(cert.key.clone()),
        tls_port: Some(0),
        ws_port: Some(0),
        ..config
    }
}

/// `config` with a plain WebSocket listener.
pub fn plain_ws(config: Config) -> Config {
    Config {
        ws_port: Some(0),
        ..config
    }
}

/// Where a server's TLS and WebSocket listeners are.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub tls: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
}

impl Addrs {
    pub fn tls(&self) -> SocketAddr {
        self.tls.expect("a TLS listener")
    }

    pub fn ws(&self) -> SocketAddr {
        self.ws.expect("a WebSocket listener")
    }
}

/// Starts a server with `config` and returns it with its transport listeners' addresses.
pub fn start_transports(config: Config) -> (TestServer, Addrs) {
    let bound = bind(config);
    let addrs = Addrs {
        tls: bound.server.tls_addr(),
        ws: bound.server.ws_addr(),
    };
    (bound.run(), addrs)
}

// ---- TLS.

/// A client TLS session over a blocking socket.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Both TLS versions the server speaks.
pub const BOTH_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A client config trusting the test certificate only, offering `versions`.
pub fn client_config(versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    client_config_trusting(versions, &[cert()])
}

/// A client configuration that trusts `certs`.
pub fn client_config_trusting(
    versions: &[&'static SupportedProtocolVersion],
    certs: &[&Cert],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        let der = CertificateDer::from_pem_file(&cert.cert).expect("read the test certificate");
        roots.add(der).expect("trust the test certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TCP socket to `addr` whose reads and writes give up after `WAIT`.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let socket = TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(WAIT)).unwrap();
    socket.set_write_timeout(Some(WAIT)).unwrap();
    socket
}

/// A client session offering `versions`, for `127.0.0.1` (which the certificate names).
pub fn tls_session(versions: &[&'static SupportedProtocolVersion]) -> ClientConnection {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    ClientConnection::new(client_config(versions), name).expect("TLS session")
}

/// Connects to `addr` over TLS offering `versions` and completes the handshake.
pub fn tls_connect(addr: SocketAddr, versions: &[&'static SupportedProtocolVersion]) -> TlsStream {
    let mut stream = StreamOwned::new(tls_session(versions), tcp(addr));
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    stream
}

/// The framed protocol over TLS, as `plex::client::Connection` speaks it over TCP.
pub struct TlsClient {
    pub stream: TlsStream,
    input: Vec<u8>,
}

impl TlsClient {
    /// A connection, handshake done, not authenticated.
    pub fn connect(addr: SocketAddr) -> TlsClient {
        TlsClient::with_versions(addr, BOTH_VERSIONS)
    }

    pub fn with_versions(addr: SocketAddr, versions: &[&'static SupportedProtocolVersion]) -> Self {
        TlsClient::from(tls_connect(addr, versions))
    }

    /// A connection authenticated as `uid`.
    pub fn user(addr: SocketAddr, uid: &str) -> TlsClient {
        let mut c = TlsClient::connect(addr);
        c.send(uri::AUTH, uid);
        c.expect(uri::AUTH_SUCCESS);
        c
    }

    /// Sends `{uri, body}`.
    pub fn send(&mut self, uri: &str, body: &str) {
        let mut frame = Vec::new();
        Codec::Json.write_frame(&mut frame, ByteOrder::Big, 0, uri, body);
        self.stream.write_all(&frame).expect("send over TLS");
        self.stream.flush().expect("flush");
    }

    /// The next message; an error if the connection ends first.
    pub fn recv(&mut self) -> io::Result<Message> {
        self.next()?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "close_notify"))
    }

    /// The next message, or `None` at a clean end (close_notify, then EOF); a TCP EOF
    /// without close_notify is rustls's `UnexpectedEof` error, a truncation.
    fn next(&mut self) -> io::Result<Option<Message>> {
        let decoder = Decoder::new(ByteOrder::Big, 64 << 20);
        loop {
            let decoded = decoder
                .decode(&self.input)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some((payload, used)) = decoded {
                let message = Message::decode(payload).expect("a JSON message");
                self.input.drain(..used);
                return Ok(Some(message));
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk)? {
                0 => return Ok(None),
                n => self.input.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next message, which must have `uri`.
    pub fn expect(&mut self, uri: &str) -> Message {
        let m = self.recv().expect("a message over TLS");
        assert_eq!(m.uri, uri, "unexpected message {m:?}");
        m
    }

    /// A heartbeat round trip.
    pub fn assert_alive(&mut self) {
        self.send(uri::HEARTBEAT, "");
        self.expect(uri::HEARTBEAT);
    }

    /// Reads every message until the server ends the connection; returns them with how it
    /// ended: `Ok` for close_notify then EOF, the error otherwise (`UnexpectedEof` for an EOF
    /// without close_notify: a truncation).
    pub fn read_to_close(&mut self) -> (Vec<Message>, io::Result<()>) {
        let mut messages = Vec::new();
        loop {
            match self.next() {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => return (messages, Ok(())),
                Err(e) => return (messages, Err(e)),
            }
        }
    }
}

impl From<TlsStream> for TlsClient {
    fn from(stream: TlsStream) -> Self {
        TlsClient {
            stream,
            input: Vec::new(),
        }
    }
}

// ---- WebSocket.

/// A WebSocket client's byte stream: TCP, or TLS for wss.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    pub fn connect(addr: SocketAddr, tls: bool) -> Stream {
        if tls {
            Stream::Tls(Box::new(tls_connect(addr, BOTH_VERSIONS)))
        } else {
            Stream::Plain(tcp(addr))
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

pub type WsClient = WebSocket<Stream>;

/// The URL of the WebSocket endpoint at `addr`, with `query` (`""` for none).
pub fn ws_url(addr: SocketAddr, tls: bool, query: &str) -> String {
    let scheme = if tls { "wss" } else { "ws" };
    format!("{scheme}://{addr}{}{query}", ws::PATH)
}

/// Opens a WebSocket with `request` over a stream to `addr` (TLS if `tls`); panics if the
/// upgrade is refused.
pub fn ws_open(
    addr: SocketAddr,
    tls: bool,
    request: ClientRequestBuilder,
) -> (WsClient, tungstenite::handshake::client::Response) {
    let stream = Stream::connect(addr, tls);
    tungstenite::client(request, stream).expect("WebSocket upgrade")
}

/// An open WebSocket to `addr`, not authenticated.
pub fn ws_connect(addr: SocketAddr, tls: bool) -> WsClient {
    let request = ClientRequestBuilder::new(ws_url(addr, tls, "").parse().unwrap());
    ws_open(addr, tls, request).0
}

/// A WebSocket authenticated as `uid` with `/auth/server`.
pub fn ws_user(addr: SocketAddr, tls: bool, uid: &str) -> WsClient {
    let mut ws = ws_connect(addr, tls);
    ws_send(&mut ws, uri::AUTH, uid);
    ws_expect(&mut ws, uri::AUTH_SUCCESS);
    ws
}

/// Sends `{uri, body}` as one text message.
pub fn ws_send(ws: &mut WsClient, uri: &str, body: &str) {
    ws.send(tungstenite::Message::text(json(uri, body)))
        .expect("send over WebSocket");
}

/// `{uri, body}` as a client writes it.
pub fn json(uri: &str, body: &str) -> String {
    let mut payload = Vec::new();
    Codec::Json.write_payload(&mut payload, 0, uri, body);
    String::from_utf8(payload).unwrap()
}

/// What the server sent next, as the client's program sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Message(Message),
    Pong(Vec<u8>),
    /// A close frame: its code and reason (`None` without a code).
    Close(Option<(u16, String)>),
}

/// Reads the next message, pong or close frame.
pub fn ws_read(ws: &mut WsClient) -> tungstenite::Result<Received> {
    loop {
        return Ok(match ws.read()? {
            tungstenite::Message::Text(text) => {
                Received::Message(Message::decode(text.as_bytes()).expect("a JSON message"))
            }
            tungstenite::Message::Pong(p) => Received::Pong(p.to_vec()),
            tungstenite::Message::Close(frame) => Received::Close(frame.map(close_parts)),
            tungstenite::Message::Ping(_) => continue, // answered by tungstenite
            other => panic!("unexpected {other:?}"),
        });
    }
}

fn close_parts(frame: CloseFrame) -> (u16, String) {
    (u16::from(frame.code), frame.reason.as_str().to_owned())
}

/// The next message; panics on anything else.
pub fn ws_recv(ws: &mut WsClient) -> Message {
    match ws_read(ws) {
        Ok(Received::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next message, which must have `uri`.
pub fn ws_expect(ws: &mut WsClient, uri: &str) -> Message {
    let m = ws_recv(ws);
    assert_eq!(m.uri, uri, "unexpected message {m:?}");
    m
}

/// A heartbeat round trip.
pub fn ws_assert_alive(ws: &mut WsClient) {
    ws_send(ws, uri::HEARTBEAT, "");
    ws_expect(ws, uri::HEARTBEAT);
}

/// Reads until the server's close frame, which must carry `code` and `reason`; returns the
/// messages before it.
pub fn ws_expect_close(ws: &mut WsClient, code: u16, reason: &str) -> Vec<Message> {
    let mut before = Vec::new();
    loop {
        match ws_read(ws) {
            Ok(Received::Message(m)) => before.push(m),
            Ok(Received::Close(Some((got_code, got_reason)))) => {
                assert_eq!(
                    (got_code, got_reason.as_str()),
                    (code, reason),
                    "{before:?}"
                );
                return before;
            }
            other => panic!("expected close {code} {reason:?}, got {other:?} after {before:?}"),
        }
    }
}

/// Writes one client frame as it is, bypassing tungstenite's checks: masked with a fixed key
/// as a client must, or (`mask` false, `fin` only) unmasked as a server would send it.
pub fn ws_send_raw(ws: &mut WsClient, fin: bool, opcode: ws::Opcode, payload: &[u8], mask: bool) {
    let mut frame = Vec::new();
    if mask {
        ws::encode_client(&mut frame, fin, opcode, [0x12, 0x34, 0x56, 0x78], payload);
    } else {
        assert!(fin, "unmasked frames here are final");
        ws::encode(&mut frame, opcode, payload);
    }
    let stream = ws.get_mut();
    stream.write_all(&frame).expect("write a raw frame");
    stream.flush().unwrap();
}

// ---- Scenarios every transport goes through.

/// Checks that a close seen now, `since` the start of a `timeout`, did not come early (less
/// one 100 ms tick of the timer wheel). How late it may come on a busy machine is not the
/// suite's business: the close must come within `WAIT`.
pub fn assert_not_early(since: Instant, timeout: Duration) {
    let elapsed = since.elapsed();
    assert!(
        elapsed + Duration::from_millis(100) >= timeout,
        "closed after {elapsed:?}, before the {timeout:?} timeout"
    );
}

/// The number at the start of a push of [`push_until_slow_consumer`].
fn number(m: &Message) -> usize {
    m.body[..6].parse().expect("a numbered push")
}

/// Pushes the same numbered 4 KiB bodies to uid `slow`, which never reads, and to uid
/// `steady`, read on a thread with `next`, in batches until the server closes a slow
/// consumer; then checks that `steady` got every push in order. Returns how many were sent.
/// The reader catches up after each batch, so that its own queue stays far below the cap;
/// kernel (and TLS) buffers absorb some pushes before the server's queue for `slow` fills.
pub fn push_until_slow_consumer(
    server: &TestServer,
    mut next: impl FnMut() -> Message + Send + 'static,
) -> usize {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut numbers = Vec::new();
        loop {
            let m = next();
            if m.uri == "/end" {
                return numbers;
            }
            numbers.push(number(&m));
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let pad = "x".repeat(4096);
    let mut sent = 0;
    while server.closed("slow_consumer") == 0 {
        assert!(
            sent < 20_000,
            "the client that never reads was never closed"
        );
        for _ in 0..8 {
            let body = format!("{sent:06}{pad}");
            server.handle.push("slow", "/n", &body).unwrap();
            server.handle.push("steady", "/n", &body).unwrap();
            sent += 1;
        }
        let caught_up = wait_until(WAIT, || seen.load(Ordering::SeqCst) == sent);
        assert!(caught_up, "the reader fell behind: {seen:?} of {sent}");
    }
    assert_eq!(server.online("slow"), 0);
    server.handle.push("steady", "/end", "").unwrap();
    assert_eq!(reader.join().unwrap(), (0..sent).collect::<Vec<_>>());
    sent
}

/// What a slow consumer read once closed: an in-order prefix of the `sent` pushes.
pub fn assert_in_order_prefix(got: &[Message], sent: usize) {
    let numbers: Vec<usize> = got.iter().map(number).collect();
    assert!(numbers.len() < sent, "it cannot have received everything");
    assert_eq!(numbers, (0..numbers.len()).collect::<Vec<_>>());
}
