//! The `plex-server` binary as an operator meets it: the command line, `PLEX_*` variables,
//! config files, secret files, `--check-config`, `--help`, exit codes and log lines. Most
//! cases stop at `--check-config` or at a startup error, so no server runs for them.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::{ChildServer, WAIT, wait_until};
use plex::client::Connection;
use plex::protocol::ByteOrder;

/// The binary with logging off (fatal errors must show anyway) and no `PLEX_*` variables
/// inherited from the shell running the tests.
fn plex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plex-server"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PLEX_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "off").stdin(Stdio::null());
    command
}

/// What a run of the binary showed.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary to its exit; a server that starts instead of exiting fails the test.
fn run(command: &mut Command) -> Outcome {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plex-server");
    let mut status = None;
    if !wait_until(WAIT, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("plex-server kept running instead of exiting");
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    child.stdout.unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.unwrap().read_to_string(&mut stderr).unwrap();
    Outcome {
        code: status.unwrap().code().expect("exited, not killed"),
        stdout,
        stderr,
    }
}

/// `--check-config` with `args`, which must succeed; returns the summary line.
fn check(command: &mut Command) -> String {
    let out = run(command.arg("--check-config"));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    let summary = out.stdout.strip_prefix("plex-server: config ok: ");
    summary.expect("summary line").trim_end().to_owned()
}

/// A file in the test's scratch directory, unique to this process and `name`.
fn scratch(name: &str, contents: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn a_stray_word_is_an_unexpected_argument() {
    let out = run(plex().arg("foo"));
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr,
        "plex-server: unexpected argument 'foo' (see --help)\n"
    );
    let out = run(plex().args(["--port", "1", "--nope"]));
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (2, "plex-server: unknown option --nope (see --help)\n")
    );
    let out = run(plex().arg("--port"));
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (2, "plex-server: --port needs a value\n")
    );
}

#[test]
fn a_bad_port_reads_the_same_from_a_file_a_flag_and_the_environment() {
    let file = scratch("port.json", r#"{"Port": 70000}"#);
    let runs = [
        (
            run(plex().arg("--config").arg(&file)),
            file.display().to_string(),
        ),
        (run(plex().args(["--port", "70000"])), "--port".to_owned()),
        (
            run(plex().env("PLEX_PORT", "70000")),
            "PLEX_PORT".to_owned(),
        ),
    ];
    for (out, source) in runs {
        assert_eq!(out.code, 2, "{out:?}");
        assert_eq!(
            out.stderr,
            format!(
                "plex-server: Port must be a number from 0 to 65535, got 70000 (from {source})\n"
            )
        );
    }
}

#[test]
fn startup_errors_reach_stderr_even_with_logging_off() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run(plex().args(["--bind", "127.0.0.1", "--port", &port]).args([
        "--http-bind",
        "127.0.0.1",
        "--http-port",
        "0",
    ]));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.starts_with(&format!(
            "plex-server: cannot start: cannot bind 127.0.0.1:{port}"
        )),
        "{out:?}"
    );
    let out = run(plex().args(["--heartbeat-timeout", "0"]));
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (2, "plex-server: HeartbeatTimeout must be greater than 0\n")
    );
}

#[test]
fn settings_of_another_auth_mode_are_errors_not_ignored() {
    let out = run(plex().args(["--jwt-secret", "s3cret", "--auth", "uid"]));
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr,
        "plex-server: JwtSecret is only used by AuthMode jwt, but AuthMode is uid\n"
    );
    let out = run(plex()
        .args(["--auth-url", "http://127.0.0.1:9600/auth"])
        .env("PLEX_AUTH_MODE", "jwt")
        .env("PLEX_JWT_SECRET", "s3cret"));
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr,
        "plex-server: AuthUrl is only used by AuthMode webhook, but AuthMode is jwt\n"
    );
    // Without AuthMode, the setting names the mode.
    let summary = check(plex().args(["--auth-url", "http://127.0.0.1:9600/auth"]));
    assert!(summary.contains(" AuthMode=webhook AuthUrl=http://127.0.0.1:9600/auth "));
}

