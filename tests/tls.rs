//! The TLS listener (`TlsPort`) as its clients see it: the framed protocol over TLS 1.2 and
//! 1.3 (authentication, heartbeats, pushes of any size), what happens to clients that do not
//! speak TLS, never finish their handshake or never read, and the close_notify that tells a
//! closed client it was not cut off. Also: one push reaching a uid over every transport, the
//! per-transport gauges, and the TLS settings' startup errors.

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use common::transport::*;
use common::*;
use plex::protocol::{ByteOrder, uri};
use plex::{Config, Server};
use rustls::{ProtocolVersion, StreamOwned};

/// Reads a raw socket until the server closes it (EOF or reset) and returns what came; fails
/// if it stays open for `WAIT`.
fn assert_tcp_closed(socket: &mut std::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match socket.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected the server to close the connection, got {e}"),
    }
    got
}

/// A TLS 1.2-style record carrying a warning-level close_notify alert.
const CLOSE_NOTIFY: [u8; 7] = [21, 3, 3, 0, 2, 1, 0];

/// The first flight of a real TLS client: a ClientHello.
fn client_hello() -> Vec<u8> {
    let mut session = tls_session(BOTH_VERSIONS);
    let mut hello = Vec::new();
    session.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn a_tls_client_authenticates_heartbeats_and_receives_pushes() {
    let (server, at) = start_transports(secure(config()));
    let mut c = TlsClient::connect(at.tls());
    c.send(uri::AUTH, "alice");
    c.expect(uri::AUTH_SUCCESS);
    server.wait_online("alice", 1);
    c.assert_alive();
    server.handle.push("alice", "/news", r#"{"n":1}"#).unwrap();
    assert_eq!(c.expect("/news").body, r#"{"n":1}"#);
    // Upstream messages reach the application as over TCP.
    c.send("/chat", "hello");
    server.events.wait_for("the upstream message", |events| {
        events.iter().any(|e| {
            matches!(e, Event::Upstream(uid, m) if uid == "alice" && m.uri == "/chat" && m.body == "hello")
        })
    });
    // An inner connection over TLS pushes too.
    let mut inner = TlsClient::connect(at.tls());
    inner.send(uri::INNER_AUTH, plex::config::DEFAULT_INNER_PASSWORD);
    inner.expect(uri::AUTH_SUCCESS);
    let request = plex::protocol::PushRequest {
        uid: "alice".into(),
        uri: "/from-inner".into(),
        body: "x".into(),
    };
    inner.send(uri::SEND_MSG, &request.to_json());
    assert_eq!(c.expect("/from-inner").body, "x");
}

#[test]
fn one_push_reaches_a_uids_tcp_tls_and_websocket_connections_alike() {
    let (server, at) = start_transports(secure(config()));
    let mut tcp = server.user("u");
    let mut tls = TlsClient::user(at.tls(), "u");
    let mut wss = ws_user(at.ws(), true, "u");
    server.wait_online("u", 3);
    server.handle.push("u", "/all", "one push").unwrap();
    let over_tcp = expect_msg(&mut tcp, "/all", "one push");
    let over_tls = tls.expect("/all");
    let over_wss = ws_expect(&mut wss, "/all");
    // The same message, seq included, on each.
    assert_eq!(over_tls, over_tcp);
    assert_eq!(over_wss, over_tcp);
    let stats = server.stats();
    assert_eq!((stats.pushes, stats.delivered), (1, 3));
}

#[test]
fn plaintext_on_the_tls_port_is_closed_and_counted_as_a_failed_handshake() {
    let (server, at) = start_transports(secure(config()));
    let mut plain = tcp(at.tls());
    plain
        .write_all(&frame(
            ByteOrder::Big,
            json(uri::AUTH, "mallory").as_bytes(),
        ))
        .unwrap();
    // At most a TLS alert (content type 21) comes back before the close.
    let answer = assert_tcp_closed(&mut plain);
    assert!(
        answer.is_empty() || (answer[0] == 21 && answer.len() <= 7),
        "{answer:?}"
    );
    server.wait_closed("handshake", 1);
    assert_eq!(server.online("mallory"), 0);
    // The listener serves TLS clients as before.
    TlsClient::user(at.tls(), "alice").assert_alive();
}

#[test]
fn a_tls_handshake_never_finished_is_closed_at_the_handshake_timeout() {
    let (server, at) = start_transports(secure(Config {
        handshake_timeout: 1,
        ..config()
    }));
    let since = Instant::now();
    let mut silent = tcp(at.tls());
    let mut partial = tcp(at.tls());
    partial.write_all(&client_hello()[..20]).unwrap();
    // At most a close_notify alert comes back.
    for socket in [&mut silent, &mut partial] {
        let answer = assert_tcp_closed(socket);
        assert!(answer.is_empty() || answer == CLOSE_NOTIFY, "{answer:?}");
    }
    assert_not_early(since, Duration::from_secs(1));
    server.wait_closed("handshake_timeout", 2);
    assert_eq!(server.stats().connections, 0);
}

#[test]
fn the_auth_timeout_applies_once_the_tls_handshake_is_done() {
    // The handshake has a minute; authentication, counted from the accept, one second.
    let (server, at) = start_transports(secure(Config {
        auth_timeout: 1,
        handshake_timeout: 60,
        ..config()
    }));
    let since = Instant::now();
    let mut c = TlsClient::connect(at.tls());
    let (got, end) = c.read_to_close();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        end.is_ok(),
        "expected a close at the 1 s auth timeout, got {end:?} after {:?}",
        since.elapsed()
    );
    server.wait_closed("auth_timeout", 1);
}

#[test]
fn tls_1_2_and_1_3_both_work() {
    let (server, at) = start_transports(secure(config()));
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let mut c = TlsClient::with_versions(at.tls(), &[version]);
        assert_eq!(c.stream.conn.protocol_version(), Some(expected));
        let uid = format!("{expected:?}");
        c.send(uri::AUTH, &uid);
        c.expect(uri::AUTH_SUCCESS);
        c.assert_alive();
        server.handle.push(&uid, "/v", &uid).unwrap();
        assert_eq!(c.expect("/v").body, uid);
    }
}

#[test]
fn a_first_message_in_the_same_write_as_the_clients_finished_is_read() {
    let (server, at) = start_transports(secure(config()));
    let mut socket = tcp(at.tls());
    let mut session = tls_session(&[&rustls::version::TLS13]);
    // A TLS 1.3 client may send application data right behind its Finished.
    while session.is_handshaking() {
        while session.wants_write() {
            session.write_tls(&mut socket).unwrap();
        }
        session.read_tls(&mut socket).unwrap();
        session.process_new_packets().unwrap();
    }
    let mut auth = Vec::new();
    plex::protocol::Codec::Json.write_frame(&mut auth, ByteOrder::Big, 0, uri::AUTH, "early");
    session.writer().write_all(&auth).unwrap();
    let mut flight = Vec::new();
    while session.wants_write() {
        session.write_tls(&mut flight).unwrap();
    }
    socket.write_all(&flight).unwrap();
    let mut c = TlsClient::from(StreamOwned::new(session, socket));
    c.expect(uri::AUTH_SUCCESS);
    server.wait_online("early", 1);
    c.assert_alive();
}

#[test]
fn a_tls_1_3_key_update_mid_connection_is_followed() {
    let (server, at) = start_transports(secure(config()));
    let mut c = TlsClient::with_versions(at.tls(), &[&rustls::version::TLS13]);
    c.send(uri::AUTH, "rekey");
    c.expect(uri::AUTH_SUCCESS);
    // The client asks the server to update its keys too.
    c.stream.conn.refresh_traffic_keys().unwrap();
    c.assert_alive();
    server.handle.push("rekey", "/after", "new keys").unwrap();
    assert_eq!(c.expect("/after").body, "new keys");
}

/// A body of `len` printable bytes that differs from one push to the next.
fn pattern(n: usize, len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((n * 7 + i) % 26) as u8))
        .collect()
}

