//! Cluster mode: broker instances as nodes against a real redis-server started per test.
//! Presence across nodes, routing (only to the owning node, once, in order), broadcast, kick
//! and online; a node that dies; Redis stopped, hung and restarted; a subscription that goes
//! silent. Plus an ignored measurement of broker-to-broker throughput and latency.

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{WAIT, wait_until};
use plex::cluster::{
    self, Broker, ClusterConfig, ClusterError, Event, Full, HistorySettings, NodeInfo, Position,
    RemotePush, Reply, Request, Retained,
};

/// Rung by a broker's notify callback, waited on by the test.
#[derive(Default)]
struct Bell {
    rung: Mutex<bool>,
    signal: Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.rung.lock().unwrap() = true;
        self.signal.notify_all();
    }

    fn wait(&self, deadline: Instant) {
        let rung = self.rung.lock().unwrap();
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (mut rung, _) = self
            .signal
            .wait_timeout_while(rung, timeout, |rung| !*rung)
            .unwrap();
        *rung = false;
    }
}

/// One cluster node: its broker, and the events it reported that the test has not taken yet.
struct Node {
    id: String,
    broker: Option<Broker>,
    bell: Arc<Bell>,
    pending: VecDeque<Event>,
    /// Every `Up` and `Down`, in order.
    health: Vec<Event>,
    next_id: u64,
}

impl Node {
    fn start(redis: &RedisServer, name: &str) -> Node {
        Node::start_with(&redis.url(), name, |_| {})
    }

    fn start_with(url: &str, name: &str, adjust: impl FnOnce(&mut ClusterConfig)) -> Node {
        let _ = env_logger::builder().is_test(true).try_init();
        let mut config = ClusterConfig::new(url, format!("{name}.example:9578"));
        config.node_id = format!("{name}-{}", config.node_id);
        adjust(&mut config);
        let bell = Arc::new(Bell::default());
        let ring = bell.clone();
        let broker =
            cluster::start(config.clone(), Box::new(move || ring.ring())).expect("broker starts");
        Node {
            id: config.node_id,
            broker: Some(broker),
            bell,
            pending: VecDeque::new(),
            health: Vec::new(),
            next_id: 0,
        }
    }

    fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("node running")
    }

    fn send(&self, request: Request) {
        self.broker().send(request).expect("queue has room");
    }

    fn presence(&self, uid: &str, connections: u32) {
        self.send(Request::Presence {
            uid: uid.into(),
            connections,
        });
    }

    fn drain(&mut self) {
        while let Some(event) = self.broker.as_ref().and_then(Broker::try_recv) {
            if matches!(event, Event::Up | Event::Down(_)) {
                self.health.push(event.clone());
            }
            self.pending.push_back(event);
        }
    }

    /// Takes the first event `pick` accepts, waiting for it; the others stay pending.
    fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            self.drain();
            let found = self
                .pending
                .iter()
                .enumerate()
                .find_map(|(i, e)| pick(e).map(|t| (i, t)));
            if let Some((i, found)) = found {
                self.pending.remove(i);
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; pending: {:?}",
                self.id,
                self.pending
            );
            self.bell.wait(deadline);
        }
    }

    fn wait_up(&mut self) {
        self.wait_for("Up", |e| matches!(e, Event::Up).then_some(()));
    }

    fn wait_down(&mut self) -> String {
        self.wait_for("Down", |e| match e {
            Event::Down(reason) => Some(reason.clone()),
            _ => None,
        })
    }

    fn reply(&mut self, id: u64) -> Result<Reply, ClusterError> {
        self.wait_for(&format!("reply {id}"), |e| match e {
            Event::Reply { id: i, result } if *i == id => Some(result.clone()),
            _ => None,
        })
    }

    fn ask(&mut self, request: impl FnOnce(u64) -> Request) -> Result<Reply, ClusterError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(request(id));
        self.reply(id)
    }

    fn route(&mut self, uids: &[&str], uri: &str, body: &str) -> Result<Reply, ClusterError> {
        self.ask(|id| Request::Route {
            id,
            uids: strings(uids),
            uri: uri.into(),
            body: body.into(),
        })
    }

    fn online(&mut self, uids: &[&str]) -> Vec<u64> {
        match self.ask(|id| Request::Online {
            id,
            uids: strings(uids),
        }) {
            Ok(Reply::Online(counts)) => counts,
            other => panic!("{}: online {uids:?} answered {other:?}", self.id),
        }
    }

    fn wait_online(&mut self, uids: &[&str], expected: &[u64]) {
        let mut seen = Vec::new();
        let ok = wait_until(WAIT, || {
            seen = self.online(uids);
            seen == expected
        });
        assert!(
            ok,
            "{}: online {uids:?} stayed {seen:?}, expected {expected:?}",
            self.id
        );
    }

    /// Waits for a node list that `accept` takes, ignoring lists reported before the call.
    fn wait_nodes(&mut self, what: &str, accept: impl Fn(&[NodeInfo]) -> bool) -> Vec<NodeInfo> {
        self.drain();
        self.pending.retain(|e| !matches!(e, Event::Nodes(_)));
        self.wait_for(what, |e| match e {
            Event::Nodes(nodes) if accept(nodes) => Some(nodes.clone()),
            _ => None,
        })
    }

    /// The next `n` pushes delivered here, in order; more than `n` fails.
    fn pushes(&mut self, n: usize) -> Vec<RemotePush> {
        let mut got = Vec::new();
        while got.len() < n {
            let what = format!("{} more pushes", n - got.len());
            got.extend(self.wait_for(&what, |e| match e {
                Event::Deliver(pushes) => Some(pushes.clone()),
                _ => None,
            }));
        }
        assert_eq!(
            got.len(),
            n,
            "{}: more pushes than expected: {got:?}",
            self.id
        );
        got
    }

    /// Sends a `Retain` of `body` (uri `/h`) without waiting; its id.
    fn send_retain(&mut self, uids: &[&str], seq: u64, body: &str) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(Request::Retain {
            id,
            uids: strings(uids),
            seq,
            uri: "/h".into(),
            body: body.into(),
        });
        id
    }

    fn retained(&mut self, id: u64) -> (u64, Vec<Position>) {
        match self.reply(id) {
            Ok(Reply::Retained { remote, positions }) => (remote, positions),
            other => panic!("{}: retain {id} answered {other:?}", self.id),
        }
    }

    /// Retains a push to `uid` alone and returns its position.
    fn retain(&mut self, uid: &str, seq: u64, body: &str) -> (String, u64) {
        let id = self.send_retain(&[uid], seq, body);
        let (_, positions) = self.retained(id);
        let [Position { epoch, offset, .. }] = &positions[..] else {
            panic!("{}: one position expected: {positions:?}", self.id);
        };
        (epoch.clone(), *offset)
    }

    fn send_history(&mut self, uid: &str, since: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(Request::History {
            id,
            uid: uid.into(),
            since,
        });
        id
    }

    fn answer(&mut self, id: u64) -> History {
        match self.reply(id) {
            Ok(Reply::History {
                epoch,
                offset,
                acked,
                pushes,
            }) => History {
                epoch,
                offset,
                acked,
                pushes,
            },
            other => panic!("{}: history {id} answered {other:?}", self.id),
        }
    }

    fn history(&mut self, uid: &str, since: u64) -> History {
        let id = self.send_history(uid, since);
        self.answer(id)
    }

    fn ack(&self, uid: &str, epoch: &str, offset: u64) {
        self.send(Request::Ack {
            uid: uid.into(),
            epoch: epoch.into(),
            offset,
        });
    }

    fn shutdown(&mut self) {
        self.broker.take().expect("node running").shutdown();
    }

    fn abandon(&mut self) {
        self.broker.take().expect("node running").abandon();
    }
}

