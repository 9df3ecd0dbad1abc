//! One batch of requests in two pipelined round trips. The first carries this node's presence
//! and load changes, the live node set and one `HGETALL` per distinct uid the batch names. The
//! second carries one `PUBLISH` per destination node with all of the batch's pushes and kicks
//! for it, in request order, then the broadcasts and the removal of dead nodes' fields. Replies
//! count only connections on nodes whose subscription took the message.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::Range;

use redis::{Connection, FromRedisValue, Pipeline, RedisResult, Value};

use super::schema::Schema;
use super::wire;
use super::{Event, Reply, Request};

/// Runs `work` (routes, broadcasts, kicks, onlines) after the writes already in `p`, and
/// returns the replies. `now_ms` is Redis's clock.
pub(super) fn run(
    conn: &mut Connection,
    schema: &Schema,
    now_ms: i64,
    mut p: Pipeline,
    work: &[Request],
) -> RedisResult<Vec<Event>> {
    let mut lookup = Lookup::default();
    for request in work {
        match request {
            Request::Route { uids, .. } | Request::Online { uids, .. } => {
                uids.iter().for_each(|uid| lookup.add(uid));
            }
            Request::Kick { uid, .. } => lookup.add(uid),
            _ => {}
        }
    }
    if !lookup.uids.is_empty() {
        schema.live_nodes(&mut p, now_ms);
        for uid in &lookup.uids {
            schema.holders(&mut p, uid);
        }
    }
    let replies: Vec<Value> = query(&p, conn)?;
    if !lookup.uids.is_empty() {
        lookup.read(&schema.node_id, &replies);
    }

    let out = Outgoing::compose(work, &lookup, &schema.node_id);
    let mut p = redis::pipe();
    let mut destinations = Vec::new();
    for (node, batch) in out.batches.iter().enumerate() {
        if !batch.is_empty() {
            p.cmd("PUBLISH")
                .arg(schema.channel(&lookup.nodes[node]))
                .arg(batch.bytes());
            destinations.push(node);
        }
    }
    for message in &out.broadcasts {
        p.cmd("PUBLISH")
            .arg(&schema.broadcast_channel)
            .arg(message)
            .ignore();
    }
    for (uid, dead) in &lookup.dead {
        schema.forget_dead(&mut p, uid, dead, now_ms);
    }
    let subscribers: Vec<i64> = query(&p, conn)?;
    let mut reached = vec![false; lookup.nodes.len()];
    for (&node, &subscribers) in destinations.iter().zip(&subscribers) {
        reached[node] = subscribers > 0;
    }
    let mut remote = vec![0; work.len()];
    for &(i, node, connections) in &out.tally {
        if reached[node] {
            remote[i] += connections;
        }
    }
    Ok(replies_to(work, &lookup, &remote))
}

/// What a batch sends: a message per live node (most empty), and the broadcasts.
struct Outgoing {
    batches: Vec<wire::Batch>,
    broadcasts: Vec<Vec<u8>>,
    /// (request, destination node, connections there), for the replies.
    tally: Vec<(usize, usize, u64)>,
}

impl Outgoing {
    fn compose(work: &[Request], lookup: &Lookup, own_id: &str) -> Self {
        let mut out = Outgoing {
            batches: vec![wire::Batch::default(); lookup.nodes.len()],
            broadcasts: Vec::new(),
            tally: Vec::new(),
        };
        let mut holders = Vec::new();
        for (i, request) in work.iter().enumerate() {
            match request {
                Request::Route {
                    uids, uri, body, ..
                } => {
                    // (node, uid, connections) per holder, grouped by node: one entry per node.
                    holders.clear();
                    for uid in uids {
                        let held = lookup.holders(uid).iter();
                        holders.extend(held.map(|&(node, c)| (node, uid.as_str(), c)));
                    }
                    holders.sort_unstable();
                    holders.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
                    for group in holders.chunk_by(|a, b| a.0 == b.0) {
                        let node = group[0].0;
                        let uids = group.iter().map(|&(_, uid, _)| uid);
                        out.batches[node].push(uids, uri, body);
                        out.tally.push((i, node, group.iter().map(|h| h.2).sum()));
                    }
                }
                Request::Kick { uid, .. } => {
                    for &(node, connections) in lookup.holders(uid) {
                        out.batches[node].kick(uid);
                        out.tally.push((i, node, connections));
                    }
                }
                Request::Broadcast { uri, body } => {
                    out.broadcasts.push(wire::broadcast(own_id, uri, body));
                }
                _ => {}
            }
        }
        out
    }
}

