//! Clients of a Plex server, built on one blocking framed [`Connection`]:
//! [`PlexClient`] pushes for business back-ends over inner connections (PROTOCOL.md §3), and
//! [`UserClient`] is the user side (authenticate, heartbeat, receive pushes, reconnect), for
//! tools, tests and desktop programs. Both reconnect with capped, jittered exponential backoff.
//!
//! ```no_run
//! use std::time::Duration;
//! use plex::client::{Event, PlexClient, PlexClientConfig, UserClient, UserConfig};
//!
//! let user = UserClient::connect(UserConfig::new("127.0.0.1:9578", "7"))?;
//! let pusher = PlexClient::new(PlexClientConfig::default())?;
//! pusher.wait_connected(Duration::from_secs(5))?;
//! pusher.send("7", "/chat", "hello")?;
//! if let Event::Push(message) = user.recv_timeout(Duration::from_secs(5))? {
//!     println!("{} {}", message.uri, message.body);
//! }
//! pusher.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backoff;
mod connection;
mod host;
mod push;
mod user;

pub use crate::protocol::Codec;
pub(crate) use backoff::Backoff;
pub use connection::{CONNECT_TIMEOUT, Connection, FrameWriter, Resumed};
pub use host::{HOST_PATH, lookup_host};
pub use push::{
    CLOSE_TIMEOUT, PlexClient, PlexClientConfig, PushError, ServerState, ServerStatus, Unflushed,
};
pub use user::{ConnectError, Disconnect, Event, Reconnect, ServerAddr, UserClient, UserConfig};
