//! Where settings come from. Each key of [`Config`] has one row in [`KEYS`]: its name in a
//! JSON file, from which its environment variable (`MaxPendingBytes` → `PLEX_MAX_PENDING_BYTES`)
//! and flag (`--max-pending-bytes`) follow, its help line, and which field it sets. A secret
//! `Foo` can also be read from a file named by `FooFile`, `PLEX_FOO_FILE` or `--foo-file`.
//! Sources are layered: flags over the environment over the file over the defaults.

use std::fmt::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{AuthMode, Config, ConfigError, LogFormat};
use crate::protocol::CodecChoice;

/// One configuration key.
struct Key {
    /// The name in a JSON file (PascalCase, as in the original's `Config`).
    name: &'static str,
    /// An older flag that also sets it.
    alias: Option<&'static str>,
    /// The value's placeholder in `--help`; empty for a switch (a flag without a value).
    value: &'static str,
    help: &'static str,
    /// Masked in the summary, never echoed in errors, and readable from a file.
    secret: bool,
    /// A secret as the summary shows it.
    mask: fn(&str) -> String,
    /// Reads the field from JSON (text from a flag or variable arrives as a JSON string);
    /// the error says what a valid value looks like.
    set: fn(&mut Config, &Value) -> Result<(), String>,
    /// The field as a flag would take it; `None` when unset.
    get: fn(&Config) -> Option<String>,
}

/// A row of [`KEYS`]: `key!(field, "Name", "PLACEHOLDER", "help", alias = .., secret = ..)`.
macro_rules! key {
    ($field:ident, $name:literal, $value:literal, $help:literal
     $(, $opt:ident = $v:expr)* $(,)?) => {
        Key {
            $($opt: $v,)*
            ..Key {
                name: $name,
                alias: None,
                value: $value,
                help: $help,
                secret: false,
                mask: |_| "***".to_owned(),
                set: |config, value| {
                    config.$field = Setting::parse(value)?;
                    Ok(())
                },
                get: |config| config.$field.show(),
            }
        }
    };
}

