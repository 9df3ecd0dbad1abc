//! Length-prefixed framing: a 4-byte length header (big-endian by default, little-endian when
//! configured) followed by that many payload bytes.
//!
//! The decoder is a pure function over whatever bytes have arrived: it never buffers, never
//! allocates, and rejects a header that announces more than the limit before a single payload
//! byte is read, so a hostile header cannot make anyone allocate 4 GiB.

/// Size of the length header that precedes every payload.
pub const HEADER_LEN: usize = 4;

/// Byte order of the length header. Client and server must agree; there is no negotiation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ByteOrder {
    #[default]
    Big,
    Little,
}

impl ByteOrder {
    pub fn from_little_endian(little: bool) -> Self {
        if little {
            ByteOrder::Little
        } else {
            ByteOrder::Big
        }
    }

    fn read(self, header: [u8; HEADER_LEN]) -> u32 {
        match self {
            ByteOrder::Big => u32::from_be_bytes(header),
            ByteOrder::Little => u32::from_le_bytes(header),
        }
    }

    fn write(self, len: u32) -> [u8; HEADER_LEN] {
        match self {
            ByteOrder::Big => len.to_be_bytes(),
            ByteOrder::Little => len.to_le_bytes(),
        }
    }
}

/// A header announced a payload longer than the limit; the stream can no longer be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameTooLarge {
    pub len: u32,
    pub max: u32,
}

impl std::fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frame of {} bytes exceeds the limit of {} bytes",
            self.len, self.max
        )
    }
}

impl std::error::Error for FrameTooLarge {}

/// Cuts frames out of a byte slice.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    pub order: ByteOrder,
    pub max_payload: u32,
}

impl Decoder {
    pub fn new(order: ByteOrder, max_payload: u32) -> Self {
        Decoder { order, max_payload }
    }

    /// Decodes the frame at the start of `input`.
    ///
    /// `Ok(Some((payload, consumed)))` is a complete frame whose header and payload take
    /// `consumed` bytes (an empty payload is a keep-alive); `Ok(None)` means the input holds
    /// only part of a frame.
    pub fn decode<'a>(&self, input: &'a [u8]) -> Result<Option<(&'a [u8], usize)>, FrameTooLarge> {
        let Some(header) = input.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = self.order.read(*header);
        if len > self.max_payload {
            return Err(FrameTooLarge {
                len,
                max: self.max_payload,
            });
        }
        let end = HEADER_LEN + len as usize;
        Ok(input.get(HEADER_LEN..end).map(|payload| (payload, end)))
    }

    /// Iterates over the complete frames at the start of `input`; `Frames::consumed` then
    /// tells where the unconsumed remainder (part of a frame, or nothing) begins.
    pub fn frames<'a>(&self, input: &'a [u8]) -> Frames<'a> {
        Frames {
            decoder: *self,
            input,
            consumed: 0,
        }
    }
}

/// Iterator over the complete frames of a byte slice; stops at the first partial frame and
/// yields an error (then stops) at the first oversized header.
pub struct Frames<'a> {
    decoder: Decoder,
    input: &'a [u8],
    consumed: usize,
}

impl<'a> Frames<'a> {
    /// Bytes taken by the frames yielded so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], FrameTooLarge>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.decoder.decode(&self.input[self.consumed..]) {
            Ok(Some((payload, used))) => {
                self.consumed += used;
                Some(Ok(payload))
            }
            Ok(None) => None,
            Err(e) => {
                // Park at the end so that the iterator is fused after an error.
                self.input = &[];
                self.consumed = 0;
                Some(Err(e))
            }
        }
    }
}

/// Appends one frame to `out`: the header, then whatever `write_payload` appends.
///
/// The payload is written in place and the header patched afterwards, so encoding costs no
/// intermediate buffer.
pub fn encode_with(out: &mut Vec<u8>, order: ByteOrder, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    write_payload(out);
    let len = u32::try_from(out.len() - start - HEADER_LEN).expect("frame payload over 4 GiB");
    out[start..start + HEADER_LEN].copy_from_slice(&order.write(len));
}

