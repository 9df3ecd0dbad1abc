//! Connections come and go: accepting (with the connection caps and a pause when descriptors
//! run out), the one timer each connection holds (auth, heartbeat, idle, linger), and closing
//! with everything that goes with it: registry, hooks, buffers, counters.

use std::io;
use std::net::SocketAddr;

use log::{debug, error, info, warn};
use mio::Interest;
use mio::net::TcpStream;

use super::conn::{CloseReason, Conn, ConnRef, State};
use super::timer::TimerId;
use super::{ACCEPT_PAUSE_TICKS, LINGER_TICKS, Reactor, Side, conn_token};

impl Reactor {
    /// Accepts every pending connection; returns whether it stopped for lack of descriptors
    /// or memory (accepting is then paused).
    pub(super) fn accept(&mut self, side: Side) -> bool {
        loop {
            let Some(listener) = &self.listeners[side as usize] else {
                return false;
            };
            match listener.accept() {
                Ok((stream, addr)) => self.admit(side, stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_transient_accept_error(&e) => debug!("accept: {e}"),
                Err(e) => {
                    // Out of descriptors or memory: the pending connections stay in the backlog;
                    // retry after a pause rather than spin on an ever-readable listener.
                    if self.accept_paused_until.is_none() {
                        warn!("accept failed, pausing accepts: {e}");
                    }
                    self.accept_paused_until = Some(self.clock.tick + ACCEPT_PAUSE_TICKS);
                    return true;
                }
            }
        }
    }

    pub(super) fn admit(&mut self, side: Side, mut stream: TcpStream, addr: SocketAddr) {
        let (live, cap, state) = match side {
            Side::Plex => (
                self.gauges.clients,
                self.limits.max_connection,
                State::Unauthenticated {
                    failures: 0,
                    pending: false,
                },
            ),
            Side::Http => (
                self.gauges.http,
                self.limits.max_http_connections,
                State::Http {
                    continue_sent: false,
                },
            ),
        };
        let live = live as usize;
        if cap > 0 && live >= cap {
            self.counters.rejected += 1;
            debug!("{addr}: refused, {side:?} connection cap of {cap} reached");
            return;
        }
        // Pushes are small and latency matters more than packet count.
        if let Err(e) = stream.set_nodelay(true) {
            debug!("{addr}: set_nodelay: {e}");
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, conn_token(key), Interest::READABLE)
        {
            error!("{addr}: cannot register connection: {e}");
            return;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let now = self.clock.tick32();
        entry.insert(Conn::new(stream, state, generation, TimerId::NONE, now));
        self.arm_timer(key);
        match side {
            Side::Plex => {
                self.counters.accepted += 1;
                self.gauges.clients += 1;
            }
            Side::Http => self.gauges.http += 1,
        }
        debug!("{addr}: accepted on {side:?} as #{key}");
    }

    /// Closes a connection once its output is flushed (see `Conn::closing`).
    pub(super) fn close_after_flush(&mut self, key: usize, reason: CloseReason) {
        let now = self.clock.tick32();
        let conn = &mut self.conns[key];
        if conn.closing.is_none() {
            conn.closing = Some(reason);
            // The linger timer counts from here.
            conn.last_active = now;
            self.outbox.mark_dirty(key, conn);
            self.arm_timer(key);
        }
    }

    /// The timeout that applies to a connection in its current state, counted from
    /// `last_active`, and the reason it closes for when it expires.
    pub(super) fn timeout_of(&self, conn: &Conn) -> (u32, CloseReason) {
        match (&conn.closing, &conn.state) {
            (Some(reason), _) => (LINGER_TICKS, *reason),
            (None, State::Unauthenticated { .. }) => {
                (self.limits.auth_ticks, CloseReason::AuthTimeout)
            }
            (None, State::User { .. } | State::Inner) => {
                (self.limits.heartbeat_ticks, CloseReason::HeartbeatTimeout)
            }
            (None, State::Http { .. }) => (self.limits.http_idle_ticks, CloseReason::IdleTimeout),
            (None, State::Webhook(exchange)) => (
                self.webhook_timeout_ticks(exchange),
                CloseReason::IdleTimeout,
            ),
        }
    }

    /// Sets the connection's one timer for its current state. Needed only when the deadline
    /// may move earlier (a state change); activity moves it later and is caught up lazily.
    pub(super) fn arm_timer(&mut self, key: usize) {
        let conn = &self.conns[key];
        let (ticks, _) = self.timeout_of(conn);
        let due = deadline(conn.last_active, ticks);
        let this = ConnRef {
            key: key as u32,
            generation: conn.generation,
        };
        let old = std::mem::replace(&mut self.conns[key].timer, TimerId::NONE);
        if !old.is_none() {
            self.wheel.cancel(old);
        }
        self.conns[key].timer = self.wheel.insert(due, this);
    }

    /// Closes a connection now: its timer, registry entry and buffers go with it, and the
    /// offline hook fires if it was its uid's last connection.
    pub(crate) fn close(&mut self, key: usize, reason: CloseReason) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        if !conn.timer.is_none() {
            self.wheel.cancel(conn.timer);
        }
        if let Err(e) = self.poll.registry().deregister(&mut conn.stream) {
            debug!("#{key}: deregister: {e}");
        }
        if !matches!(conn.state, State::Webhook(_)) {
            self.counters.closed(reason);
        }
        let input = std::mem::take(&mut conn.input);
        conn.release(&mut self.outbox.pool);
        if matches!(
            conn.state,
            State::Unauthenticated { .. } | State::User { .. } | State::Inner
        ) {
            self.gauges.clients -= 1;
        }
        match conn.state {
            State::Unauthenticated { .. } => debug!("#{key}: closed ({reason})"),
            State::Webhook(exchange) => {
                debug!("#{key}: auth service connection closed ({reason})");
                self.webhook_closed(key, *exchange, &input, reason);
            }
            State::Http { .. } => {
                self.gauges.http -= 1;
                debug!("#{key}: HTTP connection closed ({reason})");
            }
            State::Inner => {
                self.gauges.inner -= 1;
                info!("#{key}: inner connection closed ({reason})");
            }
            State::User { uid } => {
                self.gauges.users -= 1;
                debug!("#{key}: uid {uid} closed ({reason})");
                if self.registry.remove(&uid, key as u32)
                    && let Some(hook) = &mut self.hooks.on_offline
                {
                    hook(&uid);
                }
            }
        }
        self.outbox.pool.give(input);
    }

    pub(super) fn expire_timers(&mut self) {
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(self.clock.tick, &mut expired);
        for r in expired.drain(..) {
            let key = r.key as usize;
            let Some(conn) = self
                .conns
                .get_mut(key)
                .filter(|c| c.generation == r.generation)
            else {
                continue;
            };
            conn.timer = TimerId::NONE;
            let conn = &self.conns[key];
            let (ticks, reason) = self.timeout_of(conn);
            let due = deadline(conn.last_active, ticks);
            if due > self.clock.tick {
                // Activity since the timer was set: sleep again for the remainder.
                self.conns[key].timer = self.wheel.insert(due, r);
            } else if matches!(conn.state, State::Webhook(_)) && conn.closing.is_none() {
                self.webhook_expired(key);
            } else {
                self.close(key, reason);
            }
        }
        self.expired = expired;
    }
}

/// The tick at which a timeout of `ticks` counted from `from` expires; one tick of slack so
/// that a timeout never fires early.
pub(super) fn deadline(from: u32, ticks: u32) -> u64 {
    u64::from(from) + u64::from(ticks) + 1
}

/// Accept errors that concern one connection only; accepting goes on. Anything else (out of
/// descriptors, out of memory) pauses accepting.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
