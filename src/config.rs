//! Server configuration: the PascalCase keys and defaults of the original Go `Config`
//! (README.md, Configuration), plus our own limits in the same style (PROTOCOL.md §4), and
//! the checks of the settings against each other. Where values come from (flags, `PLEX_*`
//! environment variables, a JSON file) is [`keys`]: one row per key there gives its flag,
//! variable and help.

mod keys;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::protocol::CodecChoice;

pub use keys::{flag_takes_value, options_help};

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// TCP listener for clients and inner connections (0: any free port).
    pub port: u16,
    /// HTTP listener (0: any free port).
    pub http_port: u16,
    /// Address the TCP listener binds.
    pub bind_address: IpAddr,
    /// Address the HTTP listener binds.
    pub http_bind_address: IpAddr,
    /// Public `ip:port` list handed out by `/plex/v1/host`; empty means `127.0.0.1:<Port>`.
    pub outer_servers: Vec<String>,
    /// Password of inner connections and bearer token of the HTTP API. A secret.
    pub inner_password: String,
    /// Verbose (trace) logging.
    pub show_trace: bool,
    /// Cap on live TCP connections, 0 = none.
    pub max_connection: usize,
    /// Seconds an unauthenticated connection may live.
    pub auth_timeout: u64,
    /// Heartbeat interval, in seconds, that clients are expected to use. Accepted for
    /// compatibility with the original's config; the server itself only enforces
    /// `HeartbeatTimeout`.
    pub heartbeat: u64,
    /// Seconds without a frame after which a connection is closed.
    pub heartbeat_timeout: u64,
    /// Byte order of the length header.
    pub little_endian: bool,
    /// Largest payload a user (or not yet authenticated) connection may send.
    pub max_frame_size: u32,
    /// Largest payload an inner connection may send.
    pub max_inner_frame_size: u32,
    /// Failed authentications after which a connection is closed.
    pub max_auth_failures: u32,
    /// Malformed frames after which a connection is closed.
    pub max_bad_frames: u32,
    /// Output a connection may leave unread before it is closed at once as a slow consumer
    /// (the hard limit of Redis's `client-output-buffer-limit`).
    pub max_pending_bytes: usize,
    /// Unread output a connection may hold for at most `SoftPendingSeconds`: a client that
    /// stays above it longer is closed as a slow consumer (the soft limit of Redis's
    /// `client-output-buffer-limit`). 0 turns the soft limit off, and so does a value at or
    /// above `MaxPendingBytes`, which closes first (a config that sets both that way is
    /// refused as a mistake).
    pub soft_pending_bytes: usize,
    /// Seconds a connection may stay above `SoftPendingBytes`.
    pub soft_pending_seconds: u64,
    /// `SO_SNDBUF` of accepted client sockets, in bytes, so that a client that never reads
    /// cannot park megabytes in kernel memory; 0 leaves the kernel's autotuning.
    pub socket_send_buffer: usize,
    /// Listen backlog of both listeners.
    pub backlog: u32,
    /// Seconds a shutdown waits for pending output to drain before closing anyway.
    pub shutdown_timeout: u64,
    /// Largest HTTP request body; a larger `Content-Length` is answered 413.
    pub max_http_body: usize,
    /// Seconds an HTTP connection may stay open without completing a request.
    pub http_idle_timeout: u64,
    /// Cap on live HTTP connections, separate from `MaxConnection`.
    pub max_http_connections: usize,
    /// A bearer token that `/metrics` accepts besides `InnerPassword`, so that a scraper
    /// need not hold the push password. A secret.
    pub metrics_token: Option<String>,
    /// How client tokens are checked when the embedding code sets no auth function.
    pub auth_mode: AuthMode,
    /// The auth webhook (`AuthMode` `webhook`): `http://host:port/path`.
    pub auth_url: Option<String>,
    /// Connections the reactor keeps open to the auth webhook at most.
    pub auth_webhook_connections: usize,
    /// Seconds an auth webhook request may take before the auth is rejected.
    pub auth_webhook_timeout: u64,
    /// HS256 secret of `AuthMode` `jwt`. A secret.
    pub jwt_secret: Option<String>,
    /// How `plex-server` writes its log lines (the library leaves logging to its host).
    pub log_format: LogFormat,
    /// PEM certificate chain for TLS (the TLS listener, and wss on the WebSocket listener).
    pub tls_cert: Option<String>,
    /// PEM private key of `TlsCert`.
    pub tls_key: Option<String>,
    /// Port of the TLS listener (the same framed protocol over TLS); unset: no TLS listener.
    pub tls_port: Option<u16>,
    /// Port of the WebSocket listener (`/plex/v1/ws`; wss when `TlsCert` is set); unset: none.
    pub ws_port: Option<u16>,
    /// Seconds a connection has to finish its TLS handshake or WebSocket upgrade.
    pub handshake_timeout: u64,
    /// The codec of client and inner connections: `auto` (each connection's first message
    /// decides), or only `json` or `protobuf`.
    pub codec: CodecChoice,
    /// Cluster mode: the Redis this node shares presence and pushes through
    /// (`redis://[user:password@]host:port/db`); unset, the node stands alone.
    pub redis: Option<String>,
    /// The client address (`ip:port`) this node announces to the cluster and hands out from
    /// `/plex/v1/host`; unset, the first of `OuterServers`.
    pub advertise: Option<String>,
    /// Seconds after which a node that stopped refreshing leaves the node list and presence.
    pub node_ttl: u64,
    /// Inner TCP pushes reach only this node's connections: for back-ends that, like the
    /// original's PlexClient, already send every push to every node.
    pub inner_push_local: bool,
    /// Pushes kept per uid for clients that reconnect (0: no history).
    pub history_size: usize,
    /// Seconds a kept push is kept at most.
    pub history_ttl: u64,
    /// Bytes all kept pushes may take on a single node (in memory); the oldest go first.
    pub history_memory: usize,
}

