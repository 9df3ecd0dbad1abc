//! Pushes, broadcasts and kicks: the operations that reach across client connections. Every
//! push path (inner TCP, HTTP, the handle) ends here. The frame is encoded once and queued to
//! each target; a target that cannot take it is doomed as a slow consumer, never freed here.

use std::borrow::Cow;

use log::{debug, warn};

use super::conn::{ClientConn, Form, Framing};
use super::conns::{ConnRef, Queued, Table};
use super::ctx::{Core, Ctx, Limits};
use super::session;
use crate::CloseReason;
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::message::{PushRequest, RawStr};
use crate::protocol::{ByteOrder, Codec, Position, uri, ws};

/// Buffers a push reuses from one to the next, so that a push allocates nothing.
#[derive(Default)]
pub struct PushBuffers {
    pub frames: Frames,
    /// The unescaped body of the `/logic/send/msg` being read.
    pub body: String,
}

/// The push being delivered: its message encoded at most once per codec, and framed at most
/// once for each form (framing and codec) its targets use. The length-prefixed frame is
/// written first, straight from the message; a WebSocket frame copies its payload.
#[derive(Default)]
pub struct Frames {
    framed: [Vec<u8>; Form::COUNT],
    /// Bit `i` set: `framed[i]` is made for the current push.
    ready: u8,
}

/// One push: `{seq, uri, body}`.
#[derive(Clone, Copy)]
struct Push<'a> {
    seq: i64,
    uri: &'a str,
    body: &'a str,
    /// Its place in the uid's history, when history is on.
    at: &'a Position<'a>,
}

impl Frames {
    /// The push framed for `form`, encoded the first time a form needs it.
    fn get(&mut self, push: Push, form: Form, order: ByteOrder) -> &[u8] {
        let length = Form {
            framing: Framing::Length,
            codec: form.codec,
        };
        self.make(length.index(), |out| {
            length.write_at(out, order, push.seq, push.uri, push.body, push.at)
        });
        if form != length {
            let (head, tail) = self.framed.split_at_mut(form.index());
            let payload = &head[length.index()][HEADER_LEN..];
            if self.ready & (1 << form.index()) == 0 {
                tail[0].clear();
                form.frame(&mut tail[0], order, payload);
                self.ready |= 1 << form.index();
            }
        }
        &self.framed[form.index()]
    }

    fn make(&mut self, i: usize, write: impl FnOnce(&mut Vec<u8>)) {
        if self.ready & (1 << i) == 0 {
            self.framed[i].clear();
            write(&mut self.framed[i]);
            self.ready |= 1 << i;
        }
    }
}

/// The most bytes a place in the history adds to a frame: `,"offset":<u64>,"epoch":"<epoch>"`.
const POSITION_MAX: usize = 64;

/// A push that no connection could ever take.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub len: usize,
    pub max: usize,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the frame would take {} bytes, over MaxPendingBytes ({})",
            self.len, self.max
        )
    }
}

/// Delivers `{seq, uri, body}` to every live connection of each uid. Returns the number of
/// connections it was queued to. The caller has checked `uri`.
pub fn push<S: AsRef<str>>(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    frames: &mut Frames,
    uids: &[S],
    uri: &str,
    body: &str,
) -> Result<usize, TooLarge> {
    let push = start(ctx, frames, uri, body)?;
    let Ctx {
        core,
        limits,
        registry,
        counters,
        history,
        ..
    } = ctx;
    let mut delivered = 0;
    for uid in uids {
        let uid = uid.as_ref();
        let keys = registry.keys(uid);
        if keys.is_empty() {
            counters.dropped += 1;
        }
        // With history each uid's push has its own place in it, and so its own frames.
        let at = history.as_mut().map(|history| {
            let (epoch, offset) = history.append(uid, push.seq, uri, body, core.clock.tick);
            frames.ready = 0;
            (epoch, offset)
        });
        let position = at.as_ref().map(|(epoch, offset)| Position {
            offset: *offset,
            epoch: Cow::Borrowed(&**epoch),
        });
        let push = Push {
            at: position.as_ref().unwrap_or(push.at),
            ..push
        };
        delivered += clients.queue_to(Some(keys), |r, conn| {
            queue_push(core, limits, r, conn, frames, push)
        });
    }
    Ok(finish(ctx, delivered))
}

/// Delivers `{seq, uri, body}` to every user connection.
pub fn broadcast(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    frames: &mut Frames,
    uri: &str,
    body: &str,
) -> Result<usize, TooLarge> {
    let push = start(ctx, frames, uri, body)?;
    let (core, limits) = (&mut ctx.core, &ctx.limits);
    let delivered = clients.queue_to(None, |r, conn| {
        queue_push(core, limits, r, conn, frames, push)
    });
    Ok(finish(ctx, delivered))
}

