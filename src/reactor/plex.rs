//! The Plex protocol on a connection (PROTOCOL.md §3): what each frame does in each state.
//! Unauthenticated connections may only authenticate; users heartbeat and send upstream
//! messages; inner connections heartbeat and push. Pushes from every source end in `push`.

use log::{debug, info, trace, warn};

use super::Reactor;
use super::conn::{CloseReason, ConnRef, State};
use crate::auth::{AuthRequest, AuthTicket, AuthVerdict};
use crate::protocol::frame::Decoder;
use crate::protocol::message::{PushRequest, RawMessage, encode_message};
use crate::protocol::uri;

/// Whether the connection still takes input after a frame: `false` once it is closed or
/// closing.
type Alive = bool;

impl Reactor {
    /// Processes the complete frames at the start of `bytes`; returns how many bytes they
    /// took, or `None` if the connection was closed.
    pub(super) fn process_frames(&mut self, key: usize, bytes: &[u8]) -> Option<usize> {
        let mut used = 0;
        loop {
            // The limit is read per frame: an inner connection may send larger ones as soon as
            // it has authenticated, possibly in the same read.
            let max = match self.conns[key].state {
                State::Inner => self.limits.max_inner_frame,
                _ => self.limits.max_frame,
            };
            match Decoder::new(self.limits.order, max).decode(&bytes[used..]) {
                Ok(Some((payload, len))) => {
                    used += len;
                    if !self.on_frame(key, payload) {
                        return None;
                    }
                }
                Ok(None) => return Some(used),
                Err(e) => {
                    warn!("#{key}: {e}; closing");
                    self.close(key, CloseReason::FrameTooLarge);
                    return None;
                }
            }
        }
    }

    fn on_frame(&mut self, key: usize, payload: &[u8]) -> Alive {
        let now = self.clock.tick32();
        let conn = &mut self.conns[key];
        if payload.is_empty() {
            // A keep-alive frame: valid, and activity.
            if !matches!(conn.state, State::Unauthenticated { .. }) {
                conn.last_active = now;
            }
            return true;
        }
        let message = match RawMessage::decode(payload) {
            Ok(message) => message,
            Err(e) => {
                self.counters.bad_frames += 1;
                conn.bad_frames += 1;
                debug!("#{key}: {e}");
                if conn.bad_frames >= self.limits.max_bad_frames {
                    warn!("#{key}: {} malformed frames; closing", conn.bad_frames);
                    self.close(key, CloseReason::BadFrames);
                    return false;
                }
                return true;
            }
        };
        if log::log_enabled!(log::Level::Trace) {
            // Tokens and the inner password are secrets: never in the log.
            let secret = matches!(&*message.uri, uri::AUTH | uri::INNER_AUTH);
            let body = if secret {
                "<redacted>".into()
            } else {
                message.body.to_cow()
            };
            trace!("#{key}: {} {body:?}", message.uri);
        }
        match conn.state {
            State::Unauthenticated { .. } => self.on_unauthenticated(key, message),
            State::User { .. } => {
                conn.last_active = now;
                self.on_user(key, message);
                true
            }
            State::Inner => {
                conn.last_active = now;
                self.on_inner(key, message);
                true
            }
            State::Http { .. } | State::Webhook(_) => {
                unreachable!("HTTP connections do not carry frames")
            }
        }
    }

    fn on_unauthenticated(&mut self, key: usize, message: RawMessage) -> Alive {
        let State::Unauthenticated { pending, .. } = self.conns[key].state else {
            unreachable!("called for unauthenticated connections");
        };
        match &*message.uri {
            // One decision at a time; a client retrying meanwhile gets the first answer.
            uri::AUTH | uri::INNER_AUTH if pending => {
                debug!(
                    "#{key}: {} while an authentication is pending; ignored",
                    message.uri
                );
                true
            }
            uri::AUTH => self.authenticate(key, &message.body.to_cow()),
            uri::INNER_AUTH => {
                if constant_time_eq(
                    message.body.to_cow().as_bytes(),
                    self.limits.inner_password.as_bytes(),
                ) {
                    self.become_inner(key);
                    true
                } else {
                    self.auth_failed(key, "wrong inner password")
                }
            }
            other => {
                debug!("#{key}: {other:?} before authenticating");
                self.reply(key, uri::AUTH_FAILED)
            }
        }
    }

