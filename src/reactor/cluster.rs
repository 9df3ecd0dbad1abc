//! Cluster mode, the reactor's side (PROTOCOL.md §8): what the broker threads of
//! `crate::cluster` are asked, and what waits for their answers. The reactor delivers every
//! push to its own connections at once and asks the broker to route it to the nodes that hold
//! the uids; an HTTP request or a handle call whose answer includes other nodes waits here,
//! by request id, until the broker replies (it always does, with `Unavailable` when Redis
//! cannot be used).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use log::{info, warn};
use mio::Waker;

use super::clients::Clients;
use super::conns::ConnRef;
use super::{Reactor, api, conn, deliver, http, session};
use crate::cluster::{
    self, Broker, ClusterConfig, ClusterError, Event, HistorySettings, NodeInfo, Reply, Request,
};
use crate::config::Config;
use crate::history;

/// Ticks between two reports of this node's load.
const LOAD_TICKS: u64 = 10;

/// What is waiting for the broker's answer to a request.
pub enum Waiting {
    /// An HTTP response: the connection, and how to finish it.
    Http { conn: ConnRef, answer: Answer },
    /// `Handle::kick`: how many were closed here.
    Kick {
        reply: SyncSender<usize>,
        local: usize,
    },
    /// `Handle::online`: the counts here, per uid.
    Online {
        reply: SyncSender<Vec<usize>>,
        local: Vec<usize>,
    },
    /// A connection resuming its history: its `/auth/success` waits for the history.
    Resume { conn: ConnRef },
    /// Nobody waits (a push whose sender wants no answer).
    Nobody,
    /// A push kept in the cluster's history: it reaches this node's connections back through
    /// the cluster, with its places; if the cluster cannot take it, it is delivered here
    /// after all, without them. `then` is whoever else waits for the answer.
    Retain {
        push: Box<Unplaced>,
        then: Box<Waiting>,
    },
}

/// A push on its way into the cluster's history.
pub struct Unplaced {
    pub uids: Vec<String>,
    pub seq: i64,
    pub uri: String,
    pub body: String,
}

/// An HTTP answer that needs the other nodes' part.
pub struct Answer {
    pub what: Partial,
    /// The response is the connection's last (`Connection: close`).
    pub close: bool,
    pub head_only: bool,
}

/// The local part of an answer.
pub enum Partial {
    Push {
        local: usize,
    },
    Kick {
        local: usize,
    },
    Online {
        uids: Vec<String>,
        local: Vec<usize>,
    },
    /// `GET /plex/v1/history`: all of it is in the cluster.
    History {
        uid: String,
    },
}

/// A uid's history as the broker answered it (`Reply::History`), as the reactor reads one.
pub fn history_log(
    epoch: String,
    offset: u64,
    acked: u64,
    pushes: Vec<cluster::Retained>,
) -> history::Log {
    let pushes = (pushes.into_iter())
        .map(|p| history::Retained {
            offset: p.offset,
            seq: p.seq as i64,
            uri: p.uri,
            body: p.body,
        })
        .collect();
    history::Log {
        epoch,
        offset,
        acked,
        pushes,
    }
}

/// An answer, complete: the local part plus what the broker replied.
pub struct Finished {
    pub waiting: Waiting,
    pub result: Result<Reply, ClusterError>,
}

/// A request the broker has yet to answer.
struct Pending {
    waiting: Waiting,
    /// It carries a push (`Route`, `Retain`): a failure counts as unrouted.
    push: bool,
}

pub struct Cluster {
    broker: Broker,
    /// A wake-up from the broker is on its way.
    wake_pending: Arc<AtomicBool>,
    /// Redis is usable: the node is registered and subscribed.
    pub up: bool,
    /// Why it is not, for `/readyz`.
    pub down_reason: String,
    /// The live nodes, as the broker last saw them.
    pub nodes: Vec<NodeInfo>,
    /// Inner TCP pushes stay on this node (`InnerPushLocal`).
    pub inner_local: bool,
    /// The history lives in the cluster (`HistorySize` in cluster mode).
    pub history: bool,
    /// Pushes and broadcasts the cluster could not take (Redis down, or its queue full):
    /// delivered here only.
    pub unrouted: u64,
    /// Where resumed connections' replays ended, until the live pushes pass it.
    pub replayed: ReplayFloors,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    next_load: u64,
}