fn strings(uids: &[&str]) -> Vec<String> {
    uids.iter().map(|u| u.to_string()).collect()
}

fn push(uids: &[&str], uri: &str, body: &str) -> RemotePush {
    RemotePush {
        uids: strings(uids),
        uri: uri.into(),
        body: body.into(),
        seq: None,
        positions: Vec::new(),
    }
}

/// A `Reply::History`, as a struct.
#[derive(Debug)]
struct History {
    epoch: String,
    offset: u64,
    acked: u64,
    pushes: Vec<Retained>,
}

impl History {
    fn offsets(&self) -> Vec<u64> {
        self.pushes.iter().map(|p| p.offset).collect()
    }
}

/// A ttl no test outlives.
const LONG: Duration = Duration::from_secs(600);

/// A config change that turns history on.
fn keep(size: usize, ttl: Duration) -> impl Fn(&mut ClusterConfig) {
    move |config| config.history = Some(HistorySettings { size, ttl })
}

fn has(nodes: &[NodeInfo], id: &str) -> bool {
    nodes.iter().any(|n| n.id == id)
}

/// Nodes started against `redis`, each waited on until `Up`.
fn nodes<const N: usize>(redis: &RedisServer, ttl: Option<Duration>) -> [Node; N] {
    nodes_with(redis, |config| {
        if let Some(ttl) = ttl {
            config.node_ttl = ttl;
        }
    })
}

fn nodes_with<const N: usize>(
    redis: &RedisServer,
    adjust: impl Fn(&mut ClusterConfig),
) -> [Node; N] {
    let names = ["a", "b", "c"];
    let mut nodes = std::array::from_fn(|i| Node::start_with(&redis.url(), names[i], &adjust));
    nodes.iter_mut().for_each(Node::wait_up);
    nodes
}

#[test]
fn presence_and_load_are_seen_from_the_other_nodes() {
    let redis = RedisServer::start();
    let [mut a, mut b] = nodes(&redis, None);

    a.presence("7", 1);
    a.presence("7", 2);
    a.presence("8", 1);
    a.presence("8", 0);
    a.send(Request::Load {
        connections: 2,
        users: 1,
    });
    b.wait_online(&["7", "8", "9"], &[2, 0, 0]);
    assert_eq!(
        a.online(&["7"]),
        [0],
        "a node's own connections are not remote"
    );

    let b_id = b.id.clone();
    let list = b.wait_nodes("both nodes, with a's load", |nodes| {
        nodes.len() == 2
            && has(nodes, &b_id)
            && nodes.iter().any(|n| {
                n.id == a.id
                    && n.advertise == "a.example:9578"
                    && (n.connections, n.users) == (2, 1)
            })
    });
    assert!(list.iter().all(|n| n.updated > 0), "{list:?}");

    let hash: Vec<(String, u32)> = redis::cmd("HGETALL")
        .arg("plex:u:7")
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(
        hash,
        [(a.id.clone(), 2)],
        "one field per node holding the uid"
    );

    a.presence("7", 0);
    b.wait_online(&["7"], &[0]);
}

