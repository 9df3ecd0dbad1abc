//! Counters of the reactor. They are plain integers owned by the reactor thread, bumped on the
//! hot path at the cost of an add; a `Stats` snapshot is taken on request (handle, HTTP API).
//! The two listeners are counted apart: `closed` is about client connections, `http_closed`
//! about connections to the HTTP API.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::reactor::{CloseReason, Transport};

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
    pub http_rejected: u64,
    pub closed: [u64; CloseReason::ALL.len()],
    pub http_closed: [u64; CloseReason::ALL.len()],
}

impl Counters {
    pub fn closed(&mut self, reason: CloseReason) {
        self.closed[reason as usize] += 1;
    }

    pub fn http_closed(&mut self, reason: CloseReason) {
        self.http_closed[reason as usize] += 1;
    }
}

/// Live values read off the reactor's state when a snapshot is taken.
#[derive(Default)]
pub(crate) struct Gauges {
    pub connections: u64,
    pub users: u64,
    pub inner: u64,
    pub uids: u64,
    pub http_connections: u64,
    pub buffered_bytes: u64,
    /// Client connections by transport, in `Transport` order.
    pub transports: [u64; 4],
    /// Cluster mode: whether Redis is usable.
    pub cluster_up: Option<bool>,
    /// Pushes the cluster could not take (0 on a single node).
    pub unrouted: u64,
    /// History in memory: bytes held, pushes evicted for memory, pushes expired.
    pub history: Option<(u64, u64, u64)>,
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
    /// Client connections by transport: `tcp`, `tls`, `ws`, `wss`.
    pub transports: BTreeMap<&'static str, u64>,
    /// Bytes held in client connections' input and output buffers.
    pub buffered_bytes: u64,
    /// Connections accepted on the client listener since start.
    pub accepted: u64,
    /// Client connections refused at once because of `MaxConnection`.
    pub rejected: u64,
    /// Failed authentications (user token or inner password).
    pub auth_failures: u64,
    /// Push requests accepted (inner TCP, HTTP, handle).
    pub pushes: u64,
    /// Frames queued to connections by pushes and broadcasts.
    pub delivered: u64,
    /// Pushes to a uid with no live connection.
    pub dropped: u64,
    /// Pushes refused: reserved or empty uri, malformed request, too large, or sent by a
    /// user connection.
    pub refused: u64,
    /// Frames that were not a well-formed message.
    pub bad_frames: u64,
    /// Messages from users handed to the application.
    pub upstream: u64,
    /// Live connections on the HTTP listener.
    pub http_connections: u64,
    /// HTTP requests answered.
    pub http_requests: u64,
    /// HTTP connections refused at `MaxHttpConnections` (nothing could be evicted).
    pub http_rejected: u64,
    /// Cluster mode: whether Redis is usable (absent on a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_up: Option<bool>,
    /// Pushes that could not be routed to the other nodes (Redis down, or its queue full).
    pub unrouted: u64,
    /// History in memory (absent when off): bytes held against `HistoryMemory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_bytes: Option<u64>,
    /// Retained pushes evicted to stay under `HistoryMemory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_evicted: Option<u64>,
    /// Retained pushes dropped at `HistoryTtl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_expired: Option<u64>,
    /// Client connections closed for an auth or heartbeat timeout.
    pub timeouts: u64,
    /// Client connections closed, by reason.
    pub closed: BTreeMap<&'static str, u64>,
    /// HTTP connections closed, by reason.
    pub http_closed: BTreeMap<&'static str, u64>,
    pub uptime_seconds: u64,
}

fn by_reason(counts: &[u64; CloseReason::ALL.len()]) -> BTreeMap<&'static str, u64> {
    (CloseReason::ALL.iter())
        .map(|&r| (r.as_str(), counts[r as usize]))
        .collect()
}