#[test]
fn pushes_larger_than_a_tls_record_arrive_intact_and_in_order() {
    let (server, at) = start_transports(secure(config()));
    let mut tls = TlsClient::user(at.tls(), "big");
    let mut wss = ws_user(at.ws(), true, "big");
    server.wait_online("big", 2);
    // Around the 16 KiB record size and well past it; together under MaxPendingBytes, so
    // that all of them may be queued at once.
    let sizes = [1, 16_300, 16_384, 16_385, 40_000, 100_000, 300_000, 7];
    let bodies: Vec<String> = (sizes.iter().enumerate())
        .map(|(n, &len)| pattern(n, len))
        .collect();
    for body in &bodies {
        server.handle.push("big", "/big", body).unwrap();
    }
    for body in &bodies {
        let over_tls = tls.expect("/big");
        assert!(
            over_tls.body == *body,
            "a push of {} bytes over TLS",
            body.len()
        );
        let over_wss = ws_expect(&mut wss, "/big");
        assert!(
            over_wss.body == *body,
            "a push of {} bytes over wss",
            body.len()
        );
    }
    tls.assert_alive();
    ws_assert_alive(&mut wss);
}

#[test]
fn a_tls_client_that_never_reads_is_closed_as_a_slow_consumer() {
    let (server, at) = start_transports(secure(Config {
        max_pending_bytes: 64 * 1024,
        ..config()
    }));
    let mut slow = TlsClient::user(at.tls(), "slow"); // never reads until the end
    let mut steady = TlsClient::user(at.tls(), "steady");
    let sent = push_until_slow_consumer(&server, move || steady.recv().expect("a push"));
    let (got, _) = slow.read_to_close();
    assert_in_order_prefix(&got, sent);
    assert_eq!(server.closed("slow_consumer"), 1);
}

