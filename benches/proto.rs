//! The protobuf codec against the JSON one, and the hand-written protobuf codec against
//! prost's derived one, on a typical push as the server sends it: `seq` a Unix time in
//! milliseconds, a short `uri`, and a 100-byte body, plain text or a JSON document (which the
//! JSON form escapes). Frame sizes are printed once at the start.
//!
//! This decided for the hand-written protobuf codec: prost's derived message owns its strings,
//! so it copies the server's strings before encoding and allocates (or, merged into a kept
//! message, copies) on decoding, where the hand-written one borrows.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use plex::protocol::frame::{self, HEADER_LEN};
use plex::protocol::{ByteOrder, Codec};
use prost::Message as _;

#[path = "../tests/common/prost.rs"]
mod prost_message;
use prost_message::ProstMessage;

const SEQ: i64 = 1_764_000_000_000;
const URI: &str = "/chat/message";

/// Two 100-byte bodies: plain text, and a JSON document.
fn bodies() -> [(&'static str, String); 2] {
    let plain = format!("{:020}{}", 1_764_000_000_000_000_000u64, "x".repeat(80));
    let mut json = r#"{"from":"u1234","room":"r42","text":""#.to_owned();
    json.push_str(&"y".repeat(100 - json.len() - 2));
    json.push_str(r#""}"#);
    [("plain", plain), ("json", json)]
}

fn frame_of(codec: Codec, body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    codec.write_frame(&mut out, ByteOrder::Big, SEQ, URI, body);
    out
}

fn proto(c: &mut Criterion) {
    let mut group = c.benchmark_group("proto");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    for (name, body) in bodies() {
        let json = frame_of(Codec::Json, &body);
        let protobuf = frame_of(Codec::Protobuf, &body);
        eprintln!(
            "push frame with a 100-byte {name} body: json {} bytes, protobuf {} bytes",
            json.len(),
            protobuf.len()
        );

        for codec in [Codec::Json, Codec::Protobuf] {
            group.bench_function(format!("encode {codec:?} ({name} body)"), |b| {
                b.iter(|| {
                    out.clear();
                    codec.write_frame(&mut out, ByteOrder::Big, black_box(SEQ), URI, &body);
                    black_box(&out);
                })
            });
        }
        // prost encodes a struct of owned strings: the server's borrowed strings are copied
        // into one kept across pushes (no allocation once it has grown).
        let mut reused = ProstMessage::default();
        group.bench_function(format!("encode prost ({name} body)"), |b| {
            b.iter(|| {
                reused.seq = black_box(SEQ);
                reused.uri.clear();
                reused.uri.push_str(URI);
                reused.body.clear();
                reused.body.push_str(&body);
                out.clear();
                frame::encode_with(&mut out, ByteOrder::Big, |out| {
                    reused.encode(out).expect("a Vec grows")
                });
                black_box(&out);
            })
        });

        for (codec, frame) in [(Codec::Json, &json), (Codec::Protobuf, &protobuf)] {
            let payload = &frame[HEADER_LEN..];
            group.bench_function(format!("decode {codec:?} ({name} body)"), |b| {
                b.iter(|| {
                    let m = codec.decode(black_box(payload)).unwrap();
                    black_box(m.seq as usize + m.uri.len() + m.body.len())
                })
            });
        }
        let payload = &protobuf[HEADER_LEN..];
        group.bench_function(format!("decode prost ({name} body)"), |b| {
            b.iter(|| {
                let m = ProstMessage::decode(black_box(payload)).unwrap();
                black_box(m.seq as usize + m.uri.len() + m.body.len())
            })
        });
        // The best prost can do: merged into a message kept across frames, reusing its strings.
        let mut reused = ProstMessage::default();
        group.bench_function(format!("decode prost, reused ({name} body)"), |b| {
            b.iter(|| {
                reused.clear();
                reused.merge(black_box(payload)).unwrap();
                black_box(reused.seq as usize + reused.uri.len() + reused.body.len())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = proto
}
criterion_main!(benches);
