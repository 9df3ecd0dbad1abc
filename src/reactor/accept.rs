//! Accepting connections: the listeners are drained each turn, a connection past its cap is
//! refused at once, and running out of descriptors pauses accepting instead of spinning.

use std::io;
use std::net::SocketAddr;

use log::{debug, error, info, warn};
use mio::Interest;
use mio::net::TcpStream;

use super::conn::ClientConn;
use super::conns::Table;
use super::ctx::deadline;
use super::http::HttpConn;
use super::link::{Layers, Link, Ws};
use super::session;
use super::{CloseReason, Reactor, Side};

/// Pause after the process runs out of descriptors, before accepting again.
const ACCEPT_PAUSE_TICKS: u64 = 1;

impl Reactor {
    /// Accepts every pending connection; returns whether it stopped for lack of descriptors
    /// or memory (accepting is then paused).
    pub(super) fn accept(&mut self, side: Side) -> bool {
        // Connections are stamped with a fresh clock: a busy turn must not age them.
        self.ctx.core.clock.update();
        loop {
            let Some(listener) = &self.listeners[side as usize] else {
                return false;
            };
            match listener.accept() {
                Ok((stream, addr)) => match side {
                    Side::Http => self.admit_http(stream, addr),
                    _ => self.admit_client(side, stream, addr),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_transient_accept_error(&e) => debug!("accept: {e}"),
                Err(e) => {
                    // Out of descriptors or memory: the pending connections stay in the backlog;
                    // retry after a pause rather than spin on an ever-readable listener.
                    if self.accept_paused_until.is_none() {
                        warn!("accept failed, pausing accepts: {e}");
                    }
                    self.accept_paused_until = Some(self.ctx.core.clock.tick + ACCEPT_PAUSE_TICKS);
                    return true;
                }
            }
        }
    }

    pub(super) fn retry_accepts(&mut self) {
        if self
            .accept_paused_until
            .is_some_and(|t| t <= self.ctx.core.clock.tick)
        {
            // Every listener is retried (connections wait in each backlog, and no new
            // readiness comes for them); the pause ends when none runs short.
            let mut saturated = false;
            for side in Side::ALL {
                saturated |= self.accept(side);
            }
            if !saturated {
                self.accept_paused_until = None;
                info!("accepting again");
            }
        }
    }

    fn admit_client(&mut self, side: Side, stream: TcpStream, addr: SocketAddr) {
        let cap = self.ctx.limits.max_connection;
        if cap > 0 && self.ctx.gauges.clients as usize >= cap {
            self.ctx.counters.rejected += 1;
            debug!("{addr}: refused, client connection cap of {cap} reached");
            return;
        }
        self.tune(&stream, addr);
        let tls = match (side, &self.tls) {
            (Side::Tls | Side::Ws, Some(config)) => {
                match rustls::ServerConnection::new(config.clone()) {
                    Ok(session) => Some(Box::new(session)),
                    Err(e) => {
                        error!("{addr}: cannot start a TLS session: {e}");
                        return;
                    }
                }
            }
            _ => None,
        };
        let now = self.ctx.core.clock.tick32();
        let r = self.clients.next_ref();
        let mut link = Link::new(stream, r.generation(), now);
        let ws = (side == Side::Ws).then(Ws::default);
        if tls.is_some() || ws.is_some() {
            link.layers = Some(Box::new(Layers { tls, ws }));
        }
        let mut conn = ClientConn::new(link);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut conn.link.stream, r.token(), Interest::READABLE)
        {
            error!("{addr}: cannot register connection: {e}");
            return;
        }
        let (due, _) = session::timeout_of(&self.ctx, &conn);
        self.ctx.core.arm(&mut conn.link, r, due);
        self.ctx.gauges.transports[conn.transport() as usize] += 1;
        self.clients.insert(conn);
        self.ctx.counters.accepted += 1;
        self.ctx.gauges.clients += 1;
        debug!(
            "{addr}: accepted on {side:?} as {}",
            Table::<ClientConn>::name(r)
        );
    }

    /// Socket options of every accepted connection.
    fn tune(&self, stream: &TcpStream, addr: SocketAddr) {
        let socket = socket2::SockRef::from(stream);
        // Pushes and answers are small and latency matters more than packet count.
        if let Err(e) = socket.set_tcp_nodelay(true) {
            debug!("{addr}: set_nodelay: {e}");
        }
        // A peer that never reads cannot park more than this in kernel memory.
        let send_buffer = self.ctx.limits.socket_send_buffer;
        if send_buffer > 0
            && let Err(e) = socket.set_send_buffer_size(send_buffer)
        {
            debug!("{addr}: SO_SNDBUF: {e}");
        }
    }

    fn admit_http(&mut self, stream: TcpStream, addr: SocketAddr) {
        let cap = self.ctx.limits.max_http_connections;
        if self.https.len() >= cap && !self.evict_http() {
            self.ctx.counters.http_rejected += 1;
            debug!("{addr}: refused, HTTP connection cap of {cap} reached");
            return;
        }
        self.tune(&stream, addr);
        let now = self.ctx.core.clock.tick32();
        let r = self.https.next_ref();
        let mut link = Link::new(stream, r.generation(), now);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut link.stream, r.token(), Interest::READABLE)
        {
            error!("{addr}: cannot register connection: {e}");
            return;
        }
        let due = deadline(now, self.ctx.limits.http_idle_ticks);
        self.ctx.core.arm(&mut link, r, due);
        self.https.insert(HttpConn::new(link));
        self.ctx.gauges.http += 1;
        debug!("{addr}: accepted as {}", Table::<HttpConn>::name(r));
    }

    /// Makes room at `MaxHttpConnections` by closing the connection that has shown no bearer
    /// token and been quiet longest, preferring one with nothing in flight: the public
    /// `/plex/v1/host` can never hold every slot and lock back-ends out.
    fn evict_http(&mut self) -> bool {
        let victim = (self.https.iter())
            .filter(|(_, c)| !c.trusted && c.link.doomed.is_none())
            .min_by_key(|(_, c)| {
                let busy = !c.link.input.is_empty() || c.link.pending() > 0;
                (busy, c.link.last_active)
            })
            .map(|(key, _)| key);
        match victim {
            Some(key) => {
                debug!("h#{key}: evicted to make room for a new connection");
                self.https.doom(key, CloseReason::Evicted);
                true
            }
            None => false,
        }
    }
}

/// Accept errors that concern one connection only; accepting goes on. Anything else (out of
/// descriptors, out of memory) pauses accepting.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
