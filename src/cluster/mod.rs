//! Cluster mode: gateways share presence and route pushes to each other through Redis.
//!
//! The reactor never touches Redis. [`start`] spawns two broker threads that use the `redis`
//! crate's blocking API: the *command* thread owns one connection, drains the bounded request
//! queue in batches and pipelines each batch; the *subscriber* thread owns a second
//! connection subscribed to this node's channel and the broadcast channel. Both hand
//! [`Event`]s back through a channel and call the `notify` closure after queueing them (the
//! reactor wakes its `mio::Waker` there and drains [`Broker::try_recv`]). That channel is
//! unbounded: the reactor is expected to drain it on every notify.
//!
//! ```no_run
//! use plex::cluster::{self, ClusterConfig, Event, Request};
//!
//! let config = ClusterConfig::new("redis://127.0.0.1:6379/0", "10.0.0.5:9578");
//! let broker = cluster::start(config, Box::new(|| { /* waker.wake() */ }))?;
//! let _ = broker.send(Request::Presence { uid: "7".into(), connections: 1 });
//! while let Some(event) = broker.try_recv() {
//!     if let Event::Deliver(pushes) = event { /* queue each push to its uids */ }
//! }
//! broker.shutdown();
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Guarantees
//!
//! - **At most once across nodes.** Pushes travel over Redis pub/sub and are never retried:
//!   a push whose PUBLISH fails, or that reaches a node whose subscription is down, is lost
//!   (a `Route` reply counts only nodes with a subscriber when Redis took the message).
//! - **Order per sender → receiver.** Pushes and kicks one node sends to another arrive in the
//!   order its reactor sent the requests: one connection publishes them, batch after batch.
//!   Nothing is promised across different senders (but see offline history: retained pushes
//!   arrive in offset order per uid), nor between broadcasts and pushes.
//! - **Never blocking the reactor.** [`Broker::send`] is a `try_send` on a bounded queue and
//!   gives the request back in [`Full`] when the broker cannot keep up.
//! - **While Redis is down** (or answers slower than [`ClusterConfig::timeout`]; the command
//!   connection is used at least every second, so this shows within about a second plus the
//!   timeout): [`Event::Down`] is reported once; `Route`, `Retain`, `History`, `Kick` and
//!   `Online` are answered [`ClusterError::Unavailable`] at once; broadcasts and acks are
//!   dropped; pushes other nodes publish meanwhile are lost. `Presence` and `Load` are kept locally: after reconnecting (capped
//!   exponential backoff with jitter) the broker re-announces the node, re-registers every uid
//!   it holds, resubscribes, and only then reports [`Event::Up`]. A subscription that goes
//!   silent without closing (a failover) is caught by a probe: the command thread publishes a
//!   ping on this node's channel every second; if one is not seen within 3 s the subscriber
//!   reconnects (reported as `Down` then `Up`: messages may have been lost in between).
//! - **A node that dies** without cleanup stops refreshing its record, and leaves the node
//!   list and every presence answer within `node_ttl`. [`Broker::shutdown`] removes it at once.
//!
//! # Redis schema
//!
//! With the default prefix `plex` (see [`ClusterConfig::prefix`]):
//!
//! | key | type | content |
//! |---|---|---|
//! | `plex:nodes` | ZSET | node id → expiry in unix ms of Redis's clock; the live nodes are those scored after now |
//! | `plex:node:{id}` | STRING, `PX node_ttl` | the node's [`NodeInfo`] as JSON, rewritten every `node_ttl / 3` and on `Load` |
//! | `plex:u:{uid}` | HASH, `PX 60 × node_ttl` | node id → connections of uid on that node |
//! | `plex:n:{id}` | channel | pushes and kicks for uids held by the node, and its own probes |
//! | `plex:broadcast` | channel | broadcasts, tagged with their sender, which ignores its own |
//!
//! and, with history, the two keys per uid below.
//!
//! Readers count only fields of live nodes (the live set is read in the same pipeline as the
//! hashes), and remove fields of dead nodes on the way, atomically in a small Lua script so a
//! node that comes back from a stall cannot lose the fields it rewrites. Each node rewrites
//! every uid it holds (`HSET` + `PEXPIRE`) once per `20 × node_ttl`, a slice each second, so
//! a million uids cost about 3,400 uids (two pipelined commands each) per second at the
//! default 15 s, not a million every few seconds. Keys of uids only dead nodes held expire.
//! Scores use Redis's clock (from `TIME`), so node clocks need not agree.
//!
//! Messages on the channels use a compact binary encoding (`wire`): a batch tag, then
//! entries, each a tag and length-prefixed strings.
//!
//! # Offline history
//!
//! With [`ClusterConfig::history`] set, [`Request::Retain`] keeps every push in the history of
//! each uid it names, online or not, under the uid's next *offset* (1, 2, … per uid) and its
//! *epoch* (a random string, made when the uid has no record: first use, keys expired or
//! deleted, Redis lost its data; the stream a new epoch starts with is empty). One Lua script
//! (`history.rs`, `history.lua`) assigns the offsets, appends to the streams, reads who holds
//! the uids and publishes to them, atomically, for a chunk of requests at a time. Hence:
//!
//! - **Offsets are unique and gapless per uid**, whichever nodes push: 1..N, no repeats.
//! - **Every node sees a uid's pushes in offset order**, this one included: a `Retain` is
//!   published to every node that holds one of its uids *this node too*, and a node takes
//!   pushes from one subscription. The reactor delivers a retained push to its own connections
//!   from [`Event::Deliver`], not from the reply (which may overtake or trail pushes other
//!   nodes published meanwhile, as it comes on another connection). [`Reply::Retained`] says
//!   where the push went, for the caller.
//! - **No gap at the seam.** `Retain`, `History` and `Ack` run in request order on the one
//!   command connection, after the presence changes queued before them. So if the reactor
//!   sends `Presence` (the uid is here) and then `History { since }`: every push routed from
//!   any node before that history read is in its answer (unless trimmed by `size` or older
//!   than `ttl`), and every push after it has a larger offset and is published to this node.
//!   The answer and those pushes come through different threads in either order: until the
//!   answer is in, the reactor holds the uid's live pushes for the resuming connection, then
//!   sends the answer's pushes, then the held ones above the answer's `offset`.
//! - **Recovery is complete** when `since == offset` (nothing missed), or when the first push
//!   answered has offset `since + 1`. Otherwise pushes were trimmed or expired; a `since`
//!   above `offset`, or an epoch other than the client's, means the client's history is gone.
//! - **`size` and `ttl` are exact for readers**: an answer holds at most the last `size`
//!   offsets and no push older than `ttl` (Redis's clock). Streams are trimmed with `MAXLEN ~`
//!   (whole nodes, cheap), so Redis may hold up to about a hundred entries more per uid; a
//!   stream expires `ttl` after its last push. The record (epoch, offset, acked) lives 30 days
//!   (or `ttl`, if longer) after the uid's last push or history read.
//! - **While Redis is down**, `Retain` and `History` are answered `Unavailable` (the push was
//!   neither kept nor sent anywhere: the reactor may deliver it locally without a position),
//!   and `Ack`s are dropped. If Redis comes back empty, every uid gets a new epoch. Retained
//!   pushes published while a node's subscription was down (between its `Down` and `Up`) are
//!   not delivered there but are in the history: the gap shows in the offsets.
//!
//! A batch whose requests mix history requests and others runs them in runs of each, in
//! request order, each run in its own round trip: the order per sender → receiver holds. A
//! script call Redis runs more than half the command timeout after it was sent does nothing:
//! its requests were answered `Unavailable` by then, and must not be kept or published.
//!
//! | key | type | content |
//! |---|---|---|
//! | `plex:hm:{uid}` | HASH, `PX` 30 days | `e` epoch, `o` last offset, `a` acked offset |
//! | `plex:hs:{uid}` | STREAM, `PX ttl` | id = offset; `t` Redis ms when kept, `p` seq, uri and body (`wire`) |

