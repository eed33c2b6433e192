//! Actor sessions between nodes: ractor_cluster's `NodeServer`, with every session riding an
//! `ActorSession` QUIC stream of the node transport. Peers' load and liveness reports travel on
//! them (see `reports_actor`); nothing else does yet.
//!
//! ```text
//! run                 restarts the two actors below if either stops (logged)
//! ├── NodeServer      ractor_cluster; supervises one NodeSession per peer stream
//! ├── ReportsActor    process group "helixflow.reports": peers' reports into `Peers`
//! └── dial × peer     keeps one session per peer open; redials with the transport's backoff
//! accept              (from `service`) hands a peer's inbound stream to the NodeServer
//! ```
//!
//! Why it is built this way (ractor + ractor_cluster 0.16.5):
//! - A quinn bi-stream is a `ClusterBidiStream` (`session_stream`): the dialling side
//!   hands it over with `client_connect_external`, the accepting side with
//!   `NodeServerMessage::ConnectionOpenedExternal`. The QUIC transport has already checked the
//!   peer's certificate (cluster CA, valid for `node-<id>`), so a peer with a foreign certificate
//!   never gets a stream, hence never a session. The cookie ractor_cluster insists on is the
//!   cluster name: it separates clusters, it does not authenticate anyone.
//! - The NodeServer insists on a TCP listener of its own. It is bound to 127.0.0.1, port 0, and
//!   made useless: its TLS acceptor has no certificate, so every handshake on it fails before a
//!   session starts (a local process knowing the cluster name could otherwise open one).
//! - `Isolated` connection mode: `Transitive` would dial other nodes over TCP itself.
//! - One NodeServer per process: process groups and the actor registry are process-global, and a
//!   process runs one node.
//! - Each session is labelled with the transport-authenticated peer and stream (`node-2/out-7`).
//!   A session whose ractor handshake names another node than its stream's peer is stopped, and
//!   so is one that arrived any other way (the TCP listener).
//! - One session per pair of nodes: a node dials a peer only while no stream to it is live (in
//!   either direction). After a stream to a peer breaks, the lower id redials at once and the
//!   higher only after `LOWER_PEER_GRACE` (3 s) (a node that joined later may not be known to the
//!   lower one); a node that never had a stream to a peer (it just started) dials at once, so
//!   its peers hear from it without waiting out their dial backoff. When both dial at once,
//!   ractor_cluster keeps one session (the one the node whose name sorts last opened) and stops
//!   the other; its dialler then sees the survivor and waits.
//! - All actor traffic between two nodes shares that one ordered stream, so it carries control
//!   traffic only; tokens and weights have their own QUIC streams.
//! - ractor_cluster drops a remote message that fails to decode without a word, so remote
//!   messages carry versioned bytes that the receiving actor decodes, logs and counts.
//!
//! Draining: dropping [`run`]'s future (its task aborted with the cluster's tasks) stops the
//! NodeServer, whose sessions end and drop their streams; peers see them close.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use helixflow_consensus::raft::NodeId;
use helixflow_runtime::config::NodeId as ConfigNodeId;
use helixflow_runtime::frame::StreamKind;
use helixflow_runtime::metric_names;
use helixflow_runtime::transport::{FrameReceiver, FrameSender, TransportError};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    ClusterBidiStream as _, IncomingEncryptionMode, NodeEventSubscription, NodeServer,
    NodeServerMessage, NodeSessionMessage,
};
use tokio::sync::watch;

use super::Cluster;
use super::reports_actor::ReportsActor;
use super::session_stream::{QuicSessionStream, StreamGuard};

