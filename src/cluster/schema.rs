//! The Redis schema in one place: key and channel names, and the commands that write and read
//! them (the table is in the module docs of [`cluster`](super)).

use redis::{Cmd, Pipeline};

use super::ClusterConfig;

/// Removes the fields of dead nodes from a uid's hash, checking liveness at that instant:
/// a node that re-registers just before keeps its fields, one that does just after rewrites
/// them. KEYS: the node set, the uid's hash. ARGV: now (ms, Redis clock), then node ids.
const FORGET_DEAD: &str = "\
local now = tonumber(ARGV[1])
for i = 2, #ARGV do
  local expiry = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not expiry or tonumber(expiry) <= now then redis.call('HDEL', KEYS[2], ARGV[i]) end
end
return 0";

/// A uid's hash lives this many node ttls unless some node rewrites it.
const USER_TTLS: u32 = 60;
/// Each node rewrites every uid it holds once per this many node ttls.
pub(super) const SWEEP_TTLS: u32 = 20;

pub(super) struct Schema {
    prefix: String,
    pub node_id: String,
    pub nodes: String,
    node: String,
    pub own_channel: String,
    pub broadcast_channel: String,
    node_ttl_ms: i64,
    user_ttl_ms: i64,
}

impl Schema {
    pub fn new(config: &ClusterConfig) -> Self {
        let p = &config.prefix;
        let id = &config.node_id;
        Schema {
            prefix: p.clone(),
            node_id: id.clone(),
            nodes: format!("{p}:nodes"),
            node: format!("{p}:node:{id}"),
            own_channel: format!("{p}:n:{id}"),
            broadcast_channel: format!("{p}:broadcast"),
            node_ttl_ms: config.node_ttl.as_millis() as i64,
            user_ttl_ms: (config.node_ttl * USER_TTLS).as_millis() as i64,
        }
    }

    /// The uid's presence hash: node id → connections there.
    pub fn user_key(&self, uid: &str) -> String {
        format!("{}:u:{uid}", self.prefix)
    }

    /// The uid's history record: epoch `e`, last offset `o`, acked offset `a`.
    pub fn history_meta(&self, uid: &str) -> String {
        format!("{}:hm:{uid}", self.prefix)
    }

    /// The uid's retained pushes: entry id = offset, fields `t` (ms) and `p` (the tail).
    pub fn history_stream(&self, uid: &str) -> String {
        format!("{}:hs:{uid}", self.prefix)
    }

    pub fn channel(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.channel_prefix())
    }

    /// What a node's id follows in its channel's name.
    pub fn channel_prefix(&self) -> String {
        format!("{}:n:", self.prefix)
    }

    /// Writes this node's record with its expiry and trims nodes that expired. The reply is
    /// the node's score before the write (nil when it was not in the set).
    pub fn announce(&self, p: &mut Pipeline, record_json: &str, now_ms: i64) {
        p.cmd("ZSCORE").arg(&self.nodes).arg(&self.node_id);
        self.record(p, record_json);
        p.cmd("ZADD")
            .arg(&self.nodes)
            .arg(now_ms + self.node_ttl_ms)
            .arg(&self.node_id)
            .ignore();
        p.cmd("ZREMRANGEBYSCORE")
            .arg(&self.nodes)
            .arg("-inf")
            .arg(now_ms)
            .ignore();
    }

    /// Rewrites the record alone (the load changed): its ttl restarts, its score stays.
    pub fn record(&self, p: &mut Pipeline, record_json: &str) {
        p.cmd("SET")
            .arg(&self.node)
            .arg(record_json)
            .arg("PX")
            .arg(self.node_ttl_ms)
            .ignore();
    }

    /// `uid` has `connections` here (0 = none). Ignored reply.
    pub fn presence(&self, p: &mut Pipeline, uid: &str, connections: u32) {
        let key = self.user_key(uid);
        if connections == 0 {
            p.cmd("HDEL").arg(key).arg(&self.node_id).ignore();
        } else {
            p.cmd("HSET")
                .arg(&key)
                .arg(&self.node_id)
                .arg(connections)
                .ignore();
            p.cmd("PEXPIRE").arg(key).arg(self.user_ttl_ms).ignore();
        }
    }

    /// The ids of live nodes, as one reply.
    pub fn live_nodes(&self, p: &mut Pipeline, now_ms: i64) {
        p.cmd("ZRANGEBYSCORE")
            .arg(&self.nodes)
            .arg(format!("({now_ms}"))
            .arg("+inf");
    }

    /// The node id → connections hash of `uid`, as one reply.
    pub fn holders(&self, p: &mut Pipeline, uid: &str) {
        p.cmd("HGETALL").arg(self.user_key(uid));
    }

    /// The records of these nodes (nil for those gone meanwhile).
    pub fn records(&self, ids: &[String]) -> Cmd {
        let mut cmd = redis::cmd("MGET");
        for id in ids {
            cmd.arg(format!("{}:node:{id}", self.prefix));
        }
        cmd
    }

    /// Removes the fields `nodes` hold in `uid`'s hash if they are still dead. Ignored reply.
    pub fn forget_dead(&self, p: &mut Pipeline, uid: &str, nodes: &[String], now_ms: i64) {
        p.cmd("EVAL")
            .arg(FORGET_DEAD)
            .arg(2)
            .arg(&self.nodes)
            .arg(self.user_key(uid))
            .arg(now_ms)
            .arg(nodes)
            .ignore();
    }

    /// Removes this node from the node set and its record: its presence fields count for
    /// nothing from then on and are removed by readers.
    pub fn leave(&self, p: &mut Pipeline) {
        p.cmd("ZREM").arg(&self.nodes).arg(&self.node_id).ignore();
        p.cmd("DEL").arg(&self.node).ignore();
    }
}
