//! The message object `{"seq", "uri", "body"}` and the push request carried in the body of
//! `/logic/send/msg`, read the way Go's `encoding/json` reads them (the original server and
//! its SDKs are Go and Java) and written the way Go writes them with `omitempty`.
//!
//! Reading borrows from the frame wherever the JSON string has no escapes, so the common
//! frame costs no allocation.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::frame::{self, ByteOrder};

/// One protocol message, owned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub seq: i64,
    pub uri: String,
    pub body: String,
}

impl Message {
    pub fn new(uri: impl Into<String>, body: impl Into<String>) -> Self {
        Message {
            seq: 0,
            uri: uri.into(),
            body: body.into(),
        }
    }

    /// Reads a frame payload with Go's rules (see [`MessageRef::decode`]).
    pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
        MessageRef::decode(payload).map(MessageRef::into_owned)
    }

    /// Appends this message as one frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>, order: ByteOrder) {
        encode_message(out, order, self.seq, &self.uri, &self.body);
    }
}

/// One protocol message borrowing its strings from the frame it was read from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageRef<'a> {
    pub seq: i64,
    pub uri: Cow<'a, str>,
    pub body: Cow<'a, str>,
    /// Its place in the uid's history (PROTOCOL.md §9): a push's, or the last a resuming
    /// client received; absent as 0 and "".
    pub position: Position<'a>,
}

/// A place in a uid's history: the `offset` of a push under the history's `epoch`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position<'a> {
    pub offset: u64,
    pub epoch: Cow<'a, str>,
}

impl Position<'_> {
    pub fn is_none(&self) -> bool {
        self.offset == 0 && self.epoch.is_empty()
    }
}

impl<'a> MessageRef<'a> {
    /// Reads a frame payload: a JSON object whose keys match `seq`, `uri` and `body` without
    /// regard to case, whose unknown keys are ignored and whose `null` values mean absent.
    /// Anything else (not UTF-8, not JSON, not an object, a field of the wrong type) is an
    /// error: a bad frame.
    pub fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        RawMessage::decode(payload).map(RawMessage::into_ref)
    }

    pub fn into_owned(self) -> Message {
        Message {
            seq: self.seq,
            uri: self.uri.into_owned(),
            body: self.body.into_owned(),
        }
    }
}

/// A message as the server reads it: like [`MessageRef`], but the body is left as it stands in
/// the frame, escapes and all, until someone needs it, so that a push body (JSON inside a JSON
/// string, escaped throughout) can be unescaped into a buffer the reader reuses instead of a
/// new allocation per frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawMessage<'a> {
    pub seq: i64,
    pub uri: Cow<'a, str>,
    pub body: RawStr<'a>,
    pub position: Position<'a>,
}

impl<'a> RawMessage<'a> {
    pub fn into_ref(self) -> MessageRef<'a> {
        MessageRef {
            seq: self.seq,
            uri: self.uri,
            body: self.body.to_cow(),
            position: self.position,
        }
    }

    pub fn into_owned(self) -> Message {
        Message {
            seq: self.seq,
            uri: self.uri.into_owned(),
            body: self.body.to_cow().into_owned(),
        }
    }

    /// Reads a frame payload with the rules of [`MessageRef::decode`].
    pub fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        // The whole payload must be UTF-8, ignored values included: `from_slice` would skip
        // over invalid bytes inside a value nobody reads.
        let text = std::str::from_utf8(payload).map_err(DecodeError::NotUtf8)?;
        let mut de = serde_json::Deserializer::from_str(text);
        let message = de.deserialize_map(GoVisitor::<RawMessage>(PhantomData))?;
        de.end()?;
        Ok(message)
    }
}

