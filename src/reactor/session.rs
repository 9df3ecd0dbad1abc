//! The Plex protocol on a client connection (PROTOCOL.md §3): what each frame does in each
//! state. Unauthenticated connections may only authenticate; users heartbeat and send upstream
//! messages; inner connections heartbeat and push. Every function here works on one
//! connection and returns a `Step` saying what the reactor is to do next; none closes or
//! frees anything, and a push is handed back up rather than delivered from here.

use log::{debug, info, trace, warn};

use super::cluster::Waiting;
use super::conn::{ClientConn, Resume, Resuming, State};
use super::conns::{ConnRef, Table};
use super::ctx::{Auth, AuthJob, Core, Ctx, Limits, deadline};
use crate::CloseReason;
use crate::auth::{AuthRequest, AuthTicket, AuthVerdict};
use crate::history::{Recovery, Retained};
use crate::protocol::message::{Position, RawMessage, RawStr};
use crate::protocol::{Codec, CodecChoice, CodecError, proto, uri, ws};

/// Output an unauthenticated connection may leave unread: a few answers, not `MaxPendingBytes`.
pub const UNAUTHENTICATED_OUTPUT: usize = 4 * 1024;
/// Upper bound of an encoded reply frame (`{"seq":<i64>,"uri":"/auth/success"}` and header).
const REPLY_MAX: usize = 64;
/// Upper bound of a replayed push's frame beside its strings (escaping may double those).
const REPLAY_OVERHEAD: usize = 96;

/// What the reactor does after a frame.
#[derive(Debug)]
pub enum Step<'a> {
    Continue,
    /// Free the connection at the end of the turn.
    Close(CloseReason),
    /// Flush what is queued, then close.
    Linger(CloseReason),
    /// An inner connection's push request, still escaped as it stands in the frame.
    Push(RawStr<'a>),
}

fn name(r: ConnRef) -> String {
    Table::<ClientConn>::name(r)
}

/// Handles one message payload. `sent_as` is the codec its transport says it is in (a
/// WebSocket text or binary frame); a length-prefixed frame says nothing, and the first one
/// fixes the connection's codec from its first byte (PROTOCOL.md §11).
pub fn on_frame<'a>(
    ctx: &mut Ctx,
    conn: &mut ClientConn,
    r: ConnRef,
    payload: &'a [u8],
    sent_as: Option<Codec>,
) -> Step<'a> {
    activity(ctx, conn);
    if payload.is_empty() {
        return Step::Continue; // a keep-alive frame
    }
    let choice = ctx.limits.codec;
    let codec = match (conn.codec, sent_as) {
        (Some(fixed), Some(sent)) if fixed != sent => None,
        (Some(fixed), _) => Some(fixed),
        (None, sent) => sent
            .or(choice.codec_for(payload))
            .filter(|&c| choice == CodecChoice::Auto || c == choice.before_first_message()),
    };
    let decoded = match codec {
        Some(Codec::Json) => RawMessage::decode(payload).map_err(CodecError::Json),
        Some(Codec::Protobuf) => proto::decode_raw(payload).map_err(CodecError::Protobuf),
        None => Err(CodecError::Mismatch),
    };
    if decoded.is_ok() {
        conn.codec = codec;
    }
    let message = match decoded {
        Ok(message) => message,
        Err(e) => {
            ctx.counters.bad_frames += 1;
            conn.bad_frames += 1;
            debug!("{}: {e}", name(r));
            if u32::from(conn.bad_frames) >= ctx.limits.max_bad_frames {
                warn!("{}: {} malformed frames; closing", name(r), conn.bad_frames);
                return Step::Close(CloseReason::BadFrames);
            }
            return Step::Continue;
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
        trace!("{}: {:?} {body:?}", name(r), message.uri);
    }
    match conn.state {
        State::Unauthenticated { pending, .. } => {
            on_unauthenticated(ctx, conn, r, message, pending)
        }
        State::User { .. } | State::Resuming(_) => on_user(ctx, conn, r, message),
        State::Inner => on_inner(ctx, conn, r, message),
    }
}

