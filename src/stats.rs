//! Counters of the reactor. They are plain integers owned by the reactor thread, bumped on the
//! hot path at the cost of an add; a `Stats` snapshot is taken on request (handle, HTTP API).

use serde::Serialize;

use crate::reactor::CloseReason;

/// Running totals, owned by the reactor.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub accepted: u64,
    pub rejected: u64,
    pub auth_failures: u64,
    pub pushes: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub refused: u64,
    pub bad_frames: u64,
    pub upstream: u64,
    pub closed: [u64; CloseReason::ALL.len()],
}

impl Counters {
    pub fn closed(&mut self, reason: CloseReason) {
        self.closed[reason as usize] += 1;
    }
}

/// A snapshot of the server's gauges and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Live TCP connections on the client listener, in any state.
    pub connections: u64,
    /// Live connections authenticated as a user.
    pub users: u64,
    /// Live inner (push) connections.
    pub inner: u64,
    /// Distinct uids online.
    pub uids: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused at once because of `MaxConnection`.
    pub rejected: u64,
    /// Failed authentications (user token or inner password).
    pub auth_failures: u64,
    /// Push requests accepted (inner TCP, HTTP, handle).
    pub pushes: u64,
    /// Frames queued to connections by pushes and broadcasts.
    pub delivered: u64,
    /// Pushes to a uid with no live connection.
    pub dropped: u64,
    /// Pushes refused: reserved or empty uri, malformed request, or sent by a user connection.
    pub refused: u64,
    /// Frames that were not a well-formed message.
    pub bad_frames: u64,
    /// Messages from users handed to the application.
    pub upstream: u64,
    /// Connections closed for an auth or heartbeat timeout.
    pub timeouts: u64,
    /// Connections closed, by reason.
    pub closed: std::collections::BTreeMap<&'static str, u64>,
    pub uptime_seconds: u64,
}

impl Stats {
    pub(crate) fn from_counters(c: &Counters, gauges: [u64; 4], uptime_seconds: u64) -> Stats {
        let [connections, users, inner, uids] = gauges;
        let closed_by = |r: CloseReason| c.closed[r as usize];
        Stats {
            connections,
            users,
            inner,
            uids,
            accepted: c.accepted,
            rejected: c.rejected,
            auth_failures: c.auth_failures,
            pushes: c.pushes,
            delivered: c.delivered,
            dropped: c.dropped,
            refused: c.refused,
            bad_frames: c.bad_frames,
            upstream: c.upstream,
            timeouts: closed_by(CloseReason::AuthTimeout)
                + closed_by(CloseReason::HeartbeatTimeout),
            closed: CloseReason::ALL
                .iter()
                .map(|&r| (r.as_str(), closed_by(r)))
                .collect(),
            uptime_seconds,
        }
    }
}