/// A string value as it stands in a frame: the content of a JSON string between its quotes,
/// still escaped, or a protobuf string, which needs no unescaping. Only well-formed JSON
/// strings are made into one (escapes checked, surrogates paired), so unescaping cannot fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawStr<'a> {
    text: &'a str,
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// A value that is already plain text.
    pub fn plain(text: &'a str) -> Self {
        RawStr {
            text,
            escaped: false,
        }
    }

    /// The value, borrowed when there is nothing to unescape.
    pub fn to_cow(self) -> Cow<'a, str> {
        if self.escaped && self.text.contains('\\') {
            let mut value = String::with_capacity(self.text.len());
            self.unescape_into(&mut value);
            Cow::Owned(value)
        } else {
            Cow::Borrowed(self.text)
        }
    }

    /// The value, written into `buf` (cleared first) and borrowed from it, or borrowed as it
    /// stands when there is nothing to unescape.
    pub fn unescape_into<'b>(self, buf: &'b mut String) -> &'b str
    where
        'a: 'b,
    {
        if !self.escaped || !self.text.contains('\\') {
            return self.text;
        }
        buf.clear();
        let mut rest = self.text;
        while let Some(at) = rest.find('\\') {
            buf.push_str(&rest[..at]);
            let (ch, len) = unescape_one(&rest[at..]).expect("checked when it was read");
            buf.push(ch);
            rest = &rest[at + len..];
        }
        buf.push_str(rest);
        buf
    }

    /// Whether every `\u` escape is a valid code point or a valid surrogate pair (serde_json
    /// checks the escapes' syntax, not that).
    fn surrogates_paired(raw: &str) -> bool {
        let mut rest = raw;
        while let Some(at) = rest.find('\\') {
            match unescape_one(&rest[at..]) {
                Some((_, len)) => rest = &rest[at + len..],
                None => return false,
            }
        }
        true
    }
}

/// Decodes the escape at the start of `s` (which starts with a backslash): the character and
/// how many bytes the escape takes; `None` for a lone or unpaired surrogate.
fn unescape_one(s: &str) -> Option<(char, usize)> {
    let b = s.as_bytes();
    let simple = match b.get(1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let hex = |at: usize| u32::from_str_radix(s.get(at..at + 4)?, 16).ok();
            let first = hex(2)?;
            return match first {
                0xD800..=0xDBFF if s.get(6..8) == Some("\\u") => {
                    let second = hex(8).filter(|c| (0xDC00..=0xDFFF).contains(c))?;
                    let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                    Some((char::from_u32(code)?, 12))
                }
                _ => Some((char::from_u32(first)?, 6)),
            };
        }
        _ => return None,
    };
    Some((simple, 2))
}

impl<'de> Deserialize<'de> for RawStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de serde_json::value::RawValue>::deserialize(d)?.get();
        let content = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .ok_or_else(|| {
                de::Error::invalid_type(de::Unexpected::Other("not a string"), &"a string")
            })?;
        if content.contains("\\u") && !RawStr::surrogates_paired(content) {
            return Err(de::Error::custom("unpaired surrogate in a \\u escape"));
        }
        Ok(RawStr {
            text: content,
            escaped: true,
        })
    }
}

/// The body of `/logic/send/msg`: which uid gets which message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushRequest<'a> {
    pub uid: Cow<'a, str>,
    pub uri: Cow<'a, str>,
    pub body: Cow<'a, str>,
}

impl<'a> PushRequest<'a> {
    /// Reads the push body with the same Go rules as [`MessageRef::decode`].
    pub fn decode(text: &'a str) -> Result<Self, DecodeError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let request = de.deserialize_map(GoVisitor::<PushRequest>(PhantomData))?;
        de.end()?;
        Ok(request)
    }

    /// The body of a `/logic/send/msg` frame, as the Go client writes it (`omitempty`).
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Wire<'b> {
            #[serde(skip_serializing_if = "str::is_empty")]
            uid: &'b str,
            #[serde(skip_serializing_if = "str::is_empty")]
            body: &'b str,
            #[serde(skip_serializing_if = "str::is_empty")]
            uri: &'b str,
        }
        serde_json::to_string(&Wire {
            uid: &self.uid,
            body: &self.body,
            uri: &self.uri,
        })
        .expect("strings always serialize")
    }
}

