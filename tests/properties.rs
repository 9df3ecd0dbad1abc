//! Property tests for the pure parts of the gateway: the frame codec, the message codec with
//! Go's `encoding/json` rules, the HTTP request parser and the timer wheel. Each property is
//! checked against a model or an equivalent one-piece computation, on generated inputs that
//! include the hostile ones (garbage, oversized headers, any chunking of a stream). The case
//! counts keep the whole file to a few seconds; `PROPTEST_CASES=100000` runs longer.
//! Failure persistence is off: a minimal failing input found here becomes a plain `#[test]`.

use std::collections::BTreeMap;

use plex::internals::{MAX_HEAD, MAX_HEADERS, Parsed, Request, TimerId, TimerWheel, parse_request};
use plex::protocol::frame::{self, HEADER_LEN};
use plex::protocol::{
    ByteOrder, Decoder, FrameTooLarge, Message, MessageRef, PushRequest, encode_message,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// `cases` unless `PROPTEST_CASES` asks for another count.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Chunking: how a stream arrives in reads.

/// Cuts `bytes` at the positions `cuts` pick (sorted; repeats give empty reads).
fn chunk<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for end in at {
        chunks.push(&bytes[start..end]);
        start = end;
    }
    chunks.push(&bytes[start..]);
    chunks
}

/// Random cut points, or one read per byte (the worst case for a remainder buffer).
fn cuts() -> impl Strategy<Value = Option<Vec<Index>>> {
    prop_oneof![
        4 => vec(any::<Index>(), 0..24).prop_map(Some),
        1 => Just(None),
    ]
}

fn reads<'a>(bytes: &'a [u8], cuts: &Option<Vec<Index>>) -> Vec<&'a [u8]> {
    match cuts {
        Some(cuts) => chunk(bytes, cuts),
        None => bytes.chunks(1).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Frames (PROTOCOL.md §1).

fn order() -> impl Strategy<Value = ByteOrder> {
    prop_oneof![Just(ByteOrder::Big), Just(ByteOrder::Little)]
}

fn header(order: ByteOrder, len: u32) -> [u8; HEADER_LEN] {
    match order {
        ByteOrder::Big => len.to_be_bytes(),
        ByteOrder::Little => len.to_le_bytes(),
    }
}

fn encoded(order: ByteOrder, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        frame::encode(&mut out, order, p);
    }
    out
}

/// What the server keeps of a connection's input, fed read by read the way `Reactor::ingest`
/// does: frames are cut straight from the read while no remainder is kept, otherwise from the
/// remainder with the read appended; only a partial frame is kept.
struct Stream {
    decoder: Decoder,
    input: Vec<u8>,
    frames: Vec<Vec<u8>>,
    error: Option<FrameTooLarge>,
    most_kept: usize,
}

impl Stream {
    fn new(decoder: Decoder) -> Self {
        Stream {
            decoder,
            input: Vec::new(),
            frames: Vec::new(),
            error: None,
            most_kept: 0,
        }
    }

    fn read(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return; // the connection is closed
        }
        if self.input.is_empty() {
            if let Some(used) = self.process(bytes) {
                self.input.extend_from_slice(&bytes[used..]);
            }
        } else {
            let mut input = std::mem::take(&mut self.input);
            input.extend_from_slice(bytes);
            if let Some(used) = self.process(&input) {
                input.drain(..used);
                self.input = input;
            }
        }
        self.most_kept = self.most_kept.max(self.input.len());
    }

    fn process(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut used = 0;
        loop {
            match self.decoder.decode(&bytes[used..]) {
                Ok(Some((payload, len))) => {
                    assert_eq!(len, HEADER_LEN + payload.len());
                    used += len;
                    self.frames.push(payload.to_vec());
                }
                Ok(None) => return Some(used),
                Err(e) => {
                    self.error = Some(e);
                    return None;
                }
            }
        }
    }
}

/// The frames (and the error, if any) of a whole stream decoded in one piece.
fn one_piece(decoder: Decoder, bytes: &[u8]) -> (Vec<Vec<u8>>, Option<FrameTooLarge>, usize) {
    let mut frames = decoder.frames(bytes);
    let mut payloads = Vec::new();
    let mut error = None;
    for f in frames.by_ref() {
        match f {
            Ok(p) => payloads.push(p.to_vec()),
            Err(e) => error = Some(e),
        }
    }
    (payloads, error, frames.consumed())
}

/// A stream a hostile or broken client might send: valid frames, garbage and oversized
/// headers, in any order.
fn hostile_stream(order: ByteOrder) -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        4 => vec(any::<u8>(), 0..100).prop_map(move |p| encoded(order, &[p])),
        1 => vec(any::<u8>(), 0..20),
        1 => (0u32..400).prop_map(move |len| header(order, len).to_vec()),
        1 => any::<u32>().prop_map(move |len| header(order, len).to_vec()),
    ];
    vec(segment, 0..12).prop_map(|segments| segments.concat())
}

