//! The QUIC transport between nodes: one quinn endpoint per node that both accepts and dials,
//! mutual TLS under the cluster CA ([`tls`]), authenticated peer ids, a connection cache with
//! per-peer backoff, and typed frame streams.
//!
//! A connection starts with a hello: the dialler opens the first bi-stream and sends its
//! [`NodeId`]; the acceptor checks that the client certificate TLS already verified against the
//! CA is valid for `node-<that id>`, answers with its own id and only then hands the
//! connection's further streams to the node, each as an [`Inbound`]. A claim the certificate does
//! not back closes the connection. Every other stream starts with its [`StreamKind`] byte
//! (quinn announces a stream only once the opener writes) and then carries frames of
//! [`crate::frame`].
//!
//! Keep-alives and the idle timeout of [`TransportOptions`] bound how long a dead peer goes
//! unnoticed: its connection, and every stream on it, fails with
//! [`TransportError::ConnectionLost`] within about `idle_timeout`.
//!
//! This module does not know what streams carry, retries no request, and leaves addresses to
//! the caller: `open` dials the address it is given.

mod error;
mod stream;
mod tls;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::NodeId;
use crate::frame::{self, StreamKind};
use crate::metric_names;

pub use error::TransportError;
pub use stream::{FrameReceiver, FrameSender, Inbound};
pub use tls::{NodeIdentity, init_certs, issue_node_cert};

/// Application close codes.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_IDENTITY: u32 = 1;
const CLOSE_PROTOCOL: u32 = 2;
/// Stream stop code for a stream whose first byte is no [`StreamKind`].
const STOP_UNKNOWN_KIND: u32 = 1;

/// Inbound streams waiting for the node; each waiting stream holds one task, and quinn bounds
/// the streams per connection by [`MAX_STREAMS`].
const INBOUND_QUEUE: usize = 256;
/// Concurrent bi-streams a peer may open on one connection (each inference request is one).
const MAX_STREAMS: u32 = 1024;
/// Largest hello frame; it holds one id.
const HELLO_MAX_FRAME: usize = 256;
/// Bytes asked of quinn per read.
const READ_CHUNK: usize = 64 << 10;

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Timing and size limits of a node's connections.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// Interval of keep-alive packets on idle connections; well below `idle_timeout`.
    pub keep_alive: Duration,
    /// A connection that hears nothing for this long is dead, and so are its streams.
    pub idle_timeout: Duration,
    /// Largest frame sent or accepted, in bytes.
    pub max_frame: usize,
    /// Longest a dial (QUIC and TLS handshake plus hello) may take.
    pub connect_timeout: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            keep_alive: Duration::from_millis(250),
            idle_timeout: Duration::from_millis(1500),
            max_frame: frame::DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// The first message on a new connection, from the dialler.
#[derive(Serialize, Deserialize)]
struct Hello {
    node: NodeId,
}

/// The acceptor's answer to a [`Hello`] it accepted.
#[derive(Serialize, Deserialize)]
struct HelloAck {
    node: NodeId,
}

/// Per-peer dial backoff, sans-IO: 50 ms after the first failure, doubling to 2 s, cleared by a
/// success.
#[derive(Debug, Default)]
struct Backoff {
    delay: Option<Duration>,
    until: Option<Instant>,
}

impl Backoff {
    /// How long dialling must still wait, if at all.
    fn retry_in(&self, now: Instant) -> Option<Duration> {
        let until = self.until?;
        (until > now).then(|| until - now)
    }

    fn failed(&mut self, now: Instant) {
        let delay = match self.delay {
            None => FIRST_BACKOFF,
            Some(delay) => (delay * 2).min(MAX_BACKOFF),
        };
        self.delay = Some(delay);
        self.until = Some(now + delay);
    }

    fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

/// Which side of a handshake this node was on, for logs and metrics.
#[derive(Clone, Copy, Debug)]
enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Why a handshake was refused, when it was refused over credentials.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// TLS failed: a certificate not signed by the CA, the wrong name, the wrong ALPN.
    Tls,
    /// The certificate was fine but not valid for the node id claimed in the hello.
    Identity,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Tls => "tls",
            Refusal::Identity => "identity",
        }
    }

    /// The refusal behind a connection error, if it is one. QUIC carries TLS alerts as
    /// transport error codes 0x100..=0x1ff.
    fn of(e: &ConnectionError) -> Option<Refusal> {
        let code = match e {
            ConnectionError::TransportError(e) => e.code,
            ConnectionError::ConnectionClosed(close) => close.error_code,
            ConnectionError::ApplicationClosed(close)
                if close.error_code == VarInt::from_u32(CLOSE_IDENTITY) =>
            {
                return Some(Refusal::Identity);
            }
            _ => return None,
        };
        (0x100..0x200)
            .contains(&u64::from(code))
            .then_some(Refusal::Tls)
    }
}

fn record_refusal(
    direction: Direction,
    refusal: Refusal,
    remote: SocketAddr,
    why: &dyn std::fmt::Display,
) {
    warn!(
        %remote,
        direction = direction.label(),
        reason = refusal.label(),
        %why,
        "QUIC handshake refused"
    );
    metrics::counter!(
        metric_names::QUIC_HANDSHAKE_FAILURES,
        "direction" => direction.label(),
        "reason" => refusal.label(),
    )
    .increment(1);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned map is still a valid map.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Live connections by peer.
type Connections = Arc<Mutex<HashMap<NodeId, quinn::Connection>>>;

/// One node's QUIC endpoint. Clones share it; dropping the last clone closes it like
/// [`Transport::close`].
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("me", &self.shared.me)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    me: NodeId,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    client_config: quinn::ClientConfig,
    options: TransportOptions,
    /// Connections this node dialled, reused by `open`.
    outbound: Connections,
    /// Authenticated connections peers dialled, for `peer_rtts`.
    inbound: Connections,
    /// One dial at a time per peer, and its backoff.
    dials: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Backoff>>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
    }
}

/// What the accept loop and its connection tasks need; they hold no [`Transport`], so that
/// dropping the last one closes the endpoint.
struct AcceptContext {
    me: NodeId,
    options: TransportOptions,
    inbound: Connections,
    tx: mpsc::Sender<Inbound>,
}