#[test]
fn flags_win_over_the_environment_over_the_file_over_defaults() {
    let file = scratch(
        "layers.json",
        r#"{"Port": "1001", "HttpPort": 2002, "AuthTimeout": 5, "OuterServers": ["9.9.9.9:1"]}"#,
    );
    let layered = |command: &mut Command| {
        command
            .env("PLEX_PORT", "1111")
            .env("PLEX_HTTP_PORT", "2222")
            .env("PLEX_OUTER_SERVERS", "1.2.3.4:9578,5.6.7.8:9578")
            .args(["--port", "1234"]);
        check(command)
    };
    let from_flag = layered(plex().arg("--config").arg(&file));
    let from_env = layered(plex().env("PLEX_CONFIG", &file));
    for summary in [from_flag, from_env] {
        for expected in [
            "Port=1234 ",
            "HttpPort=2222 ",
            "AuthTimeout=5 ",
            "HeartbeatTimeout=120 ",
            "OuterServers=1.2.3.4:9578,5.6.7.8:9578 ",
        ] {
            assert!(summary.contains(expected), "{expected} in {summary}");
        }
    }
    // The file alone, and the old flag spellings.
    let summary = check(plex().arg("--config").arg(&file).args([
        "--bind",
        "127.0.0.2",
        "--trace",
        "--little-endian",
    ]));
    assert!(summary.starts_with("Port=1001 HttpPort=2002 BindAddress=127.0.0.2 "));
    assert!(summary.contains(" ShowTrace=true ") && summary.contains(" LittleEndian=true "));
}

#[test]
fn secrets_come_from_files_and_are_never_shown() {
    let password = scratch("inner-password", "hunter2-inner\n");
    let jwt = scratch("jwt-secret", "hunter2-jwt\r\n");
    let summary = check(
        plex()
            .arg("--inner-password-file")
            .arg(&password)
            .env("PLEX_JWT_SECRET_FILE", &jwt)
            .args(["--metrics-token", "hunter2-metrics"]),
    );
    assert!(!summary.contains("hunter2"), "{summary}");
    for expected in [
        " InnerPassword=*** ",
        " MetricsToken=*** ",
        " AuthMode=jwt ",
        " JwtSecret=*** ",
    ] {
        assert!(summary.contains(expected), "{expected} in {summary}");
    }

    let out = run(plex().env("PLEX_METRICS_TOKEN_FILE", "/nonexistent/token"));
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.starts_with(
            "plex-server: cannot read MetricsToken from /nonexistent/token: \
             No such file or directory"
        ) && out.stderr.ends_with("(from PLEX_METRICS_TOKEN_FILE)\n"),
        "{out:?}"
    );
    // Only the trailing newline goes, and nothing is left of this file once it has.
    let blank = scratch("blank-secret", "\n");
    let out = run(plex().arg("--jwt-secret-file").arg(&blank));
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (
            2,
            "plex-server: JwtSecret must be a non-empty string (from --jwt-secret-file)\n"
        )
    );
    let out = run(plex()
        .args(["--inner-password", "x", "--inner-password-file"])
        .arg(&blank));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("both set InnerPassword"), "{out:?}");
}

#[test]
fn a_password_read_from_a_file_authenticates_inner_connections() {
    let password = scratch("live-password", "s3cret-from-file\n");
    let path = password.to_str().unwrap();
    let server = ChildServer::spawn(&["--inner-password-file", path], "info", None);
    let mut inner = Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(inner.authenticate_inner("s3cret-from-file", WAIT).unwrap());
    let mut wrong = Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(
        !wrong
            .authenticate_inner("s3cret-from-file\n", WAIT)
            .unwrap()
    );
}