/// How client tokens are checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// The token itself is the uid (the original's demo behaviour): trusts clients.
    #[default]
    Uid,
    /// The token is a JWT signed with `JwtSecret` (HS256); `sub` is the uid.
    Jwt,
    /// The reactor asks the business service at `AuthUrl`.
    Webhook,
}

impl AuthMode {
    /// The names a config uses, as written in a file or on the command line.
    pub const NAMES: [(&'static str, AuthMode); 3] = [
        ("uid", AuthMode::Uid),
        ("jwt", AuthMode::Jwt),
        ("webhook", AuthMode::Webhook),
    ];
}

/// The shape of `plex-server`'s log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// env_logger's human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `ts` (RFC 3339, UTC), `level`, `target`, `msg`.
    Json,
}

impl LogFormat {
    /// The names a config uses.
    pub const NAMES: [(&'static str, LogFormat); 2] =
        [("text", LogFormat::Text), ("json", LogFormat::Json)];
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 9578,
            http_port: 9579,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            http_bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            outer_servers: Vec::new(),
            inner_password: DEFAULT_INNER_PASSWORD.to_owned(),
            show_trace: false,
            max_connection: 0,
            auth_timeout: 30,
            heartbeat: 60,
            heartbeat_timeout: 120,
            little_endian: false,
            max_frame_size: 64 * 1024,
            max_inner_frame_size: 1024 * 1024,
            max_auth_failures: 3,
            max_bad_frames: 10,
            max_pending_bytes: 1024 * 1024,
            soft_pending_bytes: 256 * 1024,
            soft_pending_seconds: 10,
            socket_send_buffer: 64 * 1024,
            backlog: 1024,
            shutdown_timeout: 5,
            max_http_body: 1024 * 1024,
            http_idle_timeout: 30,
            max_http_connections: 1024,
            metrics_token: None,
            auth_mode: AuthMode::Uid,
            auth_url: None,
            auth_webhook_connections: 8,
            auth_webhook_timeout: 5,
            jwt_secret: None,
            log_format: LogFormat::Text,
            tls_cert: None,
            tls_key: None,
            tls_port: None,
            ws_port: None,
            handshake_timeout: 10,
            codec: CodecChoice::Auto,
            redis: None,
            advertise: None,
            node_ttl: 15,
            inner_push_local: false,
            history_size: 0,
            history_ttl: 300,
            history_memory: 64 * 1024 * 1024,
        }
    }
}