mod batch;
mod commands;
mod history;
mod presence;
mod schema;
mod shared;
mod subscriber;
mod wire;

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::IntoConnectionInfo;
use redis::io::tcp::TcpSettings;
use serde::{Deserialize, Serialize};

use self::commands::Commands;
use self::schema::Schema;
use self::shared::Shared;

/// How a node joins the cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/db` (or `redis+unix:///path`). `rediss://` needs the
    /// `redis` crate's TLS feature, which this build does not enable.
    pub url: String,
    /// Unique per process start: a restarted node is a new node.
    pub node_id: String,
    /// `ip:port` clients should connect to, published in the node record.
    pub advertise: String,
    /// A node that stops refreshing vanishes from the node list and presence within this.
    pub node_ttl: Duration,
    /// Connect timeout, and the longest Redis may take to answer before it counts as down.
    pub timeout: Duration,
    /// Requests the queue holds before [`Broker::send`] returns [`Full`].
    pub queue: usize,
    /// Prefix of every key and channel, so clusters can share a Redis (pub/sub ignores the db).
    pub prefix: String,
    /// Offline history in Redis: `None` (the default) refuses [`Request::Retain`],
    /// [`Request::History`] and [`Request::Ack`].
    pub history: Option<HistorySettings>,
}

/// How much of each uid's history Redis keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistorySettings {
    /// Pushes kept per uid (at least 1): a `History` answer holds at most the last `size`.
    pub size: usize,
    /// A push older than this is never replayed; a uid's pushes leave Redis this long after
    /// its last push. Its epoch, offset and acked offset stay longer (see the module docs).
    pub ttl: Duration,
}