/// A reply per request that asked for one; `remote` holds the connections each reached.
fn replies_to(work: &[Request], lookup: &Lookup, remote: &[u64]) -> Vec<Event> {
    let online = |uid: &String| lookup.holders(uid).iter().map(|&(_, c)| c).sum();
    let events = work.iter().zip(remote).filter_map(|(request, &remote)| {
        let (id, reply) = match request {
            Request::Route { id, .. } => (id, Reply::Routed { remote }),
            Request::Kick { id, .. } => (id, Reply::Kicked { remote }),
            Request::Online { id, uids } => (id, Reply::Online(uids.iter().map(online).collect())),
            _ => return None,
        };
        Some(Event::Reply {
            id: *id,
            result: Ok(reply),
        })
    });
    events.collect()
}

/// The pipeline's replies; none without a round trip when it is empty.
fn query<T: FromRedisValue + Default>(p: &Pipeline, conn: &mut Connection) -> RedisResult<T> {
    if p.is_empty() {
        Ok(T::default())
    } else {
        p.query(conn)
    }
}

/// Who holds the batch's uids: live nodes other than this one, with their connections.
#[derive(Default)]
struct Lookup<'a> {
    /// The distinct uids, in first-seen order, and where each is in `uids`.
    uids: Vec<&'a str>,
    index: HashMap<&'a str, usize>,
    /// Live nodes other than this one; holders refer to them by position.
    nodes: Vec<String>,
    /// Per uid, its range of `holders`.
    spans: Vec<Range<usize>>,
    holders: Vec<(usize, u64)>,
    /// Per uid, the dead nodes its hash still names.
    dead: Vec<(&'a str, Vec<String>)>,
}

impl<'a> Lookup<'a> {
    fn add(&mut self, uid: &'a str) {
        if let Entry::Vacant(e) = self.index.entry(uid) {
            e.insert(self.uids.len());
            self.uids.push(uid);
        }
    }

    /// Reads the replies to `live_nodes` then one `holders` per uid.
    fn read(&mut self, own_id: &str, replies: &[Value]) {
        let [live, hashes @ ..] = replies else {
            unreachable!("the node set was asked for");
        };
        debug_assert_eq!(hashes.len(), self.uids.len());
        for id in bulk_strings(live) {
            if id != own_id.as_bytes() {
                self.nodes.push(String::from_utf8_lossy(id).into_owned());
            }
        }
        for (&uid, hash) in self.uids.iter().zip(hashes) {
            let start = self.holders.len();
            let mut dead = Vec::new();
            for_each_field(hash, |node, connections| {
                if node == own_id.as_bytes() {
                    return;
                }
                match self.nodes.iter().position(|n| n.as_bytes() == node) {
                    Some(n) => {
                        let connections = std::str::from_utf8(connections)
                            .ok()
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(0);
                        if connections > 0 {
                            self.holders.push((n, connections));
                        }
                    }
                    None => dead.push(String::from_utf8_lossy(node).into_owned()),
                }
            });
            self.spans.push(start..self.holders.len());
            if !dead.is_empty() {
                self.dead.push((uid, dead));
            }
        }
    }

    fn holders(&self, uid: &str) -> &[(usize, u64)] {
        match self.index.get(uid) {
            Some(&i) => &self.holders[self.spans[i].clone()],
            None => &[],
        }
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn bulk_strings(v: &Value) -> impl Iterator<Item = &[u8]> {
    let items = match v {
        Value::Array(items) | Value::Set(items) => &items[..],
        _ => &[],
    };
    items.iter().filter_map(bytes)
}

/// Calls `f` with each field and value of a hash reply (an array of pairs in RESP2, a map in
/// RESP3).
fn for_each_field(v: &Value, mut f: impl FnMut(&[u8], &[u8])) {
    let mut pair = |k: &Value, v: &Value| {
        if let (Some(k), Some(v)) = (bytes(k), bytes(v)) {
            f(k, v);
        }
    };
    match v {
        Value::Array(items) => items.chunks_exact(2).for_each(|kv| pair(&kv[0], &kv[1])),
        Value::Map(kvs) => kvs.iter().for_each(|(k, v)| pair(k, v)),
        _ => {}
    }
}
