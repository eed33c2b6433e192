//! The two halves of a framed QUIC stream ([`FrameSender`], [`FrameReceiver`]) and [`Inbound`],
//! a stream a peer opened.

use quinn::VarInt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{READ_CHUNK, TransportError};
use crate::config::NodeId;
use crate::frame::{self, FrameDecoder, StreamKind};

/// A stream a peer opened to this node.
#[derive(Debug)]
pub struct Inbound {
    /// The peer, authenticated by its certificate.
    pub peer: NodeId,
    pub kind: StreamKind,
    pub send: FrameSender,
    pub recv: FrameReceiver,
}

/// The sending half of a stream: one message per frame.
#[derive(Debug)]
pub struct FrameSender {
    stream: quinn::SendStream,
    max_frame: usize,
    buffer: Vec<u8>,
}

impl FrameSender {
    pub(super) fn new(stream: quinn::SendStream, max_frame: usize) -> FrameSender {
        FrameSender {
            stream,
            max_frame,
            buffer: Vec::new(),
        }
    }

    /// Sends one message. Not cancel-safe: a send dropped midway may leave half a frame on the
    /// stream, which must then be reset.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), TransportError> {
        self.buffer.clear();
        frame::encode(message, self.max_frame, &mut self.buffer)?;
        self.stream.write_all(&self.buffer).await?;
        Ok(())
    }

    /// Ends the stream after what was sent; the peer's receiver then sees `Ok(None)`.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.stream
            .finish()
            .map_err(|_| TransportError::StreamClosed)
    }

    /// Abandons the stream: unsent data is dropped and the peer's receiver fails with
    /// [`TransportError::StreamReset`] carrying `code`.
    pub fn reset(&mut self, code: u32) -> Result<(), TransportError> {
        self.stream
            .reset(VarInt::from_u32(code))
            .map_err(|_| TransportError::StreamClosed)
    }

    /// The quinn stream under this sender, for a stream whose bytes are not frames of
    /// [`crate::frame`] (an `ActorSession` stream carries ractor_cluster's own framing). The
    /// stream kind byte is already written; nothing else is buffered here, since every `send`
    /// wrote its whole frame.
    pub fn into_inner(self) -> quinn::SendStream {
        self.stream
    }

    /// Resolves once the peer stops reading (`Some(code)`, e.g. its receiver was dropped), or
    /// once a finished stream is fully acknowledged (`None`). Lets a server notice a cancelled
    /// request without sending to it.
    pub async fn stopped(&self) -> Result<Option<u64>, TransportError> {
        match self.stream.stopped().await {
            Ok(code) => Ok(code.map(VarInt::into_inner)),
            Err(quinn::StoppedError::ConnectionLost(e)) => Err(e.into()),
            Err(quinn::StoppedError::ZeroRttRejected) => Err(TransportError::Protocol {
                why: "0-RTT rejected",
            }),
        }
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub struct FrameReceiver {
    stream: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl FrameReceiver {
    pub(super) fn new(stream: quinn::RecvStream, max_frame: usize) -> FrameReceiver {
        FrameReceiver {
            stream,
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// The next message; `Ok(None)` once the peer finished the stream between frames. Cancel-safe:
    /// bytes read before a cancellation stay buffered for the next call. After an error the
    /// stream is out of step and should be dropped.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(Some(message));
            }
            match self.stream.read_chunk(READ_CHUNK, true).await? {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    /// The quinn stream under this receiver, for a stream whose bytes are not frames (see
    /// [`FrameSender::into_inner`]); the next byte read from it is the first after the kind
    /// byte. Fails with [`FrameError::Truncated`] if `recv` had already buffered bytes of the
    /// stream, which would otherwise be lost.
    pub fn into_inner(self) -> Result<quinn::RecvStream, TransportError> {
        self.decoder.finish()?;
        Ok(self.stream)
    }

    /// Tells the peer to stop sending; its sends then fail with
    /// [`TransportError::StreamStopped`] carrying `code`.
    pub fn stop(&mut self, code: u32) -> Result<(), TransportError> {
        self.stream
            .stop(VarInt::from_u32(code))
            .map_err(|_| TransportError::StreamClosed)
    }
}
