//! Messages (RFC 6455 §5.4–§5.6): frames assembled into whole text and binary messages, with
//! control frames allowed between the fragments, and close frames read.
//!
//! An unfragmented message borrows its payload from the input; only a fragmented one is
//! copied, into a buffer that exists while it is in flight.

use std::borrow::Cow;

use super::codec::{self, Frame, Opcode, Role};
use super::{CloseCode, ProtocolError};

/// One message, borrowing from the input unless it came in fragments.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(Cow<'a, str>),
    Binary(Cow<'a, [u8]>),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// `None` when the close frame carried no code.
    Close(Option<Close<'a>>),
}

/// The code and reason of a received close frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Close<'a> {
    pub code: u16,
    pub reason: &'a str,
}

/// What a connection keeps between reads: the fragments of a message in flight, boxed, so an
/// idle connection holds one null pointer.
#[derive(Debug, Default)]
pub struct ReadState {
    fragments: Option<Box<Fragments>>,
}

#[derive(Debug)]
struct Fragments {
    text: bool,
    payload: Vec<u8>,
}

/// Reads frames and messages; one per listener, shared by its connections like
/// [`crate::protocol::Decoder`].
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    pub role: Role,
    /// Largest message, fragmented or not; control frames have the RFC's 125 bytes.
    pub max_message: u32,
}

impl Decoder {
    /// Reads what clients send (masked frames).
    pub fn server(max_message: u32) -> Self {
        Decoder {
            role: Role::Server,
            max_message,
        }
    }

    /// Reads what servers send (unmasked frames).
    pub fn client(max_message: u32) -> Self {
        Decoder {
            role: Role::Client,
            max_message,
        }
    }

    /// Decodes the frame at the start of `input`, unmasking it in place.
    ///
    /// `Ok(Some((frame, consumed)))` is a complete frame of `consumed` bytes; `Ok(None)` means
    /// the input holds only part of one and is left untouched. A header that breaks the rules
    /// or announces a data payload over `max_message` is an error before its payload arrives.
    pub fn decode_frame<'a>(
        &self,
        input: &'a mut [u8],
    ) -> Result<Option<(Frame<'a>, usize)>, ProtocolError> {
        let len = input.len();
        let cut = codec::cut(input, self.role, u64::from(self.max_message))?;
        Ok(cut.map(|(frame, rest)| (frame, len - rest.len())))
    }

    /// Reads frames from the start of `input` until one completes a message.
    ///
    /// Returns the message, if any, and the bytes taken: frames are consumed as they complete
    /// (fragments move into `state`), so with `None` the input past `consumed` is part of a
    /// frame to keep for the next read; with a message, call again on the rest. Fragments and
    /// the frame being added to them may not exceed `max_message` together; text must be
    /// UTF-8 once whole. After an error the connection must close.
    pub fn read<'a>(
        &self,
        state: &mut ReadState,
        input: &'a mut [u8],
    ) -> Result<(Option<Message<'a>>, usize), ProtocolError> {
        let total = input.len();
        let mut rest = input;
        loop {
            let in_flight = state.fragments.as_ref().map_or(0, |f| f.payload.len());
            let budget = u64::from(self.max_message).saturating_sub(in_flight as u64);
            let before = rest.len();
            let Some((frame, tail)) = codec::cut(rest, self.role, budget)? else {
                return Ok((None, total - before));
            };
            rest = tail;
            if let Some(message) = state.add(frame)? {
                return Ok((Some(message), total - rest.len()));
            }
        }
    }
}