/// The decoder's contract, written out: no header yet, a header over the limit, a partial
/// payload, or a frame.
fn decode_model(
    order: ByteOrder,
    max: u32,
    bytes: &[u8],
) -> Result<Option<(&[u8], usize)>, FrameTooLarge> {
    let Some(h) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = match order {
        ByteOrder::Big => u32::from_be_bytes(*h),
        ByteOrder::Little => u32::from_le_bytes(*h),
    };
    if len > max {
        return Err(FrameTooLarge { len, max });
    }
    let end = HEADER_LEN + len as usize;
    Ok(bytes.get(HEADER_LEN..end).map(|p| (p, end)))
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn frames_in_any_chunking_decode_as_in_one_piece(
        order in order(),
        payloads in vec(vec(any::<u8>(), 0..200), 0..16),
        cuts in cuts(),
    ) {
        let bytes = encoded(order, &payloads);
        let decoder = Decoder::new(order, 200);
        let (whole, error, consumed) = one_piece(decoder, &bytes);
        prop_assert_eq!(&whole, &payloads);
        prop_assert_eq!(error, None);
        prop_assert_eq!(consumed, bytes.len());

        let mut stream = Stream::new(decoder);
        for read in reads(&bytes, &cuts) {
            stream.read(read);
        }
        prop_assert_eq!(&stream.frames, &payloads);
        prop_assert_eq!(stream.error, None);
        prop_assert!(stream.input.is_empty());
        prop_assert!(stream.most_kept < HEADER_LEN + 200);
    }

    #[test]
    fn hostile_streams_decode_the_same_in_any_chunking_within_the_limit(
        (order, bytes) in order().prop_flat_map(|o| (Just(o), hostile_stream(o))),
        max in prop_oneof![0u32..300, Just(u32::MAX)],
        cuts in cuts(),
    ) {
        let decoder = Decoder::new(order, max);
        let (whole, error, consumed) = one_piece(decoder, &bytes);
        let mut stream = Stream::new(decoder);
        for read in reads(&bytes, &cuts) {
            stream.read(read);
        }
        prop_assert_eq!(&stream.frames, &whole);
        prop_assert_eq!(stream.error, error);
        if error.is_none() {
            prop_assert_eq!(&stream.input[..], &bytes[consumed..]);
        }
        // A connection never keeps more than a header and a partial payload within the limit.
        prop_assert!((stream.most_kept as u64) < HEADER_LEN as u64 + u64::from(max));
        if let Some(e) = error {
            // Rejected on the header alone: the payload it announces was never needed.
            let at: usize = whole.iter().map(|p| HEADER_LEN + p.len()).sum();
            let (_, early, _) = one_piece(decoder, &bytes[..at + HEADER_LEN]);
            prop_assert_eq!(early, Some(e));
        }
    }

    #[test]
    fn decode_follows_its_contract_on_any_bytes(
        order in order(),
        max in prop_oneof![0u32..600, any::<u32>()],
        bytes in prop_oneof![
            vec(any::<u8>(), 0..600).prop_map(|b| (None, b)),
            // A header at the limit (offset -2..=1) or a small length, in either byte
            // order, then anything.
            (prop_oneof![-2i32..=1, 2i32..600], any::<bool>(), vec(any::<u8>(), 0..600))
                .prop_map(|(len, le, tail)| (Some((len, le)), tail)),
        ],
    ) {
        let (around_limit, tail) = bytes;
        let bytes = match around_limit {
            None => tail,
            Some((offset, le)) => {
                // Offsets up to 1 land on the limit's boundary; larger ones are lengths.
                let len = match offset {
                    ..=1 => max.saturating_add_signed(offset),
                    _ => offset as u32,
                };
                [&header(ByteOrder::from_little_endian(le), len)[..], &tail].concat()
            }
        };
        let decoder = Decoder::new(order, max);
        prop_assert_eq!(decoder.decode(&bytes), decode_model(order, max, &bytes));
    }

    #[test]
    fn frame_encode_then_decode_is_the_identity(
        order in order(),
        payload in vec(any::<u8>(), 0..2000),
        trailing in vec(any::<u8>(), 0..10),
    ) {
        let mut bytes = encoded(order, std::slice::from_ref(&payload));
        prop_assert_eq!(bytes.len(), HEADER_LEN + payload.len());
        bytes.extend_from_slice(&trailing);
        let len = payload.len() as u32;
        // The limit is inclusive: a payload of exactly `max` bytes is accepted.
        let exact = Decoder::new(order, len).decode(&bytes);
        prop_assert_eq!(exact, Ok(Some((&payload[..], HEADER_LEN + payload.len()))));
        if len > 0 {
            let under = Decoder::new(order, len - 1).decode(&bytes);
            prop_assert_eq!(under, Err(FrameTooLarge { len, max: len - 1 }));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages (PROTOCOL.md §2).

/// Characters that stress JSON escaping and Go's key folding.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        2 => proptest::char::range('\0', '\u{7f}'),
        2 => select(vec![
            '"', '\\', '/', '\0', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}',
            '\u{80}', '\u{2028}', '\u{2029}', '\u{feff}', '\u{fffd}', 'ſ', '\u{212a}', '😀',
            '\u{10ffff}',
        ]),
    ]
}

