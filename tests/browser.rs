//! Browsers: the JavaScript client (`clients/js/plex.js`) on the demo page (`examples/browser/`,
//! served by `examples/browser.rs` itself) in a real headless Chromium, driven over the
//! DevTools protocol. The page finds the server with `GET /plex/v1/host`, connects over ws or
//! wss, and must show what the HTTP API pushes; what it sends must reach the server's hook; a
//! kick or a refused token must stop it for good; a restarted server must get it back.
//! Screenshots of the page go to `target/browser-ws.png` and `target/browser-wss.png`.

mod common;
#[path = "../examples/browser.rs"]
mod demo;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tungstenite::WebSocket;

use common::{Event, Events, WAIT};
use plex::client::Connection;
use plex::protocol::ByteOrder;
use plex::{Config, Handle, Message};

/// The demo on OS-chosen ports.
const ANY_PORTS: demo::Ports = demo::Ports {
    clients: 0,
    http: 0,
    ws: 0,
    page: 0,
};

/// One Chromium at a time: the machine has two cores.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

fn one_browser() -> std::sync::MutexGuard<'static, ()> {
    ONE_BROWSER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn pushes_reach_the_page_over_ws_and_what_it_sends_reaches_the_server() {
    let _one = one_browser();
    let server = DemoServer::start(demo::config(ANY_PORTS, None));
    let mut chromium = Chromium::launch();
    let page = chromium.open_authenticated(&server.page_url("7"));
    assert_eq!(server.online("7"), 1);
    // Where /plex/v1/host said, on the WebSocket port the page was given.
    let log = chromium.text(&page, "log");
    let ws = format!("open ws://127.0.0.1:{}/plex/v1/ws", server.ports.ws);
    assert!(log.contains(&ws), "{log}");

    // Text, not HTML: markup in a body must show as it is.
    assert_eq!(server.push("7", "/news", "hello over ws <b>1</b>"), 1);
    chromium.wait_text(&page, "messages", "/news hello over ws <b>1</b>");
    assert_eq!(server.push("7", "/news", "second"), 1);
    let shown = chromium.wait_text(&page, "messages", "second");
    assert!(
        shown.find("<b>1</b>") < shown.find("second"),
        "order: {shown}"
    );
    chromium.screenshot(&page, "browser-ws.png");

    // Typed into the form and sent: the server's on_message hook gets it as uid 7's.
    chromium.eval(
        &page,
        "const form = document.getElementById('send');
         form.uri.value = '/chat'; form.body.value = 'hi from the page';
         form.querySelector('button').click();",
    );
    server
        .events
        .wait_for("the page's upstream message", |events| {
            events.iter().any(|event| {
                matches!(event, Event::Upstream(uid, Message { uri, body, .. })
                if uid == "7" && uri == "/chat" && body == "hi from the page")
            })
        });

    // A kicked page says so and stays closed.
    assert_eq!(server.kick("7"), 1);
    let log = chromium.wait_text(&page, "log", "not reconnecting");
    assert!(log.contains("1008 kicked; not reconnecting"), "{log}");
    assert_eq!(chromium.text(&page, "state"), "closed");
    assert_eq!(server.online("7"), 0);
    server.stop();
}

#[test]
fn pushes_reach_the_page_over_wss() {
    let _one = one_browser();
    let certificate = common::transport::make_cert("browser-wss");
    let tls = (certificate.cert, certificate.key);
    let server = DemoServer::start(demo::config(ANY_PORTS, Some(tls)));
    let mut chromium = Chromium::launch();
    let page = chromium.open_authenticated(&server.page_url("8"));
    let log = chromium.text(&page, "log");
    assert!(log.contains("open wss://127.0.0.1:"), "not over wss: {log}");
    assert_eq!(server.push("8", "/news", "hello over wss"), 1);
    chromium.wait_text(&page, "messages", "/news hello over wss");
    assert_eq!(server.handle.stats().unwrap().transports["wss"], 1);
    chromium.screenshot(&page, "browser-wss.png");
    server.stop();
}

