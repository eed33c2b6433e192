//! The byte format of node-to-node QUIC streams, sans-IO.
//!
//! A stream opens with one [`StreamKind`] byte (quinn announces a stream to the peer only once
//! the opener writes, and the tag tells the acceptor which service the stream is for). Then come
//! frames: a 4-byte little-endian length `L`, then `L` bytes: a 2-byte little-endian protocol
//! version followed by the bincode (2.x, standard config) encoding of one message.
//!
//! [`FrameDecoder`] takes bytes as they arrive, in any split, and yields whole messages. A frame
//! over the size limit is refused from its header, before its body is buffered; a frame of another
//! protocol version, or one whose body does not decode, is an error the caller answers (it never
//! panics and is never silently dropped).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of the message encodings; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 1;

/// Default largest frame body (16 MiB): control and token traffic are far smaller; weights move
/// in many frames.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Most bytes a decoded message may claim (bincode checks every length prefix against it before
/// allocating), so a hostile frame cannot make the decoder allocate more than this.
const DECODE_LIMIT: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

const LENGTH_BYTES: usize = 4;
const VERSION_BYTES: usize = 2;

/// What a stream carries; its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    Raft = 1,
    ActorSession = 2,
    Inference = 3,
    WeightTransfer = 4,
    // 5 was `Control` (reports before they moved to actor sessions); not to be reused.
}

impl TryFrom<u8> for StreamKind {
    type Error = FrameError;

    fn try_from(tag: u8) -> Result<Self, FrameError> {
        match tag {
            1 => Ok(StreamKind::Raft),
            2 => Ok(StreamKind::ActorSession),
            3 => Ok(StreamKind::Inference),
            4 => Ok(StreamKind::WeightTransfer),
            other => Err(FrameError::UnknownKind { tag: other }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown stream kind tag {tag}")]
    UnknownKind { tag: u8 },
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes cannot hold the protocol version")]
    TooShort { len: usize },
    #[error("peer speaks protocol version {got}, this node {want}")]
    Version { got: u16, want: u16 },
    #[error("frame body does not decode: {reason}")]
    Decode { reason: String },
    #[error("message does not encode: {reason}")]
    Encode { reason: String },
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Appends one frame holding `message` to `out`.
pub fn encode<T: Serialize>(
    message: &T,
    max_frame: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let body =
        bincode::serde::encode_to_vec(message, config()).map_err(|e| FrameError::Encode {
            reason: e.to_string(),
        })?;
    let len = VERSION_BYTES + body.len();
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: max_frame,
    })?;
    out.extend_from_slice(&len32.to_le_bytes());
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Reassembles frames from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: usize,
    buffer: Vec<u8>,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> FrameDecoder {
        FrameDecoder {
            max_frame,
            buffer: Vec::new(),
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed. After an error the stream
    /// is out of sync and must be closed.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(header) = self.buffer.get(..LENGTH_BYTES) else {
            return Ok(None);
        };
        // `get(..LENGTH_BYTES)` returned exactly LENGTH_BYTES bytes.
        let len = u32::from_le_bytes(header.try_into().expect("slice of LENGTH_BYTES")) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if len < VERSION_BYTES {
            return Err(FrameError::TooShort { len });
        }
        let Some(frame) = self.buffer.get(LENGTH_BYTES..LENGTH_BYTES + len) else {
            return Ok(None);
        };
        let version = u16::from_le_bytes([frame[0], frame[1]]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::Version {
                got: version,
                want: PROTOCOL_VERSION,
            });
        }
        let (message, used) =
            bincode::serde::decode_from_slice::<T, _>(&frame[VERSION_BYTES..], config()).map_err(
                |e| FrameError::Decode {
                    reason: e.to_string(),
                },
            )?;
        if used != len - VERSION_BYTES {
            return Err(FrameError::Decode {
                reason: format!("{} trailing bytes", len - VERSION_BYTES - used),
            });
        }
        self.buffer.drain(..LENGTH_BYTES + len);
        Ok(Some(message))
    }

    /// Checks that the stream ended between frames.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buffer.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Message {
        Token {
            request: u64,
            text: String,
            logprob: f32,
        },
        Cancel(u64),
        Weights(Vec<u8>),
    }

