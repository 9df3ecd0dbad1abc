//! A real redis-server for cluster tests, on a free loopback port with a temp dir of its own,
//! killed on drop. `stop` and `restart` (same port) take Redis away and bring it back;
//! `pause` and `resume` (SIGSTOP / SIGCONT) make it hang with its connections open.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{WAIT, wait_until};

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on a port nobody holds, trying another if it loses a race for one.
    pub fn start() -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        for _ in 0..20 {
            let n = STARTED.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("plex-redis-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let mut server = RedisServer {
                port: free_port(),
                dir,
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 20 ports");
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A plain connection, to look at what the cluster wrote.
    pub fn connection(&self) -> ::redis::Connection {
        ::redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(WAIT))
            .expect("redis connection")
    }

    /// Kills the server (as a crash would: no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port, waiting while the port is still held.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            wait_until(WAIT, || self.spawn()),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// Freezes the server: connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Runs redis-server on `self.port` until it answers PING; false if it exited first (the
    /// port was taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let log = self.dir.join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            let child = self.child.as_mut().expect("just spawned");
            if child.try_wait().expect("redis-server status").is_some() {
                self.child = None;
                return false;
            }
            if self.answers_ping() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} never answered PING; see {}",
                self.port,
                log.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn answers_ping(&self) -> bool {
        ::redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| ::redis::cmd("PING").query::<String>(&mut c))
            .is_ok_and(|pong| pong == "PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free at the moment of asking: the OS picks it for a listener that is then dropped.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
