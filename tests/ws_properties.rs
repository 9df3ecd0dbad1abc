//! Property tests of WebSocket framing (`plex::protocol::ws`), with tungstenite as the
//! independent peer: frames it writes decode here and frames written here decode there,
//! fragmented messages and close frames included; any stream cut into reads at any byte
//! decodes as it does whole; mangled input never panics; limits hold from the header alone.
//! Then the handshake and a conversation with a tungstenite client over a real socket.

mod common;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

use common::WAIT;
use common::chunks::{chunk, config, cuts, mutated, reads};
use plex::protocol::ws::{
    self, CloseCode, Decoder, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, Message, Opcode, ProtocolError,
    ReadState, UpgradeRequest,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use tungstenite::protocol::frame::coding::{CloseCode as TCloseCode, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};
use tungstenite::protocol::{Role, WebSocket};

/// A message as either side sees it, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

impl From<Message<'_>> for Msg {
    fn from(m: Message<'_>) -> Msg {
        match m {
            Message::Text(t) => Msg::Text(t.into_owned()),
            Message::Binary(b) => Msg::Binary(b.into_owned()),
            Message::Ping(p) => Msg::Ping(p.to_vec()),
            Message::Pong(p) => Msg::Pong(p.to_vec()),
            Message::Close(c) => Msg::Close(c.map(|c| (c.code, c.reason.to_owned()))),
        }
    }
}

impl From<tungstenite::Message> for Msg {
    fn from(m: tungstenite::Message) -> Msg {
        match m {
            tungstenite::Message::Text(t) => Msg::Text(t.as_str().to_owned()),
            tungstenite::Message::Binary(b) => Msg::Binary(b.to_vec()),
            tungstenite::Message::Ping(p) => Msg::Ping(p.to_vec()),
            tungstenite::Message::Pong(p) => Msg::Pong(p.to_vec()),
            tungstenite::Message::Close(c) => {
                Msg::Close(c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned())))
            }
            tungstenite::Message::Frame(f) => panic!("raw frame {f:?}"),
        }
    }
}

impl Msg {
    /// Opcode and payload of this message in one frame.
    fn frame(&self) -> (Opcode, Vec<u8>) {
        match self {
            Msg::Text(t) => (Opcode::Text, t.as_bytes().to_vec()),
            Msg::Binary(b) => (Opcode::Binary, b.clone()),
            Msg::Ping(p) => (Opcode::Ping, p.clone()),
            Msg::Pong(p) => (Opcode::Pong, p.clone()),
            Msg::Close(None) => (Opcode::Close, Vec::new()),
            Msg::Close(Some((code, reason))) => {
                let mut payload = Vec::new();
                ws::write_close_payload(&mut payload, *code, reason);
                (Opcode::Close, payload)
            }
        }
    }
}

/// One frame as a client sends it; `opcode` is the 4 bits on the wire.
#[derive(Clone, Debug)]
struct RawFrame {
    first: u8,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
}

impl RawFrame {
    fn new(fin: bool, opcode: Opcode, mask: [u8; 4], payload: Vec<u8>) -> Self {
        RawFrame {
            first: if fin { 0x80 } else { 0 } | opcode as u8,
            mask: Some(mask),
            payload,
        }
    }

    /// Written by tungstenite, whatever the bits say.
    fn tungstenite(&self) -> Frame {
        let header = FrameHeader {
            is_final: self.first & 0x80 != 0,
            rsv1: self.first & 0x40 != 0,
            rsv2: self.first & 0x20 != 0,
            rsv3: self.first & 0x10 != 0,
            opcode: OpCode::from(self.first & 0x0f),
            mask: self.mask,
        };
        Frame::from_payload(header, self.payload.clone().into())
    }
}

fn tungstenite_bytes(frames: &[RawFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.tungstenite().format(&mut out).unwrap();
    }
    out
}