/// Anything an authenticated connection sends keeps it alive; before authentication nothing
/// does (the auth timeout counts from the accept).
pub fn activity(ctx: &Ctx, conn: &mut ClientConn) {
    if !matches!(conn.state, State::Unauthenticated { .. }) {
        conn.link.last_active = ctx.core.clock.tick32();
    }
}

fn on_unauthenticated<'a>(
    ctx: &mut Ctx,
    conn: &mut ClientConn,
    r: ConnRef,
    message: RawMessage<'a>,
    pending: bool,
) -> Step<'a> {
    match &*message.uri {
        // One decision at a time; a client retrying meanwhile gets the first answer.
        uri::AUTH | uri::INNER_AUTH if pending => {
            debug!(
                "{}: {:?} while an authentication is pending; ignored",
                name(r),
                message.uri
            );
            Step::Continue
        }
        uri::AUTH => {
            if let State::Unauthenticated { resume, .. } = &mut conn.state {
                *resume = Resume::given(&message.position);
            }
            authenticate(ctx, conn, r, &message.body.to_cow())
        }
        uri::INNER_AUTH => {
            if constant_time_eq(
                message.body.to_cow().as_bytes(),
                ctx.limits.inner_password.as_bytes(),
            ) {
                become_inner(ctx, conn, r)
            } else {
                auth_failed(ctx, conn, r, "wrong inner password")
            }
        }
        // Anything else before authenticating is answered `/auth/failed`, as in the original,
        // and counts as a failed attempt: a client cannot make the server answer forever.
        other => {
            let why = format!("{other:?} before authenticating");
            auth_failed(ctx, conn, r, &why)
        }
    }
}

/// Runs the auth function about a client's token, or queues it for the webhook. Called for
/// `/auth/server`, and for the token a WebSocket upgrade carried.
pub fn authenticate<'a>(ctx: &mut Ctx, conn: &mut ClientConn, r: ConnRef, token: &str) -> Step<'a> {
    let verdict = match &mut ctx.auth {
        Auth::Function(auth) => auth(AuthRequest {
            token,
            ticket: AuthTicket(r),
            stream: &conn.link.stream,
        }),
        Auth::Webhook(jobs) => {
            jobs.push(AuthJob {
                ticket: r,
                token: token.to_owned(),
                remote: conn.link.stream.peer_addr().ok(),
            });
            AuthVerdict::Pending
        }
    };
    match verdict {
        AuthVerdict::Accept(uid) => decide(ctx, conn, r, Ok(uid)),
        AuthVerdict::Reject => decide(ctx, conn, r, Err("token rejected")),
        AuthVerdict::Pending => {
            if let State::Unauthenticated { pending, .. } = &mut conn.state {
                *pending = true;
            }
            Step::Continue
        }
    }
}

/// Applies an auth decision that was pending (from the handle or the webhook) to the
/// connection it was asked for. A decision nobody is waiting for (a second answer, or one for
/// a connection that authenticated otherwise) changes nothing.
pub fn finish_auth<'a>(
    ctx: &mut Ctx,
    conn: &mut ClientConn,
    r: ConnRef,
    verdict: Result<String, &str>,
) -> Step<'a> {
    let State::Unauthenticated { pending, .. } = &mut conn.state else {
        debug!(
            "{}: auth decision for an authenticated connection; ignored",
            name(r)
        );
        return Step::Continue;
    };
    if !*pending {
        debug!("{}: auth decision nobody is waiting for; ignored", name(r));
        return Step::Continue;
    }
    *pending = false;
    decide(ctx, conn, r, verdict)
}

fn decide<'a>(
    ctx: &mut Ctx,
    conn: &mut ClientConn,
    r: ConnRef,
    verdict: Result<String, &str>,
) -> Step<'a> {
    match verdict {
        Ok(uid) if !uid.is_empty() => become_user(ctx, conn, r, &uid),
        Ok(_) => auth_failed(ctx, conn, r, "empty uid"),
        Err(why) => auth_failed(ctx, conn, r, why),
    }
}

