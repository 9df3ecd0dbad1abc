//! Graceful drain: on `Handle::shutdown` or SIGTERM the server stops accepting, flushes pending
//! output to live connections within `ShutdownTimeout`, fires the offline hooks and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::*;

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

/// The real binary, killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_plex-server"))
            .args(["--port", "0", "--http-port", "0", "--bind", "127.0.0.1"])
            .args(["--http-bind", "127.0.0.1", "--shutdown-timeout", "5"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plex-server"),
    );
    let mut log = BufReader::new(child.0.stderr.take().unwrap());
    let port = loop {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "server exited before listening"
        );
        if let Some(rest) = line.split("listening for clients on ").nth(1) {
            let addr = rest.split([',', ' ', '\n']).next().unwrap();
            break addr.rsplit_once(':').unwrap().1.parse::<u16>().unwrap();
        }
    };
    let mut client =
        plex::client::Connection::connect(("127.0.0.1", port), plex::protocol::ByteOrder::Big)
            .unwrap();
    assert!(client.authenticate("7", WAIT).unwrap());

    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    assert_closed(&mut client);
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
}
