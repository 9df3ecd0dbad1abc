//! Cluster mode (PROTOCOL.md §8): three gateways on one real redis-server behave as one. A push
//! sent to any node reaches the uid's connections on every node, once and in order; online,
//! kick, broadcast and the node list span the cluster; a dead node leaves it; Redis going away
//! and coming back costs only what was in flight, and says so.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::redis::RedisServer;
use common::*;
use plex::Config;
use plex::client::Connection;
use plex::protocol::uri;
use serde_json::{Value, json};

/// A node of the cluster on `redis`.
fn node(redis: &RedisServer) -> TestServer {
    node_with(redis, |_| {})
}

fn node_with(redis: &RedisServer, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config {
        redis: Some(redis.url()),
        node_ttl: 2,
        ..config()
    };
    adjust(&mut config);
    let server = start(config);
    wait_ready(&server);
    server
}

/// Waits until the node answers `/readyz` with 200: registered with Redis and subscribed.
fn wait_ready(server: &TestServer) {
    let ok = wait_until(WAIT, || http(server, "GET", "/readyz", None).0 == 200);
    assert!(
        ok,
        "node never became ready: {:?}",
        http(server, "GET", "/readyz", None)
    );
}

/// One HTTP request to a node's API with the bearer token; the status and the JSON body.
fn http(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into();
    let url = format!("http://{}{path}", server.http);
    let response = match body {
        Some(body) => agent
            .post(&url)
            .header("Authorization", "Bearer plex-inner")
            .send_json(body),
        None => agent
            .get(&url)
            .header("Authorization", "Bearer plex-inner")
            .call(),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Waits until `uid` is seen online `n` times from `server` (presence takes a batch to land).
fn wait_cluster_online(server: &TestServer, uid: &str, n: u64) {
    let path = format!("/plex/v1/online?uid={uid}");
    let ok = wait_until(WAIT, || {
        http(server, "GET", &path, None).1["online"][uid] == n
    });
    assert!(
        ok,
        "{uid} never online {n} times: {:?}",
        http(server, "GET", &path, None)
    );
}

#[test]
fn three_nodes_act_as_one() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    let mut carol = c.user("carol");
    let mut bob = b.user("bob");
    let mut bob_on_c = c.user("bob");
    wait_cluster_online(&a, "carol", 1);
    wait_cluster_online(&a, "bob", 2);

    // A push sent to A by HTTP and by inner TCP reaches carol on C, once each, in order.
    let mut inner = a.inner();
    for i in 0..50 {
        if i % 2 == 0 {
            let push = json!({"uid": "carol", "uri": "/seq", "body": i.to_string()});
            assert_eq!(
                http(&a, "POST", "/plex/v1/push", Some(push)).1["delivered"],
                1
            );
        } else {
            push(&mut inner, "carol", "/seq", &i.to_string());
        }
    }
    for i in 0..50 {
        expect_msg(&mut carol, "/seq", &i.to_string());
    }
    assert_alive(&mut carol); // and nothing more was queued before the answer

    // A uid on two nodes gets it on both; the answer counts both.
    let push = json!({"uid": "bob", "uri": "/both", "body": "x"});
    assert_eq!(
        http(&a, "POST", "/plex/v1/push", Some(push)).1["delivered"],
        2
    );
    expect_msg(&mut bob, "/both", "x");
    expect_msg(&mut bob_on_c, "/both", "x");

    // A caller that half-closes after its request still gets the answer the cluster makes.
    let body = r#"{"uid":"bob","uri":"/half"}"#;
    let request = format!(
        "POST /plex/v1/push HTTP/1.1\r\nAuthorization: Bearer plex-inner\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut raw = std::net::TcpStream::connect(a.http).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(request.as_bytes()).unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with(r#"{"delivered":2}"#), "{answer}");
    expect(&mut bob, "/half");
    expect(&mut bob_on_c, "/half");

    // Broadcast reaches every node's users.
    let mut alice_on_a = a.user("alice");
    let cast = json!({"uri": "/all", "body": "hello"});
    assert_eq!(http(&b, "POST", "/plex/v1/broadcast", Some(cast)).0, 200);
    for c in [&mut alice_on_a, &mut bob, &mut bob_on_c, &mut carol] {
        expect_msg(c, "/all", "hello");
    }

    // The node list (refreshed about every second), and a host from it: the least loaded.
    let listed = |n: &TestServer| http(n, "GET", "/plex/v1/nodes", None).1["nodes"].clone();
    let ok = wait_until(WAIT, || {
        let nodes = listed(&a);
        let users: Vec<u64> = (nodes.as_array().unwrap().iter())
            .map(|n| n["users"].as_u64().unwrap())
            .collect();
        users.len() == 3 && users.iter().sum::<u64>() == 4
    });
    assert!(ok, "{}", listed(&a));
    let host = http(&a, "GET", "/plex/v1/host", None).1["host"].clone();
    let idlest = (listed(&a).as_array().unwrap().iter())
        .min_by_key(|n| n["connections"].as_u64())
        .map(|n| n["advertise"].clone());
    assert_eq!(Some(host), idlest);

    // Kick on A closes bob on B and C.
    let kicked = http(&a, "POST", "/plex/v1/kick", Some(json!({"uid": "bob"})));
    assert_eq!(kicked.1["closed"], 2, "{kicked:?}");
    assert_closed(&mut bob);
    assert_closed(&mut bob_on_c);
    wait_cluster_online(&a, "bob", 0);
    assert_eq!(a.stats().unrouted, 0);
}

#[test]
fn redis_down_keeps_local_pushes_and_fails_remote_ones_clearly() {
    let mut redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut here = a.user("here");
    let mut there = b.user("there");
    wait_cluster_online(&a, "there", 1);

    redis.stop();
    let ok = wait_until(WAIT, || http(&a, "GET", "/readyz", None).0 == 503);
    assert!(ok, "readyz still 200 with Redis down");
    // Local pushes flow; a push that needs the cluster says it could not reach it.
    let (status, body) = http(
        &a,
        "POST",
        "/plex/v1/push",
        Some(json!({"uid": "here", "uri": "/l"})),
    );
    assert_eq!((status, &body["delivered"]), (503, &json!(1)), "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cluster"),
        "{body}"
    );
    expect(&mut here, "/l");
    let (status, _) = http(
        &a,
        "POST",
        "/plex/v1/push",
        Some(json!({"uid": "there", "uri": "/r"})),
    );
    assert_eq!(status, 503);
    assert_alive(&mut here);

    // Back: routing works again with no operator action, and nothing is delivered twice.
    redis.restart();
    wait_ready(&a);
    wait_ready(&b);
    wait_cluster_online(&a, "there", 1);
    let push = json!({"uid": "there", "uri": "/again", "body": "1"});
    assert_eq!(
        http(&a, "POST", "/plex/v1/push", Some(push)).1["delivered"],
        1
    );
    expect_msg(&mut there, "/again", "1");
    assert_alive(&mut there);
}

#[test]
fn inner_push_local_keeps_fanning_back_ends_from_delivering_twice() {
    let redis = RedisServer::start();
    let local = |c: &mut Config| c.inner_push_local = true;
    let (a, b) = (node_with(&redis, local), node_with(&redis, local));
    let mut user = b.user("u");
    wait_cluster_online(&a, "u", 1);
    // A back-end like the original's PlexClient sends each push to every node it knows.
    let (mut to_a, mut to_b) = (a.inner(), b.inner());
    for i in 0..10 {
        push(&mut to_a, "u", "/once", &i.to_string());
        push(&mut to_b, "u", "/once", &i.to_string());
    }
    for i in 0..10 {
        expect_msg(&mut user, "/once", &i.to_string());
    }
    assert_alive(&mut user);
    // HTTP pushes still route: they are not what such back-ends fan out.
    let push = json!({"uid": "u", "uri": "/http"});
    assert_eq!(
        http(&a, "POST", "/plex/v1/push", Some(push)).1["delivered"],
        1
    );
    expect(&mut user, "/http");
}

#[test]
fn a_killed_node_leaves_presence_and_the_node_list_with_no_operator_action() {
    let redis = RedisServer::start();
    let a = node(&redis);
    let mut doomed =
        ChildServer::spawn(&["--redis", &redis.url(), "--node-ttl", "2"], "info", None);
    let mut user = plex::client::Connection::connect(doomed.addr, plex::protocol::ByteOrder::Big)
        .expect("connect to the child node");
    assert!(user.authenticate("k", WAIT).unwrap());
    wait_cluster_online(&a, "k", 1);
    let nodes = |n: &TestServer| {
        http(n, "GET", "/plex/v1/nodes", None).1["nodes"]
            .as_array()
            .map(Vec::len)
    };
    assert!(wait_until(WAIT, || nodes(&a) == Some(2)), "{:?}", nodes(&a));

    doomed.child.kill().expect("SIGKILL the node");
    doomed.child.wait().unwrap();
    // Within NodeTtl (2 s) its record expires: gone from the list and from presence.
    assert!(wait_until(WAIT, || nodes(&a) == Some(1)), "{:?}", nodes(&a));
    wait_cluster_online(&a, "k", 0);
    let push = json!({"uid": "k", "uri": "/gone"});
    assert_eq!(
        http(&a, "POST", "/plex/v1/push", Some(push)).1["delivered"],
        0
    );
}

/// A node of the cluster keeping each uid's last 100 pushes in Redis (PROTOCOL.md §9).
fn history_node(redis: &RedisServer) -> TestServer {
    node_with(redis, |c| c.history_size = 100)
}

fn history_of(server: &TestServer, uid: &str, since: u64) -> (u16, Value) {
    http(
        server,
        "GET",
        &format!("/plex/v1/history?uid={uid}&since={since}"),
        None,
    )
}

#[test]
fn the_history_spans_the_cluster() {
    let redis = RedisServer::start();
    let (a, b) = (history_node(&redis), history_node(&redis));
    let mut phone = b.user("7");
    wait_cluster_online(&a, "7", 1);
    // A push sent to A reaches the phone on B with its place in the uid's history.
    let first = json!({"uid": "7", "uri": "/m", "body": "1"});
    assert_eq!(
        http(&a, "POST", "/plex/v1/push", Some(first)).1["delivered"],
        1
    );
    let (body, epoch, offset) = recv_at(&mut phone);
    assert_eq!((body.as_str(), offset), ("1", 1));
    assert!(!epoch.is_empty());
    drop(phone);
    wait_cluster_online(&a, "7", 0);

    // While it is away, pushes to either node, by HTTP or inner TCP, take the next offsets.
    let mut inner_b = b.inner();
    for n in 2..=5u64 {
        if n % 2 == 0 {
            let push = json!({"uid": "7", "uri": "/m", "body": n.to_string()});
            assert_eq!(
                http(&a, "POST", "/plex/v1/push", Some(push)).1["delivered"],
                0
            );
        } else {
            push(&mut inner_b, "7", "/m", &n.to_string());
            // An inner push has no answer: wait until it is kept, to keep the order known.
            let kept = wait_until(WAIT, || history_of(&a, "7", 0).1["offset"] == n);
            assert!(kept, "{:?}", history_of(&a, "7", 0));
        }
    }

    // It comes back on A: every push it missed, in order, then live ones from B.
    let mut phone = a.connect();
    let resumed = phone.resume("7", (&epoch, 1), WAIT).unwrap().unwrap();
    assert!(resumed.recovered, "{resumed:?}");
    assert_eq!(
        (resumed.epoch.as_str(), resumed.offset),
        (epoch.as_str(), 5)
    );
    for n in 2..=5u64 {
        assert_eq!(recv_at(&mut phone), (n.to_string(), epoch.clone(), n));
    }
    push(&mut inner_b, "7", "/m", "6");
    assert_eq!(recv_at(&mut phone), ("6".into(), epoch.clone(), 6));

    // Its acknowledgement is kept too: any node tells a back-end what was received.
    phone.send(uri::ACK, "6").unwrap();
    let acked = wait_until(WAIT, || history_of(&b, "7", 0).1["acked"] == 6);
    assert!(acked, "{:?}", history_of(&b, "7", 0));
    let (status, log) = history_of(&b, "7", 4);
    assert_eq!(status, 200);
    assert_eq!((&log["epoch"], &log["offset"]), (&json!(epoch), &json!(6)));
    let bodies: Vec<&str> = (log["pushes"].as_array().unwrap().iter())
        .map(|p| p["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["5", "6"]);
    assert_alive(&mut phone);
    assert_eq!(a.stats().unrouted + b.stats().unrouted, 0);
}

#[test]
fn a_resume_racing_pushes_from_another_node_has_no_gap_duplicate_or_reordering() {
    let redis = RedisServer::start();
    let racing = |c: &mut Config| {
        c.history_size = 100_000;
        c.max_pending_bytes = 16 * 1024 * 1024;
    };
    let (a, b) = (node_with(&redis, racing), node_with(&redis, racing));
    let reader = a.user("7");
    wait_cluster_online(&b, "7", 1);
    // Reconnect four times, to either node, while B keeps pushing.
    race_resumes(b.inner(), reader, (4, 100, 5_000), |round| {
        if round % 2 == 0 {
            b.connect()
        } else {
            a.connect()
        }
    });
}

/// With another connection of the uid on the node, Redis publishes the uid's pushes to the
/// node all along: those it placed before a resume's history read are in the replay and may
/// still be on their way through the subscription when the history's answer arrives. A
/// steady stream of pushes keeps some in flight at every resume.
#[test]
fn a_resume_beside_another_connection_of_the_uid_gets_no_push_twice() {
    let redis = RedisServer::start();
    let a = node_with(&redis, |c| {
        c.history_size = 100_000;
        c.max_pending_bytes = 64 * 1024 * 1024;
    });
    let mut sibling = a.user("7");
    std::thread::spawn(move || while sibling.recv(Some(WAIT)).is_ok() {});
    let mut reader = a.user("7");
    wait_cluster_online(&a, "7", 2);
    // What the reader got; `None` once the pusher is to stop.
    let read = Arc::new((Mutex::new(Some(0u64)), Condvar::new()));
    let pusher = {
        let (read, mut inner) = (read.clone(), a.inner());
        std::thread::spawn(move || {
            let (got, progressed) = &*read;
            let mut n = 0u64;
            loop {
                let mut got = got.lock().unwrap();
                // At most 1,000 ahead of the reader, so that a replay always fits.
                while got.is_some_and(|got| n >= got + 1_000) {
                    got = progressed.wait(got).unwrap();
                }
                if got.is_none() {
                    return n;
                }
                drop(got);
                n += 1;
                push(&mut inner, "7", "/m", &n.to_string());
                // About 5,000 a second at most: steady, so that some are in flight at every
                // resume.
                if n.is_multiple_of(2) {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    let (got, progressed) = &*read;
    let mut last = 0u64;
    let next = |reader: &mut Connection, last: &mut u64| {
        let (body, epoch, offset) = recv_at(reader);
        assert_eq!((offset, body), (*last + 1, (*last + 1).to_string()));
        *last = offset;
        *got.lock().unwrap() = Some(offset);
        progressed.notify_one();
        epoch
    };
    for _ in 0..150 {
        let mut epoch = String::new();
        for _ in 0..100 {
            epoch = next(&mut reader, &mut last);
        }
        reader = a.connect();
        let resumed = reader.resume("7", (&epoch, last), WAIT).unwrap().unwrap();
        assert!(resumed.recovered, "{resumed:?}");
    }
    *got.lock().unwrap() = None;
    progressed.notify_one();
    let sent = pusher.join().unwrap();
    while last < sent {
        next(&mut reader, &mut last);
    }
    assert_alive(&mut reader);
}

#[test]
fn with_redis_down_the_history_fails_clearly_and_live_pushes_go_on() {
    let mut redis = RedisServer::start();
    let a = history_node(&redis);
    let mut phone = a.user("7");
    wait_cluster_online(&a, "7", 1);
    let one = json!({"uid": "7", "uri": "/m", "body": "1"});
    assert_eq!(http(&a, "POST", "/plex/v1/push", Some(one)).0, 200);
    let (_, epoch, _) = recv_at(&mut phone);

    redis.stop();
    let ok = wait_until(WAIT, || http(&a, "GET", "/readyz", None).0 == 503);
    assert!(ok, "readyz still 200 with Redis down");
    // The push is delivered here all the same, without a place; the caller learns it was
    // not kept.
    let two = json!({"uid": "7", "uri": "/m", "body": "2"});
    let (status, body) = http(&a, "POST", "/plex/v1/push", Some(two));
    assert_eq!((status, &body["delivered"]), (503, &json!(1)), "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cluster"),
        "{body}"
    );
    expect_msg(&mut phone, "/m", "2");
    assert_eq!(phone.position(), Some((epoch.as_str(), 1)), "no new place");
    assert_eq!(a.stats().unrouted, 1);
    let (status, log) = history_of(&a, "7", 0);
    assert_eq!(status, 503, "{log}");
    // A device coming back meanwhile is told it may have missed pushes, and gets live ones.
    let mut tablet = a.connect();
    let resumed = tablet.resume("7", (&epoch, 1), WAIT).unwrap().unwrap();
    assert!(!resumed.recovered, "{resumed:?}");
    let three = json!({"uid": "7", "uri": "/m", "body": "3"});
    assert_eq!(http(&a, "POST", "/plex/v1/push", Some(three)).0, 503);
    expect_msg(&mut phone, "/m", "3");
    expect_msg(&mut tablet, "/m", "3");

    // Redis comes back empty: the uid's history starts again under a new epoch.
    redis.restart();
    wait_ready(&a);
    wait_cluster_online(&a, "7", 2);
    let four = json!({"uid": "7", "uri": "/m", "body": "4"});
    assert_eq!(
        http(&a, "POST", "/plex/v1/push", Some(four)).1["delivered"],
        2
    );
    let (body, new_epoch, offset) = recv_at(&mut phone);
    assert_eq!((body.as_str(), offset), ("4", 1));
    assert_ne!(new_epoch, epoch);
    assert_eq!(recv_at(&mut tablet), ("4".into(), new_epoch, 1));
    assert_alive(&mut phone);
}

#[test]
fn a_push_that_comes_while_a_resume_waits_for_redis_is_not_lost() {
    let redis = RedisServer::start();
    let a = node_with(&redis, |c| {
        c.history_size = 10;
        c.inner_push_local = true;
    });
    let mut inner = a.inner();
    // Redis hangs: the resume's history read waits (until the broker gives up on it).
    redis.pause();
    let tablet = {
        let addr = a.addr;
        std::thread::spawn(move || {
            let mut tablet =
                plex::client::Connection::connect(addr, plex::protocol::ByteOrder::Big).unwrap();
            let resumed = tablet
                .resume("7", ("some-epoch", 3), WAIT)
                .unwrap()
                .unwrap();
            (tablet, resumed)
        })
    };
    // (Its connection counts here at once; `online` would ask the hanging Redis.)
    a.wait_stats("the tablet authenticated", |s| s.users == 1);
    // Meanwhile a push that the history does not keep (InnerPushLocal) is held for it.
    push(&mut inner, "7", "/m", "held");
    // (The broker gives up on Redis after a second: the push comes well before.)
    let (mut tablet, resumed) = tablet.join().unwrap();
    redis.resume();
    assert!(!resumed.recovered, "{resumed:?}");
    expect_msg(&mut tablet, "/m", "held");
    assert_alive(&mut tablet);
}
