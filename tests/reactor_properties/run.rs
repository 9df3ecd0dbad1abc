//! A case being played: the record of every push sent, the actors' sockets, and the checks
//! made after each operation and at the end.

use std::collections::{HashMap, HashSet};
use std::net::Shutdown;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::scripted_auth::{Answer, ScriptedAuth};
use crate::common::{self, Event, TestServer, WAIT, start, wait_until};
use crate::peers::{Good, HttpPeer, Peer, Tracked, reset};
use crate::{
    As, BUFFERED_PER_CONNECTION, CLIENTS, ClientOp, End, Frame, GHOST, GOOD, GOOD_BUDGET, HTTPS,
    HandleOp, HttpOp, HttpPiece, Mode, Op, PushUri, UIDS, Uid, server_config, token,
};

/// One push sent by the test, by its id (which its body carries).
#[derive(Debug)]
pub struct Sent {
    /// Who sent it: 0 is the handle, then each connection gets its own number.
    pub source: u32,
    pub to: Vec<&'static str>,
    pub broadcast: bool,
    pub body_len: usize,
    /// The server delivers it if it gets it as sent: valid, from a connection allowed to push.
    pub deliverable: bool,
    /// The server has acknowledged it: it must have been delivered.
    pub acknowledged: bool,
}

impl Sent {
    pub fn reaches_good(&self) -> bool {
        self.deliverable && (self.broadcast || self.to.contains(&GOOD))
    }
}

pub struct Book {
    pub sent: Vec<Sent>,
    /// Bytes of pushes that may still be addressed to the well-behaved client.
    budget: usize,
    sources: u32,
}

impl Book {
    fn new() -> Book {
        Book {
            sent: Vec::new(),
            budget: GOOD_BUDGET,
            sources: 0,
        }
    }

    pub fn new_source(&mut self) -> u32 {
        self.sources += 1;
        self.sources
    }

    /// Records a push of `pad` padding bytes to `to` (a broadcast if `None`) and returns its
    /// id and body. Past the well-behaved client's budget, it is readdressed to the ghost.
    pub fn push(
        &mut self,
        source: u32,
        to: Option<&[Uid]>,
        deliverable: bool,
        pad: u16,
    ) -> (usize, String) {
        let id = self.sent.len();
        let body = format!("#{id}#{}", "x".repeat(pad.into()));
        let cost = body.len() + 64;
        // Each copy that would reach the well-behaved client spends its budget; past the
        // budget, a push goes to the ghost instead, and a broadcast to nobody.
        let mut affordable = || {
            let affordable = !deliverable || self.budget >= cost;
            if affordable && deliverable {
                self.budget -= cost;
            }
            affordable
        };
        let (to, broadcast) = match to {
            Some(to) => {
                let to = (to.iter())
                    .map(|&u| match u {
                        Uid::Good if !affordable() => GHOST,
                        u => u.name(),
                    })
                    .collect();
                (to, false)
            }
            None => (Vec::new(), affordable()),
        };
        let deliverable = deliverable && (!to.is_empty() || broadcast);
        self.sent.push(Sent {
            source,
            to,
            broadcast,
            body_len: body.len(),
            deliverable,
            acknowledged: false,
        });
        (id, body)
    }

    /// The id a push body carries.
    pub fn id_of(body: &str) -> Option<usize> {
        body.strip_prefix('#')?.split('#').next()?.parse().ok()
    }
}

/// The uri a broadcast is sent with: a refused one once the budget is spent.
pub fn broadcast_uri(sent: &Sent, uri: PushUri) -> PushUri {
    if sent.broadcast || !uri.is_valid() {
        uri
    } else {
        PushUri::Empty
    }
}

/// The body of the push that ends a case whose actors leave.
const LAST: &str = "#last#";

/// How long the end of a case waits for answers still on their way.
const SETTLE: Duration = Duration::from_millis(500);

/// Asks the server to stop when dropped, even on a failed check: the next case then does not
/// share the machine with this one's reactor.
struct Stopper(plex::Handle);

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

pub struct Run {
    webhook: bool,
    clients: Vec<Option<Peer>>,
    https: Vec<Option<HttpPeer>>,
    book: Book,
    good: Good,
    _stopper: Stopper,
    server: TestServer,
    /// Dropped last: pending authentications may still reach it until the server stops.
    auth: Option<ScriptedAuth>,
}

