//! Shared by the property tests: case counts and the ways a stream is cut into reads.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// `cases` unless `PROPTEST_CASES` asks for another count.
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Cuts `bytes` at the positions `cuts` pick (sorted; repeats give empty reads).
pub fn chunk<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for end in at {
        chunks.push(&bytes[start..end]);
        start = end;
    }
    chunks.push(&bytes[start..]);
    chunks
}

/// Random cut points, or one read per byte (the worst case for a remainder buffer).
pub fn cuts() -> impl Strategy<Value = Option<Vec<Index>>> {
    prop_oneof![
        4 => vec(any::<Index>(), 0..24).prop_map(Some),
        1 => Just(None),
    ]
}

pub fn reads<'a>(bytes: &'a [u8], cuts: &Option<Vec<Index>>) -> Vec<&'a [u8]> {
    match cuts {
        Some(cuts) => chunk(bytes, cuts),
        None => bytes.chunks(1).collect(),
    }
}

/// Valid payloads with a few bytes flipped, inserted or cut off: near misses reach deeper
/// into the parser than random bytes do.
pub fn mutated(base: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        base,
        vec((any::<Index>(), any::<u8>(), 0u8..3), 0..4),
        any::<Index>(),
    )
        .prop_map(|(mut bytes, edits, cut)| {
            for (at, byte, kind) in edits {
                let i = at.index(bytes.len() + 1);
                match kind {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => {}
                }
            }
            let keep = cut.index(bytes.len() + 1).max(bytes.len() * 3 / 4);
            bytes.truncate(keep);
            bytes
        })
}
