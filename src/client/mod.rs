//! Clients of a Plex server.

mod connection;

pub use connection::Connection;