#[test]
fn a_route_reaches_only_the_owning_nodes_once_and_in_order() {
    let redis = RedisServer::start();
    let [mut a, mut b, mut c] = nodes(&redis, None);
    b.presence("7", 1);
    b.presence("shared", 1);
    a.presence("shared", 2);
    c.presence("c-only", 1);
    a.wait_online(&["7", "shared", "c-only"], &[1, 1, 1]);

    const N: u64 = 10_000;
    for id in 0..N {
        a.send(Request::Route {
            id,
            uids: strings(&["7", "nobody"]),
            uri: "/seq".into(),
            body: id.to_string(),
        });
    }
    let bodies: Vec<String> = b
        .pushes(N as usize)
        .into_iter()
        .map(|p| {
            assert_eq!((p.uids, p.uri), (strings(&["7"]), "/seq".to_string()));
            p.body
        })
        .collect();
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert!(
        bodies == expected,
        "pushes arrived out of order or not exactly once"
    );
    for id in 0..N {
        assert_eq!(a.reply(id), Ok(Reply::Routed { remote: 1 }));
    }
    a.next_id = N;

    // Held here and on b: only b's connection is remote, and b gets the push once.
    assert_eq!(
        a.route(&["shared", "7"], "/both", "x"),
        Ok(Reply::Routed { remote: 2 })
    );
    assert_eq!(b.pushes(1), [push(&["7", "shared"], "/both", "x")]);
    assert_eq!(
        a.route(&["nobody"], "/none", "x"),
        Ok(Reply::Routed { remote: 0 })
    );

    // c's first push is the one for its own uid: nothing meant for b leaked to it.
    assert_eq!(
        a.route(&["c-only"], "/c", "x"),
        Ok(Reply::Routed { remote: 1 })
    );
    assert_eq!(c.pushes(1), [push(&["c-only"], "/c", "x")]);
}

#[test]
fn a_broadcast_reaches_every_other_node_but_not_its_sender() {
    let redis = RedisServer::start();
    let [mut a, mut b, mut c] = nodes(&redis, None);
    let broadcast = |uri: &str| Request::Broadcast {
        uri: uri.into(),
        body: "all".into(),
    };
    let from = |uri: &'static str| {
        move |e: &Event| {
            matches!(e, Event::Broadcast { uri: u, body } if u == uri && body == "all")
                .then_some(())
        }
    };

    a.send(broadcast("/from-a"));
    b.wait_for("a's broadcast", from("/from-a"));
    c.wait_for("a's broadcast", from("/from-a"));
    // b's broadcast went out after a's had reached everyone: once a sees it, a has seen all
    // it was ever going to see of its own.
    b.send(broadcast("/from-b"));
    a.wait_for("b's broadcast", from("/from-b"));
    a.drain();
    assert!(
        !a.pending
            .iter()
            .any(|e| matches!(e, Event::Broadcast { .. })),
        "a got its own broadcast: {:?}",
        a.pending
    );
}

#[test]
fn kick_and_online_count_connections_on_the_other_nodes() {
    let redis = RedisServer::start();
    let [mut a, mut b, mut c] = nodes(&redis, None);
    b.presence("5", 3);
    c.presence("5", 1);
    a.wait_online(&["5", "6"], &[4, 0]);
    assert_eq!(b.online(&["5"]), [1]);

    assert_eq!(
        a.ask(|id| Request::Kick {
            id,
            uid: "5".into()
        }),
        Ok(Reply::Kicked { remote: 4 })
    );
    for node in [&mut b, &mut c] {
        node.wait_for("the kick", |e| {
            matches!(e, Event::Kick { uid } if uid == "5").then_some(())
        });
    }
    assert_eq!(
        a.ask(|id| Request::Kick {
            id,
            uid: "6".into()
        }),
        Ok(Reply::Kicked { remote: 0 })
    );
}

#[test]
fn a_node_that_dies_leaves_presence_and_the_node_list_within_its_ttl() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(2);
    let [mut a, mut b, mut c] = nodes(&redis, Some(ttl));
    b.presence("7", 1);
    c.presence("9", 1);
    a.wait_online(&["7", "9"], &[1, 1]);
    a.wait_nodes("all three", |nodes| nodes.len() == 3);

    // A clean shutdown removes the node at once.
    c.shutdown();
    assert_eq!(a.online(&["9"]), [0]);

    // A node that stops refreshing (as a crashed process would) fades within its ttl.
    b.abandon();
    a.wait_online(&["7"], &[0]);
    let nodes = a.wait_nodes("only a", |nodes| nodes.len() == 1);
    assert_eq!(nodes[0].id, a.id);
    assert_eq!(a.route(&["7"], "/x", "x"), Ok(Reply::Routed { remote: 0 }));
    // Readers removed the dead nodes' fields on the way.
    let mut conn = redis.connection();
    for key in ["plex:u:7", "plex:u:9"] {
        let fields: Vec<String> = redis::cmd("HKEYS").arg(key).query(&mut conn).unwrap();
        assert!(fields.is_empty(), "{key} still names {fields:?}");
    }
}