/// The host part of every node's ractor name (`node-3@helixflow`).
const HOST: &str = "helixflow";
/// After a stream to a lower-id peer broke, this node dials it again only after this long without
/// a stream to it: longer than the transport's largest dial backoff (2 s), so that the lower
/// node, which redials at once, usually does it alone.
const LOWER_PEER_GRACE: Duration = Duration::from_secs(3);
/// A dialled session must authenticate within this long, or it is stopped and redialled.
const AUTH_DEADLINE: Duration = Duration::from_secs(5);
/// Pause before retrying after an error the transport does not back off from; doubled (up to
/// [`MAX_REDIAL_PAUSE`]) for each dialled session in a row that ended before it authenticated.
const REDIAL_PAUSE: Duration = Duration::from_millis(100);
const MAX_REDIAL_PAUSE: Duration = Duration::from_secs(2);
/// How often the set of peers to dial is refreshed (joins are rare).
const PEERS_EVERY: Duration = Duration::from_millis(500);
/// Pause before restarting the actors after one of them stopped.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// How long an inbound stream waits for the NodeServer to be up (only at start-up).
const SERVER_WAIT: Duration = Duration::from_secs(5);
/// Largest ractor_cluster frame accepted: control traffic only.
const MAX_SESSION_FRAME: u64 = 1 << 20;
/// Stream reset code for an inbound session stream this node cannot take.
const RESET_UNAVAILABLE: u32 = 1;

/// The node's handle on its sessions, shared by [`run`] and the inbound side ([`accept`]).
pub struct Link {
    me: NodeId,
    links: Arc<Links>,
    server: watch::Sender<Option<ActorRef<NodeServerMessage>>>,
}

impl Link {
    pub fn new(me: NodeId) -> Arc<Link> {
        Arc::new(Link {
            me,
            links: Arc::new(Links::default()),
            server: watch::Sender::new(None),
        })
    }

    fn server(&self) -> Option<ActorRef<NodeServerMessage>> {
        self.server.borrow().clone()
    }
}

/// Runs this node's NodeServer, ReportsActor and diallers until dropped.
pub async fn run(cluster: Arc<Cluster>, link: Arc<Link>) {
    loop {
        match start(&cluster, &link).await {
            Ok(mut running) => supervise(&cluster, &link, &mut running).await,
            Err(e) => tracing::error!(error = %format!("{e:#}"), "starting actor sessions"),
        }
        // A layer that fails at once (say its TCP acceptor cannot be built) would otherwise be
        // restarted in a tight loop.
        tokio::time::sleep(RESTART_PAUSE).await;
    }
}

/// Hands a peer's inbound `ActorSession` stream to the NodeServer.
pub async fn accept(link: Arc<Link>, peer: NodeId, mut send: FrameSender, recv: FrameReceiver) {
    let mut servers = link.server.subscribe();
    let server = match tokio::time::timeout(SERVER_WAIT, servers.wait_for(Option::is_some)).await {
        Ok(Ok(server)) => server.clone(),
        _ => None,
    };
    let Some(server) = server else {
        tracing::debug!(peer, "no NodeServer to take an actor session");
        let _ = send.reset(RESET_UNAVAILABLE);
        return;
    };
    let recv = match recv.into_inner() {
        Ok(recv) => recv,
        Err(e) => {
            tracing::debug!(peer, error = %e, "actor session stream");
            let _ = send.reset(RESET_UNAVAILABLE);
            return;
        }
    };
    let stream = link
        .links
        .stream(link.me, peer, Direction::Inbound, recv, send.into_inner());
    if server
        .cast(NodeServerMessage::ConnectionOpenedExternal {
            stream: Box::new(stream),
            is_server: true,
        })
        .is_err()
    {
        tracing::debug!(peer, "the NodeServer stopped; actor session stream dropped");
    }
}

/// The two actors of a running session layer; dropping this stops them.
struct Running {
    link: Arc<Link>,
    server: ActorRef<NodeServerMessage>,
    server_done: JoinHandle<()>,
    reports: ActorRef<super::reports_actor::ReportsMsg>,
    reports_done: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.link.server.send_replace(None);
        self.server.stop(Some("node stopping".to_owned()));
        self.reports.stop(Some("node stopping".to_owned()));
    }
}