impl Cluster {
    /// Starts the broker threads; they wake the reactor through `waker`.
    pub fn start(config: &Config, advertise: String, waker: Arc<Waker>) -> io::Result<Self> {
        let url = config.redis.clone().expect("cluster mode");
        let mut settings = ClusterConfig::new(url, advertise);
        settings.node_ttl = Duration::from_secs(config.node_ttl);
        settings.history = (config.history_size > 0).then(|| HistorySettings {
            size: config.history_size,
            ttl: Duration::from_secs(config.history_ttl),
        });
        let node_id = settings.node_id.clone();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let pending = wake_pending.clone();
        let notify = move || {
            if !pending.swap(true, Ordering::SeqCst) {
                let _ = waker.wake();
            }
        };
        let broker = cluster::start(settings, Box::new(notify))?;
        info!("cluster mode: node {node_id}, advertising {}", {
            config
                .advertise
                .as_deref()
                .unwrap_or("the first OuterServers entry")
        });
        Ok(Cluster {
            broker,
            wake_pending,
            up: false,
            down_reason: "connecting to Redis".into(),
            nodes: Vec::new(),
            inner_local: config.inner_push_local,
            history: config.history_size > 0,
            unrouted: 0,
            replayed: ReplayFloors::default(),
            pending: HashMap::new(),
            next_id: 0,
            next_load: 0,
        })
    }

    /// Asks the broker; a full queue is answered at once as the broker would answer a lost
    /// Redis, so the caller has one failure path. `None`: the answer is to come.
    fn ask(&mut self, make: impl FnOnce(u64) -> Request, waiting: Waiting) -> Option<Finished> {
        let id = self.next_id;
        self.next_id += 1;
        let request = make(id);
        let push = matches!(request, Request::Route { .. } | Request::Retain { .. });
        match self.broker.send(request) {
            Ok(()) => {
                self.pending.insert(id, Pending { waiting, push });
                None
            }
            Err(cluster::Full(_)) => {
                self.unrouted += push as u64;
                let result = Err(ClusterError::Unavailable(
                    "the cluster queue is full".into(),
                ));
                Some(Finished { waiting, result })
            }
        }
    }

    /// Routes a push to the other nodes holding the uids.
    pub fn route<S: AsRef<str>>(
        &mut self,
        uids: &[S],
        uri: &str,
        body: &str,
        waiting: Waiting,
    ) -> Option<Finished> {
        let uids = uids.iter().map(|u| u.as_ref().to_owned()).collect();
        let (uri, body) = (uri.to_owned(), body.to_owned());
        self.ask(
            |id| Request::Route {
                id,
                uids,
                uri,
                body,
            },
            waiting,
        )
    }

    /// Keeps a push in the uids' histories (an offset each) and sends it to every node that
    /// holds them, this one included.
    pub fn retain(&mut self, push: Unplaced, then: Waiting) -> Option<Finished> {
        let (uids, uri, body) = (push.uids.clone(), push.uri.clone(), push.body.clone());
        let seq = push.seq as u64;
        let request = |id| Request::Retain {
            id,
            uids,
            seq,
            uri,
            body,
        };
        let waiting = Waiting::Retain {
            push: Box::new(push),
            then: Box::new(then),
        };
        self.ask(request, waiting)
    }

    /// Reads a uid's history: its pushes after offset `since`.
    pub fn history(&mut self, uid: &str, since: u64, waiting: Waiting) -> Option<Finished> {
        let uid = uid.to_owned();
        self.ask(|id| Request::History { id, uid, since }, waiting)
    }

    /// A device of `uid` has everything up to `offset` of `epoch` (its current one if empty).
    pub fn ack(&mut self, uid: &str, epoch: &str, offset: u64) {
        let request = Request::Ack {
            uid: uid.to_owned(),
            epoch: epoch.to_owned(),
            offset,
        };
        if self.broker.send(request).is_err() {
            warn!("cluster: queue full, an acknowledgement of uid {uid:?} was dropped");
        }
    }

    pub fn kick(&mut self, uid: &str, waiting: Waiting) -> Option<Finished> {
        let uid = uid.to_owned();
        self.ask(|id| Request::Kick { id, uid }, waiting)
    }

    pub fn online(&mut self, uids: Vec<String>, waiting: Waiting) -> Option<Finished> {
        self.ask(|id| Request::Online { id, uids }, waiting)
    }

    pub fn broadcast(&mut self, uri: &str, body: &str) {
        let request = Request::Broadcast {
            uri: uri.to_owned(),
            body: body.to_owned(),
        };
        if self.broker.send(request).is_err() {
            self.unrouted += 1;
            warn!("cluster: queue full, a broadcast did not reach the other nodes");
        }
    }

    /// `uid` now has `connections` connections here.
    pub fn presence(&mut self, uid: &Arc<str>, connections: usize) {
        let request = Request::Presence {
            uid: uid.clone(),
            connections: connections as u32,
        };
        if self.broker.send(request).is_err() {
            warn!("cluster: queue full, presence of uid {uid:?} not written");
        }
    }