#[test]
fn with_redis_stopped_requests_fail_fast_and_send_never_blocks() {
    let mut redis = RedisServer::start();
    let [mut a, mut b] = nodes(&redis, None);
    b.presence("7", 1);
    a.wait_online(&["7"], &[1]);

    redis.stop();
    a.wait_down();
    b.wait_down();
    assert!(matches!(
        a.route(&["7"], "/x", "x"),
        Err(ClusterError::Unavailable(_))
    ));

    // Far more than the queue holds, without waiting: each is taken or handed back.
    let (mut taken, mut full) = (Vec::new(), 0);
    for id in 1_000..101_000 {
        match a.broker().send(Request::Online {
            id,
            uids: strings(&["7"]),
        }) {
            Ok(()) => taken.push(id),
            Err(Full(_)) => full += 1,
        }
    }
    for id in taken.iter().copied() {
        assert!(matches!(a.reply(id), Err(ClusterError::Unavailable(_))));
    }
    println!("{} taken, {full} handed back", taken.len());
    assert!(
        matches!(&a.health[..], [Event::Up, Event::Down(_)]),
        "Down said once: {:?}",
        a.health
    );
}

#[test]
fn a_hung_redis_fills_the_queue_and_requests_time_out() {
    let redis = RedisServer::start();
    let mut a = Node::start_with(&redis.url(), "a", |config| config.queue = 64);
    let mut b = Node::start(&redis, "b");
    a.wait_up();
    b.wait_up();
    b.presence("7", 1);
    a.wait_online(&["7"], &[1]);

    redis.pause();
    let mut taken = Vec::new();
    let mut handed_back = None;
    for id in 1_000..11_000 {
        let request = Request::Route {
            id,
            uids: strings(&["7"]),
            uri: "/x".into(),
            body: "x".into(),
        };
        match a.broker().send(request) {
            Ok(()) => taken.push(id),
            Err(Full(request)) => {
                handed_back = Some(request);
                break;
            }
        }
    }
    assert!(
        matches!(handed_back, Some(Request::Route { .. })),
        "the queue never filled: {} taken",
        taken.len()
    );
    for id in taken {
        assert!(matches!(a.reply(id), Err(ClusterError::Unavailable(_))));
    }
    a.wait_down();

    redis.resume();
    a.wait_up();
    assert_eq!(
        a.route(&["7"], "/after", "x"),
        Ok(Reply::Routed { remote: 1 })
    );
    let after = b.pushes(1);
    assert_eq!(after, [push(&["7"], "/after", "x")]);
}

/// A push answered `Unavailable` while Redis hung is neither kept nor sent when Redis comes
/// back and runs what was queued to it: the history script refuses to run past its deadline.
/// Without the deadline the hung push took offset 1 on the way back.
#[test]
fn a_retain_answered_unavailable_while_redis_hung_is_never_kept() {
    let redis = RedisServer::start();
    let [mut a] = nodes_with(&redis, keep(100, LONG));

    redis.pause();
    let id = a.send_retain(&["7"], 1, "while hung");
    assert!(matches!(a.reply(id), Err(ClusterError::Unavailable(_))));
    a.wait_down();
    redis.resume();
    a.wait_up();

    let (_, offset) = a.retain("7", 2, "after");
    assert_eq!(offset, 1, "the push answered Unavailable took no offset");
    let kept = a.history("7", 0);
    assert_eq!(kept.pushes.len(), 1);
    assert_eq!(kept.pushes[0].body, "after");
}