/// Every key, in the order of `--help` and the summary. A new key is a field of [`Config`]
/// (with its default) and a row here.
#[rustfmt::skip]
static KEYS: &[Key] = &[
    key!(port, "Port", "PORT", "TCP port for clients and inner connections (0: any free port)"),
    key!(http_port, "HttpPort", "PORT", "HTTP API port (0: any free port)"),
    key!(bind_address, "BindAddress", "ADDR", "address of the client listener",
        alias = Some("--bind")),
    key!(http_bind_address, "HttpBindAddress", "ADDR", "address of the HTTP listener",
        alias = Some("--http-bind")),
    key!(outer_servers, "OuterServers", "A,B",
        "ip:port list handed out by /plex/v1/host (empty: 127.0.0.1:Port)"),
    key!(inner_password, "InnerPassword", "SECRET",
        "password of inner connections and bearer token of the HTTP API", secret = true),
    key!(show_trace, "ShowTrace", "", "log every frame (same as RUST_LOG=trace)",
        alias = Some("--trace")),
    key!(max_connection, "MaxConnection", "N", "cap on live client connections, 0 = none"),
    key!(auth_timeout, "AuthTimeout", "SECS", "close connections not authenticated by then"),
    key!(heartbeat, "Heartbeat", "SECS",
        "heartbeat interval for clients (kept for the original's config)"),
    key!(heartbeat_timeout, "HeartbeatTimeout", "SECS", "close connections silent for this long"),
    key!(little_endian, "LittleEndian", "", "little-endian frame headers (default big-endian)"),
    key!(max_frame_size, "MaxFrameSize", "BYTES", "largest frame from a client"),
    key!(max_inner_frame_size, "MaxInnerFrameSize", "BYTES",
        "largest frame from an inner connection"),
    key!(max_auth_failures, "MaxAuthFailures", "N",
        "failed authentications before a connection is closed"),
    key!(max_bad_frames, "MaxBadFrames", "N", "malformed frames before a connection is closed"),
    key!(max_pending_bytes, "MaxPendingBytes", "BYTES",
        "close a client at once when it leaves this much output unread"),
    key!(soft_pending_bytes, "SoftPendingBytes", "BYTES",
        "unread output a client may keep for SoftPendingSeconds (0: off)"),
    key!(soft_pending_seconds, "SoftPendingSeconds", "SECS",
        "how long a client may stay above SoftPendingBytes"),
    key!(socket_send_buffer, "SocketSendBuffer", "BYTES",
        "SO_SNDBUF of client sockets (0: the kernel's autotuning)"),
    key!(backlog, "Backlog", "N", "listen backlog of both listeners"),
    key!(shutdown_timeout, "ShutdownTimeout", "SECS",
        "how long a shutdown waits for pending output"),
    key!(max_http_body, "MaxHttpBody", "BYTES", "largest HTTP request body (413 past it)"),
    key!(http_idle_timeout, "HttpIdleTimeout", "SECS",
        "close HTTP connections idle this long without a request"),
    key!(max_http_connections, "MaxHttpConnections", "N", "cap on live HTTP connections"),
    key!(metrics_token, "MetricsToken", "SECRET",
        "bearer token that /metrics accepts besides InnerPassword", secret = true),
    key!(auth_mode, "AuthMode", "MODE", "how client tokens are checked: uid, jwt or webhook",
        alias = Some("--auth")),
    key!(auth_url, "AuthUrl", "URL", "http://host:port/path of AuthMode webhook (implies it)"),
    key!(auth_webhook_connections, "AuthWebhookConnections", "N",
        "connections to the auth webhook at most"),
    key!(auth_webhook_timeout, "AuthWebhookTimeout", "SECS",
        "reject when the auth webhook takes longer"),
    key!(jwt_secret, "JwtSecret", "SECRET", "HS256 secret of AuthMode jwt (implies it)",
        secret = true),
    key!(log_format, "LogFormat", "FORMAT", "log lines as text, or json (one object per line)"),
    key!(tls_cert, "TlsCert", "PATH", "PEM certificate chain for the TLS and wss listeners"),
    key!(tls_key, "TlsKey", "PATH", "PEM private key of TlsCert"),
    key!(tls_port, "TlsPort", "PORT", "TLS listener for clients (unset: none)"),
    key!(ws_port, "WsPort", "PORT",
        "WebSocket listener at /plex/v1/ws, wss with TlsCert (unset: none)"),
    key!(handshake_timeout, "HandshakeTimeout", "SECS",
        "close connections whose TLS handshake or WebSocket upgrade takes longer"),
    key!(codec, "Codec", "CODEC",
        "auto (each connection's first message decides), json or protobuf"),
    key!(redis, "Redis", "URL",
        "cluster mode: redis://[user:password@]host:port/db shared by every node",
        secret = true, mask = mask_credentials),
    key!(advertise, "Advertise", "HOST:PORT",
        "client address this node announces (default: the first of OuterServers)"),
    key!(node_ttl, "NodeTtl", "SECS",
        "a node that stops refreshing leaves the cluster after this long"),
    key!(inner_push_local, "InnerPushLocal", "",
        "inner TCP pushes stay on this node (back-ends that send to every node)"),
    key!(history_size, "HistorySize", "N",
        "pushes kept per uid for clients that reconnect (0: no history)"),
    key!(history_ttl, "HistoryTtl", "SECS", "how long a kept push is kept at most"),
    key!(history_memory, "HistoryMemory", "BYTES",
        "bytes all kept pushes may take on a single node; the oldest go first"),
];

/// `MaxPendingBytes` → `--max-pending-bytes`.
fn flag_name(name: &str) -> String {
    format!("--{}", words(name, '-'))
}

/// `MaxPendingBytes` → `PLEX_MAX_PENDING_BYTES`.
fn env_var(name: &str) -> String {
    format!("PLEX_{}", words(name, '_').to_ascii_uppercase())
}