#[test]
fn a_token_that_cannot_be_a_subprotocol_goes_in_auth_server_and_a_refused_one_is_not_retried() {
    let _one = one_browser();
    let server = DemoServer::start(demo::config(ANY_PORTS, None));
    let mut chromium = Chromium::launch();
    // `@` is not allowed in a subprotocol name: the token goes in /auth/server instead.
    let page = chromium.open_authenticated(&server.page_url("ann@example.com"));
    assert_eq!(server.push("ann@example.com", "/mail", "you have mail"), 1);
    chromium.wait_text(&page, "messages", "/mail you have mail");

    // The demo auth refuses a token with a space: answered /auth/failed, never retried.
    let refused = chromium.open(&server.page_url("not%20a%20uid"));
    let log = chromium.wait_text(&refused, "log", "not reconnecting");
    assert!(
        log.contains("1008 authentication failed; not reconnecting"),
        "{log}"
    );
    let stats = server.handle.stats().unwrap();
    assert_eq!((stats.auth_failures, stats.users), (1, 1), "{stats:?}");
    server.stop();
}

#[test]
fn the_page_reconnects_to_a_restarted_server() {
    let _one = one_browser();
    let first = DemoServer::start(demo::config(ANY_PORTS, None));
    let mut chromium = Chromium::launch();
    let page = chromium.open_authenticated(&first.page_url("7"));
    let ports = first.ports;
    first.stop();
    let log = chromium.wait_text(&page, "log", "1001 shutdown; reconnecting in");
    assert!(!log.contains("not reconnecting"), "{log}");

    // The same ports again: the page looks the host up and connects by itself.
    let authenticated = |log: &str| log.matches(" authenticated").count();
    let before = authenticated(&log);
    let second = DemoServer::start(demo::config(ports, None));
    chromium.wait_until(&page, "a second authentication", "log", |log| {
        authenticated(log) > before
    });
    assert_eq!(second.online("7"), 1);
    assert_eq!(second.push("7", "/news", "back again"), 1);
    chromium.wait_text(&page, "messages", "/news back again");
    second.stop();
}

#[test]
fn a_page_that_lost_its_connection_resumes_and_gets_what_it_missed() {
    let _one = one_browser();
    let server = DemoServer::start(demo::config(ANY_PORTS, None));
    let mut chromium = Chromium::launch();
    let page = chromium.open_authenticated(&server.page_url("7"));
    assert_eq!(server.push("7", "/news", "before"), 1);
    chromium.wait_text(&page, "messages", "/news before");
    // The connection drops (the network, as far as the page knows); a push comes meanwhile.
    chromium.eval(&page, "window.plex._drop(1006, 'test: connection lost')");
    let gone = common::wait_until(WAIT, || server.online("7") == 0);
    assert!(gone, "the page's connection never went");
    assert_eq!(server.push("7", "/news", "while away"), 0);
    chromium.wait_text(&page, "log", "resumed: nothing was missed");
    let shown = chromium.wait_text(&page, "messages", "/news while away");
    assert!(shown.find("before") < shown.find("while away"), "{shown}");
    assert_eq!(server.push("7", "/news", "after"), 1);
    chromium.wait_text(&page, "messages", "/news after");
    server.stop();
}

#[test]
fn heartbeats_keep_the_page_connected() {
    let _one = one_browser();
    let config = Config {
        heartbeat_timeout: 2,
        ..demo::config(ANY_PORTS, None)
    };
    let server = DemoServer::start(config);
    let mut chromium = Chromium::launch();
    let page = chromium.open_authenticated(&format!("{}&heartbeat=0.3", server.page_url("7")));
    // A client that authenticates later and never heartbeats shows when the timeout has
    // passed for the page too.
    let addr = SocketAddr::from(([127, 0, 0, 1], server.ports.clients));
    let mut silent = Connection::connect(addr, ByteOrder::Big).expect("connect");
    assert!(silent.authenticate("silent", WAIT).expect("auth answer"));
    common::assert_closed(&mut silent);
    let stats = server.handle.stats().unwrap();
    assert_eq!(stats.closed["heartbeat_timeout"], 1, "{stats:?}");
    assert_eq!(server.online("7"), 1);
    let log = chromium.text(&page, "log");
    assert!(!log.contains("closed"), "{log}");
    server.stop();
}

