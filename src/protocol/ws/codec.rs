//! Frames (RFC 6455 §5.2): cutting one out of the input with every header rule enforced as
//! soon as the header bytes are there, and writing them, unmasked from the server or masked
//! from a client.

use super::{CloseCode, ProtocolError};

/// Longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;
/// Largest payload of a control frame (close, ping, pong).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest close reason: a control payload less the 2-byte code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const MASKED: u8 = 0x80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// The side that decodes: a server requires masked frames, a client unmasked ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// One frame, its payload unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: &'a [u8],
}

/// Cuts the frame at the start of `input`, unmasking its payload in place; returns it with the
/// rest of the input, or `None` if only part of it has arrived. A data frame whose payload
/// would exceed `max_data` is refused from its header alone.
pub(super) fn cut(
    input: &mut [u8],
    role: Role,
    max_data: u64,
) -> Result<Option<(Frame<'_>, &mut [u8])>, ProtocolError> {
    let &[b0, b1, ..] = &*input else {
        return Ok(None);
    };
    if b0 & RSV != 0 {
        return Err(ProtocolError::protocol("reserved bits set"));
    }
    let Some(opcode) = Opcode::from_bits(b0 & 0x0f) else {
        return Err(ProtocolError::protocol("unknown opcode"));
    };
    let fin = b0 & FIN != 0;
    let masked = b1 & MASKED != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(ProtocolError::protocol("client frame not masked")),
        (Role::Client, true) => return Err(ProtocolError::protocol("server frame masked")),
        _ => {}
    }
    let short_len = b1 & 0x7f;
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::protocol("fragmented control frame"));
        }
        if usize::from(short_len) > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::protocol("control frame over 125 bytes"));
        }
    }
    let (len, mut at) = match short_len {
        126 => match input.get(2..4) {
            Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
            _ => return Ok(None),
        },
        127 => match input.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(bytes) => (u64::from_be_bytes(bytes), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len >> 63 != 0 {
        return Err(ProtocolError::protocol(
            "64-bit length with the top bit set",
        ));
    }
    if !opcode.is_control() && len > max_data {
        return Err(ProtocolError {
            code: CloseCode::TooBig,
            reason: "message too big",
        });
    }
    let mask = if masked {
        let Some(key) = input.get(at..at + 4) else {
            return Ok(None);
        };
        let key: [u8; 4] = key.try_into().expect("4 bytes");
        at += 4;
        Some(key)
    } else {
        None
    };
    // A length past the address space cannot have arrived yet either.
    let end = match usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_add(at))
    {
        Some(end) if end <= input.len() => end,
        _ => return Ok(None),
    };
    let (frame, rest) = input.split_at_mut(end);
    let payload = &mut frame[at..];
    if let Some(key) = mask {
        apply_mask(payload, key);
    }
    Ok(Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        rest,
    )))
}

fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

/// The header of a frame: its bytes and how many of the 14 are used.
fn header(first: u8, mask: Option<[u8; 4]>, len: usize) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut h = [0; MAX_HEADER_LEN];
    h[0] = first;
    let mask_bit = if mask.is_some() { MASKED } else { 0 };
    let mut at = match len {
        0..=125 => {
            h[1] = mask_bit | len as u8;
            2
        }
        126..=0xffff => {
            h[1] = mask_bit | 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            h[1] = mask_bit | 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    if let Some(key) = mask {
        h[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    (h, at)
}

/// Appends one final, unmasked frame (as a server sends them) to `out`: the header, then
/// whatever `write_payload` appends.
///
/// The payload is written in place after a 2-byte header and moved only when it turns out
/// longer than 125 bytes, so a push is encoded once, without an intermediate buffer, and its
/// bytes copied to every connection. Panics if a control frame's payload exceeds 125 bytes.
pub fn encode_with(out: &mut Vec<u8>, opcode: Opcode, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 2]);
    write_payload(out);
    let len = out.len() - start - 2;
    assert!(
        !opcode.is_control() || len <= MAX_CONTROL_PAYLOAD,
        "control frame payload of {len} bytes"
    );
    let (h, h_len) = header(FIN | opcode as u8, None, len);
    if h_len > 2 {
        let end = out.len();
        out.resize(end + h_len - 2, 0);
        out.copy_within(start + 2..end, start + h_len);
    }
    out[start..start + h_len].copy_from_slice(&h[..h_len]);
}

/// Appends one final, unmasked frame carrying `payload` to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    encode_with(out, opcode, |out| out.extend_from_slice(payload));
}

/// Appends an unmasked close frame with `code` and `reason`, cut to 123 bytes.
pub fn encode_close(out: &mut Vec<u8>, code: CloseCode, reason: &str) {
    encode_with(out, Opcode::Close, |out| {
        write_close_payload(out, code.code(), reason)
    });
}

