//! Offline history (PROTOCOL.md §9): the last `HistorySize` pushes of each uid, kept whether
//! the uid is online or not, so that a client that reconnects gets what it missed. Each push
//! to a uid takes the next offset (1, 2, …) under the uid's epoch; the epoch changes whenever
//! the uid's history is lost, so a client that presents an old epoch learns it missed pushes.
//!
//! On a single node the history lives in memory ([`Memory`]); in cluster mode it lives in
//! Redis, behind the cluster's broker.

mod memory;

pub use memory::Memory;

/// One retained push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retained {
    pub offset: u64,
    pub seq: i64,
    pub uri: String,
    pub body: String,
}

/// Where a client stands after presenting its last position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Every push after the client's position is still retained, under the same epoch.
    pub recovered: bool,
    /// The uid's current epoch and last offset.
    pub epoch: String,
    pub offset: u64,
    /// The retained pushes after the client's position (all retained ones when the epoch
    /// changed), oldest first.
    pub pushes: Vec<Retained>,
}

/// What `GET /plex/v1/history` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    pub epoch: String,
    pub offset: u64,
    /// The highest offset a device of the uid acknowledged.
    pub acked: u64,
    pub pushes: Vec<Retained>,
}