/// A payload that is not a well-formed message.
#[derive(Debug)]
pub enum DecodeError {
    NotUtf8(std::str::Utf8Error),
    Json(serde_json::Error),
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        DecodeError::Json(e)
    }
}

/// Says what is wrong with a payload without quoting any of it: serde_json's own messages
/// quote values, and a frame's values may be tokens or passwords.
impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotUtf8(e) => {
                write!(f, "bad message: not UTF-8 after {} bytes", e.valid_up_to())
            }
            DecodeError::Json(e) => write!(f, "bad message: {}", describe_json_error(e)),
        }
    }
}

/// A serde_json error as a log line may show it: its kind and position, never the input.
pub fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Syntax => "not valid JSON",
        Category::Data => "not a message object with string uri and body and integer seq",
        Category::Eof => "JSON cut short",
        Category::Io => "unreadable",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

impl std::error::Error for DecodeError {}

/// Appends `{seq, uri, body}` as one frame to `out` (see [`write_message`]).
pub fn encode_message(out: &mut Vec<u8>, order: ByteOrder, seq: i64, uri: &str, body: &str) {
    frame::encode_with(out, order, |out| write_message(out, seq, uri, body));
}

/// Appends `{seq, uri, body}` as a payload (no header) to `out`, omitting `seq` when 0 and
/// `body` when empty as Go's `omitempty` does. Written by hand, byte for byte what serde_json
/// writes: this runs once per push, and most of a push's bytes need no escaping.
pub fn write_message(out: &mut Vec<u8>, seq: i64, uri: &str, body: &str) {
    write_message_at(out, seq, uri, body, &Position::default());
}

/// [`write_message`] with the message's place in its uid's history, as two more fields
/// `offset` and `epoch` (omitted when absent, so the frame is then the original's).
pub fn write_message_at(out: &mut Vec<u8>, seq: i64, uri: &str, body: &str, at: &Position) {
    out.push(b'{');
    if seq != 0 {
        out.extend_from_slice(b"\"seq\":");
        write_i64(out, seq);
        out.push(b',');
    }
    out.extend_from_slice(b"\"uri\":");
    write_json_str(out, uri);
    if !body.is_empty() {
        out.extend_from_slice(b",\"body\":");
        write_json_str(out, body);
    }
    if at.offset != 0 {
        out.extend_from_slice(b",\"offset\":");
        write_i64(out, at.offset as i64);
    }
    if !at.epoch.is_empty() {
        out.extend_from_slice(b",\"epoch\":");
        write_json_str(out, &at.epoch);
    }
    out.push(b'}');
}

fn write_i64(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it (the original server's
/// frames, byte for byte): `"`, `\` and control characters escaped, and also `<`, `>`, `&`,
/// U+2028 and U+2029 (Go's HTML-safe escaping), so captures and caches keyed on bytes match.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
    } else {
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let (escape, len): ([u8; 6], usize) = match b {
                b'"' => (*b"\\\"    ", 2),
                b'\\' => (*b"\\\\    ", 2),
                b'\n' => (*b"\\n    ", 2),
                b'\r' => (*b"\\r    ", 2),
                b'\t' => (*b"\\t    ", 2),
                0x08 => (*b"\\b    ", 2),
                0x0c => (*b"\\f    ", 2),
                c if c < 0x20 || c == b'<' || c == b'>' || c == b'&' => {
                    let hex = [HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]];
                    ([b'\\', b'u', b'0', b'0', hex[0], hex[1]], 6)
                }
                0xe2 if bytes.get(i + 1) == Some(&0x80)
                    && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
                {
                    let last = if bytes[i + 2] == 0xa8 { b'8' } else { b'9' };
                    out.extend_from_slice(&bytes[start..i]);
                    out.extend_from_slice(&[b'\\', b'u', b'2', b'0', b'2', last]);
                    i += 3;
                    start = i;
                    continue;
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(&escape[..len]);
            i += 1;
            start = i;
        }
        out.extend_from_slice(&bytes[start..]);
    }
    out.push(b'"');
}