/// The words of a PascalCase name, lowercase, joined by `separator`.
fn words(name: &str, separator: char) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            out.push(separator);
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The key that `name` spells in one source (`spell` gives a key's own spelling there), and
/// whether it names the key's secret file (that spelling and `file_suffix`).
fn find(name: &str, spell: fn(&str) -> String, file_suffix: &str) -> Option<(usize, bool)> {
    KEYS.iter().enumerate().find_map(|(i, key)| {
        let own = spell(key.name);
        if name == own {
            Some((i, false))
        } else {
            (key.secret && name.strip_prefix(own.as_str()) == Some(file_suffix))
                .then_some((i, true))
        }
    })
}

/// The key a command-line flag sets, and whether the flag names the key's secret file.
fn flag_key(flag: &str) -> Option<(usize, bool)> {
    let alias = KEYS.iter().position(|key| key.alias == Some(flag));
    alias
        .map(|i| (i, false))
        .or_else(|| find(flag, flag_name, "-file"))
}

/// Whether a flag takes a value (`--port 9578`) or is a switch (`--trace`); `None` for a flag
/// that sets no key.
pub fn flag_takes_value(flag: &str) -> Option<bool> {
    flag_key(flag).map(|(i, file)| file || !KEYS[i].value.is_empty())
}

/// The `--help` lines of every key: flag and placeholder, help, then the key's name in a
/// file, its environment variable, alias and default.
pub fn options_help() -> String {
    let defaults = Config::default();
    let mut out = String::new();
    let mut line = |column: &str, text: &str| {
        let _ = writeln!(out, "  {column:<30} {text}");
    };
    for key in KEYS {
        let flag = flag_name(key.name);
        let env = env_var(key.name);
        line(format!("{flag} {}", key.value).trim_end(), key.help);
        let mut notes = format!("{}, env {env}", key.name);
        if let Some(alias) = key.alias {
            let _ = write!(notes, ", also {alias}");
        }
        if let Some(default) = (key.get)(&defaults).filter(|d| !d.is_empty()) {
            let _ = write!(notes, ", default {default}");
        }
        line("", &notes);
        if key.secret {
            let help = format!("read {} from a file (trailing newline trimmed)", key.name);
            line(&format!("{flag}-file PATH"), &help);
            line("", &format!("{}File, env {env}_FILE", key.name));
        }
    }
    out
}

/// `Port=9578 HttpPort=9579 ...`, secrets masked.
pub(super) fn summary(config: &Config) -> String {
    let fields: Vec<String> = KEYS
        .iter()
        .map(|key| {
            let value = match (key.get)(config) {
                None => "none".to_owned(),
                Some(value) if key.secret => (key.mask)(&value),
                Some(value) => value,
            };
            format!("{}={value}", key.name)
        })
        .collect();
    fields.join(" ")
}

/// The names of the keys whose values differ between `a` and `b`, in `--help` order.
pub(super) fn changed(a: &Config, b: &Config) -> Vec<&'static str> {
    (KEYS.iter())
        .filter(|key| (key.get)(a) != (key.get)(b))
        .map(|key| key.name)
        .collect()
}

/// A URL with its user and password masked: where it points stays visible. Everything up to
/// the last `@` goes, so a password with a stray `/` or `@` in it is masked too.
fn mask_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        (Some(_), None) => url.to_owned(),
        (None, _) => "***".to_owned(),
    }
}

/// A value as one source gave it.
#[derive(Clone)]
struct Given {
    raw: Raw,
    /// Where it came from, for errors: `--port`, `PLEX_PORT`, the file's path.
    source: String,
}

#[derive(Clone)]
enum Raw {
    Value(Value),
    /// The path of a file holding a secret.
    File(PathBuf),
}

/// What one source sets, by key index.
struct Layer(Vec<Option<Given>>);

impl Layer {
    fn new() -> Layer {
        Layer(vec![None; KEYS.len()])
    }

    /// Within a source a later value wins, but a secret and its file together are a mistake.
    fn set(&mut self, key: usize, raw: Raw, source: String) -> Result<(), ConfigError> {
        if let Some(old) = &self.0[key]
            && matches!(old.raw, Raw::File(_)) != matches!(raw, Raw::File(_))
        {
            return Err(ConfigError(format!(
                "{} and {source} both set {}; give one of them",
                old.source, KEYS[key].name
            )));
        }
        self.0[key] = Some(Given { raw, source });
        Ok(())
    }
}

