//! The reserved uris of the protocol, one constant each. A push may not use any of them:
//! a client would take a pushed `/auth/success` for the server's answer.

/// client → server: authenticate; the body is the client's token.
pub const AUTH: &str = "/auth/server";
/// server → client: authentication accepted.
pub const AUTH_SUCCESS: &str = "/auth/success";
/// server → client: authentication rejected, or a message sent before authenticating.
pub const AUTH_FAILED: &str = "/auth/failed";
/// both ways: a client heartbeat and the server's answer to it.
pub const HEARTBEAT: &str = "/heartbeat";
/// business → server: authenticate an inner (push) connection; the body is the inner password.
pub const INNER_AUTH: &str = "/inner/auth/server";
/// business → server: push; the body is `{"uid", "uri", "body"}` as a JSON string.
pub const SEND_MSG: &str = "/logic/send/msg";
/// client → server: its device has every push of its uid up to the offset in the body.
pub const ACK: &str = "/ack";

pub const RESERVED: [&str; 7] = [
    AUTH,
    AUTH_SUCCESS,
    AUTH_FAILED,
    HEARTBEAT,
    INNER_AUTH,
    SEND_MSG,
    ACK,
];

pub fn is_reserved(uri: &str) -> bool {
    RESERVED.contains(&uri)
}

/// Why a push's uri cannot be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPushUri {
    Empty,
    Reserved,
}

impl std::fmt::Display for BadPushUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadPushUri::Empty => "uri is required",
            BadPushUri::Reserved => "uri is reserved by the protocol",
        })
    }
}

impl std::error::Error for BadPushUri {}

/// The one check every push path (inner TCP, HTTP, the handle) applies to its uri.
pub fn check_push_uri(uri: &str) -> Result<(), BadPushUri> {
    if uri.is_empty() {
        Err(BadPushUri::Empty)
    } else if is_reserved(uri) {
        Err(BadPushUri::Reserved)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_uri_is_reserved() {
        for uri in RESERVED {
            assert_eq!(check_push_uri(uri), Err(BadPushUri::Reserved));
        }
        assert_eq!(check_push_uri(""), Err(BadPushUri::Empty));
        assert_eq!(check_push_uri("/chat"), Ok(()));
        // Uris are compared exactly, as the original does.
        assert_eq!(check_push_uri("/Heartbeat"), Ok(()));
    }
}
