//! Client connections between the socket and the protocol: what arrived is cut into messages
//! (length-prefixed frames, or WebSocket messages after the upgrade), each is handed to
//! `session`, and the `Step` it returns is carried out here, where the whole client table is
//! at hand: a push reaches other connections, a close dooms this one.

use log::{debug, warn};

use super::buffer::BufferPool;
use super::conn::{ClientConn, Resume, State};
use super::conns::Table;
use super::ctx::Ctx;
use super::deliver::{self, PushBuffers};
use super::http::{MAX_HEAD, MAX_HEADERS};
use super::link::{Ws, feed};
use super::session::{self, Step};
use crate::CloseReason;
use crate::protocol::ws::{self, CloseCode, Message as WsMessage, Opcode};
use crate::protocol::{Codec, CodecChoice, Decoder};

/// What client-connection code works on for the length of a call.
pub struct Clients<'a> {
    pub ctx: &'a mut Ctx,
    pub table: &'a mut Table<ClientConn>,
    pub push: &'a mut PushBuffers,
}

impl Clients<'_> {
    /// Processes newly read bytes of connection `key` after whatever partial message it kept,
    /// and keeps the new partial remainder.
    pub fn ingest(&mut self, key: usize, bytes: &mut [u8]) {
        let mut input = std::mem::take(&mut self.table[key].link.input);
        let websocket = self.table[key].link.ws().is_some();
        feed(&mut input, bytes, |data| {
            if websocket {
                self.websocket(key, data)
            } else {
                self.frames(key, data)
            }
        });
        let link = &mut self.table[key].link;
        if link.is_done() {
            self.ctx.core.pool.give(input);
        } else {
            if !input.is_empty() {
                // The rest is on its way; a client that splits its writes with Nagle on waits
                // for our ACK before sending it: do not delay that ACK.
                let _ = socket2::SockRef::from(&link.stream).set_tcp_quickack(true);
            }
            link.input = input;
        }
        self.settle_output(key);
    }

    /// A connection that got output from its own input goes on the turn's flush list.
    pub fn settle_output(&mut self, key: usize) {
        let link = &self.table[key].link;
        if link.wants_write() && link.doomed.is_none() {
            self.table.mark_dirty(key);
        }
    }

    /// Handles the complete length-prefixed frames at the start of `data`; returns how many
    /// bytes they took, or `None` once the connection takes no more input.
    fn frames(&mut self, key: usize, data: &[u8]) -> Option<usize> {
        let r = self.table.ref_of(key);
        let mut used = 0;
        loop {
            let conn = &mut self.table[key];
            if conn.link.is_done() {
                return None;
            }
            let decoder = Decoder::new(self.ctx.limits.order, self.max_message(key));
            match decoder.decode(&data[used..]) {
                Ok(Some((payload, len))) => {
                    used += len;
                    let step = session::on_frame(self.ctx, &mut self.table[key], r, payload, None);
                    self.apply(key, step);
                }
                Ok(None) => return Some(used),
                Err(e) => {
                    warn!("{}: {e}; closing", Table::<ClientConn>::name(r));
                    self.table.doom(key, CloseReason::FrameTooLarge);
                    return None;
                }
            }
        }
    }

    /// The largest message connection `key` may send. Read per message: an inner connection
    /// may send larger ones as soon as it has authenticated, possibly in the same read.
    fn max_message(&self, key: usize) -> u32 {
        match self.table[key].state {
            State::Inner => self.ctx.limits.max_inner_frame,
            _ => self.ctx.limits.max_frame,
        }
    }

    /// A WebSocket connection's bytes: the upgrade request first, then frames.
    fn websocket(&mut self, key: usize, data: &mut [u8]) -> Option<usize> {
        let mut used = 0;
        if !self.ws(key).open {
            used = self.upgrade(key, data)?;
            if used == 0 {
                return Some(0);
            }
        }
        let r = self.table.ref_of(key);
        loop {
            if self.table[key].link.is_done() {
                return None;
            }
            let decoder = ws::Decoder::server(self.max_message(key));
            let conn = &mut self.table[key];
            let state = &mut conn.link.ws_mut().expect("a WebSocket connection").read;
            let (message, len) = match decoder.read(state, &mut data[used..]) {
                Ok(read) => read,
                Err(e) => {
                    debug!("{}: WebSocket: {e}", Table::<ClientConn>::name(r));
                    self.close_websocket(key, e.code, e.reason, CloseReason::BadFrames);
                    return None;
                }
            };
            used += len;
            let Some(message) = message else {
                return Some(used);
            };
            let step = match message {
                // A fragmented message was put together in a buffer of its own: the step may
                // borrow from it, so it is carried out here. Text frames carry JSON, binary
                // frames protobuf.
                WsMessage::Text(text) => {
                    let json = Some(Codec::Json);
                    let step = session::on_frame(self.ctx, conn, r, text.as_bytes(), json);
                    self.apply(key, step);
                    continue;
                }
                WsMessage::Binary(bytes) => {
                    let protobuf = Some(Codec::Protobuf);
                    let step = session::on_frame(self.ctx, conn, r, &bytes, protobuf);
                    self.apply(key, step);
                    continue;
                }
                WsMessage::Ping(payload) => {
                    let pong = |out: &mut Vec<u8>| ws::encode(out, Opcode::Pong, payload);
                    session::activity(self.ctx, conn);
                    session::queue_control(self.ctx, conn, r, payload.len(), pong)
                }
                WsMessage::Pong(_) => {
                    session::activity(self.ctx, conn);
                    Step::Continue
                }
                WsMessage::Close(close) => {
                    let code = close.map_or(CloseCode::Normal.code(), |c| c.code);
                    let echo = |out: &mut Vec<u8>| {
                        ws::encode_with(out, Opcode::Close, |out| {
                            ws::write_close_payload(out, code, "")
                        })
                    };
                    match session::queue_control(self.ctx, conn, r, 4, echo) {
                        Step::Continue => Step::Linger(CloseReason::PeerClosed),
                        step => step,
                    }
                }
            };
            self.apply(key, step);
        }
    }

    /// The upgrade request of a WebSocket connection: answered 101 and the connection opens
    /// (authenticating at once when the request carried a token), or refused and closed.
    /// Returns the bytes the request took, `Some(0)` while it is incomplete.
    fn upgrade(&mut self, key: usize, data: &[u8]) -> Option<usize> {
        let r = self.table.ref_of(key);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = match request.parse(data) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => {
                ws::UpgradeRequest::from_httparse(&request).map(|upgrade| (upgrade, len))
            }
            Ok(httparse::Status::Partial) if data.len() <= MAX_HEAD => return Some(0),
            _ => None,
        };
        let Some((upgrade, len)) = parsed else {
            let rejected = ws::Rejected {
                status: 400,
                message: "not a WebSocket upgrade request",
            };
            return self.refuse_upgrade(key, &rejected);
        };
        let accepted = match ws::accept(&upgrade) {
            Ok(accepted) => accepted,
            Err(rejected) => return self.refuse_upgrade(key, &rejected),
        };
        let choice = self.ctx.limits.codec;
        if let Some(codec) = accepted.codec
            && choice != CodecChoice::Auto
            && codec != choice.before_first_message()
        {
            let rejected = ws::Rejected {
                status: 400,
                message: "this server does not speak that codec",
            };
            return self.refuse_upgrade(key, &rejected);
        }
        let conn = &mut self.table[key];
        conn.codec = accepted.codec;
        if let State::Unauthenticated { resume, .. } = &mut conn.state {
            *resume = Resume::given(&accepted.position);
        }
        accepted.write_response(conn.link.output(&mut self.ctx.core.pool));
        conn.link.ws_mut().expect("a WebSocket connection").open = true;
        // The handshake is over: from now on the auth timeout applies.
        let (due, _) = session::timeout_of(self.ctx, conn);
        self.ctx.core.arm(&mut conn.link, r, due);
        debug!("{}: WebSocket open", Table::<ClientConn>::name(r));
        if let Some(token) = accepted.token {
            let step = session::authenticate(self.ctx, &mut self.table[key], r, &token);
            self.apply(key, step);
        }
        Some(len)
    }

    fn refuse_upgrade(&mut self, key: usize, rejected: &ws::Rejected) -> Option<usize> {
        let r = self.table.ref_of(key);
        debug!(
            "{}: WebSocket upgrade refused: {} {}",
            Table::<ClientConn>::name(r),
            rejected.status,
            rejected.message
        );
        rejected.write_response(self.table[key].link.output(&mut self.ctx.core.pool));
        self.apply(key, Step::Linger(CloseReason::Handshake));
        None
    }

    /// Sends a close frame with `code` and closes once it is out.
    fn close_websocket(&mut self, key: usize, code: CloseCode, why: &str, reason: CloseReason) {
        let out = self.table[key].link.output(&mut self.ctx.core.pool);
        ws::encode_close(out, code, why);
        self.linger(key, reason);
    }

    /// Flushes what is queued, then closes.
    fn linger(&mut self, key: usize, reason: CloseReason) {
        let r = self.table.ref_of(key);
        let link = &mut self.table[key].link;
        let ticks = self.ctx.linger_ticks(link);
        self.ctx.core.linger(link, r, reason, ticks);
        self.table.mark_dirty(key);
    }

    fn ws(&mut self, key: usize) -> &mut Ws {
        self.table[key]
            .link
            .ws_mut()
            .expect("a WebSocket connection")
    }

    /// Carries out what a handler decided for connection `key`.
    pub fn apply(&mut self, key: usize, step: Step) {
        match step {
            Step::Continue => {}
            Step::Close(reason) => self.table.doom(key, reason),
            Step::Linger(reason) => {
                queue_close_frame(&mut self.table[key], reason, &mut self.ctx.core.pool);
                self.linger(key, reason);
            }
            Step::Push(raw) => {
                let from = Table::<ClientConn>::name(self.table.ref_of(key));
                deliver::push_from_inner(self.ctx, self.table, self.push, raw, &from);
            }
        }
    }
}