fn text() -> impl Strategy<Value = String> {
    vec(tricky_char(), 0..40).prop_map(String::from_iter)
}

fn seq() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), Just(i64::MIN), Just(i64::MAX), any::<i64>()]
}

/// Writes `s` as a JSON string with every character as a `\u` escape (surrogate pairs past
/// the BMP), the way some encoders write non-ASCII.
fn escaped(s: &str) -> String {
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

fn json_string(s: &str, escape_all: bool) -> String {
    if escape_all {
        escaped(s)
    } else {
        serde_json::to_string(s).unwrap()
    }
}

/// One member of a generated message object.
#[derive(Clone, Debug)]
enum Member {
    Seq(Option<i64>),
    Uri(Option<String>),
    Body(Option<String>),
    /// A key that names no field (the key is beside the member), with any JSON value.
    Unknown(String),
}

/// Spells a field name the ways Go accepts: any ASCII case, and `ſ` for `s`.
fn spelling(field: &'static str) -> impl Strategy<Value = String> {
    vec((any::<bool>(), any::<bool>()), field.len()).prop_map(move |flips| {
        field
            .chars()
            .zip(flips)
            .map(|(c, (upper, long_s))| match c {
                's' if long_s => 'ſ',
                c if upper => c.to_ascii_uppercase(),
                c => c,
            })
            .collect()
    })
}

fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("-1.5e3".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        text().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            vec((text(), inner), 0..4).prop_map(|kv| {
                let members: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// A key no field matches: a near miss of a field name, or anything starting with `x`.
fn unknown_key() -> impl Strategy<Value = String> {
    prop_oneof![
        (select(vec!["seq", "uri", "body"]), tricky_char()).prop_map(|(f, c)| format!("{f}{c}")),
        select(vec!["se", "ur", "bod", "", "sequence", "s eq", "uid"]).prop_map(str::to_owned),
        text().prop_map(|t| format!("x{t}")),
    ]
}

fn member() -> impl Strategy<Value = (Member, String)> {
    let seq = (spelling("seq"), proptest::option::of(seq())).prop_map(|(k, v)| (Member::Seq(v), k));
    let uri =
        (spelling("uri"), proptest::option::of(text())).prop_map(|(k, v)| (Member::Uri(v), k));
    let body =
        (spelling("body"), proptest::option::of(text())).prop_map(|(k, v)| (Member::Body(v), k));
    let unknown = (unknown_key(), json_value()).prop_map(|(k, v)| (Member::Unknown(v), k));
    prop_oneof![seq, uri, body, unknown]
}

/// Writes the members as one JSON object, with varied whitespace and escaping.
fn object(members: &[(Member, String)], ws: &[&str], escape: &[bool]) -> String {
    let w = |i: usize| ws[i % ws.len()];
    let e = |i: usize| escape[i % escape.len()];
    let mut out = format!("{}{{", w(0));
    for (i, (member, key)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value = match member {
            Member::Seq(v) => v.map_or("null".to_owned(), |n| n.to_string()),
            Member::Uri(v) | Member::Body(v) => v
                .as_deref()
                .map_or("null".to_owned(), |s| json_string(s, e(i + 1))),
            Member::Unknown(v) => v.clone(),
        };
        let key = json_string(key, e(i));
        out.push_str(&format!(
            "{}{key}{}:{}{value}{}",
            w(i + 1),
            w(i + 2),
            w(i + 3),
            w(i)
        ));
    }
    out.push_str(&format!("}}{}", w(members.len() + 7)));
    out
}

/// Go's `encoding/json` reading into `{Seq int64; Uri, Body string}`: the last member naming
/// a field wins.
fn go_model(members: &[(Member, String)]) -> Message {
    let mut m = Message::default();
    for (member, _) in members {
        match member {
            Member::Seq(v) => m.seq = v.unwrap_or(0),
            Member::Uri(v) => m.uri = v.clone().unwrap_or_default(),
            Member::Body(v) => m.body = v.clone().unwrap_or_default(),
            Member::Unknown(..) => {}
        }
    }
    m
}

/// Whether a `null` follows an earlier value of the same field, where Go keeps the earlier
/// value and this decoder clears it (see `bug_null_after_a_value_clears_the_field`).
fn null_after_value(members: &[(Member, String)]) -> bool {
    let mut set = [false; 3];
    for (member, _) in members {
        let (i, is_null) = match member {
            Member::Seq(v) => (0, v.is_none()),
            Member::Uri(v) => (1, v.is_none()),
            Member::Body(v) => (2, v.is_none()),
            Member::Unknown(..) => continue,
        };
        if is_null && set[i] {
            return true;
        }
        set[i] |= !is_null;
    }
    false
}

/// Valid payloads with a few bytes flipped, inserted or cut off: near misses reach deeper
/// into the parser than random bytes do.
fn mutated(base: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        base,
        vec((any::<Index>(), any::<u8>(), 0u8..3), 0..4),
        any::<Index>(),
    )
        .prop_map(|(mut bytes, edits, cut)| {
            for (at, byte, kind) in edits {
                let i = at.index(bytes.len() + 1);
                match kind {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => {}
                }
            }
            let keep = cut.index(bytes.len() + 1).max(bytes.len() * 3 / 4);
            bytes.truncate(keep);
            bytes
        })
}

fn message_payload() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(member(), 0..6),
        vec(select(vec!["", " ", "\n\t ", "\r\n"]), 1..4),
        vec(any::<bool>(), 1..4),
    )
        .prop_map(|(members, ws, esc)| object(&members, &ws, &esc).into_bytes())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn message_encode_then_decode_is_the_identity(
        order in order(),
        seq in seq(),
        uri in text(),
        body in text(),
    ) {
        let message = Message { seq, uri, body };
        let mut out = Vec::new();
        message.encode(&mut out, order);
        let (payload, len) = Decoder::new(order, u32::MAX).decode(&out).unwrap().unwrap();
        prop_assert_eq!(len, out.len());
        prop_assert_eq!(Message::decode(payload).unwrap(), message.clone());

        // Written as Go writes it: lower-case keys, `seq` and `body` omitted when zero.
        let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec!["uri"];
        if message.seq != 0 { want.push("seq"); }
        if !message.body.is_empty() { want.push("body"); }
        want.sort_unstable();
        prop_assert_eq!(keys, want);

        let mut direct = Vec::new();
        encode_message(&mut direct, order, message.seq, &message.uri, &message.body);
        prop_assert_eq!(direct, out);
    }

    #[test]
    fn messages_are_read_with_go_rules(
        members in vec(member(), 0..8)
            .prop_filter("null after a value: a known divergence", |m| !null_after_value(m)),
        ws in vec(select(vec!["", " ", "\n\t ", "\r\n"]), 1..5),
        escape in vec(any::<bool>(), 1..5),
    ) {
        let payload = object(&members, &ws, &escape);
        let got = MessageRef::decode(payload.as_bytes());
        prop_assert!(got.is_ok(), "{payload:?}: {got:?}");
        prop_assert_eq!(got.unwrap().into_owned(), go_model(&members), "{:?}", payload);
    }

    #[test]
    fn push_request_to_json_then_decode_is_the_identity(
        uid in text(),
        uri in text(),
        body in text(),
    ) {
        let request = PushRequest { uid: uid.into(), uri: uri.into(), body: body.into() };
        let json = request.to_json();
        prop_assert_eq!(PushRequest::decode(&json).unwrap(), request);
    }

    #[test]
    fn any_bytes_are_a_message_or_an_error_never_a_panic(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..200),
            mutated(message_payload()),
        ],
    ) {
        if MessageRef::decode(&bytes).is_ok() {
            // Whatever is accepted is a JSON object, once invalid UTF-8 in values it ignores
            // is replaced (see `bug_invalid_utf8_in_an_ignored_value_is_accepted`).
            let value: Result<serde_json::Value, _> =
                serde_json::from_str(&String::from_utf8_lossy(&bytes));
            let shown = String::from_utf8_lossy(&bytes);
            prop_assert!(value.is_ok_and(|v| v.is_object()), "{:?}", shown);
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = PushRequest::decode(text);
        }
        let text = String::from_utf8_lossy(&bytes);
        if PushRequest::decode(&text).is_ok() {
            let value: Result<serde_json::Value, _> = serde_json::from_str(&text);
            prop_assert!(value.is_ok_and(|v| v.is_object()), "{text:?}");
        }
    }
}

