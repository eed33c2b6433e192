//! [`TransportError`]: everything the transport can report, with conversions from quinn's
//! errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quinn::{ConnectionError, ReadError, WriteError};

use crate::config::NodeId;
use crate::frame::FrameError;

/// What can go wrong. Setting up (`Io`, `Config`, `Options`, `Bind`, `Tls`, `Verifier`,
/// `Certificate`) fails once, at start-up; the rest concern one peer or one stream, and the
/// caller may try another replica or retry later (after `retry_in`, for `Backoff`).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {why}", file.display())]
    Config { file: PathBuf, why: String },
    #[error("transport option {field}: {why}")]
    Options { field: &'static str, why: String },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot connect to {peer} at {addr}: {why}")]
    Connect {
        peer: NodeId,
        addr: SocketAddr,
        why: String,
    },
    #[error("not dialling {peer} again for {retry_in:?} after failed connects")]
    Backoff { peer: NodeId, retry_in: Duration },
    #[error("{peer} refused this node's identity: {why}")]
    IdentityRefused { peer: NodeId, why: String },
    #[error("peer at {remote} claims to be {claimed}, but its certificate is not valid for it")]
    PeerIdentity { claimed: NodeId, remote: SocketAddr },
    #[error("peer broke the connection protocol: {why}")]
    Protocol { why: &'static str },
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    #[error("peer reset the stream (code {code})")]
    StreamReset { code: u64 },
    #[error("peer stopped reading the stream (code {code})")]
    StreamStopped { code: u64 },
    #[error("stream already finished or reset")]
    StreamClosed,
    #[error("this node's transport is closed")]
    Closed,
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl From<ConnectionError> for TransportError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::LocallyClosed => TransportError::Closed,
            other => TransportError::ConnectionLost(other),
        }
    }
}

impl From<ReadError> for TransportError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Reset(code) => TransportError::StreamReset {
                code: code.into_inner(),
            },
            ReadError::ConnectionLost(e) => e.into(),
            ReadError::ClosedStream => TransportError::StreamClosed,
            ReadError::IllegalOrderedRead | ReadError::ZeroRttRejected => {
                TransportError::Protocol {
                    why: "unexpected read state",
                }
            }
        }
    }
}

impl From<WriteError> for TransportError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Stopped(code) => TransportError::StreamStopped {
                code: code.into_inner(),
            },
            WriteError::ConnectionLost(e) => e.into(),
            WriteError::ClosedStream => TransportError::StreamClosed,
            WriteError::ZeroRttRejected => TransportError::Protocol {
                why: "0-RTT rejected",
            },
        }
    }
}