    /// Runs the auth function (or asks the webhook) about a client's token.
    fn authenticate(&mut self, key: usize, token: &str) -> Alive {
        let conn = &self.conns[key];
        let ticket = ConnRef {
            key: key as u32,
            generation: conn.generation,
        };
        let verdict = match &mut self.auth {
            Some(auth) => auth(AuthRequest {
                token,
                ticket: AuthTicket(ticket),
                stream: &conn.stream,
            }),
            None => {
                let remote = conn.stream.peer_addr().ok();
                self.webhook_submit(ticket, token, remote);
                AuthVerdict::Pending
            }
        };
        match verdict {
            AuthVerdict::Accept(uid) => self.finish_auth(ticket, Ok(uid)),
            AuthVerdict::Reject => self.finish_auth(ticket, Err("token rejected")),
            AuthVerdict::Pending => {
                // The webhook may have answered already (an unreachable service fails at once).
                if self.is_live(ticket)
                    && let State::Unauthenticated { pending, .. } = &mut self.conns[key].state
                {
                    *pending = true;
                }
                true
            }
        }
    }

    /// Applies an auth decision to the connection it was made for, if that connection is
    /// still there and still waiting; returns whether it takes further input.
    pub(super) fn finish_auth(&mut self, ticket: ConnRef, verdict: Result<String, &str>) -> Alive {
        if !self.is_live(ticket) {
            debug!("auth decision for a connection that has gone; ignored");
            return false;
        }
        let key = ticket.key as usize;
        let State::Unauthenticated { pending, .. } = &mut self.conns[key].state else {
            debug!("#{key}: auth decision for an authenticated connection; ignored");
            return true;
        };
        *pending = false;
        match verdict {
            Ok(uid) if !uid.is_empty() => {
                self.become_user(key, &uid);
                true
            }
            Ok(_) => self.auth_failed(key, "empty uid"),
            Err(why) => self.auth_failed(key, why),
        }
    }

    fn become_user(&mut self, key: usize, uid: &str) {
        let (uid, online) = self.registry.add(uid, key as u32);
        let conn = &mut self.conns[key];
        conn.state = State::User { uid: uid.clone() };
        // The heartbeat timeout runs from authentication, as in the original.
        conn.last_active = self.clock.tick32();
        self.arm_timer(key);
        self.gauges.users += 1;
        debug!("#{key}: authenticated as uid {uid}");
        if self.reply(key, uri::AUTH_SUCCESS)
            && online
            && let Some(hook) = &mut self.hooks.on_online
        {
            hook(&uid);
        }
    }

    fn become_inner(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.state = State::Inner;
        conn.last_active = self.clock.tick32();
        self.arm_timer(key);
        self.gauges.inner += 1;
        info!("#{key}: inner connection authenticated");
        self.reply(key, uri::AUTH_SUCCESS);
    }

    /// Answers `/auth/failed`; closes the connection at `MaxAuthFailures`.
    fn auth_failed(&mut self, key: usize, why: &str) -> Alive {
        self.counters.auth_failures += 1;
        let State::Unauthenticated { failures, .. } = &mut self.conns[key].state else {
            unreachable!("only unauthenticated connections authenticate");
        };
        *failures += 1;
        let failures = *failures;
        debug!("#{key}: authentication failed ({why}), {failures} so far");
        if !self.reply(key, uri::AUTH_FAILED) {
            return false;
        }
        if failures >= self.limits.max_auth_failures {
            warn!("#{key}: {failures} failed authentications; closing");
            self.close_after_flush(key, CloseReason::AuthFailures);
            return false;
        }
        true
    }

    fn on_user(&mut self, key: usize, message: RawMessage) {
        match &*message.uri {
            uri::HEARTBEAT => {
                self.reply(key, uri::HEARTBEAT);
            }
            // Already authenticated: ignored without a reply, as in the original.
            uri::AUTH | uri::INNER_AUTH => {}
            uri::SEND_MSG => {
                // The original let any end user push to any uid; only inner connections may.
                self.counters.refused += 1;
                warn!("#{key}: push refused: user connections may not push");
            }
            _ => {
                self.counters.upstream += 1;
                if let (Some(hook), State::User { uid }) =
                    (&mut self.hooks.on_message, &self.conns[key].state)
                {
                    hook(uid, message.into_owned());
                }
            }
        }
    }