impl Stats {
    pub(crate) fn from_counters(c: &Counters, g: Gauges, uptime_seconds: u64) -> Stats {
        Stats {
            connections: g.connections,
            users: g.users,
            inner: g.inner,
            uids: g.uids,
            transports: (Transport::ALL.iter())
                .map(|&t| (t.as_str(), g.transports[t as usize]))
                .collect(),
            buffered_bytes: g.buffered_bytes,
            accepted: c.accepted,
            rejected: c.rejected,
            auth_failures: c.auth_failures,
            pushes: c.pushes,
            delivered: c.delivered,
            dropped: c.dropped,
            refused: c.refused,
            bad_frames: c.bad_frames,
            upstream: c.upstream,
            http_connections: g.http_connections,
            http_requests: c.http_requests,
            http_rejected: c.http_rejected,
            cluster_up: g.cluster_up,
            unrouted: g.unrouted,
            history_bytes: g.history.map(|h| h.0),
            history_evicted: g.history.map(|h| h.1),
            history_expired: g.history.map(|h| h.2),
            timeouts: c.closed[CloseReason::AuthTimeout as usize]
                + c.closed[CloseReason::HeartbeatTimeout as usize],
            closed: by_reason(&c.closed),
            http_closed: by_reason(&c.http_closed),
            uptime_seconds,
        }
    }

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
                "Live connections on the client listener.",
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
                "buffered_bytes",
                "Bytes held in client connection buffers.",
                self.buffered_bytes,
            ),
            (
                "http_connections",
                "Live connections on the HTTP listener.",
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
        if let Some(up) = self.cluster_up {
            metric(
                "cluster_up",
                "gauge",
                "1 while Redis is usable (cluster mode).",
                up.into(),
            );
            metric(
                "unrouted_total",
                "counter",
                "Pushes the cluster could not take, delivered on this node only.",
                self.unrouted,
            );
        }
        if let (Some(bytes), Some(evicted), Some(expired)) = (
            self.history_bytes,
            self.history_evicted,
            self.history_expired,
        ) {
            metric(
                "history_bytes",
                "gauge",
                "Bytes the in-memory history holds against HistoryMemory.",
                bytes,
            );
            metric(
                "history_evicted_total",
                "counter",
                "Retained pushes dropped to stay under HistoryMemory.",
                evicted,
            );
            metric(
                "history_expired_total",
                "counter",
                "Retained pushes dropped at HistoryTtl.",
                expired,
            );
        }
        let counters = [
            (
                "accepted_total",
                "Client connections accepted.",
                self.accepted,
            ),
            (
                "rejected_total",
                "Client connections refused at MaxConnection.",
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
                "Pushes refused as invalid, too large or unauthorised.",
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
            (
                "http_rejected_total",
                "HTTP connections refused at MaxHttpConnections.",
                self.http_rejected,
            ),
        ];
        for (name, help, value) in counters {
            metric(name, "counter", help, value);
        }
        out.push_str("# HELP plex_transport_connections Live client connections, by transport.\n");
        out.push_str("# TYPE plex_transport_connections gauge\n");
        for (transport, n) in &self.transports {
            let _ = writeln!(
                out,
                "plex_transport_connections{{transport=\"{transport}\"}} {n}"
            );
        }
        out.push_str("# HELP plex_closed_total Connections closed, by listener and reason.\n");
        out.push_str("# TYPE plex_closed_total counter\n");
        for (listener, closed) in [("client", &self.closed), ("http", &self.http_closed)] {
            for (reason, n) in closed {
                let _ = writeln!(
                    out,
                    "plex_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}} {n}"
                );
            }
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
        c.http_closed(CloseReason::PeerClosed);
        let gauges = Gauges {
            connections: 3,
            users: 2,
            inner: 1,
            uids: 2,
            http_connections: 0,
            buffered_bytes: 0,
            transports: [1, 0, 2, 0],
            cluster_up: None,
            unrouted: 0,
            history: None,
        };
        let text = Stats::from_counters(&c, gauges, 9).to_prometheus();
        assert!(!text.contains("unrouted") && !text.contains("history"));
        assert!(text.contains("# TYPE plex_pushes_total counter\nplex_pushes_total 7\n"));
        assert!(text.contains("# TYPE plex_connections gauge\nplex_connections 3\n"));
        assert!(text.contains("plex_closed_total{listener=\"client\",reason=\"kicked\"} 1\n"));
        assert!(text.contains("plex_closed_total{listener=\"http\",reason=\"peer_closed\"} 1\n"));
        assert!(text.contains("plex_transport_connections{transport=\"ws\"} 2\n"));
        assert!(text.contains("plex_closed_total{listener=\"client\",reason=\"peer_closed\"} 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("plex_"), "{line}");
            value.parse::<u64>().unwrap();
        }
    }

    #[test]
    fn cluster_and_history_figures_are_metrics_where_they_apply() {
        let gauges = Gauges {
            cluster_up: Some(true),
            unrouted: 4,
            history: Some((100, 2, 3)),
            ..Gauges::default()
        };
        let text = Stats::from_counters(&Counters::default(), gauges, 1).to_prometheus();
        for line in [
            "plex_cluster_up 1\n",
            "# TYPE plex_unrouted_total counter\nplex_unrouted_total 4\n",
            "# TYPE plex_history_bytes gauge\nplex_history_bytes 100\n",
            "plex_history_evicted_total 2\n",
            "plex_history_expired_total 3\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
