//! The opening handshake (RFC 6455 §4.2): an HTTP/1.1 GET on `/plex/v1/ws` asking to upgrade
//! is checked and answered `101 Switching Protocols`, or refused with 400, 404 or 426.
//!
//! A browser cannot set headers on a WebSocket, so the token comes in the one it can: the
//! subprotocol list, as `plex.token.<token>` (alongside `plex`), or else in the query as
//! `?token=`. What a client would otherwise say in its first message comes in the query too:
//! `offset` and `epoch` to resume its history, `codec` for the answer to its token.

use std::borrow::Cow;

use crate::protocol::{Codec, Position};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// Where the upgrade is served.
pub const PATH: &str = "/plex/v1/ws";
/// The subprotocol a client offers and the server echoes.
pub const PROTOCOL: &str = "plex";
/// A subprotocol starting with this carries the token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "plex.token.";
/// Appended to the key before hashing (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The parts of a parsed HTTP request the handshake looks at.
#[derive(Clone, Copy, Debug)]
pub struct UpgradeRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// After the `?`, without it.
    pub query: &'a str,
    /// The HTTP minor version: 1 for HTTP/1.1.
    pub version: u8,
    pub headers: &'a [httparse::Header<'a>],
}

impl<'a> UpgradeRequest<'a> {
    /// Takes a request `httparse` parsed completely; `None` if it is not complete.
    pub fn from_httparse(request: &'a httparse::Request<'_, 'a>) -> Option<Self> {
        let target = request.path?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Some(UpgradeRequest {
            method: request.method?,
            path,
            query,
            version: request.version?,
            headers: request.headers,
        })
    }
}

/// A valid upgrade: answer it with [`Accepted::write_response`], then speak frames.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted<'a> {
    /// From the subprotocol list if there, else from the query; `None` if neither has one.
    pub token: Option<Cow<'a, str>>,
    /// The subprotocol echoed: `plex` if offered, else the token's own, else none.
    pub protocol: Option<&'a str>,
    /// `?offset=&epoch=`: the last place in its history the client received.
    pub position: Position<'static>,
    /// `?codec=json|protobuf`: the codec the connection speaks from the start.
    pub codec: Option<Codec>,
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
}

impl Accepted<'_> {
    /// Appends the `101 Switching Protocols` response.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: ",
        );
        out.extend_from_slice(self.accept.as_bytes());
        if let Some(protocol) = self.protocol {
            out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
            out.extend_from_slice(protocol.as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// A refused upgrade: answer with [`Rejected::write_response`] and close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub status: u16,
    pub message: &'static str,
}

impl Rejected {
    /// Appends the error response, `{"error": message}` as the HTTP API answers, closing the
    /// connection; a 426 names the version the server speaks.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let (reason, extra) = match self.status {
            404 => ("Not Found", ""),
            426 => ("Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
            _ => ("Bad Request", ""),
        };
        let body = serde_json::json!({ "error": self.message }).to_string();
        let head = format!(
            "HTTP/1.1 {} {reason}\r\n{extra}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            body.len()
        );
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body.as_bytes());
    }
}

const fn bad(message: &'static str) -> Rejected {
    Rejected {
        status: 400,
        message,
    }
}

/// Checks an upgrade request (RFC 6455 §4.2.1) and prepares the answer (§4.2.2).
pub fn accept<'a>(request: &UpgradeRequest<'a>) -> Result<Accepted<'a>, Rejected> {
    if request.path != PATH {
        return Err(Rejected {
            status: 404,
            message: "not found",
        });
    }
    if request.method != "GET" {
        return Err(bad("a WebSocket upgrade is a GET"));
    }
    if request.version != 1 {
        return Err(bad("a WebSocket upgrade needs HTTP/1.1"));
    }
    let mut host = false;
    let mut upgrade = false;
    let mut connection = false;
    let mut version = None;
    let mut key = None;
    let mut offers_plex = false;
    let mut token_protocol = None;
    for header in request.headers {
        let (name, value) = (header.name, header.value);
        if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            if version.replace(value).is_some() {
                return Err(bad("repeated Sec-WebSocket-Version"));
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.replace(value).is_some() {
                return Err(bad("repeated Sec-WebSocket-Key"));
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            let Ok(list) = std::str::from_utf8(value) else {
                return Err(bad("malformed Sec-WebSocket-Protocol"));
            };
            for protocol in list.split(',').map(str::trim_ascii) {
                if protocol == PROTOCOL {
                    offers_plex = true;
                } else if protocol.len() > TOKEN_PROTOCOL_PREFIX.len()
                    && protocol.starts_with(TOKEN_PROTOCOL_PREFIX)
                {
                    token_protocol = token_protocol.or(Some(protocol));
                }
            }
        }
    }
    if !host {
        return Err(bad("missing Host"));
    }
    if !upgrade {
        return Err(bad("missing Upgrade: websocket"));
    }
    if !connection {
        return Err(bad("missing Connection: Upgrade"));
    }
    if version.map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Rejected {
            status: 426,
            message: "only WebSocket version 13 is supported",
        });
    }
    let Some(key) = key.map(<[u8]>::trim_ascii).filter(|k| is_valid_key(k)) else {
        return Err(bad("Sec-WebSocket-Key must be 16 bytes in base64"));
    };
    let query = Query::parse(request.query)?;
    let token = match token_protocol {
        Some(protocol) => Some(Cow::Borrowed(&protocol[TOKEN_PROTOCOL_PREFIX.len()..])),
        None => query.token.map(Cow::Owned),
    };
    Ok(Accepted {
        token,
        position: query.position,
        codec: query.codec,
        protocol: if offers_plex {
            Some(PROTOCOL)
        } else {
            token_protocol
        },
        accept: accept_key(key),
    })
}

fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0; 18];
    key.len() == 24 && BASE64.decode_slice(key, &mut decoded) == Ok(16)
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    BASE64.encode(Sha1::new().chain_update(key).chain_update(GUID).finalize())
}

/// What the upgrade's query string says.
#[derive(Default)]
struct Query {
    /// The first non-empty `token`.
    token: Option<String>,
    position: Position<'static>,
    codec: Option<Codec>,
}

impl Query {
    /// Reads `token`, `offset`, `epoch` and `codec`; other names are ignored.
    fn parse(query: &str) -> Result<Query, Rejected> {
        let mut parsed = Query::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let malformed = || bad("malformed query string");
            let name = percent_decode(name).ok_or_else(malformed)?;
            let value = percent_decode(value).ok_or_else(malformed)?;
            match name.as_str() {
                "token" if parsed.token.is_none() && !value.is_empty() => {
                    parsed.token = Some(value);
                }
                "offset" => {
                    parsed.position.offset =
                        value.parse().map_err(|_| bad("offset must be a number"))?;
                }
                "epoch" => parsed.position.epoch = Cow::Owned(value),
                "codec" => {
                    parsed.codec = Some(match value.as_str() {
                        "json" => Codec::Json,
                        "protobuf" => Codec::Protobuf,
                        _ => return Err(bad("codec must be json or protobuf")),
                    });
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// Decodes `%XX` escapes and `+` (a space in query strings); `None` if malformed or not UTF-8.
/// Shared with the HTTP API's query strings.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Whether a comma-separated header value holds `token` (case-insensitive). Shared with the
/// HTTP API.
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn header<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    /// A valid upgrade (RFC 6455 §1.3's example) with `change` applied to its headers.
    fn try_accept(
        target: &str,
        change: impl FnOnce(&mut Vec<httparse::Header<'static>>),
    ) -> Result<(Option<String>, Option<String>, String), Rejected> {
        let mut headers = vec![
            header("Host", "server.example.com"),
            header("Upgrade", "websocket"),
            header("Connection", "Upgrade"),
            header("Sec-WebSocket-Key", KEY),
            header("Sec-WebSocket-Version", "13"),
        ];
        change(&mut headers);
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let request = UpgradeRequest {
            method: "GET",
            path,
            query,
            version: 1,
            headers: &headers,
        };
        accept(&request).map(|a| {
            let mut out = Vec::new();
            a.write_response(&mut out);
            (
                a.token.map(Cow::into_owned),
                a.protocol.map(str::to_owned),
                String::from_utf8(out).unwrap(),
            )
        })
    }

    fn status(target: &str, change: impl FnOnce(&mut Vec<httparse::Header<'static>>)) -> u16 {
        try_accept(target, change).expect_err("a refusal").status
    }

    fn remove(name: &'static str) -> impl FnOnce(&mut Vec<httparse::Header<'static>>) {
        move |h| h.retain(|h| !h.name.eq_ignore_ascii_case(name))
    }

    fn set(
        name: &'static str,
        value: &'static str,
    ) -> impl FnOnce(&mut Vec<httparse::Header<'static>>) {
        move |h| {
            h.retain(|h| !h.name.eq_ignore_ascii_case(name));
            h.push(header(name, value));
        }
    }

    #[test]
    fn rfc_example_key() {
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let (token, protocol, response) = try_accept(PATH, |_| {}).unwrap();
        assert_eq!((token, protocol), (None, None));
        assert_eq!(
            response,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn header_values_are_token_lists_in_any_case() {
        let ok = try_accept(PATH, |h| {
            h[1] = header("upgrade", "WebSocket");
            h[2] = header("CONNECTION", "keep-alive, Upgrade");
            h[4] = header("Sec-WebSocket-Version", " 13 ");
        });
        assert!(ok.is_ok());
    }

    #[test]
    fn token_from_the_subprotocol_list() {
        let (token, protocol, response) = try_accept(
            PATH,
            set("Sec-WebSocket-Protocol", "plex, plex.token.abc.def"),
        )
        .unwrap();
        assert_eq!(token.as_deref(), Some("abc.def"));
        assert_eq!(protocol.as_deref(), Some("plex"));
        assert!(response.ends_with("\r\nSec-WebSocket-Protocol: plex\r\n\r\n"));
        // Without `plex` offered, the chosen protocol is the token's own: the server may only
        // name one the client offered.
        let (token, protocol, _) =
            try_accept(PATH, set("Sec-WebSocket-Protocol", "plex.token.t1")).unwrap();
        assert_eq!(
            (token.as_deref(), protocol.as_deref()),
            (Some("t1"), Some("plex.token.t1"))
        );
        // It wins over the query; unknown protocols are not echoed.
        let (token, _, _) = try_accept(
            "/plex/v1/ws?token=q",
            set("Sec-WebSocket-Protocol", "plex.token.s"),
        )
        .unwrap();
        assert_eq!(token.as_deref(), Some("s"));
        let (token, protocol, _) =
            try_accept(PATH, set("Sec-WebSocket-Protocol", "chat, plex.token.")).unwrap();
        assert_eq!((token, protocol), (None, None));
    }

    #[test]
    fn token_from_the_query_is_percent_decoded() {
        let (token, protocol, _) =
            try_accept("/plex/v1/ws?a=1&token=x%2By+z&token=2", |_| {}).unwrap();
        assert_eq!((token.as_deref(), protocol), (Some("x+y z"), None));
        assert_eq!(status("/plex/v1/ws?token=%zz", |_| {}), 400);
        assert_eq!(try_accept("/plex/v1/ws?token=", |_| {}).unwrap().0, None);
    }

    #[test]
    fn refusals() {
        assert_eq!(status("/plex/v1/wss", |_| {}), 404);
        assert_eq!(status(PATH, remove("Host")), 400);
        assert_eq!(status(PATH, remove("Upgrade")), 400);
        assert_eq!(status(PATH, set("Upgrade", "h2c")), 400);
        assert_eq!(status(PATH, set("Connection", "keep-alive")), 400);
        assert_eq!(status(PATH, remove("Sec-WebSocket-Key")), 400);
        assert_eq!(status(PATH, set("Sec-WebSocket-Key", "c2hvcnQ=")), 400);
        // 16 bytes with one bit too many in the last character, and 17 bytes.
        assert_eq!(
            status(PATH, set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZR==")),
            400
        );
        assert_eq!(
            status(PATH, set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZXg=")),
            400
        );
        assert_eq!(
            status(PATH, |h| h.push(header("Sec-WebSocket-Key", KEY))),
            400
        );
        assert_eq!(status(PATH, set("Sec-WebSocket-Version", "8")), 426);
        assert_eq!(status(PATH, remove("Sec-WebSocket-Version")), 426);
    }

    #[test]
    fn method_and_version_are_checked() {
        let headers = [];
        let mut request = UpgradeRequest {
            method: "POST",
            path: PATH,
            query: "",
            version: 1,
            headers: &headers,
        };
        assert_eq!(accept(&request).unwrap_err().status, 400);
        request.method = "GET";
        request.version = 0;
        assert_eq!(
            accept(&request).unwrap_err().message,
            "a WebSocket upgrade needs HTTP/1.1"
        );
    }

    #[test]
    fn refusal_responses() {
        let mut out = Vec::new();
        Rejected {
            status: 426,
            message: "only WebSocket version 13 is supported",
        }
        .write_response(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"only WebSocket version 13 is supported\"}"));
        assert!(text.contains("Connection: close\r\n"));
    }

    #[test]
    fn from_httparse_splits_the_query() {
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut parsed = httparse::Request::new(&mut headers);
        parsed
            .parse(b"GET /plex/v1/ws?token=t HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        let request = UpgradeRequest::from_httparse(&parsed).unwrap();
        assert_eq!(
            (request.path, request.query, request.version),
            (PATH, "token=t", 1)
        );
        assert_eq!(request.headers.len(), 1);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%E4%BD%A0").as_deref(), Some("你"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