async fn start(cluster: &Arc<Cluster>, link: &Arc<Link>) -> anyhow::Result<Running> {
    let (reports, reports_done) = Actor::spawn(
        None,
        ReportsActor {
            cluster: cluster.clone(),
        },
        (),
    )
    .await
    .context("starting the reports actor")?;
    let server = NodeServer::new(
        0,
        cluster.config.name.clone(),
        format!("node-{}", cluster.me),
        HOST.to_owned(),
        Some(refuse_tcp().context("the NodeServer's TCP acceptor")?),
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(Ipv4Addr::LOCALHOST.into())
    .with_max_inbound_frame_size(MAX_SESSION_FRAME);
    let (server, server_done) = match Actor::spawn(None, server, ()).await {
        Ok(spawned) => spawned,
        Err(e) => {
            reports.stop(None);
            return Err(e).context("starting the NodeServer");
        }
    };
    let running = Running {
        link: link.clone(),
        server: server.clone(),
        server_done,
        reports,
        reports_done,
    };
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "helixflow.sessions".to_owned(),
            subscription: Box::new(Events(link.links.clone())),
        })
        .map_err(|e| anyhow::anyhow!("subscribing to session events: {e}"))?;
    link.server.send_replace(Some(server));
    Ok(running)
}

/// Keeps a dialler per peer until one of the actors stops.
async fn supervise(cluster: &Arc<Cluster>, link: &Arc<Link>, running: &mut Running) {
    let mut diallers: HashMap<NodeId, Dialler> = HashMap::new();
    let mut tick = tokio::time::interval(PEERS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let peers = cluster.peer_ids();
        diallers.retain(|peer, _| peers.contains(peer));
        for peer in peers {
            diallers.entry(peer).or_insert_with(|| {
                Dialler(tokio::spawn(dial(cluster.clone(), link.clone(), peer)))
            });
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut running.server_done => {
                tracing::error!("the NodeServer stopped; restarting actor sessions");
                return;
            }
            _ = &mut running.reports_done => {
                tracing::error!("the reports actor stopped; restarting actor sessions");
                return;
            }
        }
    }
}

/// A dialler task, aborted when dropped.
struct Dialler(tokio::task::JoinHandle<()>);