/// How the reactor reads a WebSocket connection: each read lands after the kept partial frame,
/// messages are read from the front, and only the unconsumed tail is kept.
struct Conn {
    decoder: Decoder,
    state: ReadState,
    kept: Vec<u8>,
    messages: Vec<Msg>,
    error: Option<ProtocolError>,
    most_kept: usize,
}

impl Conn {
    fn new(max_message: u32) -> Self {
        Conn {
            decoder: Decoder::server(max_message),
            state: ReadState::default(),
            kept: Vec::new(),
            messages: Vec::new(),
            error: None,
            most_kept: 0,
        }
    }

    fn read(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return; // closed
        }
        let mut buffer = std::mem::take(&mut self.kept);
        buffer.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            match self.decoder.read(&mut self.state, &mut buffer[used..]) {
                Ok((Some(message), n)) => {
                    used += n;
                    self.messages.push(message.into());
                }
                Ok((None, n)) => {
                    used += n;
                    break;
                }
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
        buffer.drain(..used);
        self.most_kept = self.most_kept.max(buffer.len());
        self.kept = buffer;
    }

    fn whole(max_message: u32, bytes: &[u8]) -> Self {
        let mut conn = Conn::new(max_message);
        conn.read(bytes);
        conn
    }

    fn chunked(max_message: u32, bytes: &[u8], cuts: &Option<Vec<Index>>) -> Self {
        let mut conn = Conn::new(max_message);
        for read in reads(bytes, cuts) {
            conn.read(read);
        }
        conn
    }
}

/// The same outcome, and a kept remainder never more than a header and a payload in the limit.
fn assert_same(chunked: &Conn, whole: &Conn, max_message: u32) {
    assert_eq!(chunked.messages, whole.messages);
    assert_eq!(chunked.error, whole.error);
    if chunked.error.is_none() {
        assert_eq!(chunked.kept, whole.kept);
    }
    let bound = MAX_HEADER_LEN + (max_message as usize).max(MAX_CONTROL_PAYLOAD);
    assert!(
        chunked.most_kept < bound,
        "kept {} bytes",
        chunked.most_kept
    );
}

// Strategies.

fn mask() -> impl Strategy<Value = [u8; 4]> {
    any::<[u8; 4]>()
}

fn control() -> impl Strategy<Value = Msg> {
    let payload = || vec(any::<u8>(), 0..=MAX_CONTROL_PAYLOAD);
    prop_oneof![payload().prop_map(Msg::Ping), payload().prop_map(Msg::Pong)]
}

fn close() -> impl Strategy<Value = Msg> {
    let code = prop_oneof![1000u16..=1003, 1007u16..=1011, 3000u16..=4999];
    prop_oneof![
        Just(Msg::Close(None)),
        (code, "\\PC{0,40}").prop_map(|(code, reason)| {
            let mut reason: String = reason;
            while reason.len() > MAX_CONTROL_PAYLOAD - 2 {
                reason.pop();
            }
            Msg::Close(Some((code, reason)))
        }),
    ]
}

fn data() -> impl Strategy<Value = Msg> {
    prop_oneof![
        4 => "\\PC{0,200}".prop_map(Msg::Text),
        4 => vec(any::<u8>(), 0..300).prop_map(Msg::Binary),
        // Past the 16-bit length form.
        1 => (65_536usize..70_000, any::<u8>()).prop_map(|(n, b)| Msg::Binary(vec![b; n])),
    ]
}

/// A data message cut into fragments (anywhere, even inside a character), with control frames
/// between them, or a control frame alone.
#[derive(Clone, Debug)]
enum Event {
    Data {
        message: Msg,
        cuts: Vec<Index>,
        between: Vec<Option<Msg>>,
    },
    Control(Msg),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => (data(), vec(any::<Index>(), 0..4), vec(proptest::option::of(control()), 4))
            .prop_map(|(message, cuts, between)| Event::Data { message, cuts, between }),
        1 => control().prop_map(Event::Control),
    ]
}