#[test]
fn a_server_that_stops_answering_is_left_for_a_new_connection() {
    let _one = one_browser();
    let (mute, mut heard) = mute_server();
    let pages = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/?token=7&ws=ws://{mute}/plex/v1/ws&heartbeat=0.3",
        pages.local_addr().unwrap()
    );
    demo::serve_pages(pages);
    let mut chromium = Chromium::launch();
    let page = chromium.open(&url);
    // The token travels in the subprotocol list, beside `plex`.
    heard.expect(|m| m == "upgrade: plex, plex.token.7");
    chromium.wait_text(&page, "state", "authenticated");
    heard.expect(|m| m.contains(r#""uri":"/heartbeat""#));
    let log = chromium.wait_text(
        &page,
        "log",
        "the server stopped answering; reconnecting in",
    );
    assert!(
        log.contains("closed 1006 the server stopped answering"),
        "{log}"
    );
    heard.expect(|m| m.starts_with("upgrade: "));
}

/// What a mute server heard: `upgrade: <offered subprotocols>` per connection, then each
/// text message.
struct Heard(mpsc::Receiver<String>);

/// A WebSocket server that accepts any page and answers `/auth/success`, then never
/// another word: a hung server, or a network that drops everything.
fn mute_server() -> (SocketAddr, Heard) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tell, heard) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tell = tell.clone();
            std::thread::spawn(move || serve_mutely(stream, tell));
        }
    });
    (addr, Heard(heard))
}

fn serve_mutely(stream: TcpStream, tell: mpsc::Sender<String>) {
    use tungstenite::handshake::server::{Request, Response};
    #[allow(clippy::result_large_err)] // the signature is tungstenite's
    let choose_plex = |request: &Request, mut response: Response| {
        let offered = request.headers().get("Sec-WebSocket-Protocol");
        let offered = offered.and_then(|v| v.to_str().ok()).unwrap_or_default();
        let _ = tell.send(format!("upgrade: {offered}"));
        let plex = "plex".parse().unwrap();
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", plex);
        Ok(response)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream, choose_plex) else {
        return;
    };
    let success = tungstenite::Message::text(r#"{"seq":1,"uri":"/auth/success"}"#);
    if ws.send(success).is_err() {
        return;
    }
    while let Ok(message) = ws.read() {
        if let tungstenite::Message::Text(text) = message {
            let _ = tell.send(text.to_string());
        }
    }
}

impl Heard {
    /// Waits for a message that satisfies `cond`, skipping others.
    fn expect(&mut self, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.0.recv_timeout(left).expect("the mute server heard it");
            if cond(&message) {
                return message;
            }
        }
    }
}

/// The demo's server and page server, running.
struct DemoServer {
    handle: Handle,
    events: Events,
    http: SocketAddr,
    /// Where it listens, to start another server in its place.
    ports: demo::Ports,
    /// The page's URL without a token.
    page: String,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl DemoServer {
    fn start(config: Config) -> DemoServer {
        let (builder, events) = common::builder_with_events(config);
        let server = builder.build().expect("server starts");
        let pages = TcpListener::bind("127.0.0.1:0").expect("page listener");
        let page = demo::page_url(pages.local_addr().unwrap(), &server);
        demo::serve_pages(pages);
        let ports = demo::Ports {
            clients: server.local_addr().port(),
            http: server.http_addr().port(),
            ws: server.ws_addr().unwrap().port(),
            page: 0,
        };
        DemoServer {
            handle: server.handle(),
            events,
            http: server.http_addr(),
            ports,
            page,
            thread: Some(std::thread::spawn(move || server.run())),
        }
    }

    /// Live connections of `uid`. A uid counts before its `/auth/success` is sent, so once a
    /// page shows `authenticated` the server counts it.
    fn online(&self, uid: &str) -> usize {
        self.handle.online(uid).expect("server running")
    }

    fn page_url(&self, token: &str) -> String {
        format!("{}&token={token}", self.page)
    }

    /// `POST /plex/v1/push`; returns `delivered`.
    fn push(&self, uid: &str, uri: &str, body: &str) -> u64 {
        let answer = self.post(
            "/plex/v1/push",
            json!({"uid": uid, "uri": uri, "body": body}),
        );
        answer["delivered"].as_u64().expect("delivered")
    }

    /// `POST /plex/v1/kick`; returns `closed`.
    fn kick(&self, uid: &str) -> u64 {
        let answer = self.post("/plex/v1/kick", json!({ "uid": uid }));
        answer["closed"].as_u64().expect("closed")
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(WAIT))
            .build()
            .into();
        let token = format!("Bearer {}", plex::config::DEFAULT_INNER_PASSWORD);
        agent
            .post(format!("http://{}{path}", self.http))
            .header("Authorization", token)
            .send_json(body)
            .expect("HTTP API answers 200")
            .into_body()
            .read_json()
            .expect("a JSON answer")
    }