/// Appends a close payload: the code, then `reason` cut to 123 bytes on a character boundary.
pub fn write_close_payload(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

/// Appends one frame masked with `mask`, as a client sends them; `fin` is false on every
/// fragment of a message but the last.
pub fn encode_client(out: &mut Vec<u8>, fin: bool, opcode: Opcode, mask: [u8; 4], payload: &[u8]) {
    let first = if fin { FIN } else { 0 } | opcode as u8;
    let (h, h_len) = header(first, Some(mask), payload.len());
    out.extend_from_slice(&h[..h_len]);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A cut frame, owned: fin, opcode, payload, bytes taken.
    type Cut = (bool, Opcode, Vec<u8>, usize);

    fn cut_all(input: &mut [u8], role: Role, max: u64) -> Result<Option<Cut>, ProtocolError> {
        let len = input.len();
        Ok(cut(input, role, max)?
            .map(|(f, rest)| (f.fin, f.opcode, f.payload.to_vec(), len - rest.len())))
    }

    #[test]
    fn rfc_examples_decode() {
        // RFC 6455 §5.7: a masked "Hello" from a client, an unmasked one from a server.
        let mut masked = *b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        assert_eq!(
            cut_all(&mut masked, Role::Server, 100),
            Ok(Some((true, Opcode::Text, b"Hello".to_vec(), 11)))
        );
        let mut unmasked = *b"\x81\x05\x48\x65\x6c\x6c\x6f";
        assert_eq!(
            cut_all(&mut unmasked, Role::Client, 100),
            Ok(Some((true, Opcode::Text, b"Hello".to_vec(), 7)))
        );
        // A fragmented unmasked text message, and a masked ping.
        let mut first = *b"\x01\x03\x48\x65\x6c";
        assert_eq!(
            cut_all(&mut first, Role::Client, 100),
            Ok(Some((false, Opcode::Text, b"Hel".to_vec(), 5)))
        );
        let mut ping = *b"\x89\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        assert_eq!(
            cut_all(&mut ping, Role::Server, 0),
            Ok(Some((true, Opcode::Ping, b"Hello".to_vec(), 11)))
        );
    }

    #[test]
    fn server_encoding_matches_the_rfc() {
        let mut out = Vec::new();
        encode(&mut out, Opcode::Text, b"Hello");
        assert_eq!(out, b"\x81\x05\x48\x65\x6c\x6c\x6f");
        let mut out = Vec::new();
        encode_client(&mut out, true, Opcode::Text, KEY, b"Hello");
        assert_eq!(out, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    }

    #[test]
    fn lengths_use_the_shortest_form_and_round_trip() {
        for (len, header_len) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = b"before".to_vec();
            encode(&mut out, Opcode::Binary, &payload);
            assert_eq!(out.len(), 6 + header_len + len, "len {len}");
            assert_eq!(
                cut_all(&mut out[6..], Role::Client, u64::MAX),
                Ok(Some((
                    true,
                    Opcode::Binary,
                    payload.clone(),
                    header_len + len
                )))
            );
            let mut out = Vec::new();
            encode_client(&mut out, false, Opcode::Binary, KEY, &payload);
            assert_eq!(
                cut_all(&mut out, Role::Server, u64::MAX),
                Ok(Some((false, Opcode::Binary, payload, header_len + 4 + len)))
            );
        }
    }

    #[test]
    fn every_prefix_is_partial() {
        let mut whole = Vec::new();
        encode_client(&mut whole, true, Opcode::Text, KEY, &[b'x'; 300]);
        for end in 0..whole.len() {
            let mut prefix = whole[..end].to_vec();
            assert_eq!(
                cut_all(&mut prefix, Role::Server, 1000),
                Ok(None),
                "cut at {end}"
            );
            assert_eq!(prefix, whole[..end], "a partial frame is left as it was");
        }
    }

    fn error(mut input: Vec<u8>, role: Role, max: u64) -> ProtocolError {
        cut(&mut input, role, max).expect_err("an error")
    }

    #[test]
    fn header_violations_are_protocol_errors() {
        let protocol = |reason| ProtocolError::protocol(reason);
        assert_eq!(
            error(vec![0x81, 0x05], Role::Server, 100),
            protocol("client frame not masked")
        );
        assert_eq!(
            error(vec![0x81, 0x85], Role::Client, 100),
            protocol("server frame masked")
        );
        for rsv in [0x40, 0x20, 0x10] {
            assert_eq!(
                error(vec![0x81 | rsv, 0x80], Role::Server, 100),
                protocol("reserved bits set")
            );
        }
        for op in [0x3, 0x7, 0xB, 0xF] {
            assert_eq!(
                error(vec![0x80 | op, 0x80], Role::Server, 100),
                protocol("unknown opcode")
            );
        }
        assert_eq!(
            error(vec![0x09, 0x80], Role::Server, 100),
            protocol("fragmented control frame")
        );
        assert_eq!(
            error(vec![0x88, 0xfe], Role::Server, 1000),
            protocol("control frame over 125 bytes")
        );
        let mut top_bit = vec![0x82, 0xff, 0x80];
        top_bit.extend([0; 7]);
        assert_eq!(
            error(top_bit, Role::Server, u64::MAX),
            protocol("64-bit length with the top bit set")
        );
    }

    #[test]
    fn an_oversized_data_frame_is_refused_from_its_header() {
        let too_big = ProtocolError {
            code: CloseCode::TooBig,
            reason: "message too big",
        };
        // 126 bytes announced in the 16-bit form, nothing of the mask or payload yet.
        assert_eq!(
            error(vec![0x82, 0xfe, 0x00, 0x7e], Role::Server, 125),
            too_big
        );
        let mut huge = vec![0x81, 0xff];
        huge.extend(u64::MAX.to_be_bytes().map(|b| b & 0x7f));
        assert_eq!(error(huge, Role::Server, 1 << 20), too_big);
        // Control frames are bound by 125 only.
        let mut ping = Vec::new();
        encode_client(&mut ping, true, Opcode::Ping, KEY, &[1; 125]);
        assert!(cut(&mut ping, Role::Server, 0).unwrap().is_some());
    }

    #[test]
    fn close_reason_is_cut_on_a_character_boundary() {
        let mut out = Vec::new();
        encode_close(&mut out, CloseCode::GoingAway, &"é".repeat(100));
        // 61 two-byte characters fit in 123 bytes.
        assert_eq!(out[1] as usize, 2 + 122);
        assert_eq!(&out[2..4], &1001u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    #[should_panic(expected = "control frame payload")]
    fn an_oversized_server_ping_is_a_bug() {
        encode(&mut Vec::new(), Opcode::Ping, &[0; 126]);
    }
}
