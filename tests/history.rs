//! Offline history (PROTOCOL.md §9) on one node: every push to a uid takes the next offset
//! under the uid's epoch, online or not; a client that reconnects with the last place it got
//! receives every retained push after it, in order, before anything live, and learns whether
//! it missed something. Clients that know nothing of it see exactly what they saw before.

mod common;

use common::*;
use plex::Config;
use plex::client::{Codec, Connection, Event, UserClient, UserConfig};
use plex::protocol::{ByteOrder, MessageRef, uri};
use serde_json::{Value, json};

fn with_history(size: usize) -> Config {
    Config {
        history_size: size,
        ..config()
    }
}

fn http_get(server: &TestServer, path: &str) -> Value {
    let text = ureq::get(format!("http://{}{path}", server.http))
        .header("Authorization", "Bearer plex-inner")
        .call()
        .expect("HTTP answer")
        .into_body()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn offline_pushes_are_replayed_in_order_then_live_ones_follow() {
    let server = start(with_history(100));
    let mut inner = server.inner();
    let mut phone = server.user("7");
    push(&mut inner, "7", "/m", "1");
    let (body, epoch, offset) = recv_at(&mut phone);
    assert_eq!((body.as_str(), offset), ("1", 1));
    assert!(!epoch.is_empty());
    drop(phone); // into the tunnel
    server.wait_online("7", 0);
    for n in 2..=5 {
        push(&mut inner, "7", "/m", &n.to_string());
    }

    let mut phone = server.connect();
    let resumed = phone
        .resume("7", (&epoch, 1), WAIT)
        .unwrap()
        .expect("accepted");
    assert!(resumed.recovered);
    assert_eq!(
        (resumed.epoch.as_str(), resumed.offset),
        (epoch.as_str(), 5)
    );
    for n in 2..=5u64 {
        assert_eq!(recv_at(&mut phone), (n.to_string(), epoch.clone(), n));
    }
    push(&mut inner, "7", "/m", "6");
    assert_eq!(recv_at(&mut phone), ("6".into(), epoch.clone(), 6));
    assert_alive(&mut phone);
}

#[test]
fn a_replay_racing_live_pushes_has_no_gap_duplicate_or_reordering() {
    let server = start(Config {
        max_pending_bytes: 16 * 1024 * 1024,
        ..with_history(100_000)
    });
    // Reconnect three times while pushes stream in.
    race_resumes(server.inner(), server.user("7"), (3, 200, 20_000), |_| {
        server.connect()
    });
}

#[test]
fn a_restarted_node_reports_a_lost_history_as_not_recovered() {
    let server = start(with_history(10));
    let mut inner = server.inner();
    let mut phone = server.user("7");
    push(&mut inner, "7", "/m", "1");
    let (_, epoch, offset) = recv_at(&mut phone);
    drop((phone, inner));
    server.stop();

    let server = start(with_history(10));
    let mut inner = server.inner();
    push(&mut inner, "7", "/m", "after the restart");
    let mut phone = server.connect();
    let resumed = phone.resume("7", (&epoch, offset), WAIT).unwrap().unwrap();
    assert!(!resumed.recovered);
    assert_ne!(resumed.epoch, epoch, "a new epoch");
    // What the new history holds still comes, under its epoch.
    let (body, new_epoch, offset) = recv_at(&mut phone);
    assert_eq!(
        (body.as_str(), new_epoch, offset),
        ("after the restart", resumed.epoch, 1)
    );
}

#[test]
fn the_size_cap_and_the_ttl_are_honoured() {
    let server = start(Config {
        history_size: 3,
        history_ttl: 1,
        ..config()
    });
    let mut inner = server.inner();
    let mut phone = server.user("7");
    push(&mut inner, "7", "/m", "1");
    let (_, epoch, _) = recv_at(&mut phone);
    drop(phone);
    server.wait_online("7", 0);
    for n in 2..=6 {
        push(&mut inner, "7", "/m", &n.to_string());
    }
    // Only the last three are kept: the client at 1 missed 2 and 3.
    let mut phone = server.connect();
    let resumed = phone.resume("7", (&epoch, 1), WAIT).unwrap().unwrap();
    assert!(!resumed.recovered);
    for n in 4..=6u64 {
        assert_eq!(recv_at(&mut phone).2, n);
    }
    drop(phone);
    // A second later, nothing is kept.
    let ok = wait_until(WAIT, || {
        http_get(&server, "/plex/v1/history?uid=7")["offset"] == 0
    });
    assert!(ok, "{}", http_get(&server, "/plex/v1/history?uid=7"));
    let stats = server.stats();
    assert!(stats.history_expired.unwrap() >= 3, "{stats:?}");
}

#[test]
fn a_replay_larger_than_the_output_limit_keeps_its_newest_pushes_and_says_so() {
    let server = start(Config {
        max_pending_bytes: 64 * 1024,
        soft_pending_bytes: 64 * 1024,
        ..with_history(1000)
    });
    let mut inner = server.inner();
    let mut phone = server.user("7");
    push(&mut inner, "7", "/m", "first");
    let (_, epoch, _) = recv_at(&mut phone);
    drop(phone);
    server.wait_online("7", 0);
    let body = "x".repeat(1000);
    for _ in 0..200 {
        push(&mut inner, "7", "/m", &body);
    }
    let mut phone = server.connect();
    let resumed = phone.resume("7", (&epoch, 1), WAIT).unwrap().unwrap();
    assert!(!resumed.recovered, "200 KB do not fit 64 KiB");
    // What comes is the newest part, in order, ending at the last offset.
    let mut offsets = Vec::new();
    while offsets.last() != Some(&201) {
        offsets.push(recv_at(&mut phone).2);
    }
    assert!(
        offsets.len() > 10 && offsets.len() < 200,
        "{}",
        offsets.len()
    );
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    assert_alive(&mut phone);
}

#[test]
fn two_devices_of_a_uid_share_its_offsets_and_resume_apart() {
    let server = start(with_history(100));
    let mut inner = server.inner();
    let (mut phone, mut tablet) = (server.user("7"), server.user("7"));
    for n in 1..=3 {
        push(&mut inner, "7", "/m", &n.to_string());
    }
    let mut at = (String::new(), 0);
    for n in 1..=3u64 {
        let (_, epoch, offset) = recv_at(&mut phone);
        assert_eq!(offset, n);
        assert_eq!(recv_at(&mut tablet).2, n);
        at = (epoch, offset);
    }
    drop(tablet);
    push(&mut inner, "7", "/m", "4");
    assert_eq!(recv_at(&mut phone).2, 4);
    let mut tablet = server.connect();
    let resumed = tablet.resume("7", (&at.0, at.1), WAIT).unwrap().unwrap();
    assert!(resumed.recovered);
    assert_eq!(recv_at(&mut tablet).2, 4);
    assert_alive(&mut tablet);
    assert_alive(&mut phone);
}

#[test]
fn legacy_clients_see_what_they_always_saw() {
    let server = start(with_history(10));
    // `/auth/success` without a body, byte for byte, for a client that gives no place.
    let mut c = server.connect();
    c.send(uri::AUTH, "7").unwrap();
    let mut frame = [0u8; 4];
    let mut stream = c.stream();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Read::read_exact(&mut stream, &mut frame).unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(frame) as usize];
    std::io::Read::read_exact(&mut stream, &mut payload).unwrap();
    let m = MessageRef::decode(&payload).unwrap();
    let expected = format!(r#"{{"seq":{},"uri":"/auth/success"}}"#, m.seq);
    assert_eq!(String::from_utf8(payload).unwrap(), expected);
    // Its pushes carry two fields more, which a JSON reader of the original ignores.
    let mut inner = server.inner();
    push(&mut inner, "7", "/m", "x");
    expect_msg(&mut c, "/m", "x");
}

#[test]
fn acknowledgements_and_the_history_api_tell_a_back_end_what_was_received() {
    let server = start(with_history(10));
    let mut inner = server.inner();
    let mut phone = server.user("7");
    for n in 1..=3 {
        push(&mut inner, "7", "/m", &n.to_string());
    }
    for _ in 0..3 {
        recv(&mut phone);
    }
    phone.send(uri::ACK, "2").unwrap();
    assert_alive(&mut phone);
    let log = http_get(&server, "/plex/v1/history?uid=7&since=1");
    assert_eq!(
        (&log["offset"], &log["acked"]),
        (&json!(3), &json!(2)),
        "{log}"
    );
    let bodies: Vec<&str> = log["pushes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["2", "3"]);
    // A uid never pushed to has nothing yet.
    assert_eq!(
        http_get(&server, "/plex/v1/history?uid=nobody")["offset"],
        0
    );
}

#[test]
fn user_client_resumes_by_itself_across_reconnects() {
    let server = start(with_history(100));
    let mut inner = server.inner();
    let config = UserConfig {
        heartbeat: std::time::Duration::from_secs(30),
        ..UserConfig::new(server.addr.to_string(), "7")
    };
    let client = UserClient::connect(config).unwrap();
    push(&mut inner, "7", "/m", "1");
    assert!(matches!(client.recv_timeout(WAIT), Ok(Event::Push(m)) if m.body == "1"));
    // The server drops it; pushes keep coming while it is away.
    assert_eq!(server.handle.kick("7").unwrap(), 1);
    server.wait_online("7", 0);
    push(&mut inner, "7", "/m", "2");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(client.recv_timeout(WAIT).expect("an event"));
    }
    assert!(
        matches!(
            seen[0],
            Event::Disconnected {
                reconnecting: true,
                ..
            }
        ),
        "{seen:?}"
    );
    assert_eq!(seen[1], Event::Reconnected);
    assert_eq!(seen[2], Event::Resumed { recovered: true });
    assert!(
        matches!(&seen[3], Event::Push(m) if m.body == "2"),
        "{seen:?}"
    );
}

#[test]
fn protobuf_clients_resume_too() {
    let server = start(with_history(10));
    let mut inner = server.inner();
    let mut phone = Connection::connect(server.addr, ByteOrder::Big)
        .unwrap()
        .with_codec(Codec::Protobuf);
    assert!(phone.authenticate("7", WAIT).unwrap());
    push(&mut inner, "7", "/m", "1");
    let (_, epoch, offset) = recv_at(&mut phone);
    drop(phone);
    server.wait_online("7", 0);
    push(&mut inner, "7", "/m", "2");
    let mut phone = Connection::connect(server.addr, ByteOrder::Big)
        .unwrap()
        .with_codec(Codec::Protobuf);
    let resumed = phone.resume("7", (&epoch, offset), WAIT).unwrap().unwrap();
    assert!(resumed.recovered);
    assert_eq!(recv_at(&mut phone), ("2".into(), epoch, 2));
}