fn become_user<'a>(ctx: &mut Ctx, conn: &mut ClientConn, r: ConnRef, uid: &str) -> Step<'a> {
    let (uid, online) = ctx.registry.add(uid, r.key() as u32);
    if let Some(cluster) = &mut ctx.cluster {
        cluster.presence(&uid, ctx.registry.keys(&uid).len());
    }
    let state = std::mem::replace(&mut conn.state, State::User { uid: uid.clone() });
    ctx.gauges.users += 1;
    debug!("{}: authenticated as uid {uid:?}", name(r));
    authenticated(ctx, conn, r);
    if online && let Some(hook) = &mut ctx.hooks.on_online {
        hook(&uid);
    }
    let resume = match state {
        State::Unauthenticated {
            resume: Some(resume),
            ..
        } => resume,
        _ => return reply(ctx, conn, r, uri::AUTH_SUCCESS, ""),
    };
    match ctx.cluster.as_mut().filter(|c| c.history) {
        // The history is in the cluster: /auth/success waits for it, and the uid's pushes
        // meanwhile are held (the presence just sent comes before the read, so every push
        // after the read reaches this node).
        Some(cluster) => match cluster.history(&uid, 0, Waiting::Resume { conn: r }) {
            None => {
                conn.state = State::Resuming(Box::new(Resuming {
                    uid,
                    resume: *resume,
                    held: Vec::new(),
                    held_bytes: 0,
                }));
                Step::Continue
            }
            Some(_) => {
                let lost = Recovery::lost();
                replay(ctx, conn, r, &resume, lost, &[])
            }
        },
        None => {
            let recovery = match &ctx.history {
                Some(history) => history.recover(&uid, &resume.epoch, resume.offset),
                None => Recovery::lost(),
            };
            replay(ctx, conn, r, &resume, recovery, &[])
        }
    }
}

/// A client that gave its last place: `/auth/success` says whether it missed anything, then
/// every retained push after that place follows, in order, then the pushes `held` while the
/// history was read (those not in it), before anything live.
pub fn replay<'a>(
    ctx: &mut Ctx,
    conn: &mut ClientConn,
    r: ConnRef,
    resume: &Resume,
    recovery: Recovery,
    held: &[(u64, Box<[u8]>)],
) -> Step<'a> {
    // A replay larger than the connection may hold keeps its newest pushes, and says that
    // the client missed the others.
    let (mut recovered, mut pushes) = (recovery.recovered, recovery.pushes.as_slice());
    let room = ctx
        .limits
        .max_pending
        .saturating_sub(conn.link.pending() + 2 * REPLY_MAX);
    let cost =
        |p: &Retained| REPLAY_OVERHEAD + recovery.epoch.len() + 2 * (p.uri.len() + p.body.len());
    let mut total: usize = pushes.iter().map(cost).sum();
    while total > room && !pushes.is_empty() {
        total -= cost(&pushes[0]);
        pushes = &pushes[1..];
        recovered = false;
    }
    debug!(
        "{}: resumes at {}:{}, recovered {recovered}, {} to replay",
        name(r),
        resume.epoch,
        resume.offset,
        pushes.len()
    );
    let body = serde_json::json!({
        "recovered": recovered,
        "epoch": recovery.epoch,
        "offset": recovery.offset,
    })
    .to_string();
    let step = reply(ctx, conn, r, uri::AUTH_SUCCESS, &body);
    if !matches!(step, Step::Continue) {
        return step;
    }
    let order = ctx.limits.order;
    let form = conn.form(ctx.limits.codec.before_first_message());
    for push in pushes {
        let at = Position {
            offset: push.offset,
            epoch: recovery.epoch.as_str().into(),
        };
        let write =
            |out: &mut Vec<u8>| form.write_at(out, order, push.seq, &push.uri, &push.body, &at);
        if let Err(reason) = queue(&mut ctx.core, &ctx.limits, conn, r, cost(push), write) {
            return Step::Close(reason);
        }
    }
    // Those the history already held were in the replay; those without a place were never
    // kept (InnerPushLocal, or Redis unusable) and go too.
    let fresh = |offset: u64| offset == 0 || offset > recovery.offset;
    for (_, frame) in held.iter().filter(|(offset, _)| fresh(*offset)) {
        let write = |out: &mut Vec<u8>| out.extend_from_slice(frame);
        if let Err(reason) = queue(&mut ctx.core, &ctx.limits, conn, r, frame.len(), write) {
            return Step::Close(reason);
        }
    }
    Step::Continue
}