    /// This node's load, reported about once a second.
    pub fn report_load(&mut self, tick: u64, connections: u64, users: u64) {
        if tick >= self.next_load {
            self.next_load = tick + LOAD_TICKS;
            let _ = self.broker.send(Request::Load { connections, users });
        }
    }

    /// The events the broker has queued; call on every wake-up.
    pub fn events(&mut self) -> Vec<Event> {
        self.wake_pending.store(false, Ordering::SeqCst);
        std::iter::from_fn(|| self.broker.try_recv()).collect()
    }

    /// The request `id` was answered.
    pub fn answered(&mut self, id: u64, result: Result<Reply, ClusterError>) -> Option<Finished> {
        let Pending { waiting, push } = self.pending.remove(&id)?;
        self.unrouted += (push && result.is_err()) as u64;
        Some(Finished { waiting, result })
    }

    /// The live node that holds the fewest connections, for `/plex/v1/host`.
    pub fn least_loaded(&self) -> Option<&str> {
        (self.nodes.iter())
            .min_by_key(|n| n.connections)
            .map(|n| n.advertise.as_str())
    }
}

impl Reactor {
    /// What the cluster's broker reported: pushes, broadcasts and kicks from other nodes for
    /// the connections here, answers to requests, the node list, Redis up or down.
    pub(super) fn cluster_events(&mut self) {
        self.cluster_left = false;
        let Some(cluster) = &mut self.ctx.cluster else {
            return;
        };
        for event in cluster.events() {
            let (ctx, clients, frames) = (&mut self.ctx, &mut self.clients, &mut self.push.frames);
            match event {
                Event::Deliver(pushes) => {
                    for p in pushes {
                        // A retained push comes with the seq its sender gave it and its places.
                        let placed = p.seq.map(|seq| deliver::Placed {
                            seq: seq as i64,
                            positions: &p.positions,
                        });
                        let (uids, uri, body) = (&p.uids, &p.uri, &p.body);
                        if let Err(e) =
                            deliver::deliver_here(ctx, clients, frames, uids, uri, body, placed)
                        {
                            warn!("cluster: a push from another node refused: {e}");
                        }
                    }
                }
                Event::Broadcast { uri, body } => {
                    if let Err(e) = deliver::broadcast(ctx, clients, frames, &uri, &body) {
                        warn!("cluster: a broadcast from another node refused: {e}");
                    }
                }
                Event::Kick { uid } => {
                    deliver::kick(ctx, clients, &uid);
                }
                Event::Reply { id, result } => {
                    let cluster = ctx.cluster.as_mut().expect("cluster mode");
                    if let Some(finished) = cluster.answered(id, result) {
                        self.finish(finished);
                    }
                }
                Event::Nodes(nodes) => {
                    ctx.cluster.as_mut().expect("cluster mode").nodes = nodes;
                }
                Event::Up => {
                    info!("cluster: Redis is up; this node is registered");
                    ctx.cluster.as_mut().expect("cluster mode").up = true;
                }
                Event::Down(reason) => {
                    warn!("cluster: Redis is down: {reason}; serving local connections only");
                    let cluster = ctx.cluster.as_mut().expect("cluster mode");
                    cluster.up = false;
                    cluster.down_reason = reason;
                }
            }
        }
    }