impl Drop for Dialler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one session to `peer` open when it is this node's turn to dial (see [`plan`]).
async fn dial(cluster: Arc<Cluster>, link: Arc<Link>, peer: NodeId) {
    let Some(transport) = cluster.transport().cloned() else {
        return;
    };
    let mut changes = link.links.changed.subscribe();
    // Dialled sessions in a row that ended before authenticating (a peer refusing the ractor
    // handshake must not be redialled in a tight loop).
    let mut failed: u32 = 0;
    loop {
        loop {
            changes.borrow_and_update();
            match link.links.plan(cluster.me, peer, Instant::now()) {
                DialPlan::Now => break,
                DialPlan::After(wait) => {
                    let _ = tokio::time::timeout(wait, changes.changed()).await;
                }
                DialPlan::WhenClosed => {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        let (Some(server), Some(addr)) = (link.server(), cluster.peer_addr(peer)) else {
            // The NodeServer is restarting or the peer's address is not committed yet: both
            // change without a notification this loop could wait on.
            tokio::time::sleep(REDIAL_PAUSE).await;
            continue;
        };
        let (send, recv) = match transport
            .open(ConfigNodeId(peer), addr, StreamKind::ActorSession)
            .await
        {
            Ok(stream) => stream,
            Err(TransportError::Backoff { retry_in, .. }) => {
                tokio::time::sleep(retry_in).await;
                continue;
            }
            Err(TransportError::Closed) => return,
            Err(e) => {
                tracing::trace!(peer, error = %e, "opening an actor session stream");
                tokio::time::sleep(REDIAL_PAUSE).await;
                continue;
            }
        };
        let recv = match recv.into_inner() {
            Ok(recv) => recv,
            Err(e) => {
                tracing::debug!(peer, error = %e, "actor session stream");
                tokio::time::sleep(REDIAL_PAUSE).await;
                continue;
            }
        };
        let stream = link.links.stream(
            cluster.me,
            peer,
            Direction::Outbound,
            recv,
            send.into_inner(),
        );
        let label = stream.peer_label().unwrap_or_default();
        if let Err(e) = ractor_cluster::client_connect_external(&server, Box::new(stream)).await {
            tracing::debug!(peer, error = %e, "handing a stream to the NodeServer");
            tokio::time::sleep(REDIAL_PAUSE).await;
            continue;
        }
        let outcome = tokio::time::timeout(AUTH_DEADLINE, async {
            loop {
                changes.borrow_and_update();
                let status = link.links.status(&label);
                if status != SessionStatus::Pending {
                    return status;
                }
                if changes.changed().await.is_err() {
                    return SessionStatus::Gone;
                }
            }
        })
        .await;
        match outcome {
            Ok(SessionStatus::Authenticated) => {
                failed = 0;
                continue;
            }
            // Ended unauthenticated: refused, or the loser of a simultaneous connect.
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(peer, %label, "actor session did not authenticate in time; redialling");
                link.links.stop(&label);
            }
        }
        failed = failed.saturating_add(1);
        tokio::time::sleep(redial_pause(failed)).await;
    }
}

/// The pause after `failed` dialled sessions in a row ended unauthenticated.
fn redial_pause(failed: u32) -> Duration {
    REDIAL_PAUSE
        .saturating_mul(1 << failed.min(8))
        .min(MAX_REDIAL_PAUSE)
}

/// Which side opened a stream.
#[derive(Clone, Copy, Debug)]
enum Direction {
    Inbound,
    Outbound,
}

/// What a dialler should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DialPlan {
    Now,
    /// Not before this long (a lower peer is given time to dial first).
    After(Duration),
    /// A stream to the peer is live: wait until it closes.
    WhenClosed,
}

/// When to dial `peer`, given the live streams to it and how long there has been none since the
/// last one went away (`None`: there never was one).
fn plan(me: NodeId, peer: NodeId, live: usize, idle_for: Option<Duration>) -> DialPlan {
    match idle_for {
        _ if live > 0 => DialPlan::WhenClosed,
        None => DialPlan::Now,
        Some(_) if peer > me => DialPlan::Now,
        Some(idle) if idle >= LOWER_PEER_GRACE => DialPlan::Now,
        Some(idle) => DialPlan::After(LOWER_PEER_GRACE - idle),
    }
}

/// The node id a ractor session's peer claims, from its name (`node-3@helixflow`).
fn claimed_node(name: &str) -> Option<NodeId> {
    name.strip_suffix(HOST)?
        .strip_suffix('@')?
        .strip_prefix("node-")?
        .parse()
        .ok()
}

/// Where a labelled session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionStatus {
    /// Its stream is live and its session has not authenticated (or not been opened) yet.
    Pending,
    Authenticated,
    /// Its stream is gone.
    Gone,
}

/// The streams handed to the NodeServer and the sessions on them, as the diallers, the acceptor
/// and the NodeServer's events see them.
#[derive(Default)]
struct Links {
    state: Mutex<LinksState>,
    /// Bumped on every change; diallers wait on it.
    changed: watch::Sender<()>,
    next_stream: AtomicU64,
}

#[derive(Default)]
struct LinksState {
    /// Live streams (handed over, not yet dropped by ractor_cluster) per peer.
    live: HashMap<NodeId, usize>,
    /// Since when each peer has had no live stream (absent: it never had one).
    idle_since: HashMap<NodeId, Instant>,
    /// The peer of each live stream, by label.
    labels: HashMap<String, NodeId>,
    /// ractor sessions by their stream's label.
    sessions: HashMap<String, Session>,
}

struct Session {
    actor: ActorRef<NodeSessionMessage>,
    authenticated: bool,
}

