//! Graceful drain: on `Handle::shutdown` or SIGTERM the server stops accepting, flushes pending
//! output to live connections within `ShutdownTimeout`, fires the offline hooks and exits 0.

mod common;

use std::net::TcpStream;

use common::*;
use plex::protocol::ByteOrder;

#[test]
fn shutdown_flushes_pending_output_then_closes_and_fires_offline() {
    let server = start(plex::Config {
        max_pending_bytes: 16 * 1024 * 1024,
        shutdown_timeout: 30,
        ..config()
    });
    let mut reader = server.user("reader");
    let mut inner = server.inner();
    // Far more than the socket buffers hold while the client is not reading.
    let body = "x".repeat(8 * 1024);
    let count = 600;
    for i in 0..count {
        push(&mut inner, "reader", &format!("/m/{i}"), &body);
    }
    server.wait_stats("every push queued", |s| s.delivered == count);
    server.handle.shutdown().unwrap();
    // Everything queued before the shutdown arrives, in order, then the connection ends.
    for i in 0..count {
        let m = recv(&mut reader);
        assert_eq!(m.uri, format!("/m/{i}"));
        assert_eq!(m.body.len(), body.len());
    }
    assert_closed(&mut reader);
    server.events.wait_for("offline hook", |e| {
        e.contains(&Event::Offline("reader".into()))
    });
    server.stop();
}

#[test]
fn shutdown_closes_idle_connections_and_run_returns() {
    let server = start(config());
    let mut idle = server.user("idle");
    let events = server.events.clone();
    server.stop(); // returns once run() has returned
    assert_closed(&mut idle);
    assert!(events.snapshot().contains(&Event::Offline("idle".into())));
}

#[test]
fn a_client_that_never_reads_cannot_hold_the_shutdown_past_its_timeout() {
    let server = start(plex::Config {
        max_pending_bytes: 16 * 1024 * 1024,
        shutdown_timeout: 1,
        ..config()
    });
    let _stuck = server.user("stuck");
    let mut inner = server.inner();
    let body = "y".repeat(64 * 1024);
    for _ in 0..100 {
        push(&mut inner, "stuck", "/big", &body);
    }
    server.wait_stats("pushes queued", |s| s.delivered == 100);
    server.handle.shutdown().unwrap();
    // While the drain is held up, the listener is already closed.
    let addr = server.addr;
    assert!(
        wait_until(WAIT, || TcpStream::connect(addr).is_err()),
        "still accepting"
    );
    let events = server.events.clone();
    // `stop` joins the reactor thread: it must come back although `_stuck` never reads.
    server.stop();
    assert!(events.snapshot().contains(&Event::Offline("stuck".into())));
}

#[test]
fn handle_calls_after_shutdown_report_stopped() {
    let server = start(config());
    let handle = server.handle.clone();
    server.stop();
    assert_eq!(handle.push("u", "/x", "b"), Err(plex::HandleError::Stopped));
    assert_eq!(handle.online("u"), Err(plex::HandleError::Stopped));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut server = ChildServer::spawn(&["--shutdown-timeout", "5"], "info", None);
    let mut client = plex::client::Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(client.authenticate("7", WAIT).unwrap());
    let status = server.terminate();
    assert_closed(&mut client);
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    assert!(
        server.logged("signal 15: shutting down"),
        "{:?}",
        server.log()
    );
}

#[test]
fn sighup_reloads_the_inner_password_and_keeps_serving() {
    let dir = std::env::temp_dir().join(format!("plex-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("inner-password");
    std::fs::write(&file, "first-password\n").unwrap();
    let settings = dir.join("plex.json");
    std::fs::write(&settings, r#"{"HistorySize": 10, "MaxConnection": 100}"#).unwrap();
    let args = [
        "--inner-password-file",
        file.to_str().unwrap(),
        "--config",
        settings.to_str().unwrap(),
    ];
    let mut server = ChildServer::spawn(&args, "info", None);
    let mut user = plex::client::Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(user.authenticate("7", WAIT).unwrap());
    let mut inner = plex::client::Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(inner.authenticate_inner("first-password", WAIT).unwrap());

    std::fs::write(&file, "second-password\n").unwrap();
    std::fs::write(&settings, r#"{"HistorySize": 20, "MaxConnection": 200}"#).unwrap();
    server.signal("HUP");
    // The log says what was applied, and what needs a restart.
    let applied = || server.logged_line("SIGHUP: applied");
    assert!(
        wait_until(WAIT, || applied().is_some()),
        "{:?}",
        server.log()
    );
    assert!(
        applied()
            .unwrap()
            .ends_with("SIGHUP: applied InnerPassword, MaxConnection"),
        "{:?}",
        server.log()
    );
    assert!(
        wait_until(WAIT, || server
            .logged("SIGHUP: HistorySize changed but need a restart")),
        "{:?}",
        server.log()
    );
    server.assert_running();
    // OuterServers, unset, still defaults to the client listener.
    let host: serde_json::Value = ureq::get(format!("http://{}/plex/v1/host", server.http))
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    assert_eq!(host["host"], server.addr.to_string());
    let mut old = plex::client::Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(!old.authenticate_inner("first-password", WAIT).unwrap());
    let mut new = plex::client::Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(new.authenticate_inner("second-password", WAIT).unwrap());
    // Established connections are untouched.
    assert_alive(&mut user);
    push(&mut inner, "7", "/after", "reload");
    expect_msg(&mut user, "/after", "reload");

    // A configuration that no longer validates is refused; the running one stays.
    std::fs::write(&file, "\n").unwrap();
    server.signal("HUP");
    assert!(
        wait_until(WAIT, || server.logged("reload failed")),
        "{:?}",
        server.log()
    );
    let mut again = plex::client::Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(again.authenticate_inner("second-password", WAIT).unwrap());
    assert_eq!(server.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn secrets_never_reach_the_log_even_at_trace_level() {
    let (secret, password) = ("jwt-secret-d41d8cd9", "inner-password-8f00b204");
    let args = [
        "--trace",
        "--jwt-secret",
        secret,
        "--inner-password",
        password,
    ];
    let mut server = ChildServer::spawn(&args, "trace", None);
    let mut inner = plex::client::Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(inner.authenticate_inner(password, WAIT).unwrap());
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.not-a-valid-signature-e9800998";
    let mut user = plex::client::Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(!user.authenticate(token, WAIT).unwrap());
    assert_eq!(server.terminate().code(), Some(0));
    let log = server.log().join("\n");
    assert!(log.contains("TRACE"), "trace logging was on: {log}");
    for leaked in [secret, password, token] {
        assert!(!log.contains(leaked), "{leaked} appears in the log:\n{log}");
    }
}