impl ClusterConfig {
    /// A config with a random node id and the defaults: 15 s node ttl, 1 s timeout, 32,768
    /// queued requests, prefix `plex`.
    pub fn new(url: impl Into<String>, advertise: impl Into<String>) -> Self {
        ClusterConfig {
            url: url.into(),
            node_id: format!("{:016x}", rand::random::<u64>()),
            advertise: advertise.into(),
            node_ttl: Duration::from_secs(15),
            timeout: Duration::from_secs(1),
            queue: 32_768,
            prefix: "plex".into(),
            history: None,
        }
    }
}

/// What the reactor asks of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `uid` now has `connections` live connections on this node (0 = gone). Coalesced per uid
    /// (last wins) and written in pipelined batches.
    Presence { uid: Arc<str>, connections: u32 },
    /// This node's load, for its node record.
    Load { connections: u64, users: u64 },
    /// A push for uids that may be held by other nodes: published once per owning node (never
    /// this one), answered with [`Reply::Routed`].
    Route {
        id: u64,
        uids: Vec<String>,
        uri: String,
        body: String,
    },
    /// A push kept in each uid's history, online or not, and sent to every node that holds
    /// one of the uids, this one included: each distinct uid gets its next offset, atomically
    /// with the publish. Answered with [`Reply::Retained`]. Needs [`ClusterConfig::history`].
    Retain {
        id: u64,
        uids: Vec<String>,
        /// The push's seq, assigned by this node: deliveries elsewhere and replays carry it.
        seq: u64,
        uri: String,
        body: String,
    },
    /// The uid's retained pushes with an offset above `since`; answered with
    /// [`Reply::History`]. Creates the uid's epoch (offset 0) if it has none.
    History { id: u64, uid: String, since: u64 },
    /// A device of `uid` acknowledged everything up to `offset` of `epoch`: the uid's acked
    /// offset becomes the larger of the two (capped at its offset), unless `epoch` is not the
    /// uid's current one (an empty `epoch` means the current one). No answer; dropped while
    /// Redis is down.
    Ack {
        uid: String,
        epoch: String,
        offset: u64,
    },
    /// A push for every user of every other node, on one channel.
    Broadcast { uri: String, body: String },
    /// Closes the uid's connections on the other nodes; answered with [`Reply::Kicked`].
    Kick { id: u64, uid: String },
    /// Connections per uid on the other live nodes; answered with [`Reply::Online`].
    Online { id: u64, uids: Vec<String> },
}

