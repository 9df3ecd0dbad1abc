//! One user connection's transport, on the fleet's one poll loop: the framed protocol over
//! plain TCP or TLS, or WebSocket (`ws`, or `wss` over TLS) on `/plex/v1/ws`, in the run's codec
//! (JSON or protobuf; over WebSocket, one message per text frame, or per binary frame for
//! protobuf). TLS is a rustls `ClientConnection` fed by non-blocking reads (`read_tls`,
//! `process_new_packets`, `reader`) and drained by non-blocking writes (`writer`, `write_tls`);
//! WebSocket is the project's own framing (`plex::protocol::ws`), masked frames out, and the
//! upgrade request written by hand. Nothing here blocks: what the socket does not take waits in
//! the link (or in rustls) for the next writable event.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use mio::net::TcpStream;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use plex::protocol::ws::{self, Opcode, ReadState};
use plex::protocol::{ByteOrder, Codec, Decoder};

/// The largest message a user accepts: a push may be as large as the server's default limit
/// on inner frames.
const MAX_MESSAGE: u32 = 1 << 20;
/// Headers an upgrade response may have.
const MAX_RESPONSE_HEADERS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Length-prefixed frames over TCP (the server's `Port`).
    Tcp,
    /// The same frames over TLS (`TlsPort`).
    Tls,
    /// WebSocket (`WsPort` without a certificate).
    Ws,
    /// WebSocket over TLS (`WsPort` with a certificate).
    Wss,
}

impl Transport {
    pub const NAMES: [(&'static str, Transport); 4] = [
        ("tcp", Transport::Tcp),
        ("tls", Transport::Tls),
        ("ws", Transport::Ws),
        ("wss", Transport::Wss),
    ];

    pub fn name(self) -> &'static str {
        Transport::NAMES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(name, _)| name)
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

/// How every user connection of a run speaks.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub transport: Transport,
    pub codec: Codec,
    pub order: ByteOrder,
    /// TLS settings: `Some` for `tls` and `wss`.
    pub tls: Option<Arc<ClientConfig>>,
    /// The server's address: its IP is the name its certificate must carry, and it is the
    /// `Host` of a WebSocket upgrade.
    pub server: SocketAddr,
}

