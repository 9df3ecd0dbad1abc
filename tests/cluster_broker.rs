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
    self, Broker, ClusterConfig, ClusterError, Event, Full, NodeInfo, RemotePush, Reply, Request,
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
    }
}

fn has(nodes: &[NodeInfo], id: &str) -> bool {
    nodes.iter().any(|n| n.id == id)
}

/// Nodes started against `redis`, each waited on until `Up`.
fn nodes<const N: usize>(redis: &RedisServer, ttl: Option<Duration>) -> [Node; N] {
    let names = ["a", "b", "c"];
    let mut nodes = std::array::from_fn(|i| {
        Node::start_with(&redis.url(), names[i], |config| {
            if let Some(ttl) = ttl {
                config.node_ttl = ttl;
            }
        })
    });
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
    const UIDS: usize = 10_000;
    let redis = RedisServer::start();
    let [mut a, b] = nodes(&redis, None);
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
            let mut request = Request::Route {
                id: i as u64,
                uids: vec![uids[i % UIDS].clone()],
                uri: "/bench".into(),
                body: epoch.elapsed().as_nanos().to_string(),
            };
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
