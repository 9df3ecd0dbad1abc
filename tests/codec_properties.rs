//! Property tests of the codec: frames (PROTOCOL.md §1) in any chunking, and messages
//! (§2) read with Go's `encoding/json` rules. Each property is checked against a model or an equivalent one-piece
//! computation, on generated inputs that include the hostile ones. The case counts keep the
//! file to a few seconds; `PROPTEST_CASES=100000` runs longer. Failure persistence is off: a
//! minimal failing input found here becomes a plain `#[test]`.

mod common;

use common::chunks::{config, cuts, mutated, reads};
use plex::internals::feed;
use plex::protocol::frame::{self, HEADER_LEN};
use plex::protocol::{
    ByteOrder, Decoder, FrameTooLarge, Message, MessageRef, PushRequest, encode_message,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

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

/// What the server keeps of a connection's input, fed read by read through the reactor's own
/// `feed` (the remainder logic every connection uses), with a frame loop like the reactor's:
/// only a partial frame is kept.
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
        let mut input = std::mem::take(&mut self.input);
        feed(&mut input, &mut bytes.to_vec(), |data| self.process(data));
        self.input = input;
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

// Messages (PROTOCOL.md §2).

/// Characters that stress JSON escaping and Go's key folding.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        2 => proptest::char::range('\0', '\u{7f}'),
        2 => select(vec![
            '"', '\\', '/', '\0', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}',
            '\u{80}', '<', '>', '&', '\u{2027}', '\u{2028}', '\u{2029}', '\u{feff}', '\u{fffd}', 'ſ', '\u{212a}', '😀',
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
        // `null` (None) into a plain Go field has no effect.
        match member {
            Member::Seq(Some(v)) => m.seq = *v,
            Member::Uri(Some(v)) => m.uri = v.clone(),
            Member::Body(Some(v)) => m.body = v.clone(),
            _ => {}
        }
    }
    m
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
    fn frames_are_written_byte_for_byte_as_go_writes_them(
        seq in seq(),
        uri in text(),
        body in text(),
    ) {
        #[derive(serde::Serialize)]
        struct Wire<'b> {
            #[serde(skip_serializing_if = "is_zero")]
            seq: i64,
            uri: &'b str,
            #[serde(skip_serializing_if = "str::is_empty")]
            body: &'b str,
        }
        fn is_zero(n: &i64) -> bool {
            *n == 0
        }
        let mut ours = Vec::new();
        encode_message(&mut ours, ByteOrder::Big, seq, &uri, &body);
        // Go's encoding/json (the original server's writer) is serde_json's output with its
        // HTML-safe escapes; those characters stand only inside strings there.
        let theirs = serde_json::to_string(&Wire { seq, uri: &uri, body: &body })
            .unwrap()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029");
        prop_assert_eq!(String::from_utf8_lossy(&ours[HEADER_LEN..]), theirs);
    }

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
        members in vec(member(), 0..8),
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
            // Whatever is accepted is UTF-8 throughout and a JSON object.
            let shown = String::from_utf8_lossy(&bytes);
            let text = std::str::from_utf8(&bytes);
            prop_assert!(text.is_ok(), "{:?}", shown);
            let value: Result<serde_json::Value, _> = serde_json::from_str(text.unwrap());
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

/// Go's `encoding/json` leaves a field untouched when it reads `null` into a non-pointer:
/// `{"seq":5,"seq":null}` reads as seq 5. (Found by `messages_are_read_with_go_rules`.)
#[test]
fn a_null_after_a_value_keeps_the_value() {
    let m = MessageRef::decode(br#"{"seq":5,"uri":"/a","seq":null,"uri":null}"#).unwrap();
    assert_eq!((m.seq, &*m.uri), (5, "/a"));
}

/// PROTOCOL.md §2: "a payload that is not valid UTF-8 JSON ... is a bad frame", including
/// invalid UTF-8 inside a value the decoder skips (the value of an unknown key).
#[test]
fn invalid_utf8_in_an_ignored_value_is_a_bad_frame() {
    assert!(MessageRef::decode(b"{\"x\":\"\x80\",\"uri\":\"/a\"}").is_err());
}
