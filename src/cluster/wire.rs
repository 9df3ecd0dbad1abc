//! The bytes on the cluster's channels. A node channel carries either a probe (`?`) or a batch
//! (`b` then entries: `p` push = uid count, uids, uri, body; `k` kick = uid; `r` retained push
//! = uid count, then uid, epoch, offset per uid, then the push's *tail*: seq, uri, body); the
//! broadcast channel carries `c`, sender, uri, body. Counts, numbers and string lengths are
//! LEB128 varints, so a push costs its bytes plus a few: no escaping, no field names.
//!
//! `r` entries are written by the history script in Redis (`history.rs`), which splices the
//! positions it assigns between strings encoded here; a uid's history keeps each push as its
//! tail, so a replay decodes with the same code.

use super::{Event, RemotePush};

/// The whole of a probe message.
pub(super) const PROBE: &[u8] = b"?";
const BATCH: u8 = b'b';
const PUSH: u8 = b'p';
const KICK: u8 = b'k';
const RETAINED: u8 = b'r';
const BROADCAST: u8 = b'c';

/// The pushes and kicks of one batch for one node, encoded as they are added.
#[derive(Clone, Default)]
pub(super) struct Batch(Vec<u8>);

impl Batch {
    pub fn push<'a>(
        &mut self,
        uids: impl ExactSizeIterator<Item = &'a str>,
        uri: &str,
        body: &str,
    ) {
        self.entry(PUSH);
        put_len(&mut self.0, uids.len());
        for uid in uids {
            put_str(&mut self.0, uid);
        }
        put_str(&mut self.0, uri);
        put_str(&mut self.0, body);
    }

    pub fn kick(&mut self, uid: &str) {
        self.entry(KICK);
        put_str(&mut self.0, uid);
    }

    fn entry(&mut self, tag: u8) {
        if self.0.is_empty() {
            self.0.push(BATCH);
        }
        self.0.push(tag);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A retained push's tail: seq, uri, body.
pub(super) fn tail(seq: u64, uri: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 * 5 + uri.len() + body.len());
    put_u64(&mut out, seq);
    put_str(&mut out, uri);
    put_str(&mut out, body);
    out
}

/// A string as the entries carry it: its length, then its bytes.
pub(super) fn string(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + s.len());
    put_str(&mut out, s);
    out
}

/// The seq, uri and body of a tail.
pub(super) fn decode_tail(bytes: &[u8]) -> Result<(u64, String, String), Malformed> {
    let mut r = Reader(bytes);
    let decoded = r.tail()?;
    if r.0.is_empty() {
        Ok(decoded)
    } else {
        Err(Malformed)
    }
}

pub(super) fn broadcast(sender: &str, uri: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 3 * 5 + sender.len() + uri.len() + body.len());
    out.push(BROADCAST);
    put_str(&mut out, sender);
    put_str(&mut out, uri);
    put_str(&mut out, body);
    out
}

/// What arrived on a node channel.
#[derive(Debug, PartialEq)]
pub(super) enum NodeMessage {
    Probe,
    /// A batch's events, in the order published: consecutive pushes share one `Deliver`.
    Events(Vec<Event>),
}

/// The message is not one this version writes.
#[derive(Debug, PartialEq)]
pub(super) struct Malformed;

pub(super) fn decode_node(bytes: &[u8]) -> Result<NodeMessage, Malformed> {
    if bytes == PROBE {
        return Ok(NodeMessage::Probe);
    }
    let mut r = Reader(bytes);
    if r.byte()? != BATCH {
        return Err(Malformed);
    }
    let mut events = Vec::new();
    let mut pushes = Vec::new();
    // A batch has at least one entry.
    loop {
        match r.byte()? {
            PUSH => {
                let count = r.len()?;
                // Each uid takes at least a byte: a count past what is left is a lie.
                if count > r.0.len() {
                    return Err(Malformed);
                }
                let uids = (0..count).map(|_| r.string()).collect::<Result<_, _>>()?;
                pushes.push(RemotePush {
                    uids,
                    uri: r.string()?,
                    body: r.string()?,
                    seq: None,
                    positions: Vec::new(),
                });
            }
            RETAINED => {
                let count = r.len()?;
                // Each uid takes at least three bytes.
                if count > r.0.len() {
                    return Err(Malformed);
                }
                let mut uids = Vec::with_capacity(count);
                let mut positions = Vec::with_capacity(count);
                for _ in 0..count {
                    uids.push(r.string()?);
                    positions.push((r.string()?, r.u64()?));
                }
                let (seq, uri, body) = r.tail()?;
                pushes.push(RemotePush {
                    uids,
                    uri,
                    body,
                    seq: Some(seq),
                    positions,
                });
            }
            KICK => {
                if !pushes.is_empty() {
                    events.push(Event::Deliver(std::mem::take(&mut pushes)));
                }
                events.push(Event::Kick { uid: r.string()? });
            }
            _ => return Err(Malformed),
        }
        if r.0.is_empty() {
            break;
        }
    }
    if !pushes.is_empty() {
        events.push(Event::Deliver(pushes));
    }
    Ok(NodeMessage::Events(events))
}

