//! Embedding Plex as a library: the `Handle` from other threads and from hooks, the hooks
//! themselves, shutdown, and a host loop driving the server with `Server::turn`.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use plex::client::Connection;
use plex::protocol::uri::{self, BadPushUri};
use plex::{Handle, HandleError, Message, Server};

#[test]
fn handle_pushes_from_other_threads_arrive_in_order() {
    let server = start(config());
    let mut phone = server.user("alice");
    let mut tablet = server.user("alice");
    const THREADS: usize = 4;
    const EACH: usize = 50;
    let pushers: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = server.handle.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    handle.push("alice", "/n", &format!("{t} {i}")).unwrap();
                }
            })
        })
        .collect();
    for p in pushers {
        p.join().unwrap();
    }
    for c in [&mut phone, &mut tablet] {
        let mut next = [0; THREADS];
        let mut last_seq = 0;
        for _ in 0..THREADS * EACH {
            let m = expect(c, "/n");
            let (t, i) = m.body.split_once(' ').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "pushes of thread {t} out of order");
            next[t] += 1;
            assert!(m.seq > last_seq, "seq strictly increases");
            last_seq = m.seq;
        }
    }
    assert_eq!(server.stats().delivered, (2 * THREADS * EACH) as u64);
}

#[test]
fn handle_push_refuses_bad_uris_and_counts_offline_uids() {
    let server = start(config());
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let h = &server.handle;
    assert_eq!(
        h.push("alice", "", "x"),
        Err(HandleError::BadUri(BadPushUri::Empty))
    );
    for reserved in uri::RESERVED {
        assert_eq!(
            h.push("alice", reserved, "x"),
            Err(HandleError::BadUri(BadPushUri::Reserved))
        );
        assert_eq!(
            h.broadcast(reserved, "x"),
            Err(HandleError::BadUri(BadPushUri::Reserved))
        );
    }
    h.push_many(&["alice", "nobody", "bob"], "/news", "hi")
        .unwrap();
    // Nothing refused reached alice: the push is her next message.
    expect_msg(&mut alice, "/news", "hi");
    expect_msg(&mut bob, "/news", "hi");
    let stats = server.stats();
    assert_eq!((stats.delivered, stats.dropped), (2, 1));
}

#[test]
fn handle_online_counts_live_connections() {
    let server = start(config());
    assert_eq!(server.handle.online("alice"), Ok(0));
    let first = server.user("alice");
    assert_eq!(server.handle.online("alice"), Ok(1));
    let _second = server.user("alice");
    let _bob = server.user("bob");
    assert_eq!(
        server.handle.online_many(&["alice", "bob", "nobody"]),
        Ok(vec![2, 1, 0])
    );
    drop(first);
    server.wait_online("alice", 1);
}

#[test]
fn handle_kick_closes_every_connection_of_the_uid_and_fires_offline() {
    let server = start(config());
    let mut phone = server.user("alice");
    let mut tablet = server.user("alice");
    let mut bob = server.user("bob");
    assert_eq!(server.handle.kick("alice"), Ok(2));
    assert_closed(&mut phone);
    assert_closed(&mut tablet);
    let offline = Event::Offline("alice".into());
    // The kick answered after closing, so the hook has already run.
    let events = server.events.snapshot();
    assert_eq!(
        events.iter().filter(|e| **e == offline).count(),
        1,
        "{events:?}"
    );
    assert_eq!(server.online("alice"), 0);
    assert_eq!(server.closed("kicked"), 2);
    assert_eq!(server.handle.kick("nobody"), Ok(0));
    assert_alive(&mut bob);
}

#[test]
fn handle_shutdown_makes_run_return_and_later_calls_fail_stopped() {
    let mut server = start(config());
    let mut alice = server.user("alice");
    let mut inner = server.inner();
    let handle = server.handle.clone();
    // Queued before the shutdown, so delivered before the close.
    handle.push("alice", "/bye", "flushed").unwrap();
    std::thread::spawn(move || handle.shutdown().unwrap())
        .join()
        .unwrap();
    server.wait_finished();
    expect_msg(&mut alice, "/bye", "flushed");
    assert_closed(&mut alice);
    assert_closed(&mut inner);
    assert!(
        server
            .events
            .snapshot()
            .contains(&Event::Offline("alice".into()))
    );
    assert!(
        Connection::connect(server.addr, server.order).is_err(),
        "the listener is closed"
    );
    let h = &server.handle;
    assert_eq!(h.push("alice", "/x", ""), Err(HandleError::Stopped));
    assert_eq!(h.broadcast("/x", ""), Err(HandleError::Stopped));
    assert_eq!(h.online("alice"), Err(HandleError::Stopped));
    assert_eq!(h.kick("alice"), Err(HandleError::Stopped));
    assert_eq!(h.stats(), Err(HandleError::Stopped));
    assert_eq!(h.shutdown(), Err(HandleError::Stopped));
}

/// What the hooks of `handle_calls_from_a_hook_never_deadlock` got from the handle.
type Answers = Arc<Mutex<Vec<Result<String, HandleError>>>>;