impl Run {
    pub fn start(mode: &Mode) -> Run {
        let auth = matches!(mode, Mode::Webhook(_)).then(ScriptedAuth::start);
        let server = start(server_config(auth.as_ref().map(ScriptedAuth::url)));
        let webhook = auth.is_some();
        let mut good = server.connect();
        let token = token(&Answer::Accept(GOOD.into()), webhook);
        assert!(
            good.authenticate(&token, WAIT).expect("an auth answer"),
            "the well-behaved client is refused"
        );
        if let (Some(auth), Mode::Webhook(preludes)) = (&auth, mode) {
            auth.script_connections(preludes.clone());
        }
        Run {
            webhook,
            clients: (0..CLIENTS).map(|_| None).collect(),
            https: (0..HTTPS).map(|_| None).collect(),
            book: Book::new(),
            good: Good::start(good),
            _stopper: Stopper(server.handle.clone()),
            server,
            auth,
        }
    }

    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Client(i, op) => self.client(*i as usize, op),
            Op::Http(i, op) => self.http(*i as usize, op),
            Op::Handle(op) => self.handle(op),
            Op::Churn(answer, times) => {
                for _ in 0..*times {
                    let mut peer = Peer::connect(self.server.addr, self.book.new_source());
                    let bytes =
                        peer.frame(&mut self.book, self.webhook, &Frame::Auth(answer.clone()));
                    peer.write(&bytes);
                }
            }
            Op::Pause(ms) => std::thread::sleep(Duration::from_millis((*ms).into())),
        }
        self.pump();
    }

    fn client(&mut self, i: usize, op: &ClientOp) {
        let (addr, webhook) = (self.server.addr, self.webhook);
        let book = &mut self.book;
        let slot = &mut self.clients[i];
        match op {
            ClientOp::Connect(who) => {
                let mut peer = Peer::connect(addr, book.new_source());
                match who {
                    As::Anonymous => {}
                    As::User(answer) => {
                        let bytes = peer.frame(book, webhook, &Frame::Auth(answer.clone()));
                        peer.write(&bytes);
                    }
                    As::Inner => {
                        let bytes = peer.frame(book, webhook, &Frame::InnerAuth { right: true });
                        peer.write(&bytes);
                        assert!(
                            !peer.open || peer.await_inner_auth(book),
                            "the right inner password is refused"
                        );
                        peer.tracked = peer.open.then(Tracked::default);
                    }
                }
                *slot = Some(peer);
            }
            ClientOp::Send(pieces) => {
                let peer = slot.get_or_insert_with(|| Peer::connect(addr, book.new_source()));
                for piece in pieces {
                    let bytes = peer.piece(book, webhook, piece);
                    peer.write(&bytes);
                }
            }
            ClientOp::StopReading => slot.iter_mut().for_each(|p| p.reading = false),
            ClientOp::Resume => slot.iter_mut().for_each(|p| p.reading = true),
            ClientOp::HalfClose => {
                if let Some(peer) = slot {
                    let _ = peer.stream.shutdown(Shutdown::Write);
                    peer.tracked = None;
                }
            }
            ClientOp::Reset => {
                if let Some(peer) = slot.take() {
                    reset(&peer.stream);
                }
            }
            ClientOp::Close => *slot = None,
        }
    }

    fn http(&mut self, i: usize, op: &HttpOp) {
        let addr = self.server.http;
        let book = &mut self.book;
        let slot = &mut self.https[i];
        match op {
            HttpOp::Connect => *slot = Some(HttpPeer::connect(addr, book.new_source())),
            HttpOp::Send(pieces) => {
                let peer = slot.get_or_insert_with(|| HttpPeer::connect(addr, book.new_source()));
                for piece in pieces {
                    let bytes = match piece {
                        HttpPiece::Request(r) => peer.request(book, r),
                        HttpPiece::Flood(r, n) => {
                            (0..*n).flat_map(|_| peer.request(book, r)).collect()
                        }
                        HttpPiece::Malformed(m) => peer.malformed(m),
                    };
                    peer.write(&bytes);
                }
            }
            HttpOp::StopReading => slot.iter_mut().for_each(|p| p.reading = false),
            HttpOp::Resume => slot.iter_mut().for_each(|p| p.reading = true),
            HttpOp::HalfClose => {
                if let Some(peer) = slot {
                    let _ = peer.stream.shutdown(Shutdown::Write);
                    peer.clean = false;
                }
            }
            HttpOp::Reset => {
                if let Some(peer) = slot.take() {
                    reset(&peer.stream);
                }
            }
        }
    }

    fn handle(&mut self, op: &HandleOp) {
        let handle = &self.server.handle;
        match op {
            HandleOp::Push { to, uri, pad } => {
                let (id, body) = self.book.push(0, Some(to), uri.is_valid(), *pad);
                let uids = &self.book.sent[id].to;
                let result = handle.push_many(uids, uri.text(), &body);
                assert_eq!(
                    result.is_ok(),
                    uri.is_valid(),
                    "push to {uids:?}: {result:?}"
                );
                self.book.sent[id].acknowledged = true;
            }
            HandleOp::Broadcast { uri, pad } => {
                let (id, body) = self.book.push(0, None, uri.is_valid(), *pad);
                let uri = broadcast_uri(&self.book.sent[id], *uri);
                let result = handle.broadcast(uri.text(), &body);
                assert_eq!(result.is_ok(), uri.is_valid(), "broadcast: {result:?}");
                self.book.sent[id].acknowledged = true;
            }
            HandleOp::Kick(uid) => {
                handle.kick(uid.name()).expect("kick");
            }
            HandleOp::Online => {
                let online = handle.online_many(&[GOOD]).expect("online");
                assert_eq!(online, [1], "the well-behaved client is online");
            }
        }
    }

    /// Every reading actor reads what has arrived.
    fn pump(&mut self) {
        for peer in self.clients.iter_mut().flatten() {
            peer.pump(&mut self.book);
        }
        for peer in self.https.iter_mut().flatten() {
            peer.pump(&mut self.book);
        }
    }

    /// Gives the answers the server still owes to actors that read a moment to arrive, so
    /// that they acknowledge what they can. Nothing is checked on how long that takes.
    fn settle(&mut self) {
        wait_until(SETTLE, || {
            self.pump();
            let owed = |open: bool, reading: bool, owed: bool| open && reading && owed;
            !(self.clients.iter().flatten()).any(|p| {
                owed(
                    p.open,
                    p.reading,
                    p.tracked.as_ref().is_some_and(|t| !t.beats.is_empty()),
                )
            }) && !(self.https.iter().flatten())
                .any(|p| owed(p.open, p.reading, p.clean && !p.expected.is_empty()))
        });
    }

    /// The server answers within `WAIT`; otherwise its reactor has died or hangs.
    fn stats(&self) -> plex::Stats {
        let handle = self.server.handle.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(handle.stats());
        });
        match rx.recv_timeout(WAIT) {
            Ok(Ok(stats)) => stats,
            Ok(Err(e)) => panic!("the server no longer answers ({e}): its reactor thread died"),
            Err(_) => panic!("the server did not answer within {WAIT:?}"),
        }
    }

    /// What must hold after every operation.
    pub fn check(&self, when: &str) {
        let stats = self.stats();
        self.good.check_connected();
        let json = serde_json::to_value(&stats).unwrap();
        // Versions that count both listeners' closes in `closed` skip the last check.
        let closed: u64 = stats.closed.values().sum();
        let counted_apart = json.get("http_closed").is_some();
        assert!(
            stats.users >= 1
                && stats.users + stats.inner <= stats.connections
                && stats.uids <= stats.users
                && (!counted_apart || stats.accepted == stats.connections + closed),
            "{when}: inconsistent gauges: {stats:?}"
        );
        // Versions without the memory gauge skip this check.
        if let Some(buffered) = json["buffered_bytes"].as_u64() {
            assert!(
                buffered <= stats.connections * BUFFERED_PER_CONNECTION,
                "{when}: {buffered} bytes buffered for {} connections",
                stats.connections
            );
        }
    }

    pub fn finish(mut self, end: End) {
        self.settle();
        match end {
            End::ActorsLeave => self.actors_leave(),
            End::Shutdown => {
                self.fresh_client_gets_a_push(self.webhook);
                // With every actor still there: what the server owes is flushed, then it
                // closes everything, the well-behaved client among them.
                self.server.handle.shutdown().expect("shutdown");
                self.server.wait_finished();
                let closed = wait_until(WAIT, || self.good.closed());
                assert!(closed, "the well-behaved client is still connected");
            }
        }
        self.check_good_log();
        self.check_hooks();
    }

    /// The hooks heard each uid come online and go offline in turn, and nobody online once
    /// the server has shut down; upstream messages came from actors.
    fn check_hooks(&self) {
        let events = self.server.events.snapshot();
        let mut online: HashMap<&str, bool> = HashMap::new();
        for e in &events {
            match e {
                Event::Online(uid) | Event::Offline(uid) => {
                    let now = matches!(e, Event::Online(_));
                    let was = online.insert(uid, now).unwrap_or(false);
                    assert_ne!(was, now, "uid {uid} went {e:?} twice in a row: {events:?}");
                }
                Event::Upstream(uid, m) => {
                    assert!(UIDS.contains(&uid.as_str()), "upstream from {uid}: {m:?}");
                }
            }
        }
        let still: Vec<&str> = (online.into_iter())
            .filter_map(|(uid, on)| on.then_some(uid))
            .collect();
        assert!(still.is_empty(), "online after the shutdown: {still:?}");
    }

    /// Every actor leaves; the server is back to the well-behaved client alone, a fresh
    /// client authenticates at its first attempt, and the server shuts down.
    fn actors_leave(&mut self) {
        self.clients.clear();
        self.https.clear();
        self.wait_for_good_alone("every actor left");
        if let Some(auth) = &self.auth {
            auth.script_connections(Vec::new());
        }
        self.fresh_client_gets_a_push(false);
        self.wait_for_good_alone("the fresh client left");
        // Pushes from every source were acknowledged before this one: it comes last.
        let handle = &self.server.handle;
        handle.push(GOOD, "/p", LAST).expect("push");
        let arrived = wait_until(WAIT, || {
            self.good.got().last().is_some_and(|m| m.body == LAST)
        });
        self.good.check_connected();
        assert!(arrived, "the last push never came: {:?}", self.good.got());
        handle.shutdown().expect("shutdown");
        self.server.wait_finished();
    }

    fn wait_for_good_alone(&self, when: &str) {
        let ok = wait_until(WAIT, || {
            let s = self.stats();
            (s.connections, s.users, s.inner, s.uids, s.http_connections) == (1, 1, 0, 1, 0)
        });
        assert!(ok, "{when}, connections linger: {:?}", self.stats());
    }

    /// Every push the well-behaved client got was addressed to it, deliverable, whole, once,
    /// and in its source's order; every acknowledged one is there.
    fn check_good_log(&self) {
        let got = self.good.got();
        let mut seen = HashSet::new();
        let mut last: HashMap<u32, usize> = HashMap::new();
        for m in got.iter().filter(|m| m.body != LAST) {
            let id = Book::id_of(&m.body)
                .unwrap_or_else(|| panic!("the well-behaved client got a stray message: {m:?}"));
            let sent = &self.book.sent[id];
            assert!(sent.reaches_good(), "push {id} is not for it: {sent:?}");
            assert_eq!(
                (m.uri.as_str(), m.body.len()),
                ("/p", sent.body_len),
                "push {id}"
            );
            assert!(seen.insert(id), "push {id} came twice: {sent:?}");
            if let Some(before) = last.insert(sent.source, id) {
                assert!(
                    before < id,
                    "push {id} came after {before}, from the same source"
                );
            }
        }
        for (id, sent) in self.book.sent.iter().enumerate() {
            if sent.acknowledged && sent.reaches_good() {
                assert!(
                    seen.contains(&id),
                    "push {id} was acknowledged, never delivered: {sent:?}"
                );
            }
        }
    }

    /// A newcomer authenticates and gets a push. While actors keep the auth service busy
    /// with answers that come late or never, it may take several attempts (`retry`).
    fn fresh_client_gets_a_push(&self, retry: bool) {
        let token = token(&Answer::Accept("fresh".into()), self.webhook);
        let deadline = Instant::now() + WAIT;
        let mut c = loop {
            let mut c = self.server.connect();
            match c.authenticate(&token, WAIT) {
                Ok(true) => break c,
                result if retry && Instant::now() < deadline => {
                    log::debug!("fresh client: {result:?}; retrying");
                }
                result => panic!("a fresh client cannot authenticate: {result:?}"),
            }
        };
        let handle = &self.server.handle;
        handle.push("fresh", "/p", "#fresh#").expect("push");
        assert_eq!(common::recv(&mut c).body, "#fresh#");
    }
}