impl Request {
    /// Roughly the bytes the request adds to a batch's messages.
    fn weight(&self) -> usize {
        match self {
            Request::Route {
                uids, uri, body, ..
            }
            | Request::Retain {
                uids, uri, body, ..
            } => uids.iter().map(String::len).sum::<usize>() + uri.len() + body.len(),
            Request::Broadcast { uri, body } => uri.len() + body.len(),
            Request::Kick { uid, .. } | Request::History { uid, .. } | Request::Ack { uid, .. } => {
                uid.len()
            }
            Request::Online { uids, .. } => uids.iter().map(String::len).sum(),
            Request::Presence { uid, .. } => uid.len(),
            Request::Load { .. } => 0,
        }
    }

    /// The id it is answered under, if it asks for an answer.
    fn answered_as(&self) -> Option<u64> {
        match self {
            Request::Route { id, .. }
            | Request::Retain { id, .. }
            | Request::History { id, .. }
            | Request::Kick { id, .. }
            | Request::Online { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// Runs through the history script rather than the plain batch.
    fn is_history(&self) -> bool {
        matches!(
            self,
            Request::Retain { .. } | Request::History { .. } | Request::Ack { .. }
        )
    }
}

/// The queue is full (or the broker is gone): the request is handed back.
#[derive(Debug, PartialEq, Eq)]
pub struct Full(pub Request);

/// What the cluster tells the reactor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Pushes from another node for uids held here, in the order that node published them.
    Deliver(Vec<RemotePush>),
    /// A broadcast from another node, for every local user.
    Broadcast { uri: String, body: String },
    /// Another node asks to close the uid's local connections.
    Kick { uid: String },
    /// The answer to a `Route`, `Retain`, `History`, `Kick` or `Online` request with this id.
    Reply {
        id: u64,
        result: Result<Reply, ClusterError>,
    },
    /// The live nodes (this one included), about every second.
    Nodes(Vec<NodeInfo>),
    /// Redis is usable again: node announced, presence re-registered, subscription live.
    Up,
    /// Redis was lost, and why. Reported once until the next `Up`.
    Down(String),
}

/// A push from another node (or from this one, for a `Retain`): the local uids it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePush {
    pub uids: Vec<String>,
    pub uri: String,
    pub body: String,
    /// The seq the sending node gave a retained push; `None` for a `Route`.
    pub seq: Option<u64>,
    /// (epoch, offset) of a retained push in each uid's history, aligned with `uids`; empty
    /// for a `Route`.
    pub positions: Vec<(String, u64)>,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Connections on other nodes the push went to.
    Routed { remote: u64 },
    /// Connections on other nodes a retained push went to, and where it sits in the history
    /// of each uid named (once per distinct uid, in the order first named).
    Retained {
        remote: u64,
        positions: Vec<Position>,
    },
    /// A uid's history: its epoch, its last offset, its acked offset, and its retained
    /// pushes with an offset above the `since` asked, oldest first (at most
    /// [`HistorySettings::size`], none older than its `ttl`).
    History {
        epoch: String,
        offset: u64,
        acked: u64,
        pushes: Vec<Retained>,
    },
    /// Connections on other nodes asked to close.
    Kicked { remote: u64 },
    /// Connections on other live nodes, per uid in the order asked.
    Online(Vec<u64>),
}

/// Where a retained push sits in one uid's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub uid: String,
    pub epoch: String,
    pub offset: u64,
}