/// Appends one frame carrying `payload` to `out`.
pub fn encode(out: &mut Vec<u8>, order: ByteOrder, payload: &[u8]) {
    encode_with(out, order, |out| out.extend_from_slice(payload));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(order: ByteOrder, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, order, payload);
        out
    }

    #[test]
    fn header_is_big_endian_by_default() {
        assert_eq!(frame(ByteOrder::Big, b"abc"), b"\0\0\0\x03abc");
        assert_eq!(frame(ByteOrder::Little, b"abc"), b"\x03\0\0\0abc");
    }

    #[test]
    fn decodes_complete_frame_and_reports_consumed() {
        let d = Decoder::new(ByteOrder::Big, 100);
        let mut bytes = frame(ByteOrder::Big, b"hello");
        bytes.extend_from_slice(b"\0\0");
        assert_eq!(d.decode(&bytes), Ok(Some((&b"hello"[..], 9))));
    }

    #[test]
    fn partial_header_and_partial_payload_are_incomplete() {
        let d = Decoder::new(ByteOrder::Big, 100);
        let bytes = frame(ByteOrder::Big, b"hello");
        for cut in 0..bytes.len() {
            assert_eq!(d.decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn zero_length_frame_is_an_empty_payload() {
        let d = Decoder::new(ByteOrder::Big, 100);
        assert_eq!(d.decode(b"\0\0\0\0rest"), Ok(Some((&b""[..], 4))));
    }

    #[test]
    fn oversized_header_is_rejected_before_the_payload_arrives() {
        let d = Decoder::new(ByteOrder::Big, 10);
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameTooLarge {
                len: u32::MAX,
                max: 10
            })
        );
        assert_eq!(
            d.decode(&frame(ByteOrder::Big, &[b'x'; 10]))
                .unwrap()
                .unwrap()
                .1,
            14
        );
        assert!(d.decode(&frame(ByteOrder::Big, &[b'x'; 11])).is_err());
    }

    #[test]
    fn little_endian_decoder_reads_little_endian_headers() {
        let d = Decoder::new(ByteOrder::Little, 1 << 20);
        let bytes = frame(ByteOrder::Little, &[7; 300]);
        assert_eq!(d.decode(&bytes).unwrap().unwrap().0.len(), 300);
        // The same bytes read big-endian announce 300 << 16 bytes: over the limit here.
        let big = Decoder::new(ByteOrder::Big, 1 << 16);
        assert!(big.decode(&bytes).is_err());
    }

    #[test]
    fn frames_iterates_and_leaves_the_partial_remainder() {
        let d = Decoder::new(ByteOrder::Big, 100);
        let mut bytes = frame(ByteOrder::Big, b"a");
        bytes.extend(frame(ByteOrder::Big, b""));
        bytes.extend(frame(ByteOrder::Big, b"ccc"));
        let full = bytes.len();
        bytes.extend(&frame(ByteOrder::Big, b"dddd")[..5]);
        let mut it = d.frames(&bytes);
        let got: Vec<_> = it.by_ref().map(Result::unwrap).collect();
        assert_eq!(got, vec![&b"a"[..], b"", b"ccc"]);
        assert_eq!(it.consumed(), full);
    }

    #[test]
    fn frames_stops_after_an_oversized_header() {
        let d = Decoder::new(ByteOrder::Big, 2);
        let mut bytes = frame(ByteOrder::Big, b"ok");
        bytes.extend(frame(ByteOrder::Big, b"too long"));
        bytes.extend(frame(ByteOrder::Big, b"ok"));
        let got: Vec<_> = d.frames(&bytes).collect();
        assert_eq!(got.len(), 2);
        assert!(got[1].is_err());
    }
}