/// A query from a hook: records what `Handle::online` answered.
fn online_from_hook(slot: &OnceLock<Handle>, answers: &Answers, uid: &str) {
    let h = slot.get().expect("handle set before any client");
    let answer = h.online(uid).map(|n| n.to_string());
    answers.lock().unwrap().push(answer);
}

#[test]
fn handle_calls_from_a_hook_never_deadlock() {
    // Queries wait for the reactor, which is running the hook: they must fail at once.
    // Pushes only queue, so they work from a hook.
    let slot: Arc<OnceLock<Handle>> = Arc::default();
    let answers = Answers::default();
    let (s1, a1, s2, a2) = (slot.clone(), answers.clone(), slot.clone(), answers.clone());
    let (s3, a3) = (slot.clone(), answers.clone());
    let server = start_with(config(), move |b| {
        b.on_online(move |uid| online_from_hook(&s1, &a1, uid))
            .on_offline(move |uid| online_from_hook(&s2, &a2, uid))
            .on_message(move |uid, m| {
                let h = s3.get().expect("handle set before any client");
                let mut answers = a3.lock().unwrap();
                answers.push(h.stats().map(|_| "stats".into()));
                answers.push(h.kick(uid).map(|n| n.to_string()));
                answers.push(h.online_many(&[uid]).map(|n| format!("{n:?}")));
                h.push(uid, "/echo", &m.body).unwrap();
            })
    });
    slot.set(server.handle.clone()).ok().unwrap();
    let mut alice = server.user("alice");
    alice.send("/ask", "ping").unwrap();
    expect_msg(&mut alice, "/echo", "ping");
    assert_alive(&mut alice);
    drop(alice);
    let ok = wait_until(WAIT, || answers.lock().unwrap().len() == 5);
    assert!(ok, "hooks ran: {:?}", answers.lock().unwrap());
    assert_eq!(
        *answers.lock().unwrap(),
        vec![Err(HandleError::OnReactorThread); 5]
    );
}

#[test]
fn upstream_messages_reach_on_message_with_the_uid() {
    let server = start(config());
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    alice.send("/chat/up", "from alice").unwrap();
    bob.send("/typing", "").unwrap();
    // Protocol frames are not upstream messages.
    alice.send(uri::HEARTBEAT, "").unwrap();
    alice.send(uri::AUTH, "alice").unwrap();
    alice.send("/chat/up", "again").unwrap();
    server.events.wait_for("three upstream messages", |e| {
        e.iter()
            .filter(|e| matches!(e, Event::Upstream(..)))
            .count()
            == 3
    });
    let upstream: Vec<_> = server
        .events
        .snapshot()
        .into_iter()
        .filter_map(|e| match e {
            Event::Upstream(uid, m) => Some((uid, m)),
            _ => None,
        })
        .collect();
    let alice_msgs: Vec<_> = upstream.iter().filter(|(u, _)| u == "alice").collect();
    assert_eq!(
        alice_msgs,
        [
            &("alice".to_string(), Message::new("/chat/up", "from alice")),
            &("alice".to_string(), Message::new("/chat/up", "again")),
        ]
    );
    assert!(upstream.contains(&("bob".into(), Message::new("/typing", ""))));
    assert_eq!(server.stats().upstream, 3);
    // Upstream messages are never forwarded by the server itself.
    expect(&mut alice, uri::HEARTBEAT);
    assert_alive(&mut bob);
}

/// Runs turns on this thread until `done` holds; fails after `WAIT`.
fn turn_until(server: &mut Server, what: &str, mut done: impl FnMut(&Server) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(server) {
        assert!(Instant::now() < deadline, "timed out turning until {what}");
        server.turn(Some(Duration::from_millis(10))).unwrap();
    }
}

#[test]
fn a_host_loop_drives_the_server_with_turn() {
    let (builder, events) = builder_with_events(config());
    let mut server = builder.build().unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let client = std::thread::spawn(move || {
        let mut c = Connection::connect(addr, plex::protocol::ByteOrder::Big).unwrap();
        assert!(c.authenticate("alice", WAIT).unwrap());
        let pushed = recv(&mut c);
        assert_alive(&mut c);
        pushed
    });
    let online = Event::Online("alice".into());
    turn_until(&mut server, "alice online", |_| {
        events.snapshot().contains(&online)
    });
    // Between turns the host thread may queue commands, but waiting for an answer would hang:
    // nobody else runs the reactor. It is refused instead.
    assert_eq!(handle.online("alice"), Err(HandleError::OnReactorThread));
    // Another thread may wait: the host's next turns answer it.
    let asker = {
        let handle = handle.clone();
        std::thread::spawn(move || handle.online("alice"))
    };
    turn_until(&mut server, "the other thread's answer", |_| {
        asker.is_finished()
    });
    assert_eq!(asker.join().unwrap(), Ok(1));
    handle.push("alice", "/host", "driven").unwrap();
    turn_until(&mut server, "the client is done", |_| client.is_finished());
    let pushed = client.join().unwrap();
    assert_eq!(
        (pushed.uri.as_str(), pushed.body.as_str()),
        ("/host", "driven")
    );
    handle.shutdown().unwrap();
    turn_until(&mut server, "shut down", Server::is_finished);
    assert!(events.snapshot().contains(&Event::Offline("alice".into())));
    assert_eq!(handle.online("alice"), Err(HandleError::Stopped));
}