#[test]
fn after_redis_restarts_presence_is_back_and_nothing_is_duplicated() {
    let mut redis = RedisServer::start();
    let [mut a, mut b] = nodes(&redis, None);
    b.presence("7", 2);
    a.wait_online(&["7"], &[2]);

    redis.stop();
    a.wait_down();
    b.wait_down();
    b.presence("7", 3); // changes while down are applied on the way back
    b.presence("8", 1);
    b.presence("9", 1);
    b.presence("9", 0);

    redis.restart();
    a.wait_up();
    b.wait_up();
    // b says Up only once it re-registered: no waiting needed.
    assert_eq!(a.online(&["7", "8", "9"]), [3, 1, 0]);
    let hash: Vec<(String, u32)> = redis::cmd("HGETALL")
        .arg("plex:u:7")
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(hash, [(b.id.clone(), 3)]);

    for i in 0..100 {
        assert_eq!(
            a.route(&["7"], "/again", &i.to_string()),
            Ok(Reply::Routed { remote: 3 })
        );
    }
    let bodies: Vec<String> = b.pushes(100).into_iter().map(|p| p.body).collect();
    assert_eq!(bodies, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
    for node in [&a, &b] {
        assert!(
            matches!(&node.health[..], [Event::Up, Event::Down(_), Event::Up]),
            "{}: {:?}",
            node.id,
            node.health
        );
    }
}

#[test]
fn retained_offsets_are_gapless_per_uid_whoever_pushes_and_holders_see_them_in_order() {
    let redis = RedisServer::start();
    let [mut a, mut b, mut c] = nodes_with(&redis, keep(10_000, LONG));
    a.presence("7", 1);
    c.presence("7", 2);
    b.wait_online(&["7", "8"], &[3, 0]);

    // a and b push to "7" (held by a and c) and "8" (offline) at once, without waiting.
    const N: u64 = 2_000;
    let mut ids = [Vec::new(), Vec::new()];
    for seq in 0..N {
        for (node, ids) in [&mut a, &mut b].into_iter().zip(&mut ids) {
            let body = format!("{} {seq}", node.id);
            ids.push(node.send_retain(&["7", "8", "7"], seq, &body));
        }
    }
    let mut offsets = [Vec::new(), Vec::new()];
    let mut epochs = [Vec::new(), Vec::new()];
    for ((node, remote), ids) in [(&mut a, 2), (&mut b, 3)].into_iter().zip(ids) {
        let mut last = [0, 0];
        for id in ids {
            let (reached, positions) = node.retained(id);
            assert_eq!(
                reached, remote,
                "connections on the other nodes, never this one's"
            );
            let uids: Vec<&str> = positions.iter().map(|p| p.uid.as_str()).collect();
            assert_eq!(
                uids,
                ["7", "8"],
                "once per distinct uid, in the order named"
            );
            for (k, p) in positions.into_iter().enumerate() {
                assert!(
                    p.offset > last[k],
                    "{}: offsets go up in request order",
                    node.id
                );
                last[k] = p.offset;
                offsets[k].push(p.offset);
                epochs[k].push(p.epoch);
            }
        }
    }
    for k in 0..2 {
        offsets[k].sort_unstable();
        assert!(
            offsets[k].iter().copied().eq(1..=2 * N),
            "offsets of uid {k} are not 1..={}",
            2 * N
        );
        epochs[k].dedup();
        assert_eq!(epochs[k].len(), 1, "one epoch per uid");
    }

    // Every holder, the sender a included, gets every push to "7" once, in offset order,
    // with the seq its sender gave it; "8" is named nowhere.
    let a_id = a.id.clone();
    for node in [&mut a, &mut c] {
        let pushes = node.pushes(2 * N as usize);
        let mut from = [Vec::new(), Vec::new()];
        for (p, offset) in pushes.iter().zip(1..) {
            assert_eq!(p.uids, ["7"]);
            assert_eq!(p.positions, [(epochs[0][0].clone(), offset)], "{}", node.id);
            let (sender, seq) = p.body.split_once(' ').unwrap();
            assert_eq!(p.seq, Some(seq.parse().unwrap()));
            from[usize::from(sender != a_id)].push(p.seq.unwrap());
        }
        for seqs in from {
            assert!(
                seqs.iter().copied().eq(0..N),
                "one sender's pushes in its order"
            );
        }
    }
    b.drain();
    assert!(
        !b.pending.iter().any(|e| matches!(e, Event::Deliver(_))),
        "b holds neither uid: {:?}",
        b.pending
    );
}

#[test]
fn history_answers_what_followed_since_oldest_first_and_at_most_size() {
    let redis = RedisServer::start();
    let [mut a] = nodes_with(&redis, keep(5, LONG));
    let empty = a.history("u", 0);
    for offset in 1..=12 {
        let at = a.retain("u", 100 + offset, &format!("body {offset}"));
        assert_eq!(at, (empty.epoch.clone(), offset));
    }
    let all = a.history("u", 0);
    assert_eq!((&all.epoch, all.offset, all.acked), (&empty.epoch, 12, 0));
    let expected: Vec<Retained> = (8..=12)
        .map(|offset| Retained {
            offset,
            seq: 100 + offset,
            uri: "/h".into(),
            body: format!("body {offset}"),
        })
        .collect();
    assert_eq!(all.pushes, expected, "the last `size`, oldest first");
    assert_eq!(a.history("u", 10).offsets(), [11, 12]);
    assert!(a.history("u", 12).pushes.is_empty());
    let ahead = a.history("u", 99);
    assert_eq!((ahead.offset, ahead.offsets()), (12, vec![]));

    // Redis trims the stream too, a listpack node at a time.
    let ids: Vec<u64> = (13..=400)
        .map(|seq| a.send_retain(&["u"], seq, "x"))
        .collect();
    for id in ids {
        a.retained(id);
    }
    let len: usize = redis::cmd("XLEN")
        .arg("plex:hs:u")
        .query(&mut redis.connection())
        .unwrap();
    assert!((5..=105).contains(&len), "{len} entries kept");
    assert_eq!(a.history("u", 0).offsets(), [396, 397, 398, 399, 400]);
}

#[test]
fn pushes_older_than_the_ttl_are_not_replayed_but_the_offsets_go_on() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(1);
    let [mut a] = nodes_with(&redis, keep(100, ttl));
    let pushed = Instant::now();
    let (epoch, _) = a.retain("u", 1, "x");
    a.retain("u", 2, "y");
    let fresh = a.history("u", 0);
    if pushed.elapsed() < ttl {
        assert_eq!(fresh.offsets(), [1, 2]);
    }

    let mut last = None;
    let expired = wait_until(WAIT, || {
        let h = a.history("u", 0);
        let empty = h.pushes.is_empty();
        last = Some(h);
        empty
    });
    assert!(expired, "still replayed: {last:?}");
    let last = last.unwrap();
    assert_eq!(
        (&last.epoch, last.offset),
        (&epoch, 2),
        "the record outlives the pushes"
    );
    let mut conn = redis.connection();
    let gone = wait_until(WAIT, || {
        redis::cmd("EXISTS")
            .arg("plex:hs:u")
            .query::<u32>(&mut conn)
            .unwrap()
            == 0
    });
    assert!(gone, "the stream never expired");
    let record_ttl: i64 = redis::cmd("PTTL")
        .arg("plex:hm:u")
        .query(&mut conn)
        .unwrap();
    assert!(
        record_ttl > 29 * 24 * 3600 * 1000,
        "record ttl {record_ttl} ms"
    );

    assert_eq!(a.retain("u", 3, "z"), (epoch, 3));
}

