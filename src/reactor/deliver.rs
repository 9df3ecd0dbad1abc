//! Pushes, broadcasts and kicks: the operations that reach across client connections. Every
//! push path (inner TCP, HTTP, the handle) ends here. The frame is encoded once and queued to
//! each target; a target that cannot take it is doomed as a slow consumer, never freed here.

use std::borrow::Cow;

use log::{debug, warn};

use super::cluster::{Finished, Unplaced, Waiting};
use super::conn::{ClientConn, Form, Framing, State};
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

/// The seq a push was given, and its place (epoch, offset) in each uid's history, in the
/// order of its uids: what the cluster says of a retained push.
pub struct Placed<'a> {
    pub seq: i64,
    pub positions: &'a [(String, u64)],
}

/// Delivers `{seq, uri, body}` to every live connection of each uid here; returns the number
/// of connections it was queued to. `placed` gives the seq and places the cluster's history
/// gave it; without, it gets a new seq and, when the history is in memory, a place in it.
/// The caller has checked `uri`, and lists each uid once.
pub fn deliver_here<S: AsRef<str>>(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    frames: &mut Frames,
    uids: &[S],
    uri: &str,
    body: &str,
    placed: Option<Placed>,
) -> Result<usize, TooLarge> {
    let push = start(ctx, frames, uri, body, placed.as_ref().map(|p| p.seq))?;
    let Ctx {
        core,
        limits,
        registry,
        counters,
        history,
        cluster,
        ..
    } = ctx;
    // Pushes through the cluster may have come already in a resumed connection's replay.
    let mut replayed = match (&placed, cluster) {
        (Some(_), Some(cluster)) => Some(&mut cluster.replayed),
        _ => None,
    };
    let mut delivered = 0;
    for (i, uid) in uids.iter().enumerate() {
        let uid = uid.as_ref();
        let keys = registry.keys(uid);
        if keys.is_empty() {
            counters.dropped += 1;
        }
        // With history each uid's push has its own place in it, and so its own frames.
        let appended;
        let position = match (&placed, history.as_mut()) {
            (Some(placed), _) => placed.positions.get(i).map(|(epoch, offset)| Position {
                offset: *offset,
                epoch: Cow::Borrowed(epoch.as_str()),
            }),
            (None, Some(history)) => {
                appended = history.append(uid, push.seq, uri, body, core.clock.tick);
                Some(Position {
                    offset: appended.1,
                    epoch: Cow::Borrowed(&*appended.0),
                })
            }
            (None, None) => None,
        };
        if position.is_some() {
            frames.ready = 0;
        }
        let push = Push {
            at: position.as_ref().unwrap_or(push.at),
            ..push
        };
        delivered += clients.queue_to(Some(keys), |r, conn| {
            if let Some(replayed) = replayed.as_deref_mut()
                && matches!(conn.state, State::User { .. })
                && replayed.covers(r, &push.at.epoch, push.at.offset)
            {
                return Queued::Skipped;
            }
            queue_push(core, limits, r, conn, frames, push)
        });
    }
    Ok(finish(ctx, delivered))
}

/// What became of a push sent wherever its uids are.
pub enum Sent {
    /// Delivered to this many connections; nothing else to do (a single node, or a push that
    /// stays here).
    Here(usize),
    /// On its way through the cluster; the waiting gets the answer.
    Asked,
    /// The cluster could not take it: the answer, now.
    Failed(Finished),
}