    fn on_inner(&mut self, key: usize, message: RawMessage) {
        match &*message.uri {
            uri::HEARTBEAT => {
                self.reply(key, uri::HEARTBEAT);
            }
            uri::SEND_MSG => {
                // The push body is JSON inside a JSON string: unescaped into a buffer kept
                // across frames, then read in place, so a push allocates nothing.
                let mut buf = std::mem::take(&mut self.push_body);
                match PushRequest::decode(message.body.unescape_into(&mut buf)) {
                    Ok(request) if request.uid.is_empty() => {
                        self.counters.refused += 1;
                        debug!("#{key}: push refused: uid is required");
                    }
                    Ok(request) => match uri::check_push_uri(&request.uri) {
                        Ok(()) => {
                            self.push(&[&*request.uid], &request.uri, &request.body);
                        }
                        Err(e) => {
                            self.counters.refused += 1;
                            debug!("#{key}: push to uid {} refused: {e}", request.uid);
                        }
                    },
                    Err(e) => {
                        self.counters.refused += 1;
                        debug!("#{key}: push refused: {e}");
                    }
                }
                self.push_body = buf;
            }
            other => trace!("#{key}: inner connection sent {other:?}; ignored"),
        }
    }

    /// Queues a frame `{seq, uri}` to one connection; `false` if that closed it.
    fn reply(&mut self, key: usize, uri: &str) -> Alive {
        let seq = self.seq.next(self.clock.unix_ms);
        let conn = &mut self.conns[key];
        if conn.pending() + REPLY_MAX > self.limits.max_pending {
            // It is not reading its answers.
            self.close(key, CloseReason::SlowConsumer);
            return false;
        }
        encode_message(
            conn.output(&mut self.outbox.pool),
            self.limits.order,
            seq,
            uri,
            "",
        );
        self.outbox.mark_dirty(key, conn);
        true
    }

    /// Delivers `{seq, uri, body}` to every live connection of each uid; the frame is encoded
    /// once. Returns the number of connections it was queued to. The caller has checked `uri`.
    pub(crate) fn push<S: AsRef<str>>(&mut self, uids: &[S], uri: &str, body: &str) -> usize {
        self.encode_push(uri, body);
        let mut delivered = 0;
        for uid in uids {
            let keys = self.registry.keys(uid.as_ref());
            if keys.is_empty() {
                self.counters.dropped += 1;
            }
            for &key in keys {
                let key = key as usize;
                if self.outbox.queue(key, &mut self.conns[key], &self.frame) {
                    delivered += 1;
                } else {
                    self.slow.push(key);
                }
            }
        }
        self.finish_push(delivered)
    }

    /// Delivers `{seq, uri, body}` to every user connection.
    pub(crate) fn broadcast(&mut self, uri: &str, body: &str) -> usize {
        self.encode_push(uri, body);
        let mut delivered = 0;
        for (key, conn) in self.conns.iter_mut() {
            if matches!(conn.state, State::User { .. }) {
                if self.outbox.queue(key, conn, &self.frame) {
                    delivered += 1;
                } else {
                    self.slow.push(key);
                }
            }
        }
        self.finish_push(delivered)
    }

    fn encode_push(&mut self, uri: &str, body: &str) {
        let seq = self.seq.next(self.clock.unix_ms);
        self.frame.clear();
        encode_message(&mut self.frame, self.limits.order, seq, uri, body);
    }

    fn finish_push(&mut self, delivered: usize) -> usize {
        self.counters.pushes += 1;
        self.counters.delivered += delivered as u64;
        let mut slow = std::mem::take(&mut self.slow);
        for key in slow.drain(..) {
            warn!(
                "#{key}: more than {} bytes unread; closing slow consumer",
                self.limits.max_pending
            );
            self.close(key, CloseReason::SlowConsumer);
        }
        self.slow = slow;
        delivered
    }
}

/// Upper bound of an encoded reply frame (`{"seq":<i64>,"uri":"/auth/success"}` and header).
const REPLY_MAX: usize = 64;

/// Compares secrets without leaking, through timing, how long a prefix matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