#[test]
fn a_uid_gets_a_new_epoch_whenever_its_history_is_lost() {
    let redis = RedisServer::start();
    let [mut a] = nodes_with(&redis, keep(100, LONG));
    let mut conn = redis.connection();
    let mut del = |keys: &[&str]| {
        let _: u32 = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
    };

    // Made by the first read: a device that connects before any push has an epoch to keep.
    let first = a.history("u", 0);
    assert_eq!((first.offset, first.acked, first.offsets()), (0, 0, vec![]));
    assert_eq!(a.retain("u", 1, "x"), (first.epoch.clone(), 1));

    del(&["plex:hm:u", "plex:hs:u"]);
    let second = a.history("u", 1);
    assert_ne!(second.epoch, first.epoch);
    assert_eq!((second.offset, second.offsets()), (0, vec![]));
    assert_eq!(a.retain("u", 2, "y"), (second.epoch.clone(), 1));
    assert_eq!(a.retain("u", 3, "z"), (second.epoch.clone(), 2));

    // The record alone lost: the stream it leaves belongs to the old epoch and goes too.
    del(&["plex:hm:u"]);
    let (third, offset) = a.retain("u", 4, "w");
    assert_eq!(offset, 1);
    assert!(![&first.epoch, &second.epoch].contains(&&third));
    let h = a.history("u", 0);
    assert_eq!((&h.epoch, h.offset, h.offsets()), (&third, 1, vec![1]));
    assert_eq!(h.pushes[0].body, "w");

    // Redis losing everything.
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis.connection())
        .unwrap();
    let fourth = a.history("u", 1);
    assert!(![&first.epoch, &second.epoch, &third].contains(&&fourth.epoch));
    assert_eq!((fourth.offset, fourth.offsets()), (0, vec![]));
}

#[test]
fn acks_keep_the_highest_offset_acknowledged_in_the_current_epoch() {
    let redis = RedisServer::start();
    let [mut a] = nodes_with(&redis, keep(100, LONG));
    for seq in 1..=5 {
        a.retain("u", seq, "x");
    }
    let epoch = a.history("u", 0).epoch;
    let acked = |a: &mut Node| a.history("u", 5).acked;
    a.ack("u", &epoch, 3);
    assert_eq!(acked(&mut a), 3);
    a.ack("u", &epoch, 2);
    assert_eq!(acked(&mut a), 3, "never lowered");
    a.ack("u", "another epoch", 4);
    assert_eq!(acked(&mut a), 3, "an ack of another epoch is ignored");
    a.ack("u", &epoch, 99);
    assert_eq!(acked(&mut a), 5, "capped at the offset");

    a.ack("nobody", &epoch, 1);
    a.history("u", 0); // answered after the ack ran
    let exists: u32 = redis::cmd("EXISTS")
        .arg("plex:hm:nobody")
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(exists, 0, "an ack makes no history");
}

#[test]
fn history_retain_and_other_requests_are_answered_in_request_order() {
    let redis = RedisServer::start();
    let [mut a, b] = nodes_with(&redis, keep(100, LONG));
    b.presence("u", 1);
    a.wait_online(&["u"], &[1]);

    // All sent before any is answered: one batch, in runs of history and plain requests.
    let first = [0, 1, 2].map(|seq| a.send_retain(&["u"], seq, "x"));
    let online = a.next_id;
    a.next_id += 1;
    a.send(Request::Online {
        id: online,
        uids: strings(&["u"]),
    });
    let read = a.send_history("u", 0);
    let then = [3, 4].map(|seq| a.send_retain(&["u"], seq, "x"));
    let again = a.send_history("u", 4);
    let nobody = a.send_retain(&[], 5, "x");

    for (id, offset) in first.into_iter().zip(1..) {
        assert_eq!(a.retained(id).1[0].offset, offset);
    }
    assert_eq!(a.reply(online), Ok(Reply::Online(vec![1])));
    let h = a.answer(read);
    assert_eq!((h.offset, h.offsets()), (3, vec![1, 2, 3]));
    for (id, offset) in then.into_iter().zip(4..) {
        assert_eq!(
            a.retained(id).1[0].offset,
            offset,
            "after the read: above its offset"
        );
    }
    assert_eq!(a.answer(again).offsets(), [5]);
    assert_eq!(
        a.retained(nobody),
        (0, vec![]),
        "a push for no uid is kept nowhere"
    );
}