impl Links {
    fn state(&self) -> MutexGuard<'_, LinksState> {
        // No code panics while holding it; a poisoned map is still a valid map.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_replace(());
    }

    /// Registers a stream about to be handed to the NodeServer.
    fn stream<R, W>(
        self: &Arc<Self>,
        me: NodeId,
        peer: NodeId,
        direction: Direction,
        reader: R,
        writer: W,
    ) -> QuicSessionStream<R, W> {
        let n = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let label = match direction {
            Direction::Inbound => format!("node-{peer}/in-{n}"),
            Direction::Outbound => format!("node-{peer}/out-{n}"),
        };
        {
            let mut state = self.state();
            *state.live.entry(peer).or_default() += 1;
            state.labels.insert(label.clone(), peer);
        }
        self.notify();
        let guard = Arc::new(Handed {
            links: self.clone(),
            label: label.clone(),
            peer,
        });
        QuicSessionStream::new(reader, writer, label, format!("node-{me}"), guard)
    }

    fn dropped(&self, label: &str, peer: NodeId) {
        {
            let mut state = self.state();
            state.labels.remove(label);
            let live = state.live.entry(peer).or_default();
            *live = live.saturating_sub(1);
            if *live == 0 {
                state.idle_since.insert(peer, Instant::now());
            }
        }
        self.notify();
    }

    fn plan(&self, me: NodeId, peer: NodeId, now: Instant) -> DialPlan {
        let state = self.state();
        let live = state.live.get(&peer).copied().unwrap_or(0);
        let idle_for = state
            .idle_since
            .get(&peer)
            .map(|since| now.saturating_duration_since(*since));
        plan(me, peer, live, idle_for)
    }

    fn status(&self, label: &str) -> SessionStatus {
        let state = self.state();
        if !state.labels.contains_key(label) {
            return SessionStatus::Gone;
        }
        match state.sessions.get(label) {
            Some(session) if session.authenticated => SessionStatus::Authenticated,
            _ => SessionStatus::Pending,
        }
    }

    fn stop(&self, label: &str) {
        if let Some(session) = self.state().sessions.get(label) {
            session
                .actor
                .stop(Some("not authenticated in time".to_owned()));
        }
    }

    fn set_gauge(state: &LinksState) {
        let up = state.sessions.values().filter(|s| s.authenticated).count();
        metrics::gauge!(metric_names::ACTOR_SESSIONS).set(up as f64);
    }
}

/// Held by both halves of a handed-over stream: when ractor_cluster drops them, the stream is
/// gone and the peer's dialler may dial again.
struct Handed {
    links: Arc<Links>,
    label: String,
    peer: NodeId,
}

impl StreamGuard for Handed {}

impl Drop for Handed {
    fn drop(&mut self) {
        self.links.dropped(&self.label, self.peer);
    }
}

/// The NodeServer's session events. Called from inside the NodeServer actor: only quick,
/// non-blocking work here.
struct Events(Arc<Links>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, session: NodeServerSessionInformation) {
        let label = session.peer_addr;
        let known = {
            let mut state = self.0.state();
            let known = state.labels.contains_key(&label);
            if known {
                state.sessions.insert(
                    label.clone(),
                    Session {
                        actor: session.actor.clone(),
                        authenticated: false,
                    },
                );
            }
            known
        };
        if !known {
            tracing::warn!(%label, "stopping an actor session that did not come over QUIC");
            session.actor.stop(Some("not over QUIC".to_owned()));
        }
        self.0.notify();
    }

    fn node_session_authenticated(&self, session: NodeServerSessionInformation) {
        let label = session.peer_addr;
        let claimed = session.peer_name.as_ref().map(|name| name.name.clone());
        let accepted = {
            let mut state = self.0.state();
            let peer = state.labels.get(&label).copied();
            let accepted = peer.is_some() && peer == claimed.as_deref().and_then(claimed_node);
            if accepted && let Some(entry) = state.sessions.get_mut(&label) {
                entry.authenticated = true;
            }
            Links::set_gauge(&state);
            accepted
        };
        if accepted {
            tracing::debug!(%label, "actor session up");
        } else {
            tracing::warn!(
                %label,
                ?claimed,
                "stopping an actor session whose ractor name is not its QUIC peer's"
            );
            session
                .actor
                .stop(Some("name is not the QUIC peer's".to_owned()));
        }
        self.0.notify();
    }

    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        {
            let mut state = self.0.state();
            state.sessions.remove(&session.peer_addr);
            Links::set_gauge(&state);
        }
        tracing::debug!(label = %session.peer_addr, "actor session ended");
        self.0.notify();
    }
}

/// A TLS acceptor for the NodeServer's TCP listener that completes no handshake: it has no
/// certificate to offer. Sessions come over QUIC only.
fn refuse_tcp() -> Result<IncomingEncryptionMode, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    Ok(IncomingEncryptionMode::Tls(
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    ))
}