fn become_inner<'a>(ctx: &mut Ctx, conn: &mut ClientConn, r: ConnRef) -> Step<'a> {
    conn.state = State::Inner;
    ctx.gauges.inner += 1;
    info!("{}: inner connection authenticated", name(r));
    authenticated(ctx, conn, r);
    reply(ctx, conn, r, uri::AUTH_SUCCESS, "")
}

/// The heartbeat timeout runs from authentication, as in the original; it may be shorter
/// than the auth timeout, so the timer is set again.
fn authenticated(ctx: &mut Ctx, conn: &mut ClientConn, r: ConnRef) {
    conn.link.last_active = ctx.core.clock.tick32();
    let (due, _) = timeout_of(ctx, conn);
    ctx.core.arm(&mut conn.link, r, due);
}

/// Answers `/auth/failed`; closes the connection at `MaxAuthFailures`.
fn auth_failed<'a>(ctx: &mut Ctx, conn: &mut ClientConn, r: ConnRef, why: &str) -> Step<'a> {
    ctx.counters.auth_failures += 1;
    let State::Unauthenticated { failures, .. } = &mut conn.state else {
        unreachable!("only unauthenticated connections authenticate");
    };
    *failures += 1;
    let failures = *failures;
    debug!(
        "{}: authentication failed ({why}), {failures} so far",
        name(r)
    );
    match reply(ctx, conn, r, uri::AUTH_FAILED, "") {
        Step::Continue if failures >= ctx.limits.max_auth_failures => {
            warn!("{}: {failures} failed authentications; closing", name(r));
            Step::Linger(CloseReason::AuthFailures)
        }
        step => step,
    }
}

fn on_user<'a>(
    ctx: &mut Ctx,
    conn: &mut ClientConn,
    r: ConnRef,
    message: RawMessage<'a>,
) -> Step<'a> {
    match &*message.uri {
        uri::HEARTBEAT => reply(ctx, conn, r, uri::HEARTBEAT, ""),
        // Already authenticated: ignored without a reply, as in the original.
        uri::AUTH | uri::INNER_AUTH => Step::Continue,
        uri::SEND_MSG => {
            // The original let any end user push to any uid; only inner connections may.
            ctx.counters.refused += 1;
            warn!("{}: push refused: user connections may not push", name(r));
            Step::Continue
        }
        uri::ACK => {
            // Its device has every push of its uid up to this offset.
            let offset = message.body.to_cow().trim().parse::<u64>();
            let (Ok(offset), Some(uid)) = (offset, conn.uid()) else {
                debug!("{}: /ack without an offset; ignored", name(r));
                return Step::Continue;
            };
            let epoch = &message.position.epoch;
            if let Some(history) = &mut ctx.history {
                history.ack(uid, epoch, offset);
            } else if let Some(cluster) = ctx.cluster.as_mut().filter(|c| c.history) {
                cluster.ack(uid, epoch, offset);
            }
            Step::Continue
        }
        _ => {
            ctx.counters.upstream += 1;
            if let (Some(hook), Some(uid)) = (&mut ctx.hooks.on_message, conn.uid()) {
                hook(uid, message.into_owned());
            }
            Step::Continue
        }
    }
}

fn on_inner<'a>(
    ctx: &mut Ctx,
    conn: &mut ClientConn,
    r: ConnRef,
    message: RawMessage<'a>,
) -> Step<'a> {
    match &*message.uri {
        uri::HEARTBEAT => reply(ctx, conn, r, uri::HEARTBEAT, ""),
        uri::SEND_MSG => Step::Push(message.body),
        other => {
            trace!("{}: inner connection sent {other:?}; ignored", name(r));
            Step::Continue
        }
    }
}