impl Transport {
    /// Binds the UDP socket and starts accepting. Inbound streams arrive on the returned
    /// receiver; dropping it stops the accepting (streams in flight are dropped). Must be called
    /// within a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        me: NodeId,
        identity: NodeIdentity,
        options: TransportOptions,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        if identity.node != me {
            return Err(TransportError::Options {
                field: "identity",
                why: format!("the identity is {}'s, this node is {me}", identity.node),
            });
        }
        let transport_config = Arc::new(transport_config(&options)?);
        let server_tls = QuicServerConfig::try_from(Arc::new(tls::server_config(&identity)?))
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server_config.transport_config(transport_config.clone());
        let client_tls = QuicClientConfig::try_from(Arc::new(tls::client_config(&identity)?))
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_tls));
        client_config.transport_config(transport_config);

        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TransportError::Bind {
                addr,
                source: std::io::Error::other("Transport::bind needs a tokio runtime"),
            });
        }
        let endpoint = quinn::Endpoint::server(server_config, addr)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind { addr, source })?;

        let inbound: Connections = Arc::default();
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let context = Arc::new(AcceptContext {
            me,
            options: options.clone(),
            inbound: inbound.clone(),
            tx,
        });
        tokio::spawn(accept_loop(endpoint.clone(), context));

        let shared = Shared {
            me,
            endpoint,
            local_addr,
            client_config,
            options,
            outbound: Arc::default(),
            inbound,
            dials: Mutex::default(),
        };
        Ok((
            Transport {
                shared: Arc::new(shared),
            },
            rx,
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    pub fn me(&self) -> NodeId {
        self.shared.me
    }

    /// Opens a bi-stream of `kind` to `peer` at `addr`, over the cached connection or a new
    /// one. While dials to `peer` are backing off after failures it fails at once with
    /// [`TransportError::Backoff`].
    pub async fn open(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        kind: StreamKind,
    ) -> Result<(FrameSender, FrameReceiver), TransportError> {
        let connection = self.connection(peer, addr).await?;
        match self.open_stream(&connection, kind).await {
            Err(TransportError::ConnectionLost(e)) => {
                // The cached connection died since its last use; one fresh dial.
                debug!(%peer, error = %e, "cached connection lost, redialling");
                self.forget(peer, &connection);
                let connection = self.connection(peer, addr).await?;
                self.open_stream(&connection, kind).await
            }
            other => other,
        }
    }

    /// Round-trip time of each connected peer (quinn's path RTT), by peer id.
    pub fn peer_rtts(&self) -> Vec<(NodeId, Duration)> {
        let mut rtts: HashMap<NodeId, Duration> = HashMap::new();
        for map in [&self.shared.inbound, &self.shared.outbound] {
            for (peer, connection) in lock(map).iter() {
                if connection.close_reason().is_none() {
                    rtts.insert(*peer, connection.rtt());
                }
            }
        }
        let mut rtts: Vec<_> = rtts.into_iter().collect();
        rtts.sort_unstable_by_key(|(peer, _)| *peer);
        rtts
    }

    /// Closes the endpoint: every connection gets an application close, streams fail, `open`
    /// fails with [`TransportError::Closed`] and the inbound receiver ends.
    pub fn close(&self) {
        self.shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
        lock(&self.shared.outbound).clear();
        lock(&self.shared.inbound).clear();
    }

    async fn open_stream(
        &self,
        connection: &quinn::Connection,
        kind: StreamKind,
    ) -> Result<(FrameSender, FrameReceiver), TransportError> {
        let (mut send, recv) = connection.open_bi().await?;
        send.write_all(&[kind as u8]).await?;
        let max_frame = self.shared.options.max_frame;
        Ok((
            FrameSender::new(send, max_frame),
            FrameReceiver::new(recv, max_frame),
        ))
    }

    /// The live cached connection to `peer` at `addr`; a dead one, or one to another address,
    /// is dropped from the cache.
    fn cached(&self, peer: NodeId, addr: SocketAddr) -> Option<quinn::Connection> {
        let mut outbound = lock(&self.shared.outbound);
        let connection = outbound.get(&peer)?;
        let alive = connection.close_reason().is_none();
        if alive && same_addr(connection.remote_address(), addr) {
            return Some(connection.clone());
        }
        if let Some(stale) = outbound.remove(&peer)
            && alive
        {
            stale.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"peer moved");
        }
        None
    }

    fn forget(&self, peer: NodeId, connection: &quinn::Connection) {
        let mut outbound = lock(&self.shared.outbound);
        if outbound
            .get(&peer)
            .is_some_and(|c| c.stable_id() == connection.stable_id())
        {
            outbound.remove(&peer);
        }
    }

    async fn connection(
        &self,
        peer: NodeId,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, TransportError> {
        if let Some(connection) = self.cached(peer, addr) {
            return Ok(connection);
        }
        let slot = lock(&self.shared.dials).entry(peer).or_default().clone();
        let mut backoff = slot.lock().await;
        // Another task may have dialled while this one waited for the slot.
        if let Some(connection) = self.cached(peer, addr) {
            return Ok(connection);
        }
        if let Some(retry_in) = backoff.retry_in(Instant::now()) {
            return Err(TransportError::Backoff { peer, retry_in });
        }
        match self.dial(peer, addr).await {
            Ok(connection) => {
                backoff.succeeded();
                lock(&self.shared.outbound).insert(peer, connection.clone());
                Ok(connection)
            }
            Err(TransportError::Closed) => Err(TransportError::Closed),
            Err(e) => {
                backoff.failed(Instant::now());
                Err(e)
            }
        }
    }

    /// Connects and says hello, within the connect timeout.
    async fn dial(
        &self,
        peer: NodeId,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, TransportError> {
        let shared = &self.shared;
        let connect_error = |why: String| TransportError::Connect { peer, addr, why };
        let connecting = shared
            .endpoint
            .connect_with(shared.client_config.clone(), addr, &tls::node_name(peer))
            .map_err(|e| match e {
                quinn::ConnectError::EndpointStopping => TransportError::Closed,
                other => connect_error(other.to_string()),
            })?;
        let handshake = async {
            let connection = connecting.await?;
            let answer = hello(&connection, shared.me).await?;
            if answer != peer {
                connection.close(
                    VarInt::from_u32(CLOSE_PROTOCOL),
                    b"hello from the wrong node",
                );
                return Err(TransportError::Protocol {
                    why: "hello answered by another node",
                });
            }
            Ok(connection)
        };
        let result = tokio::time::timeout(shared.options.connect_timeout, handshake)
            .await
            .unwrap_or_else(|_| {
                Err(connect_error(format!(
                    "no answer within {:?}",
                    shared.options.connect_timeout
                )))
            });
        match result {
            Ok(connection) => Ok(connection),
            Err(TransportError::ConnectionLost(e)) => {
                let refusal = Refusal::of(&e);
                if let Some(refusal) = refusal {
                    record_refusal(Direction::Outbound, refusal, addr, &e);
                }
                match (refusal, e) {
                    (Some(Refusal::Identity), ConnectionError::ApplicationClosed(close)) => {
                        Err(TransportError::IdentityRefused {
                            peer,
                            why: String::from_utf8_lossy(&close.reason).into_owned(),
                        })
                    }
                    (_, e) => Err(connect_error(e.to_string())),
                }
            }
            Err(TransportError::Closed) => Err(TransportError::Closed),
            Err(e) => Err(connect_error(e.to_string())),
        }
    }
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

fn transport_config(options: &TransportOptions) -> Result<quinn::TransportConfig, TransportError> {
    if options.keep_alive.is_zero() || options.keep_alive >= options.idle_timeout {
        return Err(TransportError::Options {
            field: "keep_alive",
            why: format!(
                "{:?} must be above zero and below idle_timeout ({:?})",
                options.keep_alive, options.idle_timeout
            ),
        });
    }
    let idle = quinn::IdleTimeout::try_from(options.idle_timeout).map_err(|e| {
        TransportError::Options {
            field: "idle_timeout",
            why: e.to_string(),
        }
    })?;
    let mut config = quinn::TransportConfig::default();
    config
        .keep_alive_interval(Some(options.keep_alive))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        // Peers open no uni-streams.
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(config)
}

/// The dialler's side of the hello: sends this node's id, returns the acceptor's.
async fn hello(connection: &quinn::Connection, me: NodeId) -> Result<NodeId, TransportError> {
    let (send, recv) = connection.open_bi().await?;
    let mut send = FrameSender::new(send, HELLO_MAX_FRAME);
    let mut recv = FrameReceiver::new(recv, HELLO_MAX_FRAME);
    send.send(&Hello { node: me }).await?;
    send.finish()?;
    match recv.recv::<HelloAck>().await? {
        Some(ack) => Ok(ack.node),
        None => Err(TransportError::Protocol {
            why: "hello stream ended without an answer",
        }),
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, context: Arc<AcceptContext>) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    tokio::spawn(serve_connection(incoming, context.clone()));
                }
                None => break,
            },
            () = context.tx.closed() => {
                // Nobody takes inbound streams any more: refuse new connections at once rather
                // than let them queue unanswered.
                endpoint.set_server_config(None);
                break;
            }
        }
    }
    debug!(node = %context.me, "stopped accepting connections");
}