/// The original's default inner password; fine on a laptop, never on a network.
pub const DEFAULT_INNER_PASSWORD: &str = "plex-inner";

/// A configuration that cannot be used, with the reason.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The config of a process: defaults, overridden by the JSON `file`, then by the
    /// environment (`env` looks a variable up, e.g. `|name| std::env::var(name).ok()`), then
    /// by the command-line `flags` (`("--port", "9000")`, switches with `"true"`); validated.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let config = keys::load(file, &env, flags)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a JSON config file (not validated).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        keys::load(Some(path), &|_| None, &[])
    }

    /// Reads the text of a JSON config file (not validated).
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        keys::from_json(text)
    }

    /// Checks the settings against each other; every error names the key to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        let positive = [
            ("AuthTimeout", self.auth_timeout),
            ("Heartbeat", self.heartbeat),
            ("HeartbeatTimeout", self.heartbeat_timeout),
            ("MaxFrameSize", self.max_frame_size.into()),
            ("MaxInnerFrameSize", self.max_inner_frame_size.into()),
            ("MaxAuthFailures", self.max_auth_failures.into()),
            ("MaxBadFrames", self.max_bad_frames.into()),
            ("MaxPendingBytes", self.max_pending_bytes as u64),
            ("SoftPendingSeconds", self.soft_pending_seconds),
            ("Backlog", self.backlog.into()),
            ("HttpIdleTimeout", self.http_idle_timeout),
            ("MaxHttpConnections", self.max_http_connections as u64),
            (
                "AuthWebhookConnections",
                self.auth_webhook_connections as u64,
            ),
            ("AuthWebhookTimeout", self.auth_webhook_timeout),
            ("HandshakeTimeout", self.handshake_timeout),
            ("NodeTtl", self.node_ttl),
            ("HistoryTtl", self.history_ttl),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return fail(format!("{name} must be greater than 0"));
        }
        // Timeouts are kept as 32-bit ticks of 100 ms; a year is plenty.
        let year = 365 * 24 * 3600;
        for (name, secs) in [
            ("AuthTimeout", self.auth_timeout),
            ("HeartbeatTimeout", self.heartbeat_timeout),
            ("SoftPendingSeconds", self.soft_pending_seconds),
            ("ShutdownTimeout", self.shutdown_timeout),
            ("HttpIdleTimeout", self.http_idle_timeout),
            ("AuthWebhookTimeout", self.auth_webhook_timeout),
            ("HandshakeTimeout", self.handshake_timeout),
        ] {
            if secs > year {
                return fail(format!("{name} must be at most {year} seconds"));
            }
        }
        // A connection counts its bad frames in 16 bits.
        if self.max_bad_frames > u32::from(u16::MAX) {
            return fail(format!("MaxBadFrames must be at most {}", u16::MAX));
        }
        // setsockopt takes a C int.
        if self.socket_send_buffer > i32::MAX as usize {
            return fail(format!("SocketSendBuffer must be at most {}", i32::MAX));
        }
        // Output buffers index their written part with 32 bits.
        if self.max_pending_bytes > 1 << 30 {
            return fail("MaxPendingBytes must be at most 1 GiB".into());
        }
        if let Some(bad) = self.advertise.as_deref().filter(|a| !is_host_port(a)) {
            return fail(format!("Advertise {bad:?} is not host:port"));
        }
        if self.redis.is_none() && (self.advertise.is_some() || self.inner_push_local) {
            return fail("Advertise and InnerPushLocal are for cluster mode: set Redis".into());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return fail("TlsCert needs a TlsKey".into()),
            (None, Some(_)) => return fail("TlsKey needs a TlsCert".into()),
            (None, None) if self.tls_port.is_some() => {
                return fail("TlsPort needs TlsCert and TlsKey".into());
            }
            _ => {}
        }
        for (name, secret) in [
            ("InnerPassword", Some(&self.inner_password)),
            ("MetricsToken", self.metrics_token.as_ref()),
        ] {
            if secret.is_some_and(|s| s.is_empty()) {
                return fail(format!("{name} must not be empty"));
            }
        }
        if let Some(bad) = self.outer_servers.iter().find(|s| !is_host_port(s)) {
            return fail(format!("OuterServers entry {bad:?} is not host:port"));
        }
        self.validate_auth()
    }

    /// Each auth mode needs its own setting, and a setting of another mode is a mistake
    /// rather than something to ignore.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let mode = self.auth_mode;
        let name = AuthMode::NAMES.iter().find(|(_, m)| *m == mode).unwrap().0;
        let fail = |message: String| Err(ConfigError(message));
        if self.jwt_secret.is_some() && mode != AuthMode::Jwt {
            return fail(format!(
                "JwtSecret is only used by AuthMode jwt, but AuthMode is {name}"
            ));
        }
        if self.auth_url.is_some() && mode != AuthMode::Webhook {
            return fail(format!(
                "AuthUrl is only used by AuthMode webhook, but AuthMode is {name}"
            ));
        }
        match mode {
            AuthMode::Uid => Ok(()),
            AuthMode::Jwt if self.jwt_secret.as_deref().is_none_or(str::is_empty) => {
                fail("AuthMode jwt needs a JwtSecret".into())
            }
            AuthMode::Jwt => Ok(()),
            AuthMode::Webhook => {
                let Some(url) = self.auth_url.as_deref() else {
                    return fail("AuthMode webhook needs an AuthUrl".into());
                };
                WebhookUrl::parse(url).map_err(|e| ConfigError(format!("AuthUrl: {e}")))?;
                Ok(())
            }
        }
    }

    /// The settings in one line (`Port=9578 HttpPort=9579 ...`), secrets masked: for the
    /// startup log and `--check-config`.
    pub fn summary(&self) -> String {
        keys::summary(self)
    }

    /// The names of the keys set differently in `other`, in `--help` order.
    pub fn changed_keys(&self, other: &Config) -> Vec<&'static str> {
        keys::changed(self, other)
    }
}