/// Sends a push wherever its uids are (PROTOCOL.md §8): delivered here at once and, in
/// cluster mode, routed to the other nodes that hold them; when the cluster keeps the
/// history, placed in it first, reaching this node's connections back through the cluster
/// with their places. `local` says it stays here (`InnerPushLocal`); `waiting` makes what
/// waits for the answer from the count of connections here.
#[allow(clippy::too_many_arguments)]
pub fn push<S: AsRef<str>>(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    frames: &mut Frames,
    uids: &[S],
    uri: &str,
    body: &str,
    local: bool,
    waiting: impl FnOnce(usize) -> Waiting,
) -> Result<Sent, TooLarge> {
    // A uid listed twice gets the push once, and takes one place in its history.
    let (single, mut distinct);
    let uids: &[&str] = match uids {
        [uid] => {
            single = [uid.as_ref()];
            &single
        }
        _ => {
            distinct = uids.iter().map(AsRef::as_ref).collect::<Vec<&str>>();
            distinct.sort_unstable();
            distinct.dedup();
            &distinct
        }
    };
    let placing = ctx.cluster.as_ref().is_some_and(|c| c.history) && !local;
    if !placing {
        let here = deliver_here(ctx, clients, frames, uids, uri, body, None)?;
        return Ok(match ctx.cluster.as_mut().filter(|_| !local) {
            Some(cluster) => match cluster.route(uids, uri, body, waiting(here)) {
                Some(finished) => Sent::Failed(finished),
                None => Sent::Asked,
            },
            None => Sent::Here(here),
        });
    }
    let seq = start(ctx, frames, uri, body, None)?.seq;
    let here = uids.iter().map(|uid| online(ctx, clients, uid)).sum();
    let push = Unplaced {
        uids: uids.iter().map(|uid| uid.to_string()).collect(),
        seq,
        uri: uri.to_owned(),
        body: body.to_owned(),
    };
    let cluster = ctx.cluster.as_mut().expect("cluster mode");
    Ok(match cluster.retain(push, waiting(here)) {
        None => Sent::Asked,
        Some(finished) => Sent::Failed(unplaced(ctx, clients, frames, finished)),
    })
}

/// The answer to a push the cluster could not place in the history (its queue was full, or
/// Redis cannot be used): the push is delivered here after all, without places, and whoever
/// waited is told the cluster failed.
pub fn unplaced(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    frames: &mut Frames,
    finished: Finished,
) -> Finished {
    let Finished {
        waiting: Waiting::Retain { push, then },
        result: Err(error),
    } = finished
    else {
        unreachable!("an unplaced push is one the cluster refused");
    };
    debug!("cluster: a push could not be kept in the history ({error}); delivered here only");
    let placed = Placed {
        seq: push.seq,
        positions: &[],
    };
    let _ = deliver_here(
        ctx,
        clients,
        frames,
        &push.uids,
        &push.uri,
        &push.body,
        Some(placed),
    );
    Finished {
        waiting: *then,
        result: Err(error),
    }
}

/// Delivers `{seq, uri, body}` to every user connection.
pub fn broadcast(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    frames: &mut Frames,
    uri: &str,
    body: &str,
) -> Result<usize, TooLarge> {
    let push = start(ctx, frames, uri, body, None)?;
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
    let local = ctx.cluster.as_ref().is_none_or(|c| c.inner_local);
    let frames = &mut buffers.frames;
    let (uri, body) = (&request.uri, &request.body);
    let nobody = |_| Waiting::Nobody;
    // A push the cluster could not take is counted there; nobody waits for the answer.
    if let Err(e) = push(ctx, clients, frames, &uids, uri, body, local, nobody) {
        ctx.counters.refused += 1;
        warn!("{from}: push to uid {:?} refused: {e}", request.uid);
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
    seq: Option<i64>,
) -> Result<Push<'a>, TooLarge> {
    const NOWHERE: &Position = &Position {
        offset: 0,
        epoch: Cow::Borrowed(""),
    };
    let push = Push {
        seq: seq.unwrap_or_else(|| ctx.next_seq()),
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
        + POSITION_MAX;
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
    if conn.link.is_done() {
        return Queued::Skipped;
    }
    let form = conn.form(limits.codec.before_first_message());
    match &mut conn.state {
        State::User { .. } => {}
        // Its history is being read: held until the answer, then sent after the replay.
        State::Resuming(resuming) => {
            let frame = frames.get(push, form, limits.order);
            resuming.held_bytes += frame.len();
            if resuming.held_bytes > limits.max_pending {
                return Queued::Refused(CloseReason::SlowConsumer);
            }
            resuming.held.push((push.at.offset, frame.into()));
            return Queued::Skipped;
        }
        _ => return Queued::Skipped,
    }
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