async fn serve_connection(incoming: quinn::Incoming, context: Arc<AcceptContext>) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            match Refusal::of(&e) {
                Some(refusal) => record_refusal(Direction::Inbound, refusal, remote, &e),
                None => debug!(%remote, error = %e, "inbound handshake failed"),
            }
            return;
        }
    };
    let authenticated = tokio::time::timeout(
        context.options.connect_timeout,
        authenticate(&connection, &context),
    )
    .await;
    let peer = match authenticated {
        Ok(Ok(peer)) => peer,
        Ok(Err(e)) => {
            if !matches!(e, TransportError::PeerIdentity { .. }) {
                debug!(%remote, error = %e, "inbound hello failed");
                connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"bad hello");
            }
            return;
        }
        Err(_) => {
            debug!(%remote, "no hello within the connect timeout");
            connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no hello");
            return;
        }
    };
    debug!(%peer, %remote, "peer connected");
    lock(&context.inbound).insert(peer, connection.clone());

    let reason = loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(deliver(peer, send, recv, context.clone()));
            }
            Err(e) => break e,
        }
    };
    debug!(%peer, %remote, %reason, "peer connection ended");
    let mut inbound = lock(&context.inbound);
    if inbound
        .get(&peer)
        .is_some_and(|c| c.stable_id() == connection.stable_id())
    {
        inbound.remove(&peer);
    }
}