#[test]
fn a_node_resuming_a_uid_mid_stream_gets_every_push_across_the_seam() {
    let redis = RedisServer::start();
    let [a, mut b] = nodes_with(&redis, keep(100_000, LONG));
    // a pushes to "7" flat out until told to stop, then once more, and says how many it sent.
    let stop = Arc::new(AtomicBool::new(false));
    let told = stop.clone();
    let sender = std::thread::spawn(move || {
        let mut a = a;
        let mut ids = Vec::new();
        loop {
            let last = told.load(Ordering::Acquire);
            let seq = ids.len() as u64;
            let mut request = Request::Retain {
                id: seq,
                uids: strings(&["7"]),
                seq,
                uri: "/h".into(),
                body: seq.to_string(),
            };
            while let Err(Full(back)) = a.broker().send(request) {
                request = back;
                std::thread::yield_now();
            }
            ids.push(seq);
            if last {
                break;
            }
        }
        for &id in &ids {
            a.retained(id);
        }
        ids.len() as u64
    });

    // Mid-stream, the uid comes online on b, which then asks what it missed.
    assert!(wait_until(WAIT, || b.history("7", 0).offset >= 500));
    b.presence("7", 1);
    let h = b.history("7", 0);
    stop.store(true, Ordering::Release);
    let n = sender.join().unwrap();
    assert!(
        h.offsets().into_iter().eq(1..=h.offset),
        "{:?}",
        h.offsets()
    );
    assert!(h.offset < n, "a's last push was sent after the answer");

    let mut live = Vec::new();
    while live.last() != Some(&n) {
        let pushes = b.wait_for("pushes to 7", |e| match e {
            Event::Deliver(p) => Some(p.clone()),
            _ => None,
        });
        live.extend(pushes.iter().map(|p| p.positions[0].1));
    }
    let after: Vec<u64> = live.iter().copied().filter(|&o| o > h.offset).collect();
    assert!(
        after.iter().copied().eq(h.offset + 1..=n),
        "live pushes after the answer's offset {}: {after:?}",
        h.offset
    );
    println!(
        "history answered up to {} of {n}; {} live pushes at or below it (dropped by offset)",
        h.offset,
        live.len() - after.len()
    );
}

#[test]
fn with_redis_down_history_requests_are_unavailable_and_acks_dropped() {
    let mut redis = RedisServer::start();
    let [mut a] = nodes_with(&redis, keep(100, LONG));
    let (before, _) = a.retain("u", 1, "x");

    redis.stop();
    a.wait_down();
    let id = a.send_retain(&["u"], 2, "y");
    assert!(matches!(a.reply(id), Err(ClusterError::Unavailable(_))));
    let id = a.send_history("u", 0);
    assert!(matches!(a.reply(id), Err(ClusterError::Unavailable(_))));
    a.ack("u", &before, 1);

    redis.restart();
    a.wait_up();
    let after = a.history("u", 0);
    assert_ne!(
        after.epoch, before,
        "Redis came back empty: the history is lost, and says so"
    );
    assert_eq!((after.offset, after.offsets()), (0, vec![]));
    a.drain();
    assert!(
        !a.pending.iter().any(|e| matches!(e, Event::Reply { .. })),
        "an ack is never answered: {:?}",
        a.pending
    );
}

#[test]
fn a_flushed_script_cache_costs_one_refused_run_then_the_script_is_loaded_again() {
    let redis = RedisServer::start();
    let [mut a] = nodes_with(&redis, keep(100, LONG));
    let (epoch, _) = a.retain("u", 1, "x");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut redis.connection())
        .unwrap();
    let id = a.send_retain(&["u"], 2, "y");
    assert!(matches!(a.reply(id), Err(ClusterError::Unavailable(_))));
    a.wait_down();
    a.wait_up();
    assert_eq!(
        a.retain("u", 3, "z"),
        (epoch, 2),
        "the refused push was not kept"
    );
}

#[test]
fn without_history_in_the_config_history_requests_are_refused() {
    let redis = RedisServer::start();
    let [mut a] = nodes(&redis, None);
    let id = a.send_retain(&["u"], 1, "x");
    let Err(ClusterError::Unavailable(reason)) = a.reply(id) else {
        panic!("a retain without history was not refused");
    };
    assert!(reason.contains("history"), "{reason}");
    let id = a.send_history("u", 0);
    assert!(matches!(a.reply(id), Err(ClusterError::Unavailable(_))));
    assert_eq!(a.route(&["u"], "/x", "x"), Ok(Reply::Routed { remote: 0 }));
}

/// A TCP proxy in front of Redis that can silence the subscriptions passing through it: what
/// Redis sends them is dropped while the connections stay open, as when a failover leaves a
/// client subscribed on a server nobody publishes to any more.
struct Proxy {
    addr: SocketAddr,
    taps: Arc<Mutex<Vec<Tap>>>,
    stop: Arc<AtomicBool>,
}