/// A conversation: events, then perhaps a close.
fn conversation() -> impl Strategy<Value = Vec<Event>> {
    (vec(event(), 0..8), proptest::option::of(close())).prop_map(|(mut events, close)| {
        events.extend(close.map(Event::Control));
        events
    })
}

/// The frames of `events` (masked with `mask`) and the messages they should decode to.
fn frames_of(events: &[Event], mask: [u8; 4]) -> (Vec<RawFrame>, Vec<Msg>) {
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    for event in events {
        match event {
            Event::Control(m) => {
                let (opcode, payload) = m.frame();
                frames.push(RawFrame::new(true, opcode, mask, payload));
                expected.push(m.clone());
            }
            Event::Data {
                message,
                cuts,
                between,
            } => {
                let (opcode, payload) = message.frame();
                let pieces = chunk(&payload, cuts);
                for (i, piece) in pieces.iter().enumerate() {
                    if i > 0
                        && let Some(c) = &between[i - 1]
                    {
                        let (op, p) = c.frame();
                        frames.push(RawFrame::new(true, op, mask, p));
                        expected.push(c.clone());
                    }
                    let op = if i == 0 { opcode } else { Opcode::Continuation };
                    frames.push(RawFrame::new(
                        i + 1 == pieces.len(),
                        op,
                        mask,
                        piece.to_vec(),
                    ));
                }
                expected.push(message.clone());
            }
        }
    }
    (frames, expected)
}

/// Any frame a client might send, mostly valid, often not: reserved bits and opcodes, missing
/// masks, oversized control frames, fragments out of order.
fn raw_frame() -> impl Strategy<Value = RawFrame> {
    let first = prop_oneof![
        4 => (any::<bool>(), select_opcode()).prop_map(|(fin, op)| if fin { 0x80 } else { 0 } | op),
        1 => any::<u8>(),
    ];
    let mask = prop_oneof![9 => mask().prop_map(Some), 1 => Just(None)];
    let payload = prop_oneof![
        4 => vec(any::<u8>(), 0..130),
        1 => vec(any::<u8>(), 0..2000),
    ];
    (first, mask, payload).prop_map(|(first, mask, payload)| RawFrame {
        first,
        mask,
        payload,
    })
}

fn select_opcode() -> impl Strategy<Value = u8> {
    proptest::sample::select(vec![0u8, 0, 1, 1, 2, 8, 9, 10])
}

fn max_message() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), 1u32..200, Just(1024), Just(1 << 20)]
}

