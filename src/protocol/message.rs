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
}

impl<'a> MessageRef<'a> {
    /// Reads a frame payload: a JSON object whose keys match `seq`, `uri` and `body` without
    /// regard to case, whose unknown keys are ignored and whose `null` values mean absent.
    /// Anything else (not UTF-8, not JSON, not an object, a field of the wrong type) is an
    /// error: a bad frame.
    pub fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        // The whole payload must be UTF-8, ignored values included: `from_slice` would skip
        // over invalid bytes inside a value nobody reads.
        let text = std::str::from_utf8(payload).map_err(DecodeError::NotUtf8)?;
        let mut de = serde_json::Deserializer::from_str(text);
        let message = de.deserialize_map(GoVisitor::<MessageRef>(PhantomData))?;
        de.end()?;
        Ok(message)
    }

    pub fn into_owned(self) -> Message {
        Message {
            seq: self.seq,
            uri: self.uri.into_owned(),
            body: self.body.into_owned(),
        }
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

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotUtf8(e) => write!(f, "bad message: not UTF-8: {e}"),
            DecodeError::Json(e) => write!(f, "bad message: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Appends `{seq, uri, body}` as one frame to `out`, omitting `seq` when 0 and `body` when
/// empty as Go's `omitempty` does.
pub fn encode_message(out: &mut Vec<u8>, order: ByteOrder, seq: i64, uri: &str, body: &str) {
    #[derive(Serialize)]
    struct Wire<'b> {
        #[serde(skip_serializing_if = "is_zero")]
        seq: i64,
        uri: &'b str,
        #[serde(skip_serializing_if = "str::is_empty")]
        body: &'b str,
    }
    frame::encode_with(out, order, |out| {
        serde_json::to_writer(out, &Wire { seq, uri, body }).expect("writing to a Vec cannot fail")
    });
}

fn is_zero(n: &i64) -> bool {
    *n == 0
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

impl<'de> GoObject<'de> for MessageRef<'de> {
    const FIELDS: &'static [&'static str] = &["seq", "uri", "body"];

    fn set<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => set_unless_null(&mut self.seq, map.next_value()?),
            1 => set_unless_null(&mut self.uri, next_str(map)?),
            _ => set_unless_null(&mut self.body, next_str(map)?),
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
    fn seq_clock_follows_time_and_strictly_increases() {
        let mut clock = SeqClock::default();
        assert_eq!(clock.next(1000), 1000);
        assert_eq!(clock.next(1000), 1001);
        assert_eq!(clock.next(999), 1002);
        assert_eq!(clock.next(5000), 5000);
    }
}
