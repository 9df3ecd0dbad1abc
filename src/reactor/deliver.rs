//! Pushes, broadcasts and kicks: the operations that reach across client connections. Every
//! push path (inner TCP, HTTP, the handle) ends here. The frame is encoded once and queued to
//! each target; a target that cannot take it is doomed as a slow consumer, never freed here.

use log::{debug, warn};

use super::conn::ClientConn;
use super::conns::{ConnRef, Queued, Table};
use super::ctx::{Core, Ctx, Limits};
use super::session;
use crate::CloseReason;
use crate::protocol::message::{PushRequest, RawStr, encode_message};
use crate::protocol::uri;

/// Buffers a push reuses from one to the next, so that a push allocates nothing.
#[derive(Default)]
pub struct PushBuffers {
    /// The frame being delivered, encoded once for all its targets.
    pub frame: Vec<u8>,
    /// The unescaped body of the `/logic/send/msg` being read.
    pub body: String,
}

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
    frame: &mut Vec<u8>,
    uids: &[S],
    uri: &str,
    body: &str,
) -> Result<usize, TooLarge> {
    encode(ctx, frame, uri, body)?;
    let Ctx {
        core,
        limits,
        registry,
        counters,
        ..
    } = ctx;
    let mut delivered = 0;
    let mut deliver_to = |uid: &str| {
        let keys = registry.keys(uid);
        if keys.is_empty() {
            counters.dropped += 1;
        }
        delivered += clients.queue_to(Some(keys), |r, conn| {
            queue_push(core, limits, r, conn, frame)
        });
    };
    if let [uid] = uids {
        deliver_to(uid.as_ref());
    } else {
        // A uid listed twice still gets the push once.
        let mut distinct: Vec<&str> = uids.iter().map(AsRef::as_ref).collect();
        distinct.sort_unstable();
        distinct.dedup();
        distinct.into_iter().for_each(deliver_to);
    }
    Ok(finish(ctx, delivered))
}

/// Delivers `{seq, uri, body}` to every user connection.
pub fn broadcast(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    frame: &mut Vec<u8>,
    uri: &str,
    body: &str,
) -> Result<usize, TooLarge> {
    encode(ctx, frame, uri, body)?;
    let (core, limits) = (&mut ctx.core, &ctx.limits);
    let delivered = clients.queue_to(None, |r, conn| queue_push(core, limits, r, conn, frame));
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
        &mut buffers.frame,
        &uids,
        &request.uri,
        &request.body,
    ) {
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

fn encode(ctx: &mut Ctx, frame: &mut Vec<u8>, uri: &str, body: &str) -> Result<(), TooLarge> {
    let seq = ctx.next_seq();
    frame.clear();
    encode_message(frame, ctx.limits.order, seq, uri, body);
    if frame.len() > ctx.limits.max_pending {
        return Err(TooLarge {
            len: frame.len(),
            max: ctx.limits.max_pending,
        });
    }
    Ok(())
}

/// Queues the push frame to one user connection.
fn queue_push(
    core: &mut Core,
    limits: &Limits,
    r: ConnRef,
    conn: &mut ClientConn,
    frame: &[u8],
) -> Queued {
    if conn.link.is_done() || !conn.is_user() {
        return Queued::Skipped;
    }
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