/// The acceptor's side of the hello: the claimed id must be one the verified client
/// certificate is valid for.
async fn authenticate(
    connection: &quinn::Connection,
    context: &AcceptContext,
) -> Result<NodeId, TransportError> {
    let (send, recv) = connection.accept_bi().await?;
    let mut send = FrameSender::new(send, HELLO_MAX_FRAME);
    let mut recv = FrameReceiver::new(recv, HELLO_MAX_FRAME);
    let Some(hello) = recv.recv::<Hello>().await? else {
        return Err(TransportError::Protocol {
            why: "hello stream ended without a hello",
        });
    };
    let remote = connection.remote_address();
    let certificates = connection
        .peer_identity()
        .and_then(|identity| {
            identity
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or(TransportError::Protocol {
            why: "no client certificate",
        })?;
    let checked = match certificates.first() {
        Some(leaf) => tls::check_node_name(leaf, hello.node).map_err(|e| e.to_string()),
        None => Err("no certificate".to_owned()),
    };
    if let Err(why) = checked {
        let reason = format!("certificate is not valid for {}", hello.node);
        connection.close(VarInt::from_u32(CLOSE_IDENTITY), reason.as_bytes());
        record_refusal(
            Direction::Inbound,
            Refusal::Identity,
            remote,
            &format!("{reason}: {why}"),
        );
        return Err(TransportError::PeerIdentity {
            claimed: hello.node,
            remote,
        });
    }
    send.send(&HelloAck { node: context.me }).await?;
    send.finish()?;
    Ok(hello.node)
}

/// Reads a stream's kind byte and hands it to the node.
async fn deliver(
    peer: NodeId,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    context: Arc<AcceptContext>,
) {
    let mut tag = [0u8; 1];
    match tokio::time::timeout(context.options.connect_timeout, recv.read_exact(&mut tag)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "stream ended before its kind byte");
            return;
        }
        Err(_) => {
            debug!(%peer, "no kind byte within the connect timeout");
            let _ = recv.stop(VarInt::from_u32(STOP_UNKNOWN_KIND));
            return;
        }
    }
    let kind = match StreamKind::try_from(tag[0]) {
        Ok(kind) => kind,
        Err(e) => {
            warn!(%peer, error = %e, "refused a stream");
            let _ = recv.stop(VarInt::from_u32(STOP_UNKNOWN_KIND));
            return;
        }
    };
    let max_frame = context.options.max_frame;
    let inbound = Inbound {
        peer,
        kind,
        send: FrameSender::new(send, max_frame),
        recv: FrameReceiver::new(recv, max_frame),
    };
    if context.tx.send(inbound).await.is_err() {
        debug!(%peer, "inbound stream dropped: the node stopped accepting");
    }
}