    /// Shuts it down and waits until its listeners are closed.
    fn stop(mut self) {
        self.handle.shutdown().expect("server running");
        let thread = self.thread.take().unwrap();
        thread.join().expect("reactor thread").expect("run ok");
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.handle.shutdown();
        }
    }
}

/// A fresh directory under the target directory's scratch space.
fn scratch_dir(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("browser-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// A headless Chromium with a fresh profile, driven over its DevTools WebSocket; closed (and
/// killed if it will not close) when dropped.
struct Chromium {
    child: Child,
    devtools: WebSocket<TcpStream>,
    next_id: u64,
    profile: PathBuf,
    /// Its stderr, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

/// A tab, as a DevTools session.
struct Page {
    session: String,
}

impl Chromium {
    fn launch() -> Chromium {
        let profile = scratch_dir("profile");
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
            ])
            .args(["--no-first-run", "--disable-background-networking"])
            .args(["--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--ignore-certificate-errors", "--window-size=800,600"])
            .args(["--remote-debugging-port=0", "about:blank"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (apt-get install chromium)");
        // It says where DevTools listens on stderr; read it all along so it never blocks.
        let (found, url) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = found.send(url.to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let url = url.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "no DevTools address from chromium: {:?}",
                log.lock().unwrap()
            )
        });
        let address = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("a ws:// URL");
        let stream = TcpStream::connect(address).expect("connect to DevTools");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (devtools, _) = tungstenite::client(url.as_str(), stream).expect("DevTools handshake");
        Chromium {
            child,
            devtools,
            next_id: 0,
            profile,
            log,
        }
    }

    /// Opens `url` in a new tab.
    fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({ "url": url }));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_owned();
        Page { session }
    }

    /// Opens `url` in a new tab and waits until the page shows `authenticated`.
    fn open_authenticated(&mut self, url: &str) -> Page {
        let page = self.open(url);
        self.wait_text(&page, "state", "authenticated");
        page
    }

    /// Evaluates `expression` in the page; returns its value.
    fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let params = json!({"expression": expression, "returnByValue": true});
        let result = self.call(Some(&page.session), "Runtime.evaluate", params);
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// The text of the element with `id` as the page shows it ("" until it exists).
    fn text(&mut self, page: &Page, id: &str) -> String {
        let expression = format!("document.getElementById('{id}')?.innerText ?? ''");
        let value = self.eval(page, &expression);
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the element with `id` shows `needle`; returns its text.
    fn wait_text(&mut self, page: &Page, id: &str, needle: &str) -> String {
        self.wait_until(page, &format!("{needle:?}"), id, |text| {
            text.contains(needle)
        })
    }

    /// Waits until the text of the element with `id` satisfies `cond`; returns it.
    fn wait_until(
        &mut self,
        page: &Page,
        what: &str,
        id: &str,
        cond: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text(page, id);
            if cond(&text) {
                return text;
            }
            if Instant::now() >= deadline {
                let body = self.text(page, "log");
                panic!("#{id} never showed {what}: {text:?}; connection log: {body:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Saves a PNG of the page as `target/<name>`.
    fn screenshot(&mut self, page: &Page, name: &str) {
        self.call(Some(&page.session), "Page.bringToFront", json!({}));
        let shot = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        let png = BASE64
            .decode(shot["data"].as_str().expect("image data"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
        std::fs::write(target.join(name), png).expect("write the screenshot");
    }

    /// Sends a DevTools command (to a tab's `session`, or to the browser) and returns its
    /// result, skipping the events that arrive meanwhile.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        self.devtools
            .send(tungstenite::Message::text(command.to_string()))
            .expect("send to DevTools");
        loop {
            let message = self.devtools.read().unwrap_or_else(|e| {
                panic!(
                    "{method}: no answer from DevTools ({e}); chromium says {:?}",
                    self.stderr()
                )
            });
            let Ok(text) = message.to_text() else {
                continue;
            };
            let answer: Value = serde_json::from_str(text).expect("DevTools sends JSON");
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    fn stderr(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().rev().take(20).rev().cloned().collect()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Closing through DevTools lets it end its own child processes; killing is the fallback.
        let close = json!({"id": 0, "method": "Browser.close"}).to_string();
        let _ = self.devtools.send(tungstenite::Message::text(close));
        let exited = common::wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
