//! An `ActorSession` QUIC stream as ractor_cluster's [`ClusterBidiStream`]: the raw quinn halves
//! (ractor_cluster frames its own bytes), labelled with the peer the transport authenticated,
//! and a guard that tells [`super::session`] when ractor_cluster has dropped both halves, i.e.
//! when the session on it has ended for whatever reason.
//!
//! This module knows nothing of sessions or reports; it only carries bytes and reports drops.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Held by both halves of a handed-over stream; dropped (and so `Drop` runs) once ractor_cluster
/// has let go of both.
pub trait StreamGuard: Send + Sync + 'static {}

/// One bi-stream for the NodeServer, with the labels its session will carry.
pub struct QuicSessionStream<R, W> {
    reader: R,
    writer: W,
    /// The authenticated peer and which stream this is (`node-2/out-7`): the NodeServer reports
    /// it as the session's `peer_addr`, which is how `session` tells sessions apart.
    peer_label: String,
    local_label: String,
    guard: Arc<dyn StreamGuard>,
}

impl<R, W> QuicSessionStream<R, W> {
    pub fn new(
        reader: R,
        writer: W,
        peer_label: String,
        local_label: String,
        guard: Arc<dyn StreamGuard>,
    ) -> Self {
        QuicSessionStream {
            reader,
            writer,
            peer_label,
            local_label,
            guard,
        }
    }
}

impl<R, W> ClusterBidiStream for QuicSessionStream<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let this = *self;
        (
            Box::new(Guarded {
                inner: this.reader,
                _guard: this.guard.clone(),
            }),
            Box::new(Guarded {
                inner: this.writer,
                _guard: this.guard,
            }),
        )
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer_label.clone())
    }

    fn local_label(&self) -> Option<String> {
        Some(self.local_label.clone())
    }
}

/// A stream half that keeps the guard alive as long as it lives.
struct Guarded<T> {
    inner: T,
    _guard: Arc<dyn StreamGuard>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Counted(Arc<AtomicUsize>);

    impl StreamGuard for Counted {}

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn carries_bytes_and_drops_the_guard_only_with_both_halves() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (read, write) = tokio::io::split(ours);
        let dropped = Arc::new(AtomicUsize::new(0));
        let stream = QuicSessionStream::new(
            read,
            write,
            "node-2/out-1".into(),
            "node-1".into(),
            Arc::new(Counted(dropped.clone())),
        );
        assert_eq!(stream.peer_label().as_deref(), Some("node-2/out-1"));
        let (mut reader, mut writer) = Box::new(stream).split();

        let (mut their_read, mut their_write) = tokio::io::split(theirs);
        writer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        their_read.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        their_write.write_all(b"pong").await.unwrap();
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");

        drop(writer);
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "the reader still lives");
        drop(reader);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}
