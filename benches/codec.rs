//! The codec per frame: encoding a push as the server sends it, and the two reads the server
//! does on its hot paths (a user's frame; an inner connection's push, whose body is unescaped
//! into a reused buffer and parsed a second time as the push request).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use plex::protocol::message::RawMessage;
use plex::protocol::message::encode_message;
use plex::protocol::{ByteOrder, Decoder, MessageRef, PushRequest, uri};

/// A 100-byte body, the size the targets are set for.
fn body() -> String {
    format!("{:020}{}", 1_764_000_000_000_000_000u64, "x".repeat(80))
}

fn frame(uri: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(&mut out, ByteOrder::Big, 0, uri, body);
    out
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let body = body();

    let mut out = Vec::with_capacity(256);
    group.bench_function("encode push frame (100-byte body)", |b| {
        b.iter(|| {
            out.clear();
            encode_message(
                &mut out,
                ByteOrder::Big,
                black_box(1_764_000_000_000),
                "/bench",
                black_box(&body),
            );
            black_box(&out);
        })
    });

    let decoder = Decoder::new(ByteOrder::Big, 1 << 20);
    let decode = |bytes: &[u8]| {
        let (payload, _) = decoder.decode(bytes).unwrap().unwrap();
        MessageRef::decode(payload).unwrap().seq
    };

    let heartbeat = frame(uri::HEARTBEAT, "");
    group.bench_function("decode heartbeat frame", |b| {
        b.iter(|| decode(black_box(&heartbeat)))
    });

    let push = {
        let mut out = Vec::new();
        encode_message(&mut out, ByteOrder::Big, 1_764_000_000_000, "/bench", &body);
        out
    };
    group.bench_function("decode push frame (100-byte body)", |b| {
        b.iter(|| decode(black_box(&push)))
    });

    let request = PushRequest {
        uid: "u1234".into(),
        uri: "/bench".into(),
        body: body.as_str().into(),
    };
    let inner = frame(uri::SEND_MSG, &request.to_json());
    let mut unescaped = String::new();
    group.bench_function("decode inner /logic/send/msg (frame + push request)", |b| {
        b.iter(|| {
            // As the reactor does it: the body unescaped into a buffer kept across frames.
            let (payload, _) = decoder.decode(black_box(&inner)).unwrap().unwrap();
            let message = RawMessage::decode(payload).unwrap();
            let request = PushRequest::decode(message.body.unescape_into(&mut unescaped)).unwrap();
            black_box(request.uid.len() + request.body.len())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);