#[test]
fn a_heartbeat_flood_over_tls_that_never_reads_is_closed_and_others_are_untouched() {
    let (server, at) = start_transports(secure(config()));
    let mut tls_bystander = TlsClient::user(at.tls(), "tls-bystander");
    let mut tcp_bystander = server.user("tcp-bystander");
    let mut flooder = TlsClient::user(at.tls(), "flooder");
    let flood = thread::spawn(move || {
        let beats = frame(ByteOrder::Big, json(uri::HEARTBEAT, "").as_bytes()).repeat(256);
        // Until the server closes it; a write that blocks for `WAIT` ends it too.
        while flooder.stream.write_all(&beats).is_ok() {}
    });
    server.wait_closed("slow_consumer", 1);
    flood.join().unwrap();
    assert_eq!(server.online("flooder"), 0);
    tls_bystander.assert_alive();
    assert_alive(&mut tcp_bystander);
    let mut newcomer = TlsClient::user(at.tls(), "newcomer");
    newcomer.assert_alive();
    let stats = server.stats();
    assert_eq!((stats.connections, stats.closed["slow_consumer"]), (3, 1));
}

#[test]
fn a_kicked_tls_client_sees_close_notify_not_a_truncation() {
    let (server, at) = start_transports(secure(config()));
    let mut c = TlsClient::user(at.tls(), "kicked");
    assert_eq!(server.handle.kick("kicked").unwrap(), 1);
    let (got, end) = c.read_to_close();
    assert!(got.is_empty(), "{got:?}");
    end.expect("close_notify before the EOF");
    server.wait_closed("kicked", 1);
}

#[test]
fn shutdown_ends_tls_connections_with_close_notify_after_their_last_push() {
    let (mut server, at) = start_transports(secure(config()));
    let mut idle = TlsClient::user(at.tls(), "idle");
    // Pushes this client has not read yet, more than the kernel's buffers hold: the server
    // still has output for it when it shuts down. It is flushed first, then close_notify.
    let mut busy = TlsClient::user(at.tls(), "busy");
    let bodies: Vec<String> = (0..30).map(|n| pattern(n, 30_000)).collect();
    for body in &bodies {
        server.handle.push("busy", "/backlog", body).unwrap();
    }
    server.handle.shutdown().unwrap();
    let (got, end) = idle.read_to_close();
    assert!(got.is_empty(), "{got:?}");
    end.expect("close_notify before the EOF");
    let (got, end) = busy.read_to_close();
    let got: Vec<String> = got.into_iter().map(|m| m.body).collect();
    assert!(got == bodies, "{} of {} pushes", got.len(), bodies.len());
    end.expect("close_notify before the EOF");
    server.wait_finished();
}