/// A push as a uid's history keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retained {
    pub offset: u64,
    /// The seq the sending node gave it.
    pub seq: u64,
    pub uri: String,
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterError {
    /// Redis cannot be used now, and why.
    Unavailable(String),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::Unavailable(reason) => write!(f, "cluster unavailable: {reason}"),
        }
    }
}

impl std::error::Error for ClusterError {}

/// A live node, as its record in Redis says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub advertise: String,
    pub connections: u64,
    pub users: u64,
    /// When the record was last written, unix ms (Redis's clock).
    pub updated: u64,
}

/// The reactor's handle on the broker threads.
pub struct Broker {
    requests: Option<SyncSender<Request>>,
    events: Receiver<Event>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts the broker threads. Fails only on a bad config or when threads cannot be spawned;
/// an unreachable Redis is reported as [`Event::Down`] and retried.
pub fn start(config: ClusterConfig, notify: Box<dyn Fn() + Send + Sync>) -> io::Result<Broker> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    // Batches are written whole and answered at once: Nagle would only hold their tails back.
    let client = config
        .url
        .as_str()
        .into_connection_info()
        .map(|info| info.set_tcp_settings(TcpSettings::default().set_nodelay(true)))
        .and_then(redis::Client::open)
        .map_err(|e| invalid(format!("cluster url: {e}")))?;
    if config.node_id.is_empty() || config.node_ttl.is_zero() || config.timeout.is_zero() {
        return Err(invalid(
            "cluster: node_id, node_ttl and timeout must be set".into(),
        ));
    }
    if let Some(h) = &config.history
        && (h.size == 0 || h.ttl.as_millis() == 0)
    {
        return Err(invalid(
            "cluster: history size and ttl must be at least 1 (and 1 ms)".into(),
        ));
    }
    let (requests, queue) = mpsc::sync_channel(config.queue.max(1));
    let (sink, events) = mpsc::channel();
    let shared = Arc::new(Shared::new(sink, notify));
    let schema = Schema::new(&config);
    let mut broker = Broker {
        requests: Some(requests),
        events,
        shared: shared.clone(),
        threads: Vec::new(),
    };
    let subscriber = subscriber::Subscriber::new(shared.clone(), client.clone(), &schema, &config);
    broker.threads.push(
        thread::Builder::new()
            .name("plex-cluster-sub".into())
            .spawn(move || subscriber.run())?,
    );
    let commands = Commands::new(shared, queue, client, schema, &config);
    broker.threads.push(
        thread::Builder::new()
            .name("plex-cluster".into())
            .spawn(move || commands.run())?,
    );
    Ok(broker)
}

impl Broker {
    /// Queues a request without blocking; `Err(Full)` hands it back when the queue is full.
    pub fn send(&self, request: Request) -> Result<(), Full> {
        let requests = self.requests.as_ref().expect("broker running");
        requests.try_send(request).map_err(|e| match e {
            TrySendError::Full(r) | TrySendError::Disconnected(r) => Full(r),
        })
    }

    /// The next event, if any (never blocks).
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Stops the threads, removing this node's record from Redis first (best effort): its
    /// presence fields are ignored from then on.
    pub fn shutdown(self) {}

    /// Stops the threads without touching Redis, as if the process had died: the node lingers
    /// until `node_ttl` passes. For failure tests.
    #[doc(hidden)]
    pub fn abandon(self) {
        self.shared.abandon();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shared.stop();
        // Disconnecting the queue is what stops the command thread, after its cleanup.
        self.requests = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `Unavailable`, for `reason`, to each request of `work` that asks for an answer.
fn refusals<'a>(work: &'a [Request], reason: &'a str) -> impl Iterator<Item = Event> + 'a {
    work.iter()
        .filter_map(Request::answered_as)
        .map(|id| Event::Reply {
            id,
            result: Err(ClusterError::Unavailable(reason.to_string())),
        })
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