/// Go's `encoding/json` leaves a field untouched when it reads `null` into a non-pointer
/// (`{"seq":5,"seq":null}` reads as seq 5); this decoder resets it to the zero value.
#[test]
#[ignore = "bug: a null after a value clears the field; Go leaves it (PROTOCOL.md §2)"]
fn bug_null_after_a_value_clears_the_field() {
    let m = MessageRef::decode(br#"{"seq":5,"uri":"/a","seq":null,"uri":null}"#).unwrap();
    assert_eq!((m.seq, &*m.uri), (5, "/a"));
}

/// PROTOCOL.md §2: "a payload that is not valid UTF-8 JSON ... is a bad frame". Invalid UTF-8
/// inside a string the decoder skips (the value of an unknown key) is not checked, so such a
/// frame is accepted. Nothing invalid reaches `uri` or `body`, and Go's `encoding/json` accepts
/// it too (it replaces invalid UTF-8 with U+FFFD), so either the code or the sentence is off.
#[test]
#[ignore = "bug: invalid UTF-8 in an ignored value is accepted, PROTOCOL.md §2 says bad frame"]
fn bug_invalid_utf8_in_an_ignored_value_is_accepted() {
    assert!(MessageRef::decode(b"{\"x\":\"\x80\",\"uri\":\"/a\"}").is_err());
}

// ---------------------------------------------------------------------------------------------
// HTTP requests (PROTOCOL.md §5).

/// A well-formed request and what `parse_request` must make of it.
#[derive(Clone, Debug)]
struct HttpRequest {
    method: String,
    path: String,
    query: Option<String>,
    http_1_0: bool,
    /// Other headers, none of them one the parser acts on.
    headers: Vec<(String, String)>,
    authorization: Option<String>,
    /// `Connection` value, and whether it holds the `close` token.
    connection: Option<(&'static str, bool)>,
    expect_continue: bool,
    body: Vec<u8>,
    /// Send `Content-Length: 0` for an empty body.
    explicit_empty_length: bool,
    lf_only: bool,
}

impl HttpRequest {
    /// The bytes on the wire and the length of the head.
    fn bytes(&self) -> (Vec<u8>, usize) {
        let eol = if self.lf_only { "\n" } else { "\r\n" };
        let mut head = format!("{} {}", self.method, self.path);
        if let Some(q) = &self.query {
            head.push_str(&format!("?{q}"));
        }
        let version = if self.http_1_0 { 0 } else { 1 };
        head.push_str(&format!(" HTTP/1.{version}{eol}"));
        let mut headers: Vec<(String, String)> = self.headers.clone();
        if let Some(a) = &self.authorization {
            headers.insert(headers.len() / 2, ("Authorization".into(), a.clone()));
        }
        if let Some((c, _)) = self.connection {
            headers.push(("connection".into(), c.into()));
        }
        if self.expect_continue {
            headers.insert(0, ("Expect".into(), "100-continue".into()));
        }
        if !self.body.is_empty() || self.explicit_empty_length {
            headers.push(("Content-Length".into(), self.body.len().to_string()));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}{eol}"));
        }
        head.push_str(eol);
        let head_len = head.len();
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        (bytes, head_len)
    }

    fn expected(&self) -> OwnedRequest {
        let close = self.http_1_0 || self.connection.is_some_and(|(_, close)| close);
        OwnedRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone().unwrap_or_default(),
            authorization: self.authorization.clone().map(String::into_bytes),
            body: self.body.clone(),
            keep_alive: !close,
            len: self.bytes().0.len(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct OwnedRequest {
    method: String,
    path: String,
    query: String,
    authorization: Option<Vec<u8>>,
    body: Vec<u8>,
    keep_alive: bool,
    len: usize,
}

impl From<&Request<'_>> for OwnedRequest {
    fn from(r: &Request<'_>) -> Self {
        OwnedRequest {
            method: r.method.into(),
            path: r.path.into(),
            query: r.query.into(),
            authorization: r.authorization.map(<[u8]>::to_vec),
            body: r.body.to_vec(),
            keep_alive: r.keep_alive,
            len: r.len,
        }
    }
}

/// Header names the parser acts on; generated extra headers avoid them.
const SPECIAL: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "authorization",
    "connection",
    "expect",
];

fn http_request(max_body: usize) -> impl Strategy<Value = HttpRequest> {
    let method = prop_oneof![
        select(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS"]).prop_map(str::to_owned),
        "[A-Z]{1,10}",
    ];
    let header = (
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}".prop_filter("parsed header", |n| {
            !SPECIAL.contains(&n.to_ascii_lowercase().as_str())
        }),
        "([!-~]([ !-~]{0,30}[!-~])?)?",
    );
    let connection = select(vec![
        ("close", true),
        ("keep-alive", false),
        ("Keep-Alive, CLOSE", true),
        ("upgrade", false),
        ("closed", false),
    ]);
    (
        (
            method,
            "/[A-Za-z0-9/._~%!$&'()*+,;=:@-]{0,40}",
            proptest::option::of("[A-Za-z0-9=&%+/?._-]{0,30}"),
        ),
        (any::<bool>(), vec(header, 0..8)),
        (
            proptest::option::of("Bearer [A-Za-z0-9._~+/-]{1,30}"),
            proptest::option::of(connection),
            any::<bool>(),
        ),
        (
            vec(any::<u8>(), 0..=max_body.min(64)),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (method, path, query),
                (http_1_0, headers),
                (authorization, connection, expect_continue),
                (body, explicit_empty_length, lf_only),
            )| HttpRequest {
                method,
                path,
                query,
                http_1_0,
                headers,
                authorization,
                connection,
                expect_continue,
                body,
                explicit_empty_length,
                lf_only,
            },
        )
}

