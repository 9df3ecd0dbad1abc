//! The test's side of the sockets: client connections and HTTP connections that know what
//! they sent and check what the server answers, and the well-behaved client that reads on a
//! thread of its own.

use std::collections::{HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use plex::client::Connection;
use plex::config::DEFAULT_INNER_PASSWORD;
use plex::protocol::{ByteOrder, Decoder, Message, PushRequest, proto, uri};

use crate::common::{self, WAIT};
use crate::run::{Book, broadcast_uri};
use crate::{
    Bearer, FLOOD_BYTES, Frame, GOOD, MAX_INNER_FRAME, Malformed, Piece, Request, Route, Uid, token,
};

/// What a client connection of the test knows about itself.
pub struct Peer {
    pub stream: TcpStream,
    source: u32,
    pub reading: bool,
    /// The server has closed it, or a write failed.
    pub open: bool,
    input: Vec<u8>,
    /// Uids its auth frames could have made it.
    may_be: Vec<String>,
    /// It sent something that could authenticate it.
    may_succeed: bool,
    /// It sent the right inner password: its pushes may be delivered.
    may_push: bool,
    /// Set while the connection is a confirmed inner connection whose every frame arrived
    /// whole: its heartbeat answers then acknowledge the pushes it sent before each heartbeat.
    pub tracked: Option<Tracked>,
    seen: HashSet<usize>,
}

#[derive(Default)]
pub struct Tracked {
    /// Per heartbeat sent and not yet answered, the pushes sent before it.
    pub beats: VecDeque<Vec<usize>>,
    pub since: Vec<usize>,
}

/// How long a write may wait for the server to read; past it the write is abandoned.
const WRITE_WAIT: Duration = Duration::from_millis(500);

impl Peer {
    pub fn connect(addr: SocketAddr, source: u32) -> Peer {
        let stream = TcpStream::connect(addr).expect("the client listener accepts");
        let _ = stream.set_nodelay(true);
        Peer {
            stream,
            source,
            reading: true,
            open: true,
            input: Vec::new(),
            may_be: Vec::new(),
            may_succeed: false,
            may_push: false,
            tracked: None,
            seen: HashSet::new(),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.open = self.open && write_within(&mut self.stream, bytes);
        if !self.open {
            self.tracked = None; // the server may have got only part of it
        }
    }

    /// The bytes of `frame`, noting what sending it may do.
    pub fn frame(&mut self, book: &mut Book, webhook: bool, frame: &Frame) -> Vec<u8> {
        let (uri, body) = match frame {
            Frame::Auth(answer) => {
                if let Some(uid) = answer.uid() {
                    self.may_succeed = true;
                    self.may_be.push(uid.to_owned());
                }
                (uri::AUTH, token(answer, webhook))
            }
            Frame::InnerAuth { right } => {
                self.may_succeed |= right;
                self.may_push |= right;
                let password = if *right {
                    DEFAULT_INNER_PASSWORD
                } else {
                    "wrong"
                };
                (uri::INNER_AUTH, password.to_owned())
            }
            Frame::Heartbeat => {
                if let Some(t) = &mut self.tracked {
                    let since = std::mem::take(&mut t.since);
                    t.beats.push_back(since);
                }
                (uri::HEARTBEAT, String::new())
            }
            Frame::Push(spec) => {
                let deliverable = self.may_push && spec.well_formed && spec.uri.is_valid();
                let (id, body) = book.push(self.source, Some(&[spec.to]), deliverable, spec.pad);
                if let Some(t) = &mut self.tracked {
                    t.since.push(id);
                }
                let request = if spec.well_formed {
                    PushRequest {
                        uid: book.sent[id].to[0].into(),
                        uri: spec.uri.text().into(),
                        body: body.into(),
                    }
                    .to_json()
                } else {
                    format!(r#"{{"uri": "/p", "body": "{body}"}}"#)
                };
                (uri::SEND_MSG, request)
            }
            Frame::Upstream(pad) => ("/up", "u".repeat((*pad).into())),
            Frame::ServerUri(success) => {
                let uri = if *success {
                    uri::AUTH_SUCCESS
                } else {
                    uri::AUTH_FAILED
                };
                (uri, String::new())
            }
            Frame::Empty => return 0u32.to_be_bytes().to_vec(),
            Frame::BadJson(bytes) => {
                return common::frame(ByteOrder::Big, &[b"}", &bytes[..]].concat());
            }
        };
        let mut out = Vec::new();
        Message::new(uri, body).encode(&mut out, ByteOrder::Big);
        out
    }

    pub fn piece(&mut self, book: &mut Book, webhook: bool, piece: &Piece) -> Vec<u8> {
        match piece {
            Piece::Frame(f) => self.frame(book, webhook, f),
            Piece::Flood(f, n) => {
                let mut out = self.frame(book, webhook, f);
                let times = (*n as usize).min(FLOOD_BYTES / out.len().max(1));
                for _ in 1..times {
                    let next = self.frame(book, webhook, f);
                    out.extend_from_slice(&next);
                }
                out
            }
            Piece::Partial(f, at) => {
                self.tracked = None;
                let mut bytes = self.frame(book, webhook, f);
                bytes.truncate(at.index(bytes.len()));
                bytes
            }
            Piece::Oversize(extra) => {
                self.tracked = None;
                let len = MAX_INNER_FRAME as u32 + 1 + u32::from(*extra);
                len.to_be_bytes().to_vec()
            }
            Piece::Raw(bytes) => {
                self.tracked = None;
                bytes.clone()
            }
        }
    }

    /// Reads what the server sent, if this client is reading, and checks each message.
    pub fn pump(&mut self, book: &mut Book) {
        if self.reading && self.open {
            self.open = read_available(&mut self.stream, &mut self.input);
            self.take_messages(book);
        }
    }

    fn take_messages(&mut self, book: &mut Book) {
        let decoder = Decoder::new(ByteOrder::Big, u32::MAX);
        let mut used = 0;
        while let Some((payload, len)) = decoder.decode(&self.input[used..]).unwrap() {
            // A first frame that reads as protobuf (random bytes can) makes the connection
            // protobuf; a JSON frame always starts with `{` and a protobuf one never does.
            let message = if payload.first() == Some(&b'{') {
                Message::decode(payload).map_err(|e| e.to_string())
            } else {
                proto::decode(payload)
                    .map(|m| m.into_owned())
                    .map_err(|e| e.to_string())
            }
            .unwrap_or_else(|e| panic!("the server sent a malformed frame: {e}"));
            used += len;
            self.on_message(book, message);
        }
        self.input.drain(..used);
    }

    fn on_message(&mut self, book: &mut Book, m: Message) {
        match m.uri.as_str() {
            uri::HEARTBEAT => {
                if let Some(t) = &mut self.tracked {
                    let acked = (t.beats.pop_front())
                        .expect("an inner connection got a heartbeat answer nobody asked for");
                    for id in acked {
                        book.sent[id].acknowledged = true;
                    }
                }
            }
            uri::AUTH_SUCCESS => assert!(
                self.may_succeed,
                "a connection that sent no token that could succeed got {m:?}"
            ),
            uri::AUTH_FAILED => {}
            _ => {
                let id = Book::id_of(&m.body)
                    .unwrap_or_else(|| panic!("a client got a message nobody sent: {m:?}"));
                let sent = &book.sent[id];
                assert!(
                    self.tracked.is_none(),
                    "an inner connection got a push: {sent:?}"
                );
                assert!(
                    sent.deliverable
                        && (sent.broadcast || self.may_be.iter().any(|u| sent.to.contains(&&**u))),
                    "a client that may be {:?} got push {id} {sent:?}",
                    self.may_be
                );
                assert!(self.seen.insert(id), "a client got push {id} twice");
            }
        }
    }

    /// Waits for the answer to an inner authentication sent last.
    pub fn await_inner_auth(&mut self, book: &mut Book) -> bool {
        let deadline = Instant::now() + WAIT;
        let decoder = Decoder::new(ByteOrder::Big, u32::MAX);
        loop {
            if let Some((payload, len)) = decoder.decode(&self.input).unwrap() {
                let m = Message::decode(payload).expect("a well-formed answer");
                self.input.drain(..len);
                let ok = m.uri == uri::AUTH_SUCCESS;
                self.on_message(book, m);
                return ok;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no answer to an inner authentication");
            let _ = self.stream.set_read_timeout(Some(left));
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Writes `bytes` unless the server stops reading for `WRITE_WAIT`; returns whether all went.
fn write_within(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    let _ = stream.set_write_timeout(Some(WRITE_WAIT));
    stream.write_all(bytes).is_ok()
}

/// Reads what is available without waiting; returns whether the connection is still open.
fn read_available(stream: &mut TcpStream, into: &mut Vec<u8>) -> bool {
    let _ = stream.set_nonblocking(true);
    let mut chunk = vec![0u8; 64 * 1024];
    let open = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break false,
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    let _ = stream.set_nonblocking(false);
    open
}

/// Closes with `SO_LINGER` 0, so that the server sees a reset.
pub fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

// ---- HTTP sockets.

/// What an answer to a well-formed request on a clean connection must be.
pub struct Expected {
    status: u16,
    /// Pushes a 200 acknowledges.
    acks: Vec<usize>,
    /// The body's `online` must show the well-behaved client.
    online_good: bool,
    /// The server may close the connection after this answer.
    last: bool,
}

pub struct HttpPeer {
    pub stream: TcpStream,
    source: u32,
    pub reading: bool,
    pub open: bool,
    input: Vec<u8>,
    /// Everything sent so far was well-formed requests whose answers come in order.
    pub clean: bool,
    pub expected: VecDeque<Expected>,
}

impl HttpPeer {
    pub fn connect(addr: SocketAddr, source: u32) -> HttpPeer {
        HttpPeer {
            stream: TcpStream::connect(addr).expect("the HTTP listener accepts"),
            source,
            reading: true,
            open: true,
            input: Vec::new(),
            clean: true,
            expected: VecDeque::new(),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.open = self.open && write_within(&mut self.stream, bytes);
        self.clean &= self.open;
    }

    pub fn request(&mut self, book: &mut Book, r: &Request) -> Vec<u8> {
        let authorized = r.bearer == Bearer::Right;
        let refused = |status: u16| if authorized { status } else { 401 };
        let mut acks = Vec::new();
        let mut online_good = false;
        let (method, target, body, status) = match &r.route {
            Route::Push { to, many, uri, pad } => {
                let to = if *many { &to[..] } else { &to[..1] };
                let deliverable = authorized && uri.is_valid();
                let (id, body) = book.push(self.source, Some(to), deliverable, *pad);
                acks.push(id);
                let to = &book.sent[id].to;
                let json = if *many {
                    serde_json::json!({"uids": to, "uri": uri.text(), "body": body})
                } else {
                    serde_json::json!({"uid": to[0], "uri": uri.text(), "body": body})
                };
                let status = refused(if uri.is_valid() { 200 } else { 400 });
                ("POST", "/plex/v1/push".to_owned(), json.to_string(), status)
            }
            Route::Broadcast { uri, pad } => {
                let deliverable = authorized && uri.is_valid();
                let (id, body) = book.push(self.source, None, deliverable, *pad);
                acks.push(id);
                let uri = broadcast_uri(&book.sent[id], *uri);
                let json = serde_json::json!({"uri": uri.text(), "body": body});
                let status = refused(if uri.is_valid() { 200 } else { 400 });
                (
                    "POST",
                    "/plex/v1/broadcast".to_owned(),
                    json.to_string(),
                    status,
                )
            }
            Route::Online(uids) => {
                online_good = authorized && uids.contains(&Uid::Good);
                let query: Vec<String> = uids.iter().map(|u| format!("uid={}", u.name())).collect();
                let target = format!("/plex/v1/online?{}", query.join("&"));
                ("GET", target, String::new(), refused(200))
            }
            Route::Kick(uid) => {
                let json = serde_json::json!({"uid": uid.name()}).to_string();
                ("POST", "/plex/v1/kick".to_owned(), json, refused(200))
            }
            Route::Stats => ("GET", "/plex/v1/stats".into(), String::new(), refused(200)),
            Route::Metrics => ("GET", "/metrics".into(), String::new(), refused(200)),
            Route::Host => ("GET", "/plex/v1/host".into(), String::new(), 200),
            Route::Unknown => ("GET", "/nope".into(), String::new(), 404),
            Route::WrongMethod => ("GET", "/plex/v1/kick".into(), String::new(), 405),
            Route::BadJson => ("POST", "/plex/v1/push".into(), "{nope".into(), refused(400)),
        };
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: plex\r\n");
        match r.bearer {
            Bearer::Right => head += &format!("Authorization: Bearer {DEFAULT_INNER_PASSWORD}\r\n"),
            Bearer::Wrong => head += "Authorization: Bearer nope\r\n",
            Bearer::Missing => {}
        }
        if !body.is_empty() {
            head += &format!("Content-Length: {}\r\n", body.len());
        }
        if r.close {
            head += "Connection: close\r\n";
        }
        if self.clean {
            // A request refused from its head alone may be answered before its body arrives,
            // and the connection closed.
            let refused_early = matches!(status, 401 | 404 | 405) && !body.is_empty();
            self.expected.push_back(Expected {
                status,
                acks,
                online_good,
                last: r.close || refused_early,
            });
        }
        format!("{head}\r\n{body}").into_bytes()
    }

    pub fn malformed(&mut self, m: &Malformed) -> Vec<u8> {
        self.clean = false;
        let host = "GET /plex/v1/host HTTP/1.1\r\nHost: plex\r\n\r\n";
        match m {
            Malformed::HugeLength => {
                "POST /plex/v1/push HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n".into()
            }
            Malformed::PartialHead(at) => host.as_bytes()[..at.index(host.len() - 1)].to_vec(),
            Malformed::OversizedHead => format!(
                "GET /plex/v1/host HTTP/1.1\r\nX: {}\r\n\r\n",
                "a".repeat(9000)
            )
            .into(),
            Malformed::Chunked => {
                "POST /plex/v1/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into()
            }
            Malformed::ExpectContinue => format!(
                "POST /plex/v1/push HTTP/1.1\r\nAuthorization: Bearer {DEFAULT_INNER_PASSWORD}\r\n\
                 Expect: 100-continue\r\nContent-Length: 10\r\n\r\n"
            )
            .into(),
            Malformed::BadLine => b"BLAH\r\n\r\n".to_vec(),
            Malformed::Garbage(bytes) => bytes.clone(),
        }
    }

    pub fn pump(&mut self, book: &mut Book) {
        if !self.reading || !self.open {
            return;
        }
        self.open = read_available(&mut self.stream, &mut self.input);
        if !self.clean {
            self.input.clear();
            return;
        }
        while let Some(used) = self.take_response(book) {
            self.input.drain(..used);
        }
    }

    /// Checks the complete response at the start of the input; returns its length.
    fn take_response(&mut self, book: &mut Book) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(&self.input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return None,
            Err(e) => panic!("malformed HTTP response: {e}: {:?}", self.input),
        };
        let status = response.code.unwrap();
        let header = |name: &str| {
            (response.headers.iter())
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let closes = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
        let body = self.input.get(head..head + length)?;
        let expected = (self.expected.pop_front())
            .unwrap_or_else(|| panic!("an HTTP answer nobody asked for: {status}"));
        assert_eq!(
            status,
            expected.status,
            "HTTP answer {}",
            String::from_utf8_lossy(body)
        );
        if status == 200 {
            for &id in &expected.acks {
                book.sent[id].acknowledged = true;
            }
        }
        if expected.online_good {
            let json: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(json["online"][GOOD], 1, "online says {json}");
        }
        if closes || expected.last {
            self.clean = false;
        }
        Some(head + length)
    }
}

// ---- The well-behaved client: authenticated first, always reading, heartbeating in time.

/// How often the well-behaved client heartbeats: well within `HeartbeatTimeout`.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct GoodLog {
    got: Vec<Message>,
    /// Why it stopped, if it did.
    lost: Option<String>,
}

pub struct Good {
    log: Arc<Mutex<GoodLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Good {
    pub fn start(mut c: Connection) -> Good {
        let log: Arc<Mutex<GoodLog>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (record, stopped) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut beat = Instant::now();
            while !stopped.load(Ordering::SeqCst) {
                match c.recv(Some(Duration::from_millis(50))) {
                    Ok(m) if m.uri == uri::HEARTBEAT => {}
                    Ok(m) => record.lock().unwrap().got.push(m),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => {
                        record.lock().unwrap().lost = Some(format!("reading: {e}"));
                        return;
                    }
                }
                if beat.elapsed() >= HEARTBEAT_EVERY {
                    beat = Instant::now();
                    if let Err(e) = c.send(uri::HEARTBEAT, "") {
                        record.lock().unwrap().lost = Some(format!("heartbeating: {e}"));
                        return;
                    }
                }
            }
        });
        Good {
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn check_connected(&self) {
        if let Some(why) = &self.log.lock().unwrap().lost {
            panic!("the well-behaved client lost its connection ({why})");
        }
    }

    /// The server has closed its connection.
    pub fn closed(&self) -> bool {
        self.log.lock().unwrap().lost.is_some()
    }

    pub fn got(&self) -> Vec<Message> {
        self.log.lock().unwrap().got.clone()
    }
}

impl Drop for Good {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