/// An in-memory byte stream for a tungstenite endpoint: reads what was given, then would block.
#[derive(Default)]
struct Pipe {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.input.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Every message a tungstenite endpoint reads from `bytes`, up to the end or a close.
fn tungstenite_reads(role: Role, bytes: Vec<u8>) -> Vec<Msg> {
    let pipe = Pipe {
        input: bytes.into(),
        output: Vec::new(),
    };
    let mut socket = WebSocket::from_raw_socket(pipe, role, None);
    let mut messages = Vec::new();
    loop {
        match socket.read() {
            Ok(m) => {
                let closed = m.is_close();
                messages.push(m.into());
                if closed {
                    return messages;
                }
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return messages;
            }
            Err(e) => panic!("tungstenite failed after {messages:?}: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Frames tungstenite writes, fragmented or not, with control frames between fragments,
    /// decode here to the messages they carry, in any chunking.
    #[test]
    fn tungstenite_frames_decode_here(
        events in conversation(),
        mask in mask(),
        cuts in cuts(),
    ) {
        let (frames, expected) = frames_of(&events, mask);
        let bytes = tungstenite_bytes(&frames);
        let whole = Conn::whole(1 << 20, &bytes);
        prop_assert_eq!(&whole.messages, &expected);
        prop_assert_eq!(whole.error, None);
        prop_assert!(whole.kept.is_empty());
        let chunked = Conn::chunked(1 << 20, &bytes, &cuts);
        assert_same(&chunked, &whole, 1 << 20);
    }

    /// A tungstenite client's own output (its masks, its framing) decodes here.
    #[test]
    fn a_tungstenite_client_is_understood(events in conversation(), cuts in cuts()) {
        let (frames, expected) = frames_of(&events, [0; 4]);
        let mut client = WebSocket::from_raw_socket(Pipe::default(), Role::Client, None);
        for f in frames {
            let mut frame = f.tungstenite();
            frame.header_mut().mask = None; // the client masks it
            client.write(tungstenite::Message::Frame(frame)).unwrap();
        }
        client.flush().unwrap();
        let bytes = std::mem::take(&mut client.get_mut().output);
        let conn = Conn::chunked(1 << 20, &bytes, &cuts);
        prop_assert_eq!(conn.messages, expected);
        prop_assert_eq!(conn.error, None);
    }

    /// Frames the client encoder writes decode in a tungstenite server.
    #[test]
    fn client_frames_decode_in_tungstenite(events in conversation(), mask in mask()) {
        let (frames, expected) = frames_of(&events, mask);
        let mut bytes = Vec::new();
        for f in &frames {
            let opcode = match f.first & 0x0f {
                0 => Opcode::Continuation,
                1 => Opcode::Text,
                2 => Opcode::Binary,
                8 => Opcode::Close,
                9 => Opcode::Ping,
                _ => Opcode::Pong,
            };
            ws::encode_client(&mut bytes, f.first & 0x80 != 0, opcode, mask, &f.payload);
        }
        prop_assert_eq!(&bytes, &tungstenite_bytes(&frames));
        prop_assert_eq!(tungstenite_reads(Role::Server, bytes), expected);
    }

    /// What the server writes (unfragmented, unmasked) decodes in a tungstenite client.
    #[test]
    fn server_frames_decode_in_tungstenite(
        messages in vec(prop_oneof![data(), control()], 0..8),
        code in proptest::sample::select(vec![
            CloseCode::Normal, CloseCode::GoingAway, CloseCode::Protocol,
            CloseCode::Unsupported, CloseCode::BadPayload, CloseCode::Policy,
            CloseCode::TooBig, CloseCode::Internal,
        ]),
        reason in "\\PC{0,80}",
    ) {
        let mut bytes = Vec::new();
        for m in &messages {
            let (opcode, payload) = m.frame();
            // Through the in-place writer, as a push is encoded.
            ws::encode_with(&mut bytes, opcode, |out| out.extend_from_slice(&payload));
        }
        ws::encode_close(&mut bytes, code, &reason);
        let mut expected = messages.clone();
        let mut sent_reason = reason.clone();
        while sent_reason.len() > MAX_CONTROL_PAYLOAD - 2 {
            sent_reason.pop();
        }
        expected.push(Msg::Close(Some((code.code(), sent_reason))));
        prop_assert_eq!(tungstenite_reads(Role::Client, bytes.clone()), expected.clone());
        // And in the client-side decoder here.
        let decoder = Decoder::client(1 << 20);
        let mut state = ReadState::default();
        let mut used = 0;
        let mut got = Vec::new();
        while let (Some(m), n) = decoder.read(&mut state, &mut bytes[used..]).unwrap() {
            used += n;
            got.push(Msg::from(m));
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(used, bytes.len());
    }

    /// Any frames, valid or not, cut into reads anywhere, decode as they do in one piece.
    #[test]
    fn any_frames_decode_the_same_in_any_chunking(
        frames in vec(raw_frame(), 0..10),
        max in max_message(),
        cuts in cuts(),
    ) {
        let bytes = tungstenite_bytes(&frames);
        let whole = Conn::whole(max, &bytes);
        let chunked = Conn::chunked(max, &bytes, &cuts);
        assert_same(&chunked, &whole, max);
    }

    /// Mangled conversations never panic, and still decode the same in any chunking.
    #[test]
    fn mutated_input_never_panics(
        bytes in mutated(
            (conversation(), mask()).prop_map(|(events, mask)| {
                tungstenite_bytes(&frames_of(&events, mask).0)
            })
        ),
        max in max_message(),
        cuts in cuts(),
    ) {
        let whole = Conn::whole(max, &bytes);
        let chunked = Conn::chunked(max, &bytes, &cuts);
        assert_same(&chunked, &whole, max);
    }

    /// A data frame that would take the message past the limit is refused from its header:
    /// no mask key or payload byte needed. One at the limit is waited for.
    #[test]
    fn limits_hold_from_the_header(
        max in 0u32..100_000,
        in_flight in any::<Index>(),
        over in prop_oneof![1u64..3, 1u64..1 << 40],
        mask in mask(),
    ) {
        let in_flight = in_flight.index(max as usize + 1);
        let mut bytes = Vec::new();
        let continues = in_flight > 0;
        if continues {
            ws::encode_client(&mut bytes, false, Opcode::Text, mask, &vec![b'a'; in_flight]);
        }
        let opcode = if continues { Opcode::Continuation } else { Opcode::Binary };
        let room = u64::from(max) - in_flight as u64;
        for (len, refused) in [(room + over, true), (room, false)] {
            let mut input = bytes.clone();
            input.push(0x80 | opcode as u8);
            match len {
                0..=125 => input.push(0x80 | len as u8),
                126..=0xffff => {
                    input.push(0x80 | 126);
                    input.extend((len as u16).to_be_bytes());
                }
                _ => {
                    input.push(0x80 | 127);
                    input.extend(len.to_be_bytes());
                }
            }
            let conn = Conn::whole(max, &input);
            if refused {
                prop_assert_eq!(conn.error.map(|e| e.code), Some(CloseCode::TooBig));
            } else {
                prop_assert_eq!(conn.error, None);
                prop_assert_eq!(conn.kept.len(), input.len() - bytes.len());
            }
        }
    }
}

// Close codes, one by one.

fn first_error(max: u32, frames: &[RawFrame]) -> ProtocolError {
    let conn = Conn::whole(max, &tungstenite_bytes(frames));
    conn.error.expect("an error")
}

fn frame(first: u8, payload: &[u8]) -> RawFrame {
    RawFrame {
        first,
        mask: Some([9, 8, 7, 6]),
        payload: payload.to_vec(),
    }
}

#[test]
fn protocol_errors_close_with_1002() {
    let unmasked = RawFrame {
        mask: None,
        ..frame(0x81, b"hi")
    };
    let cases: [(&str, Vec<RawFrame>); 9] = [
        ("unmasked", vec![unmasked]),
        ("rsv1", vec![frame(0xc1, b"")]),
        ("rsv3", vec![frame(0x91, b"")]),
        ("opcode 3", vec![frame(0x83, b"")]),
        ("opcode 0xb", vec![frame(0x8b, b"")]),
        ("fragmented ping", vec![frame(0x09, b"")]),
        ("126-byte pong", vec![frame(0x8a, &[0; 126])]),
        ("lone continuation", vec![frame(0x80, b"x")]),
        (
            "new message while fragmented",
            vec![frame(0x01, b"x"), frame(0x82, b"y")],
        ),
    ];
    for (name, frames) in cases {
        assert_eq!(
            first_error(1024, &frames).code,
            CloseCode::Protocol,
            "{name}"
        );
    }
    // A 64-bit length with its top bit set, header alone.
    let mut conn = Conn::new(u32::MAX);
    conn.read(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(conn.error.map(|e| e.code), Some(CloseCode::Protocol));
    // Close frames: one byte, or a code that may not be sent.
    assert_eq!(
        first_error(0, &[frame(0x88, b"\x03")]).code,
        CloseCode::Protocol
    );
    assert_eq!(
        first_error(0, &[frame(0x88, &1005u16.to_be_bytes())]).code,
        CloseCode::Protocol
    );
}

#[test]
fn bad_text_closes_with_1007() {
    assert_eq!(
        first_error(100, &[frame(0x81, b"\xc3\x28")]).code,
        CloseCode::BadPayload
    );
    let fragmented = [frame(0x01, "é".as_bytes()), frame(0x80, b"\xff")];
    assert_eq!(first_error(100, &fragmented).code, CloseCode::BadPayload);
    let reason = [frame(0x88, b"\x03\xe8\xff")];
    assert_eq!(first_error(100, &reason).code, CloseCode::BadPayload);
}

#[test]
fn too_big_closes_with_1009() {
    assert_eq!(
        first_error(10, &[frame(0x82, &[0; 11])]).code,
        CloseCode::TooBig
    );
    let fragments = [frame(0x02, &[0; 6]), frame(0x89, b""), frame(0x80, &[0; 5])];
    let conn = Conn::whole(10, &tungstenite_bytes(&fragments));
    assert_eq!(conn.messages, [Msg::Ping(vec![])]);
    assert_eq!(conn.error.map(|e| e.code), Some(CloseCode::TooBig));
}

#[test]
fn every_close_code_reaches_tungstenite() {
    let codes = [
        (CloseCode::Normal, TCloseCode::Normal),
        (CloseCode::GoingAway, TCloseCode::Away),
        (CloseCode::Protocol, TCloseCode::Protocol),
        (CloseCode::Unsupported, TCloseCode::Unsupported),
        (CloseCode::BadPayload, TCloseCode::Invalid),
        (CloseCode::Policy, TCloseCode::Policy),
        (CloseCode::TooBig, TCloseCode::Size),
        (CloseCode::Internal, TCloseCode::Error),
    ];
    for (ours, theirs) in codes {
        let mut bytes = Vec::new();
        ws::encode_close(&mut bytes, ours, "why");
        let pipe = Pipe {
            input: bytes.into(),
            output: Vec::new(),
        };
        let mut client = WebSocket::from_raw_socket(pipe, Role::Client, None);
        let expected = CloseFrame {
            code: theirs,
            reason: "why".into(),
        };
        assert_eq!(
            client.read().unwrap(),
            tungstenite::Message::Close(Some(expected))
        );
    }
}

// The handshake and a conversation over a real socket.

/// Serves one WebSocket connection on `listener` the way the reactor would: the handshake,
/// then echoes every text and binary message, answers pings, and echoes the close. Returns
/// the token the handshake found and the messages read.
fn serve_one(listener: TcpListener) -> (Option<String>, Vec<Msg>) {
    let (mut socket, _) = listener.accept().unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut input = Vec::new();
    let mut scratch = [0u8; 4096];
    let (token, head_len) = loop {
        let n = socket.read(&mut scratch).unwrap();
        assert!(n > 0, "closed during the handshake");
        input.extend_from_slice(&scratch[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(len) = request.parse(&input).unwrap() {
            let upgrade = UpgradeRequest::from_httparse(&request).unwrap();
            let mut response = Vec::new();
            let token = match ws::accept(&upgrade) {
                Ok(accepted) => {
                    accepted.write_response(&mut response);
                    accepted.token.map(|t| t.into_owned())
                }
                Err(rejected) => {
                    rejected.write_response(&mut response);
                    socket.write_all(&response).unwrap();
                    return (None, Vec::new());
                }
            };
            socket.write_all(&response).unwrap();
            break (token, len);
        }
    };
    input.drain(..head_len);

    let decoder = Decoder::server(1 << 20);
    let mut state = ReadState::default();
    let mut seen = Vec::new();
    loop {
        let mut used = 0;
        let mut out = Vec::new();
        let mut closed = false;
        while let (Some(message), n) = decoder.read(&mut state, &mut input[used..]).unwrap() {
            used += n;
            match &message {
                Message::Text(t) => ws::encode(&mut out, Opcode::Text, t.as_bytes()),
                Message::Binary(b) => ws::encode(&mut out, Opcode::Binary, b),
                Message::Ping(p) => ws::encode(&mut out, Opcode::Pong, p),
                Message::Pong(_) => {}
                Message::Close(_) => {
                    ws::encode_close(&mut out, CloseCode::Normal, "bye");
                    closed = true;
                }
            }
            seen.push(message.into());
            if closed {
                break;
            }
        }
        input.drain(..used);
        socket.write_all(&out).unwrap();
        if closed {
            return (token, seen);
        }
        let n = socket.read(&mut scratch).unwrap();
        assert!(n > 0, "closed without a close frame");
        input.extend_from_slice(&scratch[..n]);
    }
}

fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}{}", listener.local_addr().unwrap(), ws::PATH);
    (listener, url)
}

fn connect(request: impl tungstenite::client::IntoClientRequest) -> TcpStream {
    let request = request.into_client_request().unwrap();
    let authority = request.uri().authority().unwrap().as_str().to_owned();
    let socket = TcpStream::connect(authority).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    socket
}

#[test]
fn a_tungstenite_client_talks_to_the_server_side() {
    let (listener, url) = listener();
    let server = std::thread::spawn(move || serve_one(listener));

    let request = tungstenite::ClientRequestBuilder::new(url.parse().unwrap())
        .with_sub_protocol("plex")
        .with_sub_protocol("plex.token.abc.123");
    let socket = connect(request.clone());
    let (mut client, response) = tungstenite::client(request, socket).unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "plex");

    client.send(tungstenite::Message::text("hello")).unwrap();
    assert_eq!(client.read().unwrap(), tungstenite::Message::text("hello"));
    // A fragmented binary message with a ping between its fragments.
    let part =
        |data: &[u8], op, fin| tungstenite::Message::Frame(Frame::message(data.to_vec(), op, fin));
    use tungstenite::protocol::frame::coding::Data;
    client
        .write(part(&[1, 2], OpCode::Data(Data::Binary), false))
        .unwrap();
    client
        .write(tungstenite::Message::Ping(vec![7].into()))
        .unwrap();
    client
        .write(part(&[3], OpCode::Data(Data::Continue), true))
        .unwrap();
    client.flush().unwrap();
    assert_eq!(
        client.read().unwrap(),
        tungstenite::Message::Pong(vec![7].into())
    );
    assert_eq!(
        client.read().unwrap(),
        tungstenite::Message::binary(vec![1, 2, 3])
    );
    client
        .close(Some(CloseFrame {
            code: TCloseCode::Policy,
            reason: "done".into(),
        }))
        .unwrap();
    let close = client.read().unwrap();
    assert_eq!(
        close,
        tungstenite::Message::Close(Some(CloseFrame {
            code: TCloseCode::Normal,
            reason: "bye".into()
        }))
    );

    let (token, seen) = server.join().unwrap();
    assert_eq!(token.as_deref(), Some("abc.123"));
    assert_eq!(
        seen,
        [
            Msg::Text("hello".into()),
            Msg::Ping(vec![7]),
            Msg::Binary(vec![1, 2, 3]),
            Msg::Close(Some((1008, "done".into()))),
        ]
    );
}

#[test]
fn a_query_token_without_subprotocols() {
    let (listener, url) = listener();
    let server = std::thread::spawn(move || serve_one(listener));
    let request = format!("{url}?token=a%20b");
    let socket = connect(request.as_str());
    let (mut client, response) = tungstenite::client(request.as_str(), socket).unwrap();
    assert!(!response.headers().contains_key("Sec-WebSocket-Protocol"));
    client.close(None).unwrap();
    assert!(client.read().unwrap().is_close());
    let (token, _) = server.join().unwrap();
    assert_eq!(token.as_deref(), Some("a b"));
}

#[test]
fn a_wrong_path_is_refused_with_404() {
    let (listener, url) = listener();
    let server = std::thread::spawn(move || serve_one(listener));
    let request = url.replace(ws::PATH, "/elsewhere");
    let socket = connect(request.as_str());
    match tungstenite::client(request.as_str(), socket) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 404);
            // The body is whatever came with the head.
            let body = response.body().as_deref().unwrap_or_default();
            assert!(br#"{"error":"not found"}"#.starts_with(body), "{body:?}");
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    server.join().unwrap();
}