/// Queues a frame `{seq, uri, body}` to the connection, in its form.
fn reply<'a>(ctx: &mut Ctx, conn: &mut ClientConn, r: ConnRef, uri: &str, body: &str) -> Step<'a> {
    let seq = ctx.next_seq();
    let order = ctx.limits.order;
    let form = conn.form(ctx.limits.codec.before_first_message());
    // Escaping at most doubles the body (Go's \u escapes of <, >, & take six bytes each, but
    // a reply's body is ours: numbers and field names).
    let len = REPLY_MAX + 2 * body.len();
    let queued = queue(&mut ctx.core, &ctx.limits, conn, r, len, |out| {
        form.write(out, order, seq, uri, body)
    });
    match queued {
        Ok(()) => Step::Continue,
        Err(reason) => {
            debug!("{}: not reading its answers; closing", name(r));
            Step::Close(reason)
        }
    }
}

/// Queues a WebSocket control frame (a pong, a close) of at most `len` payload bytes.
pub fn queue_control<'a>(
    ctx: &mut Ctx,
    conn: &mut ClientConn,
    r: ConnRef,
    len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> Step<'a> {
    let len = len + ws::MAX_HEADER_LEN;
    match queue(&mut ctx.core, &ctx.limits, conn, r, len, write) {
        Ok(()) => Step::Continue,
        Err(reason) => Step::Close(reason),
    }
}

/// Appends at most `len` bytes written by `write` to a connection's output, within its
/// limits: past the hard cap (small before authentication) it is a slow consumer at once;
/// over the soft limit it starts a clock (`SoftPendingSeconds`) that its timer checks. The
/// caller marks it dirty.
pub fn queue(
    core: &mut Core,
    limits: &Limits,
    conn: &mut ClientConn,
    r: ConnRef,
    len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> Result<(), CloseReason> {
    let pending = conn.link.pending();
    let cap = match conn.state {
        State::Unauthenticated { .. } => UNAUTHENTICATED_OUTPUT.min(limits.max_pending),
        _ => limits.max_pending,
    };
    if pending + len > cap {
        return Err(CloseReason::SlowConsumer);
    }
    if pending <= limits.soft_pending {
        conn.over_soft_since = 0; // it caught up since we last looked
    }
    write(conn.link.output(&mut core.pool));
    if conn.over_soft_since == 0 && conn.link.pending() > limits.soft_pending {
        let now = core.clock.tick32().max(1);
        conn.over_soft_since = now;
        let idle = deadline(conn.link.last_active, limits.heartbeat_ticks);
        core.arm(
            &mut conn.link,
            r,
            deadline(now, limits.soft_ticks).min(idle),
        );
    }
    Ok(())
}

/// When the connection's one timer is due in its current state, and why it closes then.
pub fn timeout_of(ctx: &Ctx, conn: &ClientConn) -> (u64, CloseReason) {
    let link = &conn.link;
    let limits = &ctx.limits;
    if let Some(reason) = link.closing {
        return (deadline(link.last_active, ctx.linger_ticks(link)), reason);
    }
    if conn.is_handshaking() {
        let due = deadline(link.last_active, limits.handshake_ticks);
        return (due, CloseReason::HandshakeTimeout);
    }
    let idle = match conn.state {
        State::Unauthenticated { .. } => {
            return (
                deadline(link.last_active, limits.auth_ticks),
                CloseReason::AuthTimeout,
            );
        }
        State::User { .. } | State::Resuming(_) | State::Inner => (
            deadline(link.last_active, limits.heartbeat_ticks),
            CloseReason::HeartbeatTimeout,
        ),
    };
    if conn.over_soft_since != 0 {
        let slow = deadline(conn.over_soft_since, limits.soft_ticks);
        if slow < idle.0 {
            return (slow, CloseReason::SlowConsumer);
        }
    }
    idle
}

/// Compares secrets without leaking, through timing, how long a prefix matched or how long
/// the secret is.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let longest = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..longest {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        // A shorter candidate padded with what would match still fails.
        assert!(!constant_time_eq(b"ab", b"ab\xff"));
    }
}