/// `/metrics` as a scraper reads it.
fn metrics(server: &TestServer) -> String {
    let mut http = tcp(server.http);
    write!(
        http,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        plex::config::DEFAULT_INNER_PASSWORD
    )
    .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The per-transport gauge lines of `/metrics`, in order (tcp, tls, ws, wss).
fn transport_metrics(server: &TestServer) -> Vec<String> {
    let text = metrics(server);
    ["tcp", "tls", "ws", "wss"]
        .iter()
        .map(|t| {
            let prefix = format!("plex_transport_connections{{transport=\"{t}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&prefix));
            line.unwrap_or_else(|| panic!("no {prefix}in {text}"))
                .to_owned()
        })
        .collect()
}

fn transports(server: &TestServer) -> [u64; 4] {
    let t = server.stats().transports;
    [t["tcp"], t["tls"], t["ws"], t["wss"]]
}

fn gauge_lines(counts: [u64; 4]) -> Vec<String> {
    (["tcp", "tls", "ws", "wss"].iter().zip(counts))
        .map(|(t, n)| format!("plex_transport_connections{{transport=\"{t}\"}} {n}"))
        .collect()
}

#[test]
fn connections_are_counted_per_transport_in_stats_and_metrics() {
    // With a certificate the WebSocket listener speaks wss; without, ws.
    let (secure_server, at) = start_transports(secure(config()));
    let (plain_server, plain) = start_transports(plain_ws(config()));
    let tcp_user = secure_server.user("tcp");
    let tls_user = TlsClient::user(at.tls(), "tls");
    let wss_user = ws_user(at.ws(), true, "wss");
    let ws_user_ = ws_user(plain.ws(), false, "ws");
    // Connections count from the accept, authenticated or not.
    let tls_anonymous = TlsClient::connect(at.tls());
    secure_server.wait_stats("tcp, 2 tls, wss", |s| s.connections == 4);
    plain_server.wait_stats("ws", |s| s.connections == 1);
    assert_eq!(transports(&secure_server), [1, 2, 0, 1]);
    assert_eq!(secure_server.stats().transports.values().sum::<u64>(), 4);
    assert_eq!(transports(&plain_server), [0, 0, 1, 0]);
    assert_eq!(transport_metrics(&secure_server), gauge_lines([1, 2, 0, 1]));
    assert_eq!(transport_metrics(&plain_server), gauge_lines([0, 0, 1, 0]));

    drop((tcp_user, tls_user, wss_user, ws_user_, tls_anonymous));
    secure_server.wait_stats("every connection gone", |s| s.connections == 0);
    plain_server.wait_stats("every connection gone", |s| s.connections == 0);
    assert_eq!(transports(&secure_server), [0; 4]);
    assert_eq!(transports(&plain_server), [0; 4]);
    assert_eq!(transport_metrics(&secure_server), gauge_lines([0; 4]));
    assert_eq!(transport_metrics(&plain_server), gauge_lines([0; 4]));
}

/// The error `Server::build` gives for `config`.
fn build_error(config: Config) -> String {
    match Server::builder(config).build() {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tls_settings_missing_their_other_half_are_clear_errors() {
    let cert = cert();
    assert_eq!(
        build_error(Config {
            tls_port: Some(0),
            ..config()
        }),
        "TlsPort needs TlsCert and TlsKey"
    );
    assert_eq!(
        build_error(Config {
            tls_cert: Some(cert.cert.clone()),
            tls_port: Some(0),
            ..config()
        }),
        "TlsCert needs a TlsKey"
    );
    assert_eq!(
        build_error(Config {
            tls_key: Some(cert.key.clone()),
            ..config()
        }),
        "TlsKey needs a TlsCert"
    );
}

#[test]
fn a_bad_pem_file_is_a_startup_error_naming_the_key() {
    let cert = cert();
    let with = |tls_cert: &str, tls_key: &str| {
        build_error(Config {
            tls_cert: Some(tls_cert.into()),
            tls_key: Some(tls_key.into()),
            tls_port: Some(0),
            ..config()
        })
    };
    let missing = "/nonexistent/plex-test.pem";
    let error = with(missing, &cert.key);
    assert!(
        error.starts_with(&format!("TlsCert {missing}: ")),
        "{error}"
    );
    let error = with(&cert.cert, missing);
    assert!(error.starts_with(&format!("TlsKey {missing}: ")), "{error}");
    // Each file holding the other's PEM.
    let error = with(&cert.key, &cert.key);
    assert!(
        error.starts_with(&format!("TlsCert {}: ", cert.key)),
        "{error}"
    );
    let error = with(&cert.cert, &cert.cert);
    assert!(
        error.starts_with(&format!("TlsKey {}: ", cert.cert)),
        "{error}"
    );

    // The binary says so on stderr and exits 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plex-server"))
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(["--http-bind", "127.0.0.1", "--http-port", "0"])
        .args([
            "--tls-port",
            "0",
            "--tls-cert",
            missing,
            "--tls-key",
            &cert.key,
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("plex-server: cannot start: TlsCert {missing}: ")),
        "{stderr}"
    );
}

/// Descriptor limit of the child in the test below; the server holds a dozen itself.
const CHILD_NOFILE: u32 = 40;

/// Drives a TLS handshake on `stream` until it completes (`true`) or `give_up` says to stop
/// (`false`); the socket's reads are made short meanwhile.
fn handshake_until(stream: &mut TlsStream, mut give_up: impl FnMut() -> bool) -> bool {
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let done = wait_until(WAIT, || {
        match stream.conn.complete_io(&mut stream.sock) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => {}
            Err(e) => panic!("TLS handshake: {e}"),
        }
        !stream.conn.is_handshaking() || give_up()
    });
    stream.sock.set_read_timeout(Some(WAIT)).unwrap();
    done && !stream.conn.is_handshaking()
}

#[test]
fn tls_clients_that_waited_while_descriptors_ran_out_are_served_once_they_are_free() {
    let cert = cert();
    let args = [
        "--tls-port",
        "0",
        "--tls-cert",
        &cert.cert,
        "--tls-key",
        &cert.key,
    ];
    let mut server = ChildServer::spawn(&args, "info", Some(CHILD_NOFILE));
    let tls_addr = server.listening("listening for clients over TLS on ");

    // TLS clients one by one until the server reports that accept failed.
    let (mut served, mut waiting) = server.fill_to_saturation(2 * CHILD_NOFILE as usize, |_| {
        let mut stream = StreamOwned::new(tls_session(BOTH_VERSIONS), tcp(tls_addr));
        if handshake_until(&mut stream, || server.logged(SATURATED)) {
            Ok(TlsClient::from(stream))
        } else {
            Err(Box::new(stream))
        }
    });
    // More wait in the backlog.
    for _ in 0..3 {
        waiting.push(Box::new(StreamOwned::new(
            tls_session(BOTH_VERSIONS),
            tcp(tls_addr),
        )));
    }
    server.assert_running();

    // Freeing descriptors lets it accept again: every client in the backlog is served, with
    // no newcomer needed to wake the listener.
    served.truncate(served.len() - 8);
    for (n, mut stream) in waiting.into_iter().enumerate() {
        assert!(
            handshake_until(&mut stream, || false),
            "waiting client {n} never served"
        );
        let mut c = TlsClient::from(*stream);
        c.send(uri::AUTH, &format!("waited{n}"));
        c.expect(uri::AUTH_SUCCESS);
        served.push(c);
    }
    server.assert_running();
}

#[test]
fn sighup_puts_a_renewed_certificate_in_place_for_new_connections() {
    let (old, new) = (make_cert("sighup-old"), make_cert("sighup-new"));
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sighup-live");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    let install = |c: &Cert| {
        std::fs::copy(&c.cert, &cert).unwrap();
        std::fs::copy(&c.key, &key).unwrap();
    };
    install(&old);
    let (cert_arg, key_arg) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let args = [
        "--tls-port",
        "0",
        "--tls-cert",
        cert_arg,
        "--tls-key",
        key_arg,
    ];
    let mut server = ChildServer::spawn(&args, "info", None);
    let mut line = None;
    let logged = wait_until(WAIT, || {
        line = server.logged_line("listening for clients over TLS on ");
        line.is_some()
    });
    assert!(logged, "no TLS listening line: {:?}", server.log());
    let addr: std::net::SocketAddr = line.unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    // The server's certificate as a client trusting both sees it.
    let presented = || {
        let config = client_config_trusting(BOTH_VERSIONS, &[&old, &new]);
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let session = rustls::ClientConnection::new(config, name).unwrap();
        let mut stream = StreamOwned::new(session, tcp(addr));
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        let der = stream.conn.peer_certificates().unwrap()[0].to_vec();
        (der, TlsClient::from(stream))
    };
    let der_of = |c: &Cert| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(&c.cert)
            .unwrap()
            .to_vec()
    };
    let (before, mut kept) = presented();
    assert_eq!(before, der_of(&old));
    kept.send(uri::AUTH, "kept");
    kept.expect(uri::AUTH_SUCCESS);

    install(&new);
    server.signal("HUP");
    let reloaded = wait_until(WAIT, || server.logged("the TLS certificate"));
    assert!(reloaded, "{:?}", server.log());
    assert_eq!(presented().0, der_of(&new));
    kept.assert_alive();
    assert_eq!(server.terminate().code(), Some(0));
}