pub(super) fn load(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    flags: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut layers = Vec::with_capacity(3);
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        layers.push(file_layer(&text, &path.display().to_string())?);
    }
    layers.push(env_layer(env)?);
    layers.push(flag_layer(flags)?);
    build(layers)
}

pub(super) fn from_json(text: &str) -> Result<Config, ConfigError> {
    build(vec![file_layer(text, "the config file")?])
}

fn file_layer(text: &str, source: &str) -> Result<Layer, ConfigError> {
    let object = match serde_json::from_str(text) {
        Ok(Value::Object(object)) => object,
        Ok(_) => {
            return Err(ConfigError(format!(
                "{source}: a config file is a JSON object, like {{\"Port\": 9578}}"
            )));
        }
        Err(e) => return Err(ConfigError(format!("{source}: {e}"))),
    };
    let mut layer = Layer::new();
    for (name, value) in object {
        let Some((i, file)) = find(&name, str::to_owned, "File") else {
            return Err(ConfigError(format!("{source}: unknown key {name:?}")));
        };
        let raw = match (file, value) {
            (false, value) => Raw::Value(value),
            (true, Value::String(path)) => Raw::File(path.into()),
            (true, _) => {
                return Err(ConfigError(format!(
                    "{name} must be a path (from {source})"
                )));
            }
        };
        layer.set(i, raw, source.to_owned())?;
    }
    Ok(layer)
}

/// An empty variable counts as unset, as `PLEX_FOO=` in an env file or compose file means.
fn env_layer(env: &dyn Fn(&str) -> Option<String>) -> Result<Layer, ConfigError> {
    let mut layer = Layer::new();
    let get = |var: &str| env(var).filter(|v| !v.is_empty());
    for (i, key) in KEYS.iter().enumerate() {
        let var = env_var(key.name);
        if let Some(value) = get(&var) {
            layer.set(i, Raw::Value(Value::String(value)), var.clone())?;
        }
        let var = format!("{var}_FILE");
        if let Some(path) = get(&var).filter(|_| key.secret) {
            layer.set(i, Raw::File(path.into()), var)?;
        }
    }
    Ok(layer)
}

fn flag_layer(flags: &[(String, String)]) -> Result<Layer, ConfigError> {
    let mut layer = Layer::new();
    for (flag, value) in flags {
        let (i, file) = flag_key(flag)
            .ok_or_else(|| ConfigError(format!("unknown option {flag} (see --help)")))?;
        let raw = if file {
            Raw::File(value.into())
        } else {
            Raw::Value(Value::String(value.clone()))
        };
        layer.set(i, raw, flag.clone())?;
    }
    Ok(layer)
}

/// Defaults, then each layer over the one before.
fn build(layers: Vec<Layer>) -> Result<Config, ConfigError> {
    let mut given: Vec<Option<Given>> = vec![None; KEYS.len()];
    for layer in layers {
        for (slot, value) in given.iter_mut().zip(layer.0) {
            if value.is_some() {
                *slot = value;
            }
        }
    }
    let mut config = Config::default();
    for (key, given) in KEYS.iter().zip(&given) {
        if let Some(given) = given {
            key.apply(&mut config, given)?;
        }
    }
    let is_given = |name: &str| {
        let i = KEYS.iter().position(|key| key.name == name);
        i.is_some_and(|i| given[i].is_some())
    };
    // Unless a source names the mode, the mode's own setting implies it.
    if !is_given("AuthMode") {
        if config.jwt_secret.is_some() {
            config.auth_mode = AuthMode::Jwt;
        } else if config.auth_url.is_some() {
            config.auth_mode = AuthMode::Webhook;
        }
    }
    // A soft limit set above the hard one is a mistake. The default one above a lowered
    // MaxPendingBytes is not: it never fires, as the hard limit closes first.
    if is_given("SoftPendingBytes") && config.soft_pending_bytes > config.max_pending_bytes {
        return Err(ConfigError(format!(
            "SoftPendingBytes ({}) must be at most MaxPendingBytes ({})",
            config.soft_pending_bytes, config.max_pending_bytes
        )));
    }
    Ok(config)
}