    /// A request that waited for the cluster is answered.
    pub(super) fn finish(&mut self, finished: Finished) {
        let Finished { waiting, result } = finished;
        match waiting {
            Waiting::Kick { reply, local } => {
                let remote = match result {
                    Ok(Reply::Kicked { remote }) => remote as usize,
                    _ => 0,
                };
                let _ = reply.send(local + remote);
            }
            Waiting::Online { reply, local } => {
                let counts = match result {
                    Ok(Reply::Online(remote)) => (local.iter().zip(remote))
                        .map(|(&l, r)| l + r as usize)
                        .collect(),
                    _ => local,
                };
                let _ = reply.send(counts);
            }
            Waiting::Nobody => {}
            Waiting::Retain { .. } => {
                let finished = match result {
                    // Placed: this node's connections get it back through the cluster.
                    Ok(Reply::Retained { remote, .. }) => {
                        let Waiting::Retain { then, .. } = waiting else {
                            unreachable!("matched above")
                        };
                        Finished {
                            waiting: *then,
                            result: Ok(Reply::Routed { remote }),
                        }
                    }
                    result => {
                        let (ctx, clients, frames) =
                            (&mut self.ctx, &mut self.clients, &mut self.push.frames);
                        let finished = Finished { waiting, result };
                        deliver::unplaced(ctx, clients, frames, finished)
                    }
                };
                self.finish(finished);
            }
            Waiting::Resume { conn } => {
                let Some(client) = self.clients.get(conn) else {
                    return; // the client left meanwhile
                };
                let conn::State::Resuming(resuming) =
                    std::mem::replace(&mut client.state, conn::State::Inner)
                else {
                    unreachable!("only resuming connections wait for their history");
                };
                client.state = conn::State::User {
                    uid: resuming.uid.clone(),
                };
                let recovery = match result {
                    Ok(Reply::History {
                        epoch,
                        offset,
                        acked,
                        pushes,
                    }) => {
                        let log = history_log(epoch, offset, acked, pushes);
                        let at = &resuming.resume;
                        history::Recovery::from_history(&at.epoch, at.offset, log)
                    }
                    _ => history::Recovery::lost(),
                };
                // Live pushes the history already held may still be on their way.
                let cluster = self.ctx.cluster.as_mut().expect("cluster mode");
                cluster.replayed.set(conn, &recovery.epoch, recovery.offset);
                let step = session::replay(
                    &mut self.ctx,
                    client,
                    conn,
                    &resuming.resume,
                    recovery,
                    &resuming.held,
                );
                let mut clients = Clients {
                    ctx: &mut self.ctx,
                    table: &mut self.clients,
                    push: &mut self.push,
                };
                clients.apply(conn.key(), step);
                clients.settle_output(conn.key());
            }
            Waiting::Http { conn, answer } => {
                let Some(http) = self.https.get(conn) else {
                    return; // the client left meanwhile
                };
                http.waiting = false;
                let response = api::finish(&answer, result);
                http::respond(
                    &mut self.ctx,
                    &mut self.https,
                    conn.key(),
                    &response,
                    answer.close,
                );
                // Its pipelined requests are answered once this response is out.
                self.resume_http(conn);
            }
        }
    }
}

/// The history a resuming connection replays is read on the broker's command connection,
/// while live pushes come on its subscription: a push Redis placed before the read (so in
/// the replay) can reach the reactor after the replay. Each entry is a resumed connection's
/// epoch and the last offset it has; that connection skips pushes of that epoch at or below
/// it. Redis publishes a uid's pushes in offset order, so the first one above it ends the
/// entry; a connection that leaves first takes its entry with it.
#[derive(Default)]
pub struct ReplayFloors(HashMap<ConnRef, (Box<str>, u64)>);

impl ReplayFloors {
    pub fn set(&mut self, conn: ConnRef, epoch: &str, offset: u64) {
        if offset > 0 && !epoch.is_empty() {
            self.0.insert(conn, (epoch.into(), offset));
        }
    }

    /// Whether `conn` already got the push at `(epoch, offset)` in its replay.
    pub fn covers(&mut self, conn: ConnRef, epoch: &str, offset: u64) -> bool {
        if self.0.is_empty() || offset == 0 {
            return false;
        }
        let Some((floor_epoch, floor)) = self.0.get(&conn) else {
            return false;
        };
        if **floor_epoch != *epoch {
            return false;
        }
        if offset <= *floor {
            return true;
        }
        self.0.remove(&conn);
        false
    }

    pub fn forget(&mut self, conn: ConnRef) {
        if !self.0.is_empty() {
            self.0.remove(&conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::conns::Kind;

    #[test]
    fn a_floor_skips_its_epoch_up_to_its_offset_until_a_later_push_passes_it() {
        let (one, two) = (
            ConnRef::new(Kind::Client, 1, 0),
            ConnRef::new(Kind::Client, 2, 0),
        );
        let mut floors = ReplayFloors::default();
        floors.set(one, "e", 5);
        floors.set(two, "e", 5);
        // Unplaced pushes and other epochs are never skipped, nor other connections.
        assert!(!floors.covers(one, "e", 0));
        assert!(!floors.covers(one, "f", 3));
        assert!(!floors.covers(ConnRef::new(Kind::Client, 1, 1), "e", 3));
        assert!(floors.covers(one, "e", 4));
        assert!(floors.covers(one, "e", 5));
        // The first push above the floor ends it: Redis publishes in offset order.
        assert!(!floors.covers(one, "e", 6));
        assert!(!floors.covers(one, "e", 5));
        // A connection that leaves takes its floor with it.
        floors.forget(two);
        assert!(!floors.covers(two, "e", 5));
        assert!(floors.0.is_empty());
        // Without a history (Redis unusable) there is nothing to skip.
        floors.set(one, "", 9);
        floors.set(one, "e", 0);
        assert!(floors.0.is_empty());
    }
}