/// One proxied connection: whether it subscribed, and whether it is silenced.
#[derive(Clone, Default)]
struct Tap {
    subscriber: Arc<AtomicBool>,
    silenced: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            taps: Arc::default(),
            stop: Arc::default(),
        };
        let (taps, stop) = (proxy.taps.clone(), proxy.stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(upstream)) else {
                    continue;
                };
                let tap = Tap::default();
                taps.lock().unwrap().push(tap.clone());
                let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = tap.clone();
                std::thread::spawn(move || {
                    forward(c, s, |bytes| {
                        if bytes.windows(9).any(|w| w == b"SUBSCRIBE") {
                            up.subscriber.store(true, Ordering::Release);
                        }
                        true
                    })
                });
                std::thread::spawn(move || {
                    forward(server, client, |_| !tap.silenced.load(Ordering::Acquire))
                });
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn silence_subscriptions(&self) {
        for tap in self.taps.lock().unwrap().iter() {
            if tap.subscriber.load(Ordering::Acquire) {
                tap.silenced.store(true, Ordering::Release);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

/// Copies `from` to `to` until either closes, passing on only what `pass` accepts.
fn forward(mut from: TcpStream, mut to: TcpStream, mut pass: impl FnMut(&[u8]) -> bool) {
    let mut buf = vec![0; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if pass(&buf[..n]) && to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn a_silent_subscription_is_caught_by_the_probe_and_renewed() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr());
    let mut a = Node::start(&redis, "a");
    let mut b = Node::start_with(&proxy.url(), "b", |_| {});
    a.wait_up();
    b.wait_up();
    b.presence("7", 1);
    a.wait_online(&["7"], &[1]);
    assert_eq!(
        a.route(&["7"], "/before", "x"),
        Ok(Reply::Routed { remote: 1 })
    );
    assert_eq!(b.pushes(1), [push(&["7"], "/before", "x")]);

    proxy.silence_subscriptions();
    let reason = b.wait_down();
    assert!(reason.contains("silent"), "{reason}");
    b.wait_up();
    assert_eq!(
        a.route(&["7"], "/after", "x"),
        Ok(Reply::Routed { remote: 1 })
    );
    assert_eq!(b.pushes(1), [push(&["7"], "/after", "x")]);
}

/// Broker to broker over a local Redis: pushes to 10,000 uids held by another node, flat out,
/// then paced at 50,000 and at 10,000 a second for latency. Run by hand:
/// `cargo test --release --test cluster_broker -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn throughput_broker_to_broker() {
    measure(None, |id, uid, body| Request::Route {
        id,
        uids: vec![uid],
        uri: "/bench".into(),
        body,
    });
}

/// The same with history: each push kept in its uid's history (offset, stream, ttls) by the
/// script that publishes it.
#[test]
#[ignore = "a measurement, run by hand"]
fn throughput_of_retained_pushes_broker_to_broker() {
    let settings = HistorySettings {
        size: 100,
        ttl: Duration::from_secs(300),
    };
    measure(Some(settings), |id, uid, body| Request::Retain {
        id,
        uids: vec![uid],
        seq: id,
        uri: "/bench".into(),
        body,
    });
}

/// Runs the three rounds with requests `make(id, uid, body)`, the body being the send time.
fn measure(history: Option<HistorySettings>, make: impl Fn(u64, String, String) -> Request) {
    const UIDS: usize = 10_000;
    let redis = RedisServer::start();
    let [mut a, b] = nodes_with(&redis, |config| config.history = history);
    let uids: Vec<String> = (0..UIDS).map(|i| format!("user-{i}")).collect();
    for uid in &uids {
        b.presence(uid, 1);
    }
    a.wait_online(&[uids[UIDS - 1].as_str()], &[1]);

    let mut redis_conn = redis.connection();
    let mut redis_cpu = || -> f64 {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query(&mut redis_conn)
            .unwrap();
        let seconds = |field: &str| -> f64 {
            let line = info.lines().find(|l| l.starts_with(field)).unwrap();
            line[field.len()..].trim().parse().unwrap()
        };
        seconds("used_cpu_user:") + seconds("used_cpu_sys:")
    };
    let epoch = Instant::now();
    let mut run = |a: &mut Node, b: Node, n: usize, every: Option<Duration>| {
        let cpu_before = (broker_cpu(), redis_cpu());
        let receiver = std::thread::spawn(move || {
            let mut b = b;
            let mut latencies = Vec::with_capacity(n);
            while latencies.len() < n {
                let pushes = b.wait_for("pushes", |e| match e {
                    Event::Deliver(p) => Some(p.clone()),
                    _ => None,
                });
                let now = epoch.elapsed().as_nanos() as u64;
                latencies.extend(pushes.iter().map(|p| now - p.body.parse::<u64>().unwrap()));
            }
            (b, latencies)
        });
        let start = Instant::now();
        for i in 0..n {
            if let Some(every) = every {
                let due = start + every * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let body = epoch.elapsed().as_nanos().to_string();
            let mut request = make(i as u64, uids[i % UIDS].clone(), body);
            while let Err(Full(back)) = a.broker().send(request) {
                request = back;
                a.drain();
                a.pending.clear();
                std::thread::yield_now();
            }
            if i % 1024 == 0 {
                a.drain();
                a.pending.clear();
            }
        }
        let (b, mut latencies) = receiver.join().unwrap();
        let elapsed = start.elapsed();
        let brokers = broker_cpu() - cpu_before.0;
        let redis = redis_cpu() - cpu_before.1;
        latencies.sort_unstable();
        let at = |q: f64| Duration::from_nanos(latencies[((n as f64 * q) as usize).min(n - 1)]);
        println!(
            "{n} pushes in {elapsed:.2?}: {:.0}/s; latency p50 {:.2?} p99 {:.2?} max {:.2?}; \
             CPU per push: {:.1} µs in the broker threads of both nodes, {:.1} µs in Redis",
            n as f64 / elapsed.as_secs_f64(),
            at(0.5),
            at(0.99),
            at(1.0),
            brokers * 1e6 / n as f64,
            redis * 1e6 / n as f64,
        );
        b
    };
    let b = run(&mut a, b, 300_000, None);
    let b = run(&mut a, b, 100_000, Some(Duration::from_micros(20)));
    run(&mut a, b, 50_000, Some(Duration::from_micros(100)));
}

/// CPU seconds the broker threads of this process have used (user + system), from
/// /proc/self/task/*/stat in clock ticks.
fn broker_cpu() -> f64 {
    let mut ticks = 0.0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if comm.starts_with("plex-cluster") {
            // Fields after the command name: state is the first, utime the 12th, stime the 13th.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            ticks += fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        }
    }
    ticks / 100.0
}