/// README.md's Configuration table, `(key, default)` per row.
fn readme_keys() -> Vec<(String, String)> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Configuration section");
    let rows = section.lines().filter(|l| l.starts_with("| `"));
    rows.map(|row| {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
    })
    .collect()
}

/// `MaxPendingBytes` → `max-pending-bytes`, by the README's rule.
fn kebab(key: &str) -> String {
    let mut out = String::new();
    for (i, c) in key.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[test]
fn help_lists_every_key_of_the_readme_with_its_flag_variable_and_default() {
    let out = run(plex().arg("--help"));
    assert_eq!(out.code, 0);
    let help: Vec<&str> = out.stdout.lines().collect();
    let keys = readme_keys();
    assert!(keys.len() >= 30, "{keys:?}");
    for (key, default) in &keys {
        let flag = format!("  --{} ", kebab(key));
        let env = format!("PLEX_{}", kebab(key).replace('-', "_").to_uppercase());
        let at = help
            .iter()
            .position(|l| l.starts_with(&flag) || l.trim() == flag.trim());
        let at = at.unwrap_or_else(|| panic!("{flag} not in --help"));
        let notes = help[at + 1];
        assert!(
            notes.contains(&format!("{key}, env {env}")),
            "{key}: {notes}"
        );
        if let Some((_, shown)) = notes.split_once(", default ") {
            assert_eq!(default, &format!("`{shown}`"), "README default of {key}");
        }
    }
    let flags = help.iter().filter(|l| l.starts_with("  --")).count();
    let secrets = help.iter().filter(|l| l.contains("-file PATH")).count();
    assert_eq!(
        flags,
        keys.len() + secrets + 2,
        "--config and --check-config"
    );
    let out = run(plex().arg("-V"));
    assert_eq!(
        out.stdout,
        format!("plex-server {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// A child process killed when the test ends, also on panic.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut child = plex()
        .args(["--port", "0", "--http-port", "0"])
        .args(["--bind", "127.0.0.1", "--http-bind", "127.0.0.1"])
        .env("PLEX_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plex-server");
    let stderr = child.stderr.take().unwrap();
    let _child = Killed(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("listening for the HTTP API on"))
    {
        let line = lines.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("no 'listening for the HTTP API on' line in {seen:?}");
        });
        seen.push(line);
    }
    for line in &seen {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["level", "msg", "target", "ts"], "{line}");
        let ts = object["ts"].as_str().unwrap();
        // RFC 3339 in UTC, e.g. 2026-01-31T12:34:56.789Z.
        let shape: String = ts
            .chars()
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect();
        assert_eq!(shape, "0000-00-00T00:00:00.000Z", "{line}");
        assert!(
            ["error", "warn", "info"].contains(&object["level"].as_str().unwrap()),
            "{line}"
        );
    }
    let warning = seen
        .iter()
        .find(|l| l.contains("InnerPassword is the default"));
    let warning: serde_json::Value = serde_json::from_str(warning.expect("a warning")).unwrap();
    assert_eq!(warning["level"], "warn");
    assert_eq!(warning["target"], "plex_server");
}

#[test]
fn check_config_reads_the_tls_files_it_names() {
    let missing = run(plex().args(["--check-config", "--tls-port", "0"]).args([
        "--tls-cert",
        "/nonexistent/c.pem",
        "--tls-key",
        "/nonexistent/k.pem",
    ]));
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing.stderr.contains("TlsCert /nonexistent/c.pem"),
        "{missing:?}"
    );
    let not_pem = scratch("not-a-cert.pem", "hello\n");
    let garbage = run(plex()
        .args(["--check-config", "--tls-cert"])
        .arg(&not_pem)
        .arg("--tls-key")
        .arg(&not_pem));
    assert_eq!(garbage.code, 2, "{garbage:?}");
    assert!(garbage.stderr.contains("TlsCert"), "{garbage:?}");
}