impl Key {
    fn apply(&self, config: &mut Config, given: &Given) -> Result<(), ConfigError> {
        let read;
        let value = match &given.raw {
            Raw::Value(value) => value,
            Raw::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!(
                        "cannot read {} from {}: {e} (from {})",
                        self.name,
                        path.display(),
                        given.source
                    ))
                })?;
                read = Value::String(text.trim_end_matches(['\r', '\n']).to_owned());
                &read
            }
        };
        (self.set)(config, value).map_err(|expected| {
            let got = match value {
                _ if self.secret => String::new(),
                Value::String(text) => format!(", got {text}"),
                other => format!(", got {other}"),
            };
            ConfigError(format!(
                "{} must be {expected}{got} (from {})",
                self.name, given.source
            ))
        })
    }
}

/// A type a key can hold.
trait Setting: Sized {
    /// Reads a value; the error says what was expected ("a number from 0 to 65535").
    fn parse(value: &Value) -> Result<Self, String>;
    /// The value as a flag would take it; `None` when unset.
    fn show(&self) -> Option<String>;
}

/// Numbers may be JSON numbers or text, as the Go config's string ports (`"Port": "9578"`).
macro_rules! number_setting {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn parse(value: &Value) -> Result<Self, String> {
                let n = match value {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                };
                n.and_then(|n| <$t>::try_from(n).ok())
                    .ok_or_else(|| format!("a number from 0 to {}", <$t>::MAX))
            }

            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}

number_setting!(u16, u32, u64, usize);

impl Setting for bool {
    fn parse(value: &Value) -> Result<Self, String> {
        match value {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if matches!(s.trim(), "true" | "1") => Ok(true),
            Value::String(s) if matches!(s.trim(), "false" | "0") => Ok(false),
            _ => Err("true or false".into()),
        }
    }

    fn show(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Setting for String {
    fn parse(value: &Value) -> Result<Self, String> {
        value.as_str().map(str::to_owned).ok_or("a string".into())
    }

    fn show(&self) -> Option<String> {
        Some(self.clone())
    }
}

/// Unset by `null`; an empty string is refused, so that an empty secret file is noticed.
impl Setting for Option<String> {
    fn parse(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) if !s.is_empty() => Ok(Some(s.clone())),
            _ => Err("a non-empty string".into()),
        }
    }

    fn show(&self) -> Option<String> {
        self.clone()
    }
}

/// A port, unset by `null`.
impl Setting for Option<u16> {
    fn parse(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            value => u16::parse(value).map(Some),
        }
    }

    fn show(&self) -> Option<String> {
        self.map(|port| port.to_string())
    }
}

/// A JSON array of strings, or one string of comma-separated items.
impl Setting for Vec<String> {
    fn parse(value: &Value) -> Result<Self, String> {
        let expected = || "a list of strings (a JSON array, or comma-separated)".to_owned();
        let items: Vec<&str> = match value {
            Value::String(s) => s.split(',').collect(),
            Value::Array(items) => items
                .iter()
                .map(Value::as_str)
                .collect::<Option<_>>()
                .ok_or_else(expected)?,
            _ => return Err(expected()),
        };
        let items = items.into_iter().map(str::trim).filter(|s| !s.is_empty());
        Ok(items.map(str::to_owned).collect())
    }

    fn show(&self) -> Option<String> {
        Some(self.join(","))
    }
}

impl Setting for IpAddr {
    fn parse(value: &Value) -> Result<Self, String> {
        value
            .as_str()
            .and_then(|s| s.trim().parse().ok())
            .ok_or("an IP address".into())
    }

    fn show(&self) -> Option<String> {
        Some(self.to_string())
    }
}