/// Client TLS settings trusting the certificates of the PEM file at `ca_path`. Every user is
/// a device of its own: resumption is off, so each connection makes a full handshake.
pub fn client_config(ca_path: &str) -> io::Result<Arc<ClientConfig>> {
    let invalid = |e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("--ca {ca_path}: {e}"))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_path).map_err(|e| invalid(&e))? {
        roots
            .add(cert.map_err(|e| invalid(&e))?)
            .map_err(|e| invalid(&e))?;
    }
    if roots.is_empty() {
        return Err(invalid(&"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// One connection: its socket, its TLS session if any, and what it keeps between reads.
pub struct Link {
    stream: TcpStream,
    tls: Option<Box<ClientConnection>>,
    reader: Reader,
    /// Output a plain socket has not taken yet (a TLS session keeps its own).
    out: Vec<u8>,
}

/// What arrives, cut into messages: the upgrade response first on a WebSocket.
struct Reader {
    /// The start of a frame (or of the upgrade response) whose end has not arrived yet.
    input: Vec<u8>,
    ws: Option<Box<WsState>>,
}

struct WsState {
    /// The `Sec-WebSocket-Accept` the upgrade response must carry; `None` once upgraded.
    accept: Option<String>,
    read: ReadState,
}

impl Link {
    /// Wraps a socket whose connect is under way; a WebSocket's upgrade request (and a TLS
    /// ClientHello) goes out with the first `flush` once it is connected.
    pub fn new(stream: TcpStream, config: &LinkConfig) -> io::Result<Link> {
        let tls = match (&config.tls, config.transport.is_tls()) {
            (Some(settings), true) => {
                let name = ServerName::from(config.server.ip());
                let session = ClientConnection::new(settings.clone(), name)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                Some(Box::new(session))
            }
            (None, true) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS needs its settings (--ca)",
                ));
            }
            _ => None,
        };
        let mut link = Link {
            stream,
            tls,
            reader: Reader {
                input: Vec::new(),
                ws: None,
            },
            out: Vec::new(),
        };
        if config.transport.is_websocket() {
            let key = BASE64.encode(rand::random::<[u8; 16]>());
            let mut request = Vec::new();
            upgrade_request(&mut request, config.server, &key);
            link.queue(&request)?;
            link.reader.ws = Some(Box::new(WsState {
                accept: Some(ws::accept_key(key.as_bytes())),
                read: ReadState::default(),
            }));
        }
        Ok(link)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Whether messages may be sent: always, except on a WebSocket before its upgrade is
    /// answered. (Over TLS, rustls keeps what is written during the handshake until it ends.)
    pub fn is_open(&self) -> bool {
        self.reader.ws.as_ref().is_none_or(|ws| ws.accept.is_none())
    }

    /// Sends `{uri, body}` (no `seq`, as clients do) in the run's codec and framing.
    pub fn send(&mut self, config: &LinkConfig, uri: &str, body: &str) -> io::Result<()> {
        let mut frame = Vec::new();
        encode(&mut frame, config, uri, body);
        self.queue(&frame)?;
        self.flush()
    }

    fn queue(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => tls.writer().write_all(bytes),
            None => {
                self.out.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Writes what waits until done or the socket is full. A peer that is gone is not an
    /// error here: reading tells, and counts it.
    pub fn flush(&mut self) -> io::Result<()> {
        let result = match &mut self.tls {
            Some(tls) => {
                let mut result = Ok(());
                while tls.wants_write() && result.is_ok() {
                    result = tls.write_tls(&mut self.stream).map(drop);
                    if result.as_ref().is_err_and(interrupted) {
                        result = Ok(());
                    }
                }
                result
            }
            None => {
                let mut written = 0;
                let mut result = Ok(());
                while written < self.out.len() && result.is_ok() {
                    match self.stream.write(&self.out[written..]) {
                        Ok(0) => result = Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => written += n,
                        Err(e) if interrupted(&e) => {}
                        Err(e) => result = Err(e),
                    }
                }
                self.out.drain(..written);
                result
            }
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) if gone(&e) => {
                self.out = Vec::new();
                Ok(())
            }
            other => other,
        }
    }

    /// Reads until the socket is drained (the poll is edge-triggered), handing each message's
    /// payload to `on_message` with the size of the frame that carried it (its framing
    /// included, TLS records not). Returns `false` once the server has closed the connection.
    pub fn read(
        &mut self,
        config: &LinkConfig,
        scratch: &mut [u8],
        mut on_message: impl FnMut(&[u8], usize) -> io::Result<()>,
    ) -> io::Result<bool> {
        let open = match self.tls.as_deref_mut() {
            None => loop {
                match self.stream.read(scratch) {
                    Ok(0) => break false,
                    Ok(n) => {
                        if !self
                            .reader
                            .take(config, &mut scratch[..n], &mut on_message)?
                        {
                            break false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                    Err(e) if interrupted(&e) => {}
                    Err(e) if gone(&e) => break false,
                    Err(e) => return Err(e),
                }
            },
            Some(tls) => read_tls(
                tls,
                &mut self.stream,
                &mut self.reader,
                config,
                scratch,
                &mut on_message,
            )?,
        };
        // TLS handshake messages, or what waited for the handshake to end.
        self.flush()?;
        Ok(open)
    }
}

/// `Link::read` over TLS: ciphertext in, plaintext out through the shared `scratch`.
fn read_tls(
    tls: &mut ClientConnection,
    stream: &mut TcpStream,
    reader: &mut Reader,
    config: &LinkConfig,
    scratch: &mut [u8],
    on_message: &mut dyn FnMut(&[u8], usize) -> io::Result<()>,
) -> io::Result<bool> {
    loop {
        let end = match tls.read_tls(stream) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if interrupted(&e) => continue,
            Err(e) if gone(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        tls.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
        loop {
            match tls.reader().read(scratch) {
                // The server's close_notify.
                Ok(0) => return Ok(false),
                Ok(n) => {
                    if !reader.take(config, &mut scratch[..n], on_message)? {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Closed without a close_notify.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if end {
            return Ok(false);
        }
    }
}

impl Reader {
    /// Handles `data`, just read, after whatever partial frame was kept, and keeps the new
    /// partial remainder. Returns `false` once a WebSocket close frame has come.
    fn take(
        &mut self,
        config: &LinkConfig,
        data: &mut [u8],
        on_message: &mut dyn FnMut(&[u8], usize) -> io::Result<()>,
    ) -> io::Result<bool> {
        let Reader { input, ws } = self;
        if input.is_empty() {
            let (used, open) = messages(ws.as_deref_mut(), config, data, on_message)?;
            input.extend_from_slice(&data[used..]);
            Ok(open)
        } else {
            input.extend_from_slice(data);
            let (used, open) = messages(ws.as_deref_mut(), config, input, on_message)?;
            input.drain(..used);
            Ok(open)
        }
    }
}

/// Hands every complete message at the start of `data` to `on_message`; returns the bytes
/// they took and whether the connection is still open.
fn messages(
    ws: Option<&mut WsState>,
    config: &LinkConfig,
    data: &mut [u8],
    on_message: &mut dyn FnMut(&[u8], usize) -> io::Result<()>,
) -> io::Result<(usize, bool)> {
    let Some(ws) = ws else {
        let decoder = Decoder::new(config.order, MAX_MESSAGE);
        let mut frames = decoder.frames(data);
        for payload in frames.by_ref() {
            let payload = payload.map_err(invalid_data)?;
            if !payload.is_empty() {
                on_message(payload, 4 + payload.len())?;
            } // else a keep-alive
        }
        return Ok((frames.consumed(), true));
    };
    let mut used = 0;
    if let Some(accept) = &ws.accept {
        match upgrade_response(data, accept)? {
            Some(len) => used = len,
            None => return Ok((0, true)),
        }
        ws.accept = None;
    }
    let decoder = ws::Decoder::client(MAX_MESSAGE);
    loop {
        let (message, len) = decoder
            .read(&mut ws.read, &mut data[used..])
            .map_err(invalid_data)?;
        used += len;
        match message {
            None => return Ok((used, true)),
            Some(ws::Message::Text(text)) if !text.is_empty() => on_message(text.as_bytes(), len)?,
            Some(ws::Message::Binary(bytes)) if !bytes.is_empty() => on_message(&bytes, len)?,
            Some(ws::Message::Close(_)) => return Ok((used, false)),
            // The server sends no pings, and no empty messages.
            Some(_) => {}
        }
    }
}

/// Appends `{uri, body}` (seq 0) as one frame in `config`'s codec and framing: length-prefixed,
/// or a masked WebSocket frame, text for JSON and binary for protobuf.
pub fn encode(out: &mut Vec<u8>, config: &LinkConfig, uri: &str, body: &str) {
    if !config.transport.is_websocket() {
        config.codec.write_frame(out, config.order, 0, uri, body);
        return;
    }
    let mut payload = Vec::new();
    config.codec.write_payload(&mut payload, 0, uri, body);
    let opcode = match config.codec {
        Codec::Json => Opcode::Text,
        Codec::Protobuf => Opcode::Binary,
    };
    ws::encode_client(out, true, opcode, rand::random(), &payload);
}

/// Appends the upgrade request to `/plex/v1/ws` with `key` (16 bytes in base64), offering the
/// `plex` subprotocol. The token comes after, in `/auth/server`, as over TCP, so that the first
/// message tells the server the connection's codec.
pub fn upgrade_request(out: &mut Vec<u8>, host: SocketAddr, key: &str) {
    write!(
        out,
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        ws::PATH,
        ws::PROTOCOL
    )
    .expect("writing to a Vec cannot fail");
}

/// The upgrade's answer at the start of `input`: the bytes it takes once complete, `None`
/// while it is not; an error unless it is `101` with the `Sec-WebSocket-Accept` of our key.
pub fn upgrade_response(input: &[u8], accept: &str) -> io::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid_data(format!("WebSocket upgrade response: {e}"))),
    };
    if response.code != Some(101) {
        let body = String::from_utf8_lossy(&input[len..]);
        return Err(invalid_data(format!(
            "WebSocket upgrade refused: {} {} {body:.200}",
            response.code.unwrap_or(0),
            response.reason.unwrap_or("")
        )));
    }
    let answer = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value.trim_ascii());
    if answer != Some(accept.as_bytes()) {
        return Err(invalid_data(
            "WebSocket upgrade: Sec-WebSocket-Accept does not match the key",
        ));
    }
    Ok(Some(len))
}

fn invalid_data(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// The server closed or reset the connection (or died).
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::{Duration, Instant};

    use mio::{Events, Interest, Poll, Token};
    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ServerConfig, ServerConnection, StreamOwned};

    use plex::protocol::{MessageRef, uri};

    const CA: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/bin/plex-bench/testdata/test-ca.pem"
    );
    const CERT: &str = include_str!("testdata/test-server.pem");
    const KEY: &str = include_str!("testdata/test-server.key");

    fn config(transport: Transport, codec: Codec, server: SocketAddr) -> LinkConfig {
        LinkConfig {
            transport,
            codec,
            order: ByteOrder::Big,
            tls: transport
                .is_tls()
                .then(|| client_config(CA).expect("the test CA")),
            server,
        }
    }

    fn any_server() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn the_upgrade_request_is_one_the_server_accepts_and_its_answer_checks_out() {
        let key = BASE64.encode([7u8; 16]);
        let mut request = Vec::new();
        upgrade_request(&mut request, "127.0.0.1:9580".parse().unwrap(), &key);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut headers);
        let len = parsed.parse(&request).unwrap().unwrap();
        assert_eq!(len, request.len());
        let upgrade = ws::UpgradeRequest::from_httparse(&parsed).unwrap();
        let accepted = ws::accept(&upgrade).expect("the server's own check");
        assert_eq!(accepted.token, None);
        assert_eq!(accepted.protocol, Some(ws::PROTOCOL));

        let mut response = Vec::new();
        accepted.write_response(&mut response);
        let accept = ws::accept_key(key.as_bytes());
        for cut in 0..response.len() {
            assert_eq!(upgrade_response(&response[..cut], &accept).unwrap(), None);
        }
        response.extend_from_slice(b"\x81\x00");
        assert_eq!(
            upgrade_response(&response, &accept).unwrap(),
            Some(response.len() - 2)
        );
        let other = ws::accept_key(BASE64.encode([8u8; 16]).as_bytes());
        let wrong = upgrade_response(&response, &other).unwrap_err();
        assert!(
            wrong.to_string().contains("Sec-WebSocket-Accept"),
            "{wrong}"
        );

        let mut refused = Vec::new();
        let rejected = ws::Rejected {
            status: 404,
            message: "not found",
        };
        rejected.write_response(&mut refused);
        let refused = upgrade_response(&refused, &accept).unwrap_err().to_string();
        assert!(
            refused.contains("refused: 404 Not Found") && refused.contains("not found"),
            "{refused}"
        );
    }

    #[test]
    fn messages_are_framed_for_the_transport_in_the_codec() {
        for codec in [Codec::Json, Codec::Protobuf] {
            let mut out = Vec::new();
            encode(
                &mut out,
                &config(Transport::Tcp, codec, any_server()),
                "/m",
                "b",
            );
            let (payload, used) = Decoder::new(ByteOrder::Big, 100)
                .decode(&out)
                .unwrap()
                .unwrap();
            assert_eq!(used, out.len());
            let m = codec.decode(payload).unwrap();
            assert_eq!((m.seq, &*m.uri, &*m.body), (0, "/m", "b"));

            let mut out = Vec::new();
            encode(
                &mut out,
                &config(Transport::Ws, codec, any_server()),
                "/m",
                "b",
            );
            let len = out.len();
            let masked = out[1] & 0x80 != 0;
            let (message, used) = ws::Decoder::server(100)
                .read(&mut ReadState::default(), &mut out)
                .unwrap();
            assert_eq!(used, len);
            assert!(masked, "a client masks its frames");
            let m = match (codec, message.unwrap()) {
                (Codec::Json, ws::Message::Text(text)) => {
                    MessageRef::decode(text.as_bytes()).unwrap().into_owned()
                }
                (Codec::Protobuf, ws::Message::Binary(bytes)) => {
                    codec.decode(&bytes).unwrap().into_owned()
                }
                (codec, other) => panic!("{codec:?} in {other:?}"),
            };
            assert_eq!((m.uri.as_str(), m.body.as_str()), ("/m", "b"));
        }
    }

    /// Everything `Reader::take` hands out, fed `input` in two pieces cut at `cut`.
    fn take_cut(
        config: &LinkConfig,
        ws: Option<&str>,
        input: &[u8],
        cut: usize,
    ) -> Vec<(String, usize)> {
        let mut reader = Reader {
            input: Vec::new(),
            ws: ws.map(|accept| {
                Box::new(WsState {
                    accept: Some(accept.to_owned()),
                    read: ReadState::default(),
                })
            }),
        };
        let mut got = Vec::new();
        for piece in [&input[..cut], &input[cut..]] {
            let open = reader
                .take(config, &mut piece.to_vec(), &mut |payload, len| {
                    let m = config.codec.decode(payload).unwrap();
                    got.push((format!("{}={}", m.uri, m.body), len));
                    Ok(())
                })
                .unwrap();
            assert!(open);
        }
        assert!(reader.input.is_empty(), "cut at {cut}");
        got
    }

    #[test]
    fn messages_come_out_whole_however_the_input_is_cut() {
        for codec in [Codec::Json, Codec::Protobuf] {
            // Length-prefixed: a keep-alive between two messages.
            let tcp = config(Transport::Tcp, codec, any_server());
            let mut input = Vec::new();
            codec.write_frame(&mut input, ByteOrder::Big, 1, "/a", "x");
            input.extend_from_slice(&[0; 4]);
            codec.write_frame(&mut input, ByteOrder::Big, 2, "/b", "yy");
            for cut in 0..=input.len() {
                let got = take_cut(&tcp, None, &input, cut);
                let names: Vec<&str> = got.iter().map(|(m, _)| m.as_str()).collect();
                assert_eq!(names, ["/a=x", "/b=yy"]);
                assert_eq!(got[0].1 + 4 + got[1].1, input.len());
            }
            // WebSocket: the upgrade's answer, then unmasked frames from the server.
            let key = BASE64.encode([1u8; 16]);
            let accept = ws::accept_key(key.as_bytes());
            let mut input = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            let head = input.len();
            let opcode = match codec {
                Codec::Json => Opcode::Text,
                Codec::Protobuf => Opcode::Binary,
            };
            for (uri, body) in [("/a", "x"), ("/b", &*"z".repeat(200))] {
                let mut payload = Vec::new();
                codec.write_payload(&mut payload, 0, uri, body);
                ws::encode(&mut input, opcode, &payload);
            }
            let ws_config = config(Transport::Ws, codec, any_server());
            for cut in 0..=input.len() {
                let got = take_cut(&ws_config, Some(&accept), &input, cut);
                assert_eq!(got.len(), 2, "cut at {cut}");
                assert_eq!(got[0].0, "/a=x");
                // The second frame's length takes the 16-bit form: 4 header bytes.
                assert_eq!(head + got[0].1 + got[1].1, input.len());
            }
        }
    }

    fn server_config() -> Arc<ServerConfig> {
        let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(CERT.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(KEY.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    trait Stream: Read + Write + Send {}
    impl<S: Read + Write + Send> Stream for S {}

    /// A server for one connection on `ip`: TLS (rustls) and WebSocket (tungstenite) as
    /// `transport` says. It reads one message, answers `/reply` with the body it got, and
    /// returns the message's uri.
    fn serve(
        ip: &str,
        transport: Transport,
        codec: Codec,
    ) -> (SocketAddr, thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut stream: Box<dyn Stream> = if transport.is_tls() {
                let session = ServerConnection::new(server_config()).unwrap();
                Box::new(StreamOwned::new(session, tcp))
            } else {
                Box::new(tcp)
            };
            let reply = |body: &str| {
                let mut payload = Vec::new();
                codec.write_payload(&mut payload, 0, "/reply", body);
                payload
            };
            if transport.is_websocket() {
                let mut ws = tungstenite::accept(stream).unwrap();
                let payload = ws.read().unwrap().into_data();
                let m = codec.decode(&payload).unwrap().into_owned();
                let answer = reply(&m.body);
                ws.send(match codec {
                    Codec::Json => tungstenite::Message::text(String::from_utf8(answer).unwrap()),
                    Codec::Protobuf => tungstenite::Message::binary(answer),
                })
                .unwrap();
                return m.uri;
            }
            let decoder = Decoder::new(ByteOrder::Big, 1000);
            let mut input = Vec::new();
            let m = loop {
                if let Some((payload, _)) = decoder.decode(&input).unwrap() {
                    break codec.decode(payload).unwrap().into_owned();
                }
                let mut chunk = [0; 1024];
                let n = stream.read(&mut chunk).unwrap();
                assert_ne!(n, 0, "the client closed");
                input.extend_from_slice(&chunk[..n]);
            };
            let mut frame = Vec::new();
            plex::protocol::frame::encode(&mut frame, ByteOrder::Big, &reply(&m.body));
            stream.write_all(&frame).unwrap();
            stream.flush().unwrap();
            m.uri
        });
        (address, server)
    }

    /// Connects a `Link` to `address` on a poll, sends `/auth/server` once it is open, and
    /// returns the body of the first message back, or the error that stopped it.
    fn exchange(config: &LinkConfig, address: SocketAddr) -> io::Result<String> {
        let mut poll = Poll::new()?;
        let mut events = Events::with_capacity(16);
        let mut stream = TcpStream::connect(address)?;
        poll.registry().register(
            &mut stream,
            Token(0),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut link = Link::new(stream, config)?;
        let mut scratch = vec![0; 4096];
        let (mut sent, mut got) = (false, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.is_none() {
            assert!(Instant::now() < deadline, "no answer");
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            if events.is_empty() {
                continue;
            }
            let open = link.read(config, &mut scratch, |payload, _| {
                got = Some(config.codec.decode(payload).unwrap().into_owned().body);
                Ok(())
            })?;
            link.flush()?;
            if !sent && link.is_open() {
                link.send(config, uri::AUTH, "u1")?;
                sent = true;
            }
            assert!(open || got.is_some(), "closed without an answer");
        }
        Ok(got.unwrap())
    }

    #[test]
    fn every_transport_speaks_to_an_independent_peer_in_either_codec() {
        for (name, transport) in Transport::NAMES {
            for codec in [Codec::Json, Codec::Protobuf] {
                let (address, server) = serve("127.0.0.1", transport, codec);
                let config = config(transport, codec, address);
                let body = exchange(&config, address).unwrap();
                assert_eq!(body, "u1", "{name} {codec:?}");
                assert_eq!(server.join().unwrap(), uri::AUTH, "{name} {codec:?}");
            }
        }
    }

    #[test]
    fn a_certificate_for_another_address_is_refused() {
        // The test certificate names 127.0.0.1 and localhost only.
        let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut session = ServerConnection::new(server_config()).unwrap();
            let mut tcp = tcp;
            // Until the client gives up on the handshake.
            while session.complete_io(&mut tcp).is_ok() && session.is_handshaking() {}
        });
        let config = config(Transport::Tls, Codec::Json, address);
        let e = exchange(&config, address).unwrap_err().to_string();
        assert!(e.contains("TLS") && e.contains("not valid for name"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn the_ca_file_must_hold_a_certificate() {
        let e = client_config("/nonexistent/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--ca /nonexistent/ca.pem: "), "{e}");
        let key_only = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/bin/plex-bench/testdata/test-server.key"
        );
        let e = client_config(key_only).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
    }
}