/// Whether any byte may need escaping (`"`, `\`, a control character, `<`, `>`, `&`, or the
/// first byte of U+2028/U+2029), checked eight bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // High bit set in the bytes below `n` (n <= 128; exact as a yes-or-no).
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS;
    let equal = |w: u64, b: u8| below(w ^ (ONES * u64::from(b)), 1);
    let special = |b: &u8| *b < 0x20 || b"\"\\<>&\xe2".contains(b);
    let mut chunks = bytes.chunks_exact(8);
    chunks.by_ref().any(|chunk| {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let any = below(w, 0x20) | equal(w, b'"') | equal(w, b'\\') | equal(w, b'<');
        any | equal(w, b'>') | equal(w, b'&') | equal(w, 0xe2) != 0
    }) || chunks.remainder().iter().any(special)
}

/// The `seq` of frames the server sends: strictly increasing and close to the Unix time in
/// milliseconds, `seq = max(now_ms, previous + 1)`.
#[derive(Debug, Default)]
pub struct SeqClock {
    last: i64,
}

impl SeqClock {
    pub fn next(&mut self, now_ms: i64) -> i64 {
        self.last = now_ms.max(self.last + 1);
        self.last
    }
}

/// Whether a JSON key names `field` under Go's rules: ASCII case folding, plus the two
/// non-ASCII runes whose fold orbit holds an ASCII letter (`ſ` ~ `s`, Kelvin `K` ~ `k`).
fn key_matches(key: &str, field: &str) -> bool {
    let mut want = field.bytes();
    for c in key.chars() {
        let folded = match c {
            '\u{17f}' => b's',
            '\u{212a}' => b'k',
            c if c.is_ascii() => (c as u8).to_ascii_lowercase(),
            _ => return false,
        };
        if want.next() != Some(folded) {
            return false;
        }
    }
    want.next().is_none()
}

/// A struct read field by field under Go's rules; `set` reads the value of field `index`.
trait GoObject<'de>: Default {
    const FIELDS: &'static [&'static str];
    fn set<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error>;
}

struct GoVisitor<T>(PhantomData<T>);

impl<'de, T: GoObject<'de>> Visitor<'de> for GoVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut object = T::default();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            // Duplicate keys: the last one wins, as in Go.
            match T::FIELDS.iter().position(|f| key_matches(&key.0, f)) {
                Some(index) => object.set(index, &mut map)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(object)
    }
}

impl<'de> GoObject<'de> for RawMessage<'de> {
    const FIELDS: &'static [&'static str] = &["seq", "uri", "body", "offset", "epoch"];

    fn set<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => set_unless_null(&mut self.seq, map.next_value()?),
            1 => set_unless_null(&mut self.uri, next_str(map)?),
            2 => set_unless_null(&mut self.body, map.next_value()?),
            3 => set_unless_null(&mut self.position.offset, map.next_value()?),
            _ => set_unless_null(&mut self.position.epoch, next_str(map)?),
        }
        Ok(())
    }
}

impl<'de> GoObject<'de> for PushRequest<'de> {
    const FIELDS: &'static [&'static str] = &["uid", "uri", "body"];

    fn set<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        let field = match index {
            0 => &mut self.uid,
            1 => &mut self.uri,
            _ => &mut self.body,
        };
        set_unless_null(field, next_str(map)?);
        Ok(())
    }
}

/// Go's rule for `null` in a plain field: it has no effect, so an absent field stays at its
/// zero value and an earlier duplicate key keeps its value.
fn set_unless_null<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// A string value, `None` for `null`.
fn next_str<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<Cow<'de, str>>, A::Error> {
    Ok(map.next_value::<Option<Str<'de>>>()?.map(|s| s.0))
}