/// Queues the close frame that tells a WebSocket client why the server closes it, if the
/// reason is the server's to tell. A lingering close queues it when it starts: it then goes
/// out after the output already queued, and before the half-close.
pub fn queue_close_frame(conn: &mut ClientConn, reason: CloseReason, pool: &mut BufferPool) {
    if conn.link.ws().is_some_and(|ws| ws.open)
        && let Some((code, why)) = close_code(reason)
    {
        ws::encode_close(conn.link.output(pool), code, why);
    }
}

/// Last words to a connection about to be freed, written only if the socket takes them at
/// once: a WebSocket close frame saying why (unless it was queued when a lingering close
/// started), a TLS close_notify or pending alert.
pub fn goodbye(conn: &mut ClientConn, reason: CloseReason, pool: &mut BufferPool) {
    let mut words = Vec::new();
    if conn.link.closing.is_none()
        && conn.link.ws().is_some_and(|ws| ws.open)
        && let Some((code, why)) = close_code(reason)
    {
        ws::encode_close(&mut words, code, why);
    }
    if !words.is_empty() || conn.link.tls().is_some() {
        conn.link.last_words(&words, pool);
    }
}

/// The close frame a WebSocket client is sent when the server closes it for `reason`, if the
/// reason is the server's to tell.
fn close_code(reason: CloseReason) -> Option<(CloseCode, &'static str)> {
    Some(match reason {
        CloseReason::AuthTimeout => (CloseCode::Policy, "auth timeout"),
        CloseReason::HeartbeatTimeout => (CloseCode::Policy, "heartbeat timeout"),
        CloseReason::AuthFailures => (CloseCode::Policy, "authentication failed"),
        CloseReason::Kicked => (CloseCode::Policy, "kicked"),
        CloseReason::SlowConsumer => (CloseCode::Policy, "slow consumer"),
        CloseReason::BadFrames => (CloseCode::Protocol, "bad messages"),
        CloseReason::Shutdown => (CloseCode::GoingAway, "shutdown"),
        _ => return None,
    })
}