impl ReadState {
    /// Takes one frame; returns the message it completes, if any.
    fn add<'a>(&mut self, frame: Frame<'a>) -> Result<Option<Message<'a>>, ProtocolError> {
        let Frame {
            fin,
            opcode,
            payload,
        } = frame;
        let (text, payload) = match opcode {
            Opcode::Ping => return Ok(Some(Message::Ping(payload))),
            Opcode::Pong => return Ok(Some(Message::Pong(payload))),
            Opcode::Close => return read_close(payload).map(|close| Some(Message::Close(close))),
            Opcode::Continuation => {
                let Some(mut fragments) = self.fragments.take() else {
                    return Err(ProtocolError::protocol("continuation without a message"));
                };
                fragments.payload.extend_from_slice(payload);
                if !fin {
                    self.fragments = Some(fragments);
                    return Ok(None);
                }
                let Fragments { text, payload } = *fragments;
                (text, Cow::Owned(payload))
            }
            Opcode::Text | Opcode::Binary => {
                if self.fragments.is_some() {
                    return Err(ProtocolError::protocol(
                        "new message inside a fragmented one",
                    ));
                }
                let text = opcode == Opcode::Text;
                if !fin {
                    let payload = payload.to_vec();
                    self.fragments = Some(Box::new(Fragments { text, payload }));
                    return Ok(None);
                }
                (text, Cow::Borrowed(payload))
            }
        };
        if !text {
            return Ok(Some(Message::Binary(payload)));
        }
        let text = match payload {
            Cow::Borrowed(bytes) => std::str::from_utf8(bytes).map(Cow::Borrowed).ok(),
            Cow::Owned(bytes) => String::from_utf8(bytes).map(Cow::Owned).ok(),
        };
        text.map(|text| Some(Message::Text(text)))
            .ok_or(not_utf8("text message not UTF-8"))
    }
}

fn not_utf8(reason: &'static str) -> ProtocolError {
    ProtocolError {
        code: CloseCode::BadPayload,
        reason,
    }
}

fn read_close(payload: &[u8]) -> Result<Option<Close<'_>>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::protocol("close payload of one byte")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !may_be_received(code) {
                return Err(ProtocolError::protocol("invalid close code"));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| not_utf8("close reason not UTF-8"))?;
            Ok(Some(Close { code, reason }))
        }
    }
}

