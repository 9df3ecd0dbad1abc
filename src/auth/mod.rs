//! Authentication: the types an auth function works with, and ready-made auth functions.
//!
//! An auth function runs on the reactor thread for each `/auth/server`. It can decide at once
//! (accept with a uid, or reject) or answer `Pending` and complete the authentication later,
//! from any thread, with [`Handle::complete_auth`](crate::Handle::complete_auth) and the
//! request's ticket; the connection waits meanwhile, still bound by `AuthTimeout`.

use std::net::SocketAddr;

use crate::reactor::ConnRef;

/// What an auth function decides about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// The token is good: the connection becomes this uid's.
    Accept(String),
    /// The token is bad: the client gets `/auth/failed`.
    Reject,
    /// The answer comes later through `Handle::complete_auth` with the request's ticket.
    Pending,
}

impl From<Option<String>> for AuthVerdict {
    fn from(uid: Option<String>) -> Self {
        uid.map_or(AuthVerdict::Reject, AuthVerdict::Accept)
    }
}

/// Names one authentication in progress. A ticket outlives its connection harmlessly:
/// completing it after the client has gone does nothing, even if a new connection took the
/// same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthTicket(pub(crate) ConnRef);

/// One `/auth/server` handed to an auth function.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    /// The client's token (the frame's body).
    pub token: &'a str,
    /// Completes a `Pending` verdict.
    pub ticket: AuthTicket,
    pub(crate) stream: &'a mio::net::TcpStream,
}

impl AuthRequest<'_> {
    /// The client's address, if the socket still knows it. Asked of the kernel on demand,
    /// so that auth functions that do not need it do not pay for it.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }
}

pub mod jwt;

/// The demo auth mode of the original's examples: the token itself, trimmed, is the uid if it
/// is 1–128 characters of `[A-Za-z0-9_.:@-]`. It trusts whatever a client says.
pub fn token_as_uid(token: &str) -> Option<String> {
    let uid = token.trim();
    let valid = (1..=128).contains(&uid.len())
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b));
    valid.then(|| uid.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_the_trimmed_uid_when_well_formed() {
        assert_eq!(
            token_as_uid(" user-7@x.y:z_ ").as_deref(),
            Some("user-7@x.y:z_")
        );
        assert_eq!(token_as_uid(&"a".repeat(128)).map(|u| u.len()), Some(128));
        for bad in ["", "   ", "a b", "ü", "a/b", &"a".repeat(129)] {
            assert_eq!(token_as_uid(bad), None, "{bad:?}");
        }
    }
}