/// A request line and headers without the end of the last line, for heads that do not end.
fn open_head() -> impl Strategy<Value = Vec<u8>> {
    http_request(0).prop_map(|r| {
        let (mut bytes, head_len) = r.bytes();
        bytes.truncate(head_len);
        while bytes.pop_if(|b| *b == b'\r' || *b == b'\n').is_some() {}
        bytes
    })
}

/// What the server keeps of an HTTP connection's input, like [`Stream`] for frames.
fn requests_in_reads(reads: &[&[u8]], max_body: usize) -> (Vec<OwnedRequest>, Option<u16>) {
    let mut input = Vec::new();
    let mut requests = Vec::new();
    for read in reads {
        input.extend_from_slice(read);
        let mut used = 0;
        loop {
            match parse_request(&input[used..], max_body) {
                Parsed::Complete(r) => {
                    used += r.len;
                    requests.push(OwnedRequest::from(&r));
                }
                Parsed::Partial { .. } => break,
                Parsed::Invalid(status, _) => return (requests, Some(status)),
            }
        }
        input.drain(..used);
    }
    (requests, None)
}

/// What any verdict must respect, whatever the input.
fn check_verdict(input: &[u8], max_body: usize, parsed: &Parsed<'_>) -> Result<(), TestCaseError> {
    match parsed {
        Parsed::Complete(r) => {
            prop_assert!(r.len <= input.len());
            prop_assert!(r.body.len() <= max_body);
            let head_len = r.len - r.body.len();
            prop_assert!(head_len <= MAX_HEAD);
            prop_assert_eq!(&input[head_len..r.len], r.body);
            prop_assert!(!r.path.contains('?'));
        }
        // Waiting for more never means holding more than a head and a body within the limits.
        Parsed::Partial { .. } => prop_assert!(input.len() <= MAX_HEAD + max_body),
        Parsed::Invalid(status, _) => prop_assert!([400, 411, 413, 431].contains(status)),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_request_is_partial_at_every_cut_until_complete(request in http_request(64)) {
        let (bytes, head_len) = request.bytes();
        for cut in 0..bytes.len() {
            let expects_continue = request.expect_continue && cut >= head_len;
            let want = Parsed::Partial { expects_continue };
            prop_assert_eq!(parse_request(&bytes[..cut], 64), want, "cut at {}", cut);
        }
        match parse_request(&bytes, 64) {
            Parsed::Complete(r) => prop_assert_eq!(OwnedRequest::from(&r), request.expected()),
            other => prop_assert!(false, "{:?} for {:?}", other, String::from_utf8_lossy(&bytes)),
        }
    }

    #[test]
    fn pipelined_requests_parse_back_to_back_in_any_chunking(
        requests in vec(http_request(64), 1..6),
        cuts in cuts(),
    ) {
        let bytes: Vec<u8> = requests.iter().flat_map(|r| r.bytes().0).collect();
        let want: Vec<OwnedRequest> = requests.iter().map(HttpRequest::expected).collect();
        let mut rest = &bytes[..];
        for expected in &want {
            match parse_request(rest, 64) {
                Parsed::Complete(r) => {
                    prop_assert_eq!(&OwnedRequest::from(&r), expected);
                    rest = &rest[r.len..];
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
        prop_assert_eq!(parse_request(rest, 64), Parsed::Partial { expects_continue: false });
        prop_assert_eq!(requests_in_reads(&reads(&bytes, &cuts), 64), (want, None));
    }

    #[test]
    fn any_bytes_get_a_bounded_verdict_that_more_bytes_do_not_change(
        input in prop_oneof![
            vec(any::<u8>(), 0..300),
            mutated(http_request(64).prop_map(|r| r.bytes().0)),
            (open_head(), vec(any::<u8>(), 0..MAX_HEAD + 100)).prop_map(|(h, t)| [h, t].concat()),
        ],
        max_body in prop_oneof![0usize..100, Just(1 << 20)],
        split in any::<Index>(),
    ) {
        let parsed = parse_request(&input, max_body);
        check_verdict(&input, max_body, &parsed)?;
        let prefix = &input[..split.index(input.len() + 1)];
        let early = parse_request(prefix, max_body);
        check_verdict(prefix, max_body, &early)?;
        // The server re-parses on each read, so a verdict must not depend on the chunking.
        match early {
            Parsed::Complete(r) => prop_assert_eq!(parsed, Parsed::Complete(r)),
            Parsed::Invalid(..) => {
                prop_assert!(matches!(parsed, Parsed::Invalid(..)), "{:?}", parsed)
            }
            Parsed::Partial { .. } => {}
        }
    }

    #[test]
    fn a_head_past_the_limit_is_refused_not_buffered(
        start in open_head(),
        filler in 1usize..=MAX_HEADERS,
        pad in 0usize..300,
        complete in any::<bool>(),
    ) {
        // Headers that keep a valid head growing past MAX_HEAD, with room left in MAX_HEADERS
        // only when `filler` is small.
        let mut head = start;
        let value_len = MAX_HEAD / filler + pad;
        let mut i = 0;
        while head.len() <= MAX_HEAD {
            head.extend_from_slice(format!("\r\nX-Fill-{i}: {}", "v".repeat(value_len)).as_bytes());
            i += 1;
        }
        if complete {
            head.extend_from_slice(b"\r\n\r\n");
        }
        prop_assert!(matches!(parse_request(&head, 1024), Parsed::Invalid(431, _)));
        // Exactly at the limit it may still be partial (or already too many headers), never
        // complete.
        let at_limit = parse_request(&head[..MAX_HEAD], 1024);
        prop_assert!(
            matches!(
                at_limit,
                Parsed::Partial { expects_continue: false } | Parsed::Invalid(431, _)
            ),
            "{:?}", at_limit
        );
        prop_assert!(matches!(parse_request(&head[..MAX_HEAD + 1], 1024), Parsed::Invalid(431, _)));
    }

    #[test]
    fn a_body_over_the_limit_is_refused_before_it_arrives(
        request in http_request(0),
        max_body in 0usize..1000,
        over in 1usize..1000,
        body_sent in 0usize..100,
    ) {
        let (bytes, head_len) = request.bytes();
        let mut head = bytes[..head_len].to_vec();
        let eol = if request.lf_only { "\n" } else { "\r\n" };
        let blank = head.len() - eol.len();
        head.truncate(blank);
        let declared = max_body + over;
        head.extend_from_slice(format!("Content-Length: {declared}{eol}{eol}").as_bytes());
        if !request.body.is_empty() || request.explicit_empty_length {
            // The generated request already declared 0: a conflicting length is a 400.
            prop_assert!(matches!(parse_request(&head, max_body), Parsed::Invalid(400, _)));
        } else {
            head.extend(std::iter::repeat_n(b'b', body_sent));
            prop_assert!(matches!(parse_request(&head, max_body), Parsed::Invalid(413, _)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The timer wheel.

#[derive(Clone, Debug)]
enum Op {
    /// A deadline `delta` ticks after the next unprocessed tick.
    Insert(u64),
    /// A deadline `delta` ticks before it: already due.
    InsertPast(u64),
    Cancel(Index),
    /// Advance to `delta - 1` ticks after the next unprocessed tick: 0 repeats the last tick.
    Advance(u64),
    /// Advance to a tick already processed: time does not go backwards.
    AdvanceBack(u64),
    NextBusyTick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let delta = prop_oneof![0u64..8, 0u64..200, 0u64..5000, Just(1 << 40)];
    let jump = prop_oneof![0u64..4, 0u64..100, 0u64..10_000, Just(1 << 40)];
    prop_oneof![
        6 => delta.prop_map(Op::Insert),
        1 => (0u64..100).prop_map(Op::InsertPast),
        2 => any::<Index>().prop_map(Op::Cancel),
        4 => jump.prop_map(Op::Advance),
        1 => (0u64..10).prop_map(Op::AdvanceBack),
        1 => (0u64..200).prop_map(Op::NextBusyTick),
    ]
}

/// The wheel's contract: a timer fires once, at the first `advance(to)` with `to` at or past
/// its deadline and at or past the first unprocessed tick (a deadline already past fires on
/// the next advance that moves time on).
struct Model {
    /// The next tick to process.
    now: u64,
    /// value → (deadline, id).
    pending: BTreeMap<u32, (u64, TimerId)>,
    next_value: u32,
}

fn run_timer_ops(slots: usize, start: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut wheel = TimerWheel::new(slots, start);
    let revolution = slots.max(1).next_power_of_two() as u64;
    let mut model = Model {
        now: start,
        pending: BTreeMap::new(),
        next_value: 0,
    };
    let mut expired = Vec::new();
    let mut advance = |wheel: &mut TimerWheel<u32>, model: &mut Model, to: u64| {
        expired.clear();
        wheel.advance(to, &mut expired);
        expired.sort_unstable();
        let mut due = Vec::new();
        if to >= model.now {
            due = (model.pending.iter())
                .filter(|(_, (deadline, _))| *deadline <= to)
                .map(|(v, _)| *v)
                .collect();
            for v in &due {
                model.pending.remove(v);
            }
            model.now = to + 1;
        }
        prop_assert_eq!(&expired, &due, "advance to {}", to);
        Ok(())
    };
    for op in ops {
        match *op {
            Op::Insert(_) | Op::InsertPast(_) => {
                let deadline = match *op {
                    Op::Insert(d) => model.now + d,
                    Op::InsertPast(d) => model.now.saturating_sub(d),
                    _ => unreachable!(),
                };
                let value = model.next_value;
                model.next_value += 1;
                let id = wheel.insert(deadline, value);
                prop_assert!(!id.is_none());
                model.pending.insert(value, (deadline.max(model.now), id));
            }
            Op::Cancel(i) => {
                if !model.pending.is_empty() {
                    let value = *model
                        .pending
                        .keys()
                        .nth(i.index(model.pending.len()))
                        .unwrap();
                    let (_, id) = model.pending.remove(&value).unwrap();
                    prop_assert_eq!(wheel.cancel(id), value);
                }
            }
            Op::Advance(d) => {
                let to = (model.now + d).saturating_sub(1);
                advance(&mut wheel, &mut model, to)?
            }
            Op::AdvanceBack(d) => {
                let to = model.now.saturating_sub(1 + d);
                advance(&mut wheel, &mut model, to)?
            }
            Op::NextBusyTick(horizon) => {
                let got = wheel.next_busy_tick(horizon);
                let first_due = model.pending.values().map(|(d, _)| *d).min();
                let window = horizon.min(revolution);
                match (got, first_due) {
                    (None, None) => {}
                    (Some(_), None) => prop_assert!(false, "a busy tick on an empty wheel"),
                    (None, Some(first)) => prop_assert!(first >= model.now + window),
                    (Some(t), Some(first)) => {
                        // A hint to sleep until: within the window, and nothing due before it.
                        prop_assert!(model.now <= t && t < model.now + window);
                        prop_assert!(t <= first, "busy tick {} after a deadline {}", t, first);
                        prop_assert!(
                            model
                                .pending
                                .values()
                                .any(|(d, _)| d % revolution == t % revolution)
                        );
                    }
                }
            }
        }
    }
    // Everything left fires exactly once on a jump past the last deadline.
    let last = model
        .pending
        .values()
        .map(|(d, _)| *d)
        .max()
        .unwrap_or(model.now);
    let to = last.max(model.now) + revolution;
    advance(&mut wheel, &mut model, to)?;
    prop_assert!(model.pending.is_empty());
    expired.clear();
    wheel.advance(model.now + 3 * revolution, &mut expired);
    prop_assert!(expired.is_empty(), "fired twice: {:?}", expired);
    prop_assert_eq!(wheel.next_busy_tick(u64::MAX), None);
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn the_timer_wheel_fires_each_timer_once_at_its_tick(
        slots in prop_oneof![1usize..=64, Just(4usize), Just(64usize), Just(4096usize)],
        start in prop_oneof![0u64..100, Just(1u64 << 41)],
        ops in vec(op(), 0..120),
    ) {
        run_timer_ops(slots, start, &ops)?;
    }
}

/// `advance(u64::MAX)` overflows `to - now + 1` and `to + 1`: a panic in debug builds, and in
/// release nothing fires and the wheel's time wraps to 0. The reactor's ticks (100 ms since
/// start) never get there; a caller passing "fire everything" as `u64::MAX` would.
#[test]
#[ignore = "bug: TimerWheel::advance(u64::MAX) overflows (debug panic, release fires nothing)"]
fn bug_advance_to_u64_max_fires_everything() {
    let mut wheel = TimerWheel::new(8, 0);
    wheel.insert(5, 1u32);
    let mut expired = Vec::new();
    wheel.advance(u64::MAX, &mut expired);
    assert_eq!(expired, vec![1]);
}