/// An `http://host[:port]/path` URL, the only kind the auth webhook speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    /// `host:port`, as resolved and as sent in the `Host` header.
    pub authority: String,
    pub path: String,
}

impl WebhookUrl {
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            "only http:// URLs are supported (keep the auth service on a private network)"
                .to_owned()
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?} has no usable host"));
        }
        let authority = if is_host_port(authority) {
            authority.to_owned()
        } else if authority.contains(':') && !authority.ends_with(']') {
            return Err(format!("{url:?} has a bad port"));
        } else {
            format!("{authority}:80")
        };
        Ok(WebhookUrl {
            authority,
            path: path.to_owned(),
        })
    }
}

fn is_host_port(s: &str) -> bool {
    matches!(s.rsplit_once(':'), Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_originals() {
        let c = Config::default();
        assert_eq!((c.port, c.http_port), (9578, 9579));
        assert_eq!(c.inner_password, "plex-inner");
        assert_eq!(
            (c.auth_timeout, c.heartbeat, c.heartbeat_timeout),
            (30, 60, 120)
        );
        assert!(!c.little_endian);
        assert_eq!(Config::from_json("{}").unwrap(), c);
        c.validate().unwrap();
    }

    #[test]
    fn reads_go_style_file_with_string_ports() {
        let c = Config::from_json(
            r#"{"Port": "7000", "HttpPort": 7001, "OuterServers": ["1.2.3.4:7000"],
                "InnerPassword": "s3cret", "ShowTrace": true, "MaxConnection": 10,
                "AuthTimeout": 5, "Heartbeat": 10, "HeartbeatTimeout": 20, "LittleEndian": true}"#,
        )
        .unwrap();
        assert_eq!((c.port, c.http_port, c.max_connection), (7000, 7001, 10));
        assert_eq!(c.outer_servers, ["1.2.3.4:7000"]);
        assert!(c.little_endian && c.show_trace);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let e = Config::from_json(r#"{"Prot": 1}"#).unwrap_err();
        assert!(e.0.contains("Prot"), "{e}");
        assert!(
            Config::from_json(r#"{"Port": "http"}"#)
                .unwrap_err()
                .0
                .contains("http")
        );
        assert!(Config::from_json(r#"{"Port": 70000}"#).is_err());
        let zero = Config {
            heartbeat_timeout: 0,
            ..Config::default()
        };
        assert!(zero.validate().unwrap_err().0.contains("HeartbeatTimeout"));
        let bad_host = Config {
            outer_servers: vec!["nohost".into()],
            ..Config::default()
        };
        assert!(bad_host.validate().is_err());
    }

    #[test]
    fn new_limits_have_defaults_and_bounds() {
        let c = Config::default();
        assert_eq!(
            (
                c.soft_pending_bytes,
                c.soft_pending_seconds,
                c.socket_send_buffer
            ),
            (262144, 10, 65536)
        );
        let no_seconds = Config {
            soft_pending_seconds: 0,
            ..Config::default()
        };
        assert!(
            no_seconds
                .validate()
                .unwrap_err()
                .0
                .contains("SoftPendingSeconds")
        );
        let huge_buffer = Config {
            socket_send_buffer: usize::MAX,
            ..Config::default()
        };
        assert!(
            huge_buffer
                .validate()
                .unwrap_err()
                .0
                .contains("SocketSendBuffer")
        );
        let empty_token = Config {
            metrics_token: Some(String::new()),
            ..Config::default()
        };
        assert!(
            empty_token
                .validate()
                .unwrap_err()
                .0
                .contains("MetricsToken")
        );
    }

    #[test]
    fn a_setting_of_another_auth_mode_is_an_error() {
        let c = Config::from_json(r#"{"AuthMode": "uid", "JwtSecret": "s"}"#).unwrap();
        assert_eq!(
            c.validate().unwrap_err().0,
            "JwtSecret is only used by AuthMode jwt, but AuthMode is uid"
        );
        let c = Config::from_json(r#"{"JwtSecret": "s", "AuthUrl": "http://a/"}"#).unwrap();
        assert_eq!(
            c.validate().unwrap_err().0,
            "AuthUrl is only used by AuthMode webhook, but AuthMode is jwt"
        );
    }

    #[test]
    fn load_layers_flags_over_env_over_file() {
        let env = |name: &str| (name == "PLEX_HTTP_PORT").then(|| "2222".to_owned());
        let flags = [("--port".to_owned(), "1234".to_owned())];
        let c = Config::load(None, env, &flags).unwrap();
        assert_eq!((c.port, c.http_port), (1234, 2222));
        let bad = [("--soft-pending-seconds".to_owned(), "0".to_owned())];
        assert!(
            Config::load(None, |_| None, &bad).is_err(),
            "load validates"
        );
    }

    #[test]
    fn summary_masks_the_secrets() {
        let c = Config {
            inner_password: "hunter2".into(),
            jwt_secret: Some("jwt-hunter3".into()),
            metrics_token: Some("hunter4".into()),
            ..Config::default()
        };
        assert!(!c.summary().contains("hunter"), "{}", c.summary());
        assert!(c.summary().starts_with("Port=9578 HttpPort=9579 "));
    }

    #[test]
    fn auth_modes_need_their_settings() {
        let c = Config::from_json(r#"{"AuthMode": "jwt"}"#).unwrap();
        assert!(c.validate().unwrap_err().0.contains("JwtSecret"));
        let c = Config::from_json(r#"{"AuthMode": "webhook", "AuthUrl": "https://x/a"}"#).unwrap();
        assert!(c.validate().unwrap_err().0.contains("http://"));
        let c =
            Config::from_json(r#"{"AuthMode": "webhook", "AuthUrl": "http://auth:8080/check"}"#)
                .unwrap();
        c.validate().unwrap();
        assert!(Config::from_json(r#"{"AuthMode": "ldap"}"#).is_err());
    }

    #[test]
    fn webhook_urls() {
        let u = WebhookUrl::parse("http://10.0.0.1:8080/auth?x=1").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("10.0.0.1:8080", "/auth?x=1")
        );
        let u = WebhookUrl::parse("http://auth.internal").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("auth.internal:80", "/")
        );
        for bad in ["ftp://x", "http://", "http://h:port/", "http://u@h/"] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