/// One of the names in `NAMES`.
macro_rules! choice_setting {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn parse(value: &Value) -> Result<Self, String> {
                let name = value.as_str().map(str::trim);
                match <$t>::NAMES.iter().find(|(n, _)| Some(*n) == name) {
                    Some((_, choice)) => Ok(*choice),
                    None => {
                        let names: Vec<&str> = <$t>::NAMES.iter().map(|(n, _)| *n).collect();
                        Err(format!("one of {}", names.join(", ")))
                    }
                }
            }

            fn show(&self) -> Option<String> {
                <$t>::NAMES.iter().find(|(_, c)| c == self).map(|(n, _)| (*n).to_owned())
            }
        }
    )*};
}

choice_setting!(AuthMode, LogFormat, CodecChoice);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn flags(args: &[(&str, &str)]) -> Vec<(String, String)> {
        args.iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn names_follow_from_the_key() {
        assert_eq!(flag_name("MaxPendingBytes"), "--max-pending-bytes");
        assert_eq!(env_var("MaxPendingBytes"), "PLEX_MAX_PENDING_BYTES");
        assert_eq!(flag_key("--bind"), flag_key("--bind-address"));
        assert_eq!(flag_takes_value("--trace"), Some(false));
        assert_eq!(flag_takes_value("--jwt-secret-file"), Some(true));
        assert_eq!(flag_takes_value("--port-file"), None);
        let mut seen = std::collections::HashSet::new();
        for key in KEYS {
            assert!(seen.insert(flag_name(key.name)), "{}", key.name);
            assert!(key.alias.is_none_or(|a| seen.insert(a.to_owned())));
        }
    }

    #[test]
    fn every_key_reads_back_what_it_shows() {
        let mut config = Config {
            outer_servers: vec!["1.2.3.4:1".into(), "5.6.7.8:2".into()],
            metrics_token: Some("t".into()),
            jwt_secret: Some("j".into()),
            auth_url: Some("http://a/".into()),
            auth_mode: AuthMode::Webhook,
            log_format: LogFormat::Json,
            ..Config::default()
        };
        let before = config.clone();
        for key in KEYS {
            if let Some(shown) = (key.get)(&config) {
                (key.set)(&mut config, &Value::String(shown)).unwrap();
            }
        }
        assert_eq!(config, before);
    }

    #[test]
    fn flags_win_over_env_over_file_over_defaults() {
        let text = r#"{"Port": 1001, "HttpPort": 2002, "AuthTimeout": 5}"#;
        let file = file_layer(text, "plex.json").unwrap();
        let vars = env(&[("PLEX_PORT", "1111"), ("PLEX_HTTP_PORT", "2222")]);
        let env = env_layer(&vars).unwrap();
        let flags = flag_layer(&flags(&[("--port", "1234")])).unwrap();
        let c = build(vec![file, env, flags]).unwrap();
        assert_eq!(
            (c.port, c.http_port, c.auth_timeout, c.heartbeat_timeout),
            (1234, 2222, 5, 120)
        );
    }

    #[test]
    fn a_bad_value_reads_the_same_from_every_source() {
        let from_file = from_json(r#"{"Port": 70000}"#).unwrap_err().0;
        let from_flag = flag_layer(&flags(&[("--port", "70000")]))
            .and_then(|l| build(vec![l]))
            .unwrap_err()
            .0;
        let from_env = env_layer(&env(&[("PLEX_PORT", "70000")]))
            .and_then(|l| build(vec![l]))
            .unwrap_err()
            .0;
        let message = "Port must be a number from 0 to 65535, got 70000";
        assert_eq!(from_file, format!("{message} (from the config file)"));
        assert_eq!(from_flag, format!("{message} (from --port)"));
        assert_eq!(from_env, format!("{message} (from PLEX_PORT)"));
    }

    #[test]
    fn a_redis_password_is_masked_but_the_host_shown() {
        for (url, shown) in [
            (
                "redis://:hunter2@10.0.0.5:6379/0",
                "redis://***@10.0.0.5:6379/0",
            ),
            (
                "redis://plex:hun/ter@2@redis:6379",
                "redis://***@redis:6379",
            ),
            ("redis://redis:6379/1", "redis://redis:6379/1"),
            ("hunter2", "***"),
        ] {
            assert_eq!(mask_credentials(url), shown);
        }
        let c = from_json(r#"{"Redis": "redis://:hunter2@10.0.0.5:6379/0"}"#).unwrap();
        assert!(summary(&c).contains("Redis=redis://***@10.0.0.5:6379/0"));
    }

    #[test]
    fn secrets_are_never_echoed() {
        let e = from_json(r#"{"InnerPassword": 12345}"#).unwrap_err().0;
        assert_eq!(e, "InnerPassword must be a string (from the config file)");
        let c = from_json(r#"{"MetricsToken": "m3tr1cs", "AuthMode": "jwt", "JwtSecret": "j"}"#)
            .unwrap();
        let summary = summary(&c);
        assert!(
            summary.contains("MetricsToken=*** AuthMode=jwt"),
            "{summary}"
        );
        assert!(!summary.contains("m3tr1cs") && !summary.contains("plex-inner"));
        assert!(
            summary.contains("JwtSecret=*** LogFormat=text"),
            "{summary}"
        );
    }

    #[test]
    fn a_secret_and_its_file_in_one_source_conflict() {
        let e = from_json(r#"{"JwtSecret": "a", "JwtSecretFile": "/b"}"#).unwrap_err();
        assert!(e.0.contains("JwtSecret"), "{e}");
        let both = flags(&[("--jwt-secret", "a"), ("--jwt-secret-file", "/b")]);
        assert!(flag_layer(&both).is_err());
        // Across sources the higher one wins, whichever form it takes.
        let file = file_layer(r#"{"JwtSecretFile": "/nonexistent"}"#, "f").unwrap();
        let flag = flag_layer(&flags(&[("--jwt-secret", "a")])).unwrap();
        assert_eq!(build(vec![file, flag]).unwrap().jwt_secret.unwrap(), "a");
    }

    #[test]
    fn lists_enums_and_switches_read_from_text() {
        let vars = env(&[
            ("PLEX_OUTER_SERVERS", "1.2.3.4:9578, 5.6.7.8:9578"),
            ("PLEX_LITTLE_ENDIAN", "true"),
            ("PLEX_LOG_FORMAT", "json"),
            ("PLEX_METRICS_TOKEN", ""),
        ]);
        let c = build(vec![env_layer(&vars).unwrap()]).unwrap();
        assert_eq!(c.outer_servers, ["1.2.3.4:9578", "5.6.7.8:9578"]);
        assert!(c.little_endian);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.metrics_token, None);
        let e = from_json(r#"{"LogFormat": "xml"}"#).unwrap_err().0;
        assert!(
            e.contains("LogFormat must be one of text, json, got xml"),
            "{e}"
        );
        assert!(from_json(r#"{"OuterServers": [1]}"#).is_err());
    }

    #[test]
    fn a_soft_limit_set_above_the_hard_one_is_an_error() {
        let e = from_json(r#"{"SoftPendingBytes": 2048, "MaxPendingBytes": 1024}"#).unwrap_err();
        assert_eq!(
            e.0,
            "SoftPendingBytes (2048) must be at most MaxPendingBytes (1024)"
        );
        // Lowering only the hard limit keeps working: the default soft limit never fires.
        let c = from_json(r#"{"MaxPendingBytes": 65536}"#).unwrap();
        assert_eq!((c.soft_pending_bytes, c.max_pending_bytes), (262144, 65536));
        c.validate().unwrap();
    }

    #[test]
    fn the_mode_follows_from_its_setting_unless_named() {
        let c = from_json(r#"{"JwtSecret": "s"}"#).unwrap();
        assert_eq!(c.auth_mode, AuthMode::Jwt);
        let c = from_json(r#"{"AuthUrl": "http://a/"}"#).unwrap();
        assert_eq!(c.auth_mode, AuthMode::Webhook);
        let c = from_json(r#"{"JwtSecret": "s", "AuthMode": "uid"}"#).unwrap();
        assert_eq!(c.auth_mode, AuthMode::Uid);
    }
}
