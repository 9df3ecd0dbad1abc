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

use super::conns::ConnRef;
use crate::cluster::{self, Broker, ClusterConfig, ClusterError, Event, NodeInfo, Reply, Request};
use crate::config::Config;

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
}

/// An answer, complete: the local part plus what the broker replied.
pub struct Finished {
    pub waiting: Waiting,
    pub result: Result<Reply, ClusterError>,
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
    pending: HashMap<u64, Waiting>,
    next_id: u64,
    next_load: u64,
}

impl Cluster {
    /// Starts the broker threads; they wake the reactor through `waker`.
    pub fn start(config: &Config, advertise: String, waker: Arc<Waker>) -> io::Result<Self> {
        let url = config.redis.clone().expect("cluster mode");
        let mut settings = ClusterConfig::new(url, advertise);
        settings.node_ttl = Duration::from_secs(config.node_ttl);
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
            pending: HashMap::new(),
            next_id: 0,
            next_load: 0,
        })
    }

    /// Asks the broker; a full queue is answered at once as the broker would answer a lost
    /// Redis, so the caller has one failure path.
    fn ask(
        &mut self,
        make: impl FnOnce(u64) -> Request,
        waiting: Option<Waiting>,
    ) -> Option<Finished> {
        let id = self.next_id;
        self.next_id += 1;
        match self.broker.send(make(id)) {
            Ok(()) => {
                if let Some(waiting) = waiting {
                    self.pending.insert(id, waiting);
                }
                None
            }
            Err(cluster::Full(_)) => {
                let result = Err(ClusterError::Unavailable(
                    "the cluster queue is full".into(),
                ));
                waiting.map(|waiting| Finished { waiting, result })
            }
        }
    }

    /// Routes a push to the other nodes holding the uids. `None` when the answer is to come
    /// (or nobody waits for it); `Some` when it failed at once.
    pub fn route<S: AsRef<str>>(
        &mut self,
        uids: &[S],
        uri: &str,
        body: &str,
        waiting: Option<Waiting>,
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

    pub fn kick(&mut self, uid: &str, waiting: Option<Waiting>) -> Option<Finished> {
        let uid = uid.to_owned();
        self.ask(|id| Request::Kick { id, uid }, waiting)
    }

    pub fn online(&mut self, uids: Vec<String>, waiting: Option<Waiting>) -> Option<Finished> {
        self.ask(|id| Request::Online { id, uids }, waiting)
    }

    pub fn broadcast(&mut self, uri: &str, body: &str) {
        let request = Request::Broadcast {
            uri: uri.to_owned(),
            body: body.to_owned(),
        };
        if self.broker.send(request).is_err() {
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
        let waiting = self.pending.remove(&id)?;
        Some(Finished { waiting, result })
    }

    /// The live node that holds the fewest connections, for `/plex/v1/host`.
    pub fn least_loaded(&self) -> Option<&str> {
        (self.nodes.iter())
            .min_by_key(|n| n.connections)
            .map(|n| n.advertise.as_str())
    }
}
