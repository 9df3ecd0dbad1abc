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
    pub http_requests: u64,
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
    /// Live connections on the HTTP listener.
    pub http_connections: u64,
    /// HTTP requests answered.
    pub http_requests: u64,
    /// Connections closed for an auth or heartbeat timeout.
    pub timeouts: u64,
    /// Connections closed, by reason.
    pub closed: std::collections::BTreeMap<&'static str, u64>,
    pub uptime_seconds: u64,
}

impl Stats {
    pub(crate) fn from_counters(c: &Counters, gauges: [u64; 5], uptime_seconds: u64) -> Stats {
        let [connections, users, inner, uids, http_connections] = gauges;
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
            http_connections,
            http_requests: c.http_requests,
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

impl Stats {
    /// The same figures in the Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP plex_{name} {help}\n# TYPE plex_{name} {kind}\nplex_{name} {value}\n"
            );
        };
        let gauges = [
            (
                "connections",
                "Live TCP connections on the client listener.",
                self.connections,
            ),
            (
                "users",
                "Live connections authenticated as a user.",
                self.users,
            ),
            (
                "inner_connections",
                "Live inner (push) connections.",
                self.inner,
            ),
            ("uids", "Distinct uids online.", self.uids),
            (
                "http_connections",
                "Live HTTP connections.",
                self.http_connections,
            ),
            (
                "uptime_seconds",
                "Seconds since the server started.",
                self.uptime_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            metric(name, "gauge", help, value);
        }
        let counters = [
            ("accepted_total", "Connections accepted.", self.accepted),
            (
                "rejected_total",
                "Connections refused at the connection cap.",
                self.rejected,
            ),
            (
                "auth_failures_total",
                "Failed authentications.",
                self.auth_failures,
            ),
            ("pushes_total", "Push requests accepted.", self.pushes),
            (
                "delivered_total",
                "Frames queued to connections by pushes.",
                self.delivered,
            ),
            (
                "dropped_total",
                "Pushes to a uid with no live connection.",
                self.dropped,
            ),
            (
                "refused_total",
                "Pushes refused as invalid or unauthorised.",
                self.refused,
            ),
            (
                "bad_frames_total",
                "Frames that were not a well-formed message.",
                self.bad_frames,
            ),
            (
                "upstream_total",
                "Messages from users handed to the application.",
                self.upstream,
            ),
            (
                "http_requests_total",
                "HTTP requests answered.",
                self.http_requests,
            ),
        ];
        for (name, help, value) in counters {
            metric(name, "counter", help, value);
        }
        out.push_str("# HELP plex_closed_total Connections closed, by reason.\n");
        out.push_str("# TYPE plex_closed_total counter\n");
        for (reason, n) in &self.closed {
            let _ = writeln!(out, "plex_closed_total{{reason=\"{reason}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_help_type_and_total_suffixes() {
        let mut c = Counters {
            pushes: 7,
            ..Counters::default()
        };
        c.closed(CloseReason::Kicked);
        let text = Stats::from_counters(&c, [3, 2, 1, 2, 0], 9).to_prometheus();
        assert!(text.contains("# TYPE plex_pushes_total counter\nplex_pushes_total 7\n"));
        assert!(text.contains("# TYPE plex_connections gauge\nplex_connections 3\n"));
        assert!(text.contains("plex_closed_total{reason=\"kicked\"} 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("plex_"), "{line}");
            value.parse::<u64>().unwrap();
        }
    }
}