/// A broadcast's sender, uri and body.
pub(super) fn decode_broadcast(bytes: &[u8]) -> Result<(String, String, String), Malformed> {
    let mut r = Reader(bytes);
    if r.byte()? != BROADCAST {
        return Err(Malformed);
    }
    let decoded = (r.string()?, r.string()?, r.string()?);
    if r.0.is_empty() {
        Ok(decoded)
    } else {
        Err(Malformed)
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    put_u64(out, n as u64);
}

fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self.0.split_first().ok_or(Malformed)?;
        self.0 = rest;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f).checked_shl(shift).ok_or(Malformed)?;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err(Malformed)
    }

    fn len(&mut self) -> Result<usize, Malformed> {
        usize::try_from(self.u64()?).map_err(|_| Malformed)
    }

    fn tail(&mut self) -> Result<(u64, String, String), Malformed> {
        Ok((self.u64()?, self.string()?, self.string()?))
    }

    fn string(&mut self) -> Result<String, Malformed> {
        let len = self.len()?;
        if len > self.0.len() {
            return Err(Malformed);
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(uids: &[&str], uri: &str, body: &str) -> RemotePush {
        RemotePush {
            uids: uids.iter().map(|u| u.to_string()).collect(),
            uri: uri.into(),
            body: body.into(),
            seq: None,
            positions: Vec::new(),
        }
    }

    /// An `r` entry as the history script writes it: a tag, then per uid its string, its
    /// epoch's and its offset, then the tail.
    fn retained(uids: &[(&str, &str, u64)], seq: u64, uri: &str, body: &str) -> Vec<u8> {
        let mut out = vec![RETAINED];
        put_len(&mut out, uids.len());
        for &(uid, epoch, offset) in uids {
            out.extend(string(uid));
            out.extend(string(epoch));
            put_u64(&mut out, offset);
        }
        out.extend(tail(seq, uri, body));
        out
    }

    #[test]
    fn a_batch_decodes_to_its_events_in_order() {
        let long = "x".repeat(300); // a length past one varint byte
        let mut batch = Batch::default();
        batch.push(["7", "8"].into_iter(), "/a", "{\"k\":\"é\"}");
        batch.push(["9"].into_iter(), "/b", &long);
        batch.kick("7");
        batch.push(std::iter::empty(), "/c", "");
        assert_eq!(
            decode_node(batch.bytes()),
            Ok(NodeMessage::Events(vec![
                Event::Deliver(vec![
                    push(&["7", "8"], "/a", "{\"k\":\"é\"}"),
                    push(&["9"], "/b", &long),
                ]),
                Event::Kick { uid: "7".into() },
                Event::Deliver(vec![push(&[], "/c", "")]),
            ]))
        );
    }

    #[test]
    fn retained_entries_decode_with_their_positions_among_plain_ones() {
        let mut plain = Batch::default();
        plain.push(["9"].into_iter(), "/p", "y");
        let mut bytes = vec![BATCH];
        bytes.extend(retained(
            &[("7", "e1", 1), ("8", "e2", 300)],
            1 << 40,
            "/r",
            "x",
        ));
        let boundaries = [bytes.len(), bytes.len() + plain.bytes().len() - 1];
        bytes.extend(&plain.bytes()[1..]);
        bytes.extend(retained(&[], 2, "/none", ""));
        let first = RemotePush {
            uids: vec!["7".into(), "8".into()],
            uri: "/r".into(),
            body: "x".into(),
            seq: Some(1 << 40),
            positions: vec![("e1".into(), 1), ("e2".into(), 300)],
        };
        let last = RemotePush {
            seq: Some(2),
            ..push(&[], "/none", "")
        };
        assert_eq!(
            decode_node(&bytes),
            Ok(NodeMessage::Events(vec![Event::Deliver(vec![
                first,
                push(&["9"], "/p", "y"),
                last,
            ])]))
        );
        for cut in (1..bytes.len()).filter(|cut| !boundaries.contains(cut)) {
            assert_eq!(decode_node(&bytes[..cut]), Err(Malformed), "cut at {cut}");
        }
        let t = tail(u64::MAX, "/u", "é");
        assert_eq!(decode_tail(&t), Ok((u64::MAX, "/u".into(), "é".into())));
        assert_eq!(decode_tail(&t[..t.len() - 1]), Err(Malformed));
        assert_eq!(decode_tail(&[0xff; 11]), Err(Malformed));
    }

    #[test]
    fn probes_and_broadcasts_decode() {
        assert_eq!(decode_node(PROBE), Ok(NodeMessage::Probe));
        let b = broadcast("node-1", "/all", "hi");
        assert_eq!(
            decode_broadcast(&b),
            Ok(("node-1".into(), "/all".into(), "hi".into()))
        );
    }

    #[test]
    fn every_truncation_and_bad_byte_is_malformed_not_a_panic() {
        let mut batch = Batch::default();
        batch.push(["7"].into_iter(), "/a", "body");
        let between = batch.bytes().len();
        batch.kick("8");
        let bytes = batch.bytes();
        for cut in (1..bytes.len()).filter(|&cut| cut != between) {
            assert_eq!(decode_node(&bytes[..cut]), Err(Malformed), "cut at {cut}");
        }
        assert_eq!(decode_node(b""), Err(Malformed));
        assert_eq!(decode_node(b"bz"), Err(Malformed));
        assert_eq!(decode_node(b"bp\xff\xff\xff\xff"), Err(Malformed));
        assert_eq!(decode_node(b"bk\x02\xff\xfe"), Err(Malformed));
        let b = broadcast("n", "/u", "b");
        assert_eq!(decode_broadcast(&b[..b.len() - 1]), Err(Malformed));
        assert_eq!(decode_broadcast(b"x"), Err(Malformed));
    }
}