#[derive(Debug)]
struct NoCertificate;

impl rustls::server::ResolvesServerCert for NoCertificate {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_break_the_lower_id_redials_and_the_higher_only_after_a_grace() {
        let grace = LOWER_PEER_GRACE;
        let second = Duration::from_secs(1);
        // Never connected (this node just started): both sides dial.
        assert_eq!(plan(1, 2, 0, None), DialPlan::Now);
        assert_eq!(plan(2, 1, 0, None), DialPlan::Now);
        // After a break.
        assert_eq!(plan(1, 2, 0, Some(Duration::ZERO)), DialPlan::Now);
        assert_eq!(plan(2, 1, 0, Some(Duration::ZERO)), DialPlan::After(grace));
        assert_eq!(plan(2, 1, 0, Some(second)), DialPlan::After(grace - second));
        assert_eq!(plan(2, 1, 0, Some(grace)), DialPlan::Now);
        // Any live stream, whoever opened it, is the session: nobody dials.
        assert_eq!(plan(1, 2, 1, None), DialPlan::WhenClosed);
        assert_eq!(plan(2, 1, 2, Some(grace)), DialPlan::WhenClosed);
    }

    #[test]
    fn refused_sessions_are_redialled_ever_more_slowly() {
        assert_eq!(redial_pause(1), Duration::from_millis(200));
        assert_eq!(redial_pause(2), Duration::from_millis(400));
        assert_eq!(redial_pause(5), MAX_REDIAL_PAUSE);
        assert_eq!(redial_pause(u32::MAX), MAX_REDIAL_PAUSE);
    }

    #[test]
    fn streams_are_counted_until_both_halves_are_dropped() {
        let links = Arc::new(Links::default());
        let t0 = Instant::now();
        assert_eq!(links.plan(2, 1, t0), DialPlan::Now);
        let stream = links.stream(
            2,
            1,
            Direction::Inbound,
            tokio::io::empty(),
            tokio::io::sink(),
        );
        let label = stream.peer_label().unwrap();
        assert!(label.starts_with("node-1/in-"), "{label}");
        assert_eq!(links.plan(2, 1, t0), DialPlan::WhenClosed);
        assert_eq!(links.status(&label), SessionStatus::Pending);
        let (reader, writer) = Box::new(stream).split();
        drop(reader);
        assert_eq!(links.plan(2, 1, t0), DialPlan::WhenClosed);
        drop(writer);
        assert_eq!(links.status(&label), SessionStatus::Gone);
        // The grace counts from when the last stream went away.
        let now = Instant::now();
        assert!(
            matches!(links.plan(2, 1, now), DialPlan::After(wait)
                if wait > LOWER_PEER_GRACE - Duration::from_secs(1)),
            "{:?}",
            links.plan(2, 1, now)
        );
        assert_eq!(links.plan(2, 1, now + LOWER_PEER_GRACE), DialPlan::Now);
    }

    #[test]
    fn session_names_are_parsed_strictly() {
        assert_eq!(claimed_node("node-3@helixflow"), Some(3));
        assert_eq!(claimed_node("node-12@helixflow"), Some(12));
        for name in [
            "node-3",
            "node-3@elsewhere",
            "node-x@helixflow",
            "3@helixflow",
            "node-3@helixflow@helixflow",
            "",
        ] {
            assert_eq!(claimed_node(name), None, "{name}");
        }
    }

    #[tokio::test]
    async fn the_tcp_listener_completes_no_tls_handshake() {
        let IncomingEncryptionMode::Tls(acceptor) = refuse_tcp().unwrap() else {
            panic!("not a TLS acceptor");
        };
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.map(drop)
        });
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let client = tokio_rustls::TlsConnector::from(Arc::new(client_config))
            .connect(name, tcp)
            .await;
        assert!(client.is_err(), "a TLS client got through");
        let served = server.await.unwrap();
        let error = served.expect_err("the acceptor completed a handshake");
        assert!(
            error.to_string().contains("certificate"),
            "refused for another reason: {error}"
        );
    }
}
