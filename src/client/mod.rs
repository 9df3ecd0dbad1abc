//! Clients of a Plex server, built on one blocking framed [`Connection`]:
//! [`PlexClient`] pushes for business back-ends over inner connections (PROTOCOL.md §3), and
//! [`UserClient`] is the user side (authenticate, heartbeat, receive pushes, reconnect), for
//! tools, tests and desktop programs. Both reconnect with capped, jittered exponential backoff.

mod backoff;
mod connection;
mod host;
mod push;
mod user;

pub use connection::{CONNECT_TIMEOUT, Connection, FrameWriter};
pub use host::{HOST_PATH, lookup_host};
pub use push::{
    CLOSE_TIMEOUT, PlexClient, PlexClientConfig, PushError, ServerState, ServerStatus, Unflushed,
};
pub use user::{ConnectError, Disconnect, Event, Reconnect, ServerAddr, UserClient, UserConfig};