    fn frames(messages: &[Message]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            encode(m, DEFAULT_MAX_FRAME, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn stream_kinds_round_trip_and_unknown_tags_are_errors() {
        for kind in [
            StreamKind::Raft,
            StreamKind::ActorSession,
            StreamKind::Inference,
            StreamKind::WeightTransfer,
        ] {
            assert_eq!(StreamKind::try_from(kind as u8), Ok(kind));
        }
        assert_eq!(
            StreamKind::try_from(0),
            Err(FrameError::UnknownKind { tag: 0 })
        );
        assert_eq!(
            StreamKind::try_from(5),
            Err(FrameError::UnknownKind { tag: 5 })
        );
        assert_eq!(
            StreamKind::try_from(200),
            Err(FrameError::UnknownKind { tag: 200 })
        );
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        let mut out = Vec::new();
        let big = Message::Weights(vec![7; 100]);
        assert!(matches!(
            encode(&big, 50, &mut out),
            Err(FrameError::TooLarge { max: 50, .. })
        ));
        assert!(out.is_empty());
        // A peer announcing 1 GiB is refused before anything is buffered.
        let mut d = FrameDecoder::new(1 << 20);
        d.push(&(1u32 << 30).to_le_bytes());
        assert_eq!(
            d.next_message::<Message>(),
            Err(FrameError::TooLarge {
                len: 1 << 30,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn a_length_prefix_claiming_gigabytes_fails_without_allocating() {
        // A Weights message whose byte vector claims 2^40 elements, in a 16-byte frame.
        let mut body = vec![2u8]; // variant index of Weights
        body.push(253); // bincode varint marker: u64 follows
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let mut bytes = ((body.len() + 2) as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes.extend_from_slice(&body);
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&bytes);
        assert!(matches!(
            d.next_message::<Message>(),
            Err(FrameError::Decode { .. })
        ));
    }

    #[test]
    fn other_versions_garbage_and_truncation_are_errors() {
        let mut bytes = frames(&[Message::Cancel(3)]);
        bytes[4] = 9;
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&bytes);
        assert_eq!(
            d.next_message::<Message>(),
            Err(FrameError::Version {
                got: 9,
                want: PROTOCOL_VERSION
            })
        );

        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&[3, 0, 0, 0, 1, 0, 0xff]);
        assert!(matches!(
            d.next_message::<Message>(),
            Err(FrameError::Decode { .. })
        ));

        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&[1, 0, 0, 0, 1]);
        assert_eq!(
            d.next_message::<Message>(),
            Err(FrameError::TooShort { len: 1 })
        );

        let bytes = frames(&[Message::Cancel(3)]);
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&bytes[..bytes.len() - 1]);
        assert_eq!(d.next_message::<Message>(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(FrameError::Truncated {
                buffered: bytes.len() - 1
            })
        );
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u64>(), ".{0,40}", -100.0f32..0.0).prop_map(|(request, text, logprob)| {
                Message::Token {
                    request,
                    text,
                    logprob,
                }
            }),
            any::<u64>().prop_map(Message::Cancel),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(Message::Weights),
        ]
    }

    proptest! {
        #[test]
        fn any_split_of_the_stream_yields_the_same_messages(
            messages in prop::collection::vec(arb_message(), 0..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let bytes = frames(&messages);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.push(0);
            points.push(bytes.len());
            points.sort_unstable();
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut got = Vec::new();
            for w in points.windows(2) {
                d.push(&bytes[w[0]..w[1]]);
                while let Some(m) = d.next_message::<Message>().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, messages);
            prop_assert_eq!(d.finish(), Ok(()));
        }
    }
}