/// A JSON string borrowed from the input when it has no escapes. (`Cow<str>`'s own
/// `Deserialize` always allocates.)
struct Str<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(StrVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<MessageRef<'_>, DecodeError> {
        MessageRef::decode(s.as_bytes())
    }

    #[test]
    fn reads_all_fields() {
        let m = decode(r#"{"seq": 17, "uri": "/auth/server", "body": "tok"}"#).unwrap();
        assert_eq!((m.seq, &*m.uri, &*m.body), (17, "/auth/server", "tok"));
    }

    #[test]
    fn keys_match_case_insensitively_like_go() {
        let m = decode(r#"{"SEQ": 1, "Uri": "/x", "bOdY": "b"}"#).unwrap();
        assert_eq!((m.seq, &*m.uri, &*m.body), (1, "/x", "b"));
        // Go folds U+017F (long s) to 's'.
        assert_eq!(decode(r#"{"ſeq": 5, "uri": "/x"}"#).unwrap().seq, 5);
        assert_eq!(decode(r#"{"uris": "/x"}"#).unwrap().uri, "");
    }

    #[test]
    fn absent_and_null_fields_are_zero_values() {
        let m = decode(r#"{"uri": "/heartbeat", "seq": null, "body": null}"#).unwrap();
        assert_eq!((m.seq, &*m.uri, &*m.body), (0, "/heartbeat", ""));
        assert_eq!(decode("{}").unwrap(), MessageRef::default());
    }

    #[test]
    fn unknown_keys_are_ignored_whatever_their_type() {
        let m = decode(r#"{"x": [1, {"y": null}], "uri": "/a", "z": 1.5}"#).unwrap();
        assert_eq!(m.uri, "/a");
    }

    #[test]
    fn last_duplicate_key_wins() {
        assert_eq!(decode(r#"{"uri": "/a", "URI": "/b"}"#).unwrap().uri, "/b");
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let m = decode(r#"{"uri": "/a", "body": "plain"}"#).unwrap();
        assert!(matches!(m.body, Cow::Borrowed(_)));
        let m = decode(r#"{"uri": "/a", "body": "line\nbreak"}"#).unwrap();
        assert_eq!(m.body, "line\nbreak");
    }

    #[test]
    fn malformed_payloads_are_errors() {
        for bad in [
            "",
            "not json",
            "[]",
            "\"str\"",
            "null",
            r#"{"uri": 5}"#,
            r#"{"seq": "5"}"#,
            r#"{"seq": 1.5}"#,
            r#"{"seq": 99999999999999999999}"#,
            r#"{"uri": "/a"} trailing"#,
            r#"{"uri": "/a""#,
        ] {
            assert!(decode(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(MessageRef::decode(b"{\"uri\": \"\xff\"}").is_err());
        // Invalid bytes in a value that is skipped make the frame bad all the same.
        assert!(MessageRef::decode(b"{\"uri\": \"/a\", \"x\": \"\xff\"}").is_err());
    }

    #[test]
    fn decode_errors_never_quote_the_payload() {
        for bad in [
            r#"{"uri": "/auth/server", "body": {"t": "hunter2"}}"#,
            r#"{"uri": "/auth/server", "body": ["hunter2"]}"#,
            r#"{"seq": "hunter2"}"#,
            r#"{"uri": 5, "body": "hunter2"} hunter2"#,
            r#"{"hunter2": "#,
            "hunter2",
        ] {
            let e = decode(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
        let e = MessageRef::decode(b"{\"body\": \"hunter2\xff\"}").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn writes_lower_case_keys_and_omits_empty_fields() {
        let mut out = Vec::new();
        encode_message(&mut out, ByteOrder::Big, 0, "/auth/success", "");
        assert_eq!(&out[4..], br#"{"uri":"/auth/success"}"#);
        out.clear();
        encode_message(&mut out, ByteOrder::Big, 42, "/m", "a\"b");
        assert_eq!(&out[4..], br#"{"seq":42,"uri":"/m","body":"a\"b"}"#);
        assert_eq!(
            u32::from_be_bytes(out[..4].try_into().unwrap()) as usize,
            out.len() - 4
        );
    }

    /// What Go's `encoding/json` writes: serde_json's output with Go's HTML-safe escapes
    /// (those characters can only stand inside strings in serde_json's output).
    fn go_json<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value)
            .unwrap()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029")
    }

    #[test]
    fn hand_written_encoding_is_byte_for_byte_what_go_writes() {
        #[derive(Serialize)]
        struct Wire<'b> {
            seq: i64,
            uri: &'b str,
            body: &'b str,
        }
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        let cases = [
            "",
            "plain ascii, longer than eight bytes",
            "q\"uote \\ back",
            &all_controls,
            "ünïcödé 😀 \u{2028} \u{2029} \u{7f} \u{2027}",
            "<script>alert('&')</script> a&b",
            "\"\"\"\"\"\"\"\"\"",
            "abcdefg\"",
        ];
        for (i, text) in cases.iter().enumerate() {
            for seq in [1, -1, i64::MAX, i64::MIN, 1_795_505_507_751] {
                let mut ours = Vec::new();
                encode_message(&mut ours, ByteOrder::Big, seq, text, &format!("{text}!"));
                let wire = Wire {
                    seq,
                    uri: text,
                    body: &format!("{text}!"),
                };
                assert_eq!(
                    String::from_utf8_lossy(&ours[4..]),
                    go_json(&wire),
                    "case {i}"
                );
            }
        }
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let m = Message {
            seq: -3,
            uri: "/ünï\u{0}code".into(),
            body: "{\"nested\": \"json\"}".into(),
        };
        let mut out = Vec::new();
        m.encode(&mut out, ByteOrder::Little);
        assert_eq!(Message::decode(&out[4..]).unwrap(), m);
    }

    #[test]
    fn push_request_reads_the_go_client_body() {
        let r = PushRequest::decode(r#"{"uid":"7","body":"hi","uri":"/chat"}"#).unwrap();
        assert_eq!((&*r.uid, &*r.uri, &*r.body), ("7", "/chat", "hi"));
        let r = PushRequest::decode(r#"{"UID":"7","Uri":"/chat"}"#).unwrap();
        assert_eq!((&*r.uid, &*r.uri, &*r.body), ("7", "/chat", ""));
        assert!(PushRequest::decode(r#"{"uid": 7}"#).is_err());
        let json = r.to_json();
        let back = PushRequest::decode(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn raw_bodies_unescape_to_what_serde_json_reads() {
        let mut buf = String::new();
        for body in [
            r#""plain""#,
            r#""{\"uid\":\"7\"}""#,
            r#""tab\t nl\n \u00e9 \ud83d\ude00 \\u0041 \/""#,
            r#""""#,
        ] {
            let payload = format!(r#"{{"uri": "/a", "body": {body}}}"#);
            let raw = RawMessage::decode(payload.as_bytes()).unwrap().body;
            let want: String = serde_json::from_str(body).unwrap();
            assert_eq!(raw.to_cow(), want);
            assert_eq!(raw.unescape_into(&mut buf), want);
        }
        let raw = RawMessage::decode(br#"{"body": "no escapes"}"#)
            .unwrap()
            .body;
        assert!(matches!(raw.to_cow(), Cow::Borrowed("no escapes")));
    }

    #[test]
    fn unpaired_surrogates_and_non_strings_are_bad_bodies() {
        for body in [
            r#""\ud83d""#,
            r#""\ude00""#,
            r#""\ud83d\u0041""#,
            r#""\ud83dx""#,
            "5",
            "[]",
            "{}",
        ] {
            let payload = format!(r#"{{"uri": "/a", "body": {body}}}"#);
            assert!(RawMessage::decode(payload.as_bytes()).is_err(), "{body}");
        }
        let m = RawMessage::decode(br#"{"body": "x", "body": null}"#).unwrap();
        assert_eq!(m.body.to_cow(), "x", "null keeps the earlier value");
    }

    #[test]
    fn seq_clock_follows_time_and_strictly_increases() {
        let mut clock = SeqClock::default();
        assert_eq!(clock.next(1000), 1000);
        assert_eq!(clock.next(1000), 1001);
        assert_eq!(clock.next(999), 1002);
        assert_eq!(clock.next(5000), 5000);
    }
}