/// Codes a peer may put in a close frame: the defined ones (1004–1006 and 1015 are reserved
/// for reports that never go on the wire), and those for libraries and applications.
fn may_be_received(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ws::encode_client;

    const KEY: [u8; 4] = [1, 2, 3, 4];

    /// Client frames: (fin, opcode, payload) each.
    fn stream(frames: &[(bool, Opcode, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(fin, opcode, payload) in frames {
            encode_client(&mut out, fin, opcode, KEY, payload);
        }
        out
    }

    /// Every message of `input` read in one piece, owned, or the error that stopped it.
    fn read_all(max: u32, mut input: Vec<u8>) -> (Vec<String>, Option<ProtocolError>) {
        let decoder = Decoder::server(max);
        let mut state = ReadState::default();
        let mut used = 0;
        let mut messages = Vec::new();
        loop {
            match decoder.read(&mut state, &mut input[used..]) {
                Ok((Some(m), n)) => {
                    used += n;
                    messages.push(format!("{m:?}"));
                }
                Ok((None, _)) => return (messages, None),
                Err(e) => return (messages, Some(e)),
            }
        }
    }

    fn error(max: u32, input: Vec<u8>) -> ProtocolError {
        read_all(max, input).1.expect("an error")
    }

    #[test]
    fn idle_state_is_one_pointer() {
        assert_eq!(size_of::<ReadState>(), size_of::<usize>());
    }

    #[test]
    fn fragments_assemble_with_control_frames_between() {
        let input = stream(&[
            (false, Opcode::Text, b"he"),
            (true, Opcode::Ping, b"p"),
            (false, Opcode::Continuation, b"ll"),
            (true, Opcode::Pong, b""),
            (true, Opcode::Continuation, b"o"),
            (true, Opcode::Binary, b"\xff"),
        ]);
        let (messages, error) = read_all(5, input);
        assert_eq!(error, None);
        assert_eq!(
            messages,
            [
                "Ping([112])",
                "Pong([])",
                "Text(\"hello\")",
                "Binary([255])"
            ]
        );
    }

    #[test]
    fn an_unfragmented_message_borrows_the_input() {
        let mut input = stream(&[(true, Opcode::Text, b"hi")]);
        let (message, used) = Decoder::server(10)
            .read(&mut ReadState::default(), &mut input)
            .unwrap();
        assert!(matches!(message, Some(Message::Text(Cow::Borrowed("hi")))));
        assert_eq!(used, input.len());
    }

    #[test]
    fn fragments_are_consumed_before_the_message_completes() {
        let mut input = stream(&[(false, Opcode::Binary, b"ab")]);
        let whole = input.len();
        input.extend_from_slice(&stream(&[(true, Opcode::Continuation, b"c")])[..3]);
        let mut state = ReadState::default();
        let decoder = Decoder::server(10);
        assert_eq!(decoder.read(&mut state, &mut input), Ok((None, whole)));
        assert!(state.fragments.is_some());
        let mut rest = stream(&[(true, Opcode::Continuation, b"c")]);
        let (message, _) = decoder.read(&mut state, &mut rest).unwrap();
        assert_eq!(message, Some(Message::Binary(Cow::Owned(b"abc".to_vec()))));
        assert!(
            state.fragments.is_none(),
            "nothing kept once the message is out"
        );
    }

    #[test]
    fn sequence_violations_are_protocol_errors() {
        let continuation = stream(&[(true, Opcode::Continuation, b"x")]);
        assert_eq!(
            error(10, continuation).reason,
            "continuation without a message"
        );
        let restart = stream(&[(false, Opcode::Text, b"x"), (true, Opcode::Binary, b"y")]);
        assert_eq!(error(10, restart).code, CloseCode::Protocol);
    }

    #[test]
    fn the_limit_covers_the_whole_message_and_is_checked_from_the_header() {
        let mut input = stream(&[(false, Opcode::Text, b"abc"), (true, Opcode::Ping, b"")]);
        // The header of a 3-byte continuation: one over the limit of 5.
        input.extend_from_slice(&stream(&[(true, Opcode::Continuation, b"def")])[..2]);
        let (messages, error) = read_all(5, input);
        assert_eq!(messages, ["Ping([])"]);
        assert_eq!(error.map(|e| e.code), Some(CloseCode::TooBig));
        assert_eq!(
            read_all(
                5,
                stream(&[
                    (false, Opcode::Text, b"abc"),
                    (true, Opcode::Continuation, b"de")
                ])
            )
            .1,
            None
        );
    }

    #[test]
    fn text_must_be_utf8_once_whole() {
        assert_eq!(
            error(10, stream(&[(true, Opcode::Text, b"\xff")])).code,
            CloseCode::BadPayload
        );
        // "é" split between two fragments is fine; a truncated one is not.
        let split = stream(&[
            (false, Opcode::Text, b"\xc3"),
            (true, Opcode::Continuation, b"\xa9"),
        ]);
        assert_eq!(read_all(10, split), (vec!["Text(\"é\")".to_string()], None));
        let truncated = stream(&[
            (false, Opcode::Text, b"a"),
            (true, Opcode::Continuation, b"\xc3"),
        ]);
        assert_eq!(error(10, truncated).code, CloseCode::BadPayload);
        // Binary is anything.
        assert_eq!(
            read_all(10, stream(&[(true, Opcode::Binary, b"\xff")])).1,
            None
        );
    }

    #[test]
    fn close_frames_are_checked() {
        let close = |payload: &[u8]| stream(&[(true, Opcode::Close, payload)]);
        assert_eq!(
            read_all(0, close(b"")),
            (vec!["Close(None)".to_string()], None)
        );
        let (messages, _) = read_all(0, close(b"\x03\xe8bye"));
        assert_eq!(
            messages,
            ["Close(Some(Close { code: 1000, reason: \"bye\" }))"]
        );
        assert_eq!(error(0, close(b"\x03")).reason, "close payload of one byte");
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let e = error(0, close(&code.to_be_bytes()));
            assert_eq!(e.reason, "invalid close code", "code {code}");
        }
        for code in [1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert_eq!(
                read_all(0, close(&code.to_be_bytes())).1,
                None,
                "code {code}"
            );
        }
        assert_eq!(error(0, close(b"\x03\xe8\xff")).code, CloseCode::BadPayload);
    }
}