/// Reads an inner connection's `/logic/send/msg` body and delivers it. The body is JSON inside
/// a JSON string: unescaped into a buffer kept across pushes, then read in place.
pub fn push_from_inner(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    buffers: &mut PushBuffers,
    raw: RawStr,
    from: &str,
) {
    let request = match PushRequest::decode(raw.unescape_into(&mut buffers.body)) {
        Ok(request) => request,
        Err(e) => {
            ctx.counters.refused += 1;
            debug!("{from}: push refused: {e}");
            return;
        }
    };
    if request.uid.is_empty() {
        ctx.counters.refused += 1;
        debug!("{from}: push refused: uid is required");
        return;
    }
    if let Err(e) = uri::check_push_uri(&request.uri) {
        ctx.counters.refused += 1;
        debug!("{from}: push to uid {:?} refused: {e}", request.uid);
        return;
    }
    let uids = [&*request.uid];
    if let Err(e) = push(
        ctx,
        clients,
        &mut buffers.frames,
        &uids,
        &request.uri,
        &request.body,
    ) {
        ctx.counters.refused += 1;
        warn!("{from}: push to uid {:?} refused: {e}", request.uid);
        return;
    }
    if let Some(cluster) = ctx.cluster.as_mut().filter(|c| !c.inner_local)
        && cluster
            .route(&uids, &request.uri, &request.body, None)
            .is_some()
    {
        ctx.counters.unrouted += 1;
        warn!(
            "{from}: push to uid {:?}: the cluster queue is full",
            request.uid
        );
    }
}

/// Closes every connection of `uid`; returns how many.
pub fn kick(ctx: &mut Ctx, clients: &mut Table<ClientConn>, uid: &str) -> usize {
    let keys = ctx.registry.keys(uid).to_vec();
    let mut kicked = 0;
    for key in keys {
        if clients[key as usize].link.doomed.is_none() {
            clients.doom(key as usize, CloseReason::Kicked);
            kicked += 1;
        }
    }
    kicked
}

/// Live connections of `uid`.
pub fn online(ctx: &Ctx, clients: &Table<ClientConn>, uid: &str) -> usize {
    (ctx.registry.keys(uid).iter())
        .filter(|&&key| clients[key as usize].link.doomed.is_none())
        .count()
}

/// A new push: its `seq`, and the check that it fits a connection's output at all, made
/// before anyone is sent anything.
fn start<'a>(
    ctx: &mut Ctx,
    frames: &mut Frames,
    uri: &'a str,
    body: &'a str,
) -> Result<Push<'a>, TooLarge> {
    const NOWHERE: &Position = &Position {
        offset: 0,
        epoch: Cow::Borrowed(""),
    };
    let push = Push {
        seq: ctx.next_seq(),
        uri,
        body,
        at: NOWHERE,
    };
    frames.ready = 0;
    // The JSON form is the longest, a WebSocket header at most 10 bytes longer, and a place
    // in the history at most `POSITION_MAX`.
    let json = Form {
        framing: Framing::Length,
        codec: Codec::Json,
    };
    let len = frames.get(push, json, ctx.limits.order).len() - HEADER_LEN
        + ws::MAX_HEADER_LEN
        + ctx.history.as_ref().map_or(0, |_| POSITION_MAX);
    if len > ctx.limits.max_pending {
        return Err(TooLarge {
            len,
            max: ctx.limits.max_pending,
        });
    }
    Ok(push)
}

/// Queues the push frame to one user connection.
fn queue_push(
    core: &mut Core,
    limits: &Limits,
    r: ConnRef,
    conn: &mut ClientConn,
    frames: &mut Frames,
    push: Push,
) -> Queued {
    if conn.link.is_done() || !conn.is_user() {
        return Queued::Skipped;
    }
    let form = conn.form(limits.codec.before_first_message());
    let frame = frames.get(push, form, limits.order);
    match session::queue(core, limits, conn, r, frame.len(), |out| {
        out.extend_from_slice(frame)
    }) {
        Ok(()) => Queued::Yes,
        Err(reason) => {
            warn!(
                "{}: more than {} bytes unread; closing slow consumer",
                Table::<ClientConn>::name(r),
                limits.max_pending
            );
            Queued::Refused(reason)
        }
    }
}

fn finish(ctx: &mut Ctx, delivered: usize) -> usize {
    ctx.counters.pushes += 1;
    ctx.counters.delivered += delivered as u64;
    delivered
}
