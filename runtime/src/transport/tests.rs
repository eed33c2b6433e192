//! The transport over real UDP sockets on 127.0.0.1, certificates in temporary directories.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use tokio::sync::mpsc;

use super::*;
use crate::frame::FrameError;

const KINDS: [StreamKind; 4] = [
    StreamKind::Raft,
    StreamKind::ActorSession,
    StreamKind::Inference,
    StreamKind::WeightTransfer,
];

/// Deadline for anything that should happen promptly.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Message {
    Ping { seq: u32, text: String },
    Pong { seq: u32 },
    Blob(Vec<u8>),
}

fn localhost() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// Certificates for `nodes` under one fresh CA.
fn certs(cluster: &str, nodes: &[u64]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<_> = nodes
        .iter()
        .map(|id| (NodeId(*id), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]))
        .collect();
    init_certs(dir.path(), cluster, &nodes).unwrap();
    dir
}

fn bind_with(
    dir: &Path,
    id: u64,
    options: TransportOptions,
) -> (Transport, mpsc::Receiver<Inbound>) {
    let identity = NodeIdentity::load(dir, NodeId(id)).unwrap();
    Transport::bind(localhost(), NodeId(id), identity, options).unwrap()
}

fn bind(dir: &Path, id: u64) -> (Transport, mpsc::Receiver<Inbound>) {
    bind_with(dir, id, TransportOptions::default())
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Opens a stream `from` → `to`, sends a ping and finishes, checks what the acceptor sees, and
/// answers with a pong.
async fn ping(
    from: &Transport,
    to: &Transport,
    to_inbound: &mut mpsc::Receiver<Inbound>,
    kind: StreamKind,
    seq: u32,
) {
    let (mut send, mut recv) = within("open", from.open(to.me(), to.local_addr(), kind))
        .await
        .unwrap();
    let ping = Message::Ping {
        seq,
        text: format!("{kind:?} from {}", from.me()),
    };
    send.send(&ping).await.unwrap();
    send.finish().unwrap();

    let mut inbound = within("inbound stream", to_inbound.recv()).await.unwrap();
    assert_eq!((inbound.peer, inbound.kind), (from.me(), kind));
    assert_eq!(inbound.recv.recv::<Message>().await.unwrap(), Some(ping));
    assert_eq!(inbound.recv.recv::<Message>().await.unwrap(), None);
    inbound.send.send(&Message::Pong { seq }).await.unwrap();
    inbound.send.finish().unwrap();

    let pong = within("pong", recv.recv::<Message>()).await.unwrap();
    assert_eq!(pong, Some(Message::Pong { seq }));
    assert_eq!(recv.recv::<Message>().await.unwrap(), None);
}

#[tokio::test]
async fn frames_flow_both_ways_on_every_stream_kind() {
    let dir = certs("test", &[1, 2]);
    let (a, mut a_inbound) = bind(dir.path(), 1);
    let (b, mut b_inbound) = bind(dir.path(), 2);
    for (seq, kind) in (0..).zip(KINDS) {
        ping(&a, &b, &mut b_inbound, kind, seq).await;
        ping(&b, &a, &mut a_inbound, kind, seq).await;
    }
    let peers: Vec<NodeId> = a.peer_rtts().into_iter().map(|(peer, _)| peer).collect();
    assert_eq!(peers, vec![NodeId(2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_share_one_connection() {
    const STREAMS: u32 = 200;
    let dir = certs("test", &[1, 2]);
    let (a, _a_inbound) = bind(dir.path(), 1);
    let (b, mut b_inbound) = bind(dir.path(), 2);
    // Echo server: each stream answers every blob with its length and the stream's seq.
    tokio::spawn(async move {
        while let Some(mut inbound) = b_inbound.recv().await {
            tokio::spawn(async move {
                while let Some(message) = inbound.recv.recv::<Message>().await.unwrap() {
                    inbound.send.send(&message).await.unwrap();
                }
                inbound.send.finish().unwrap();
            });
        }
    });
    let mut clients = tokio::task::JoinSet::new();
    for seq in 0..STREAMS {
        let a = a.clone();
        let b_addr = b.local_addr();
        clients.spawn(async move {
            let (mut send, mut recv) = a.open(NodeId(2), b_addr, StreamKind::Inference).await?;
            // Some messages span many QUIC packets and reads.
            let blob = Message::Blob(vec![seq as u8; 1000 + 1000 * seq as usize]);
            for message in [Message::Pong { seq }, blob.clone(), Message::Pong { seq }] {
                send.send(&message).await?;
                assert_eq!(recv.recv::<Message>().await?, Some(message));
            }
            send.finish()?;
            assert_eq!(recv.recv::<Message>().await?, None);
            Ok::<_, TransportError>(())
        });
    }
    let results = within("all streams", clients.join_all()).await;
    for result in results {
        result.unwrap();
    }
    assert_eq!(a.shared.endpoint.open_connections(), 1);
    assert_eq!(b.shared.endpoint.open_connections(), 1);
}

#[tokio::test]
async fn a_node_with_a_later_issued_certificate_joins() {
    let dir = certs("test", &[1]);
    issue_node_cert(dir.path(), NodeId(5), &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
    let (a, mut a_inbound) = bind(dir.path(), 1);
    let (late, mut late_inbound) = bind(dir.path(), 5);
    ping(&late, &a, &mut a_inbound, StreamKind::Raft, 1).await;
    ping(&a, &late, &mut late_inbound, StreamKind::Raft, 2).await;
}

#[tokio::test]
async fn frames_over_the_receivers_limit_are_errors() {
    let dir = certs("test", &[1, 2]);
    let (a, _a_inbound) = bind(dir.path(), 1);
    let small = TransportOptions {
        max_frame: 1024,
        ..TransportOptions::default()
    };
    let (b, mut b_inbound) = bind_with(dir.path(), 2, small);
    let (mut send, _recv) = a
        .open(b.me(), b.local_addr(), StreamKind::WeightTransfer)
        .await
        .unwrap();
    send.send(&Message::Blob(vec![1; 10_000])).await.unwrap();
    let mut inbound = within("inbound stream", b_inbound.recv()).await.unwrap();
    let error = inbound.recv.recv::<Message>().await.unwrap_err();
    assert!(
        matches!(
            error,
            TransportError::Frame(FrameError::TooLarge { max: 1024, .. })
        ),
        "{error}"
    );
}

/// Counts counters by name and labels, for asserting on what the transport records.
#[derive(Default)]
struct TestRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

fn counter_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

impl Recorder for &'static TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let key = counter_key(key.name(), &labels);
        let counter = lock(&self.counters).entry(key).or_default().clone();
        Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The process-wide test recorder; the first call installs it.
fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).expect("no other recorder in this test binary");
        recorder
    })
}

fn handshake_failures(direction: &str, reason: &str) -> u64 {
    let key = counter_key(
        metric_names::QUIC_HANDSHAKE_FAILURES,
        &[("direction", direction), ("reason", reason)],
    );
    lock(&recorder().counters)
        .get(&key)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

#[tokio::test]
async fn nodes_under_another_ca_are_refused_both_ways() {
    let before_in = handshake_failures("inbound", "tls");
    let before_out = handshake_failures("outbound", "tls");
    let ours = certs("ours", &[1, 2]);
    let theirs = certs("theirs", &[9]);
    let (a, mut a_inbound) = bind(ours.path(), 1);
    let (foreign, mut foreign_inbound) = bind(theirs.path(), 9);

    // The foreign node rejects a's server certificate.
    let error = within(
        "refusal",
        foreign.open(a.me(), a.local_addr(), StreamKind::Raft),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            TransportError::Connect {
                peer: NodeId(1),
                ..
            }
        ),
        "{error}"
    );
    // A failed dial backs off: the next open fails at once.
    let error = foreign
        .open(a.me(), a.local_addr(), StreamKind::Raft)
        .await
        .unwrap_err();
    assert!(
        matches!(error, TransportError::Backoff { peer: NodeId(1), retry_in } if retry_in <= FIRST_BACKOFF),
        "{error}"
    );

    // a rejects the foreign node's server certificate.
    let error = within(
        "refusal",
        a.open(foreign.me(), foreign.local_addr(), StreamKind::Raft),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            TransportError::Connect {
                peer: NodeId(9),
                ..
            }
        ),
        "{error}"
    );

    // A node that trusts our CA but presents a foreign certificate: a's client verifier refuses.
    let cluster_ca = NodeIdentity::load(ours.path(), NodeId(1)).unwrap().ca;
    let mut mixed = NodeIdentity::load(theirs.path(), NodeId(9)).unwrap();
    mixed.ca = cluster_ca;
    let (mixed, _mixed_inbound) =
        Transport::bind(localhost(), NodeId(9), mixed, TransportOptions::default()).unwrap();
    let error = within(
        "refusal",
        mixed.open(a.me(), a.local_addr(), StreamKind::Raft),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            TransportError::Connect {
                peer: NodeId(1),
                ..
            }
        ),
        "{error}"
    );

    // Each refusal is counted on both ends: 3 inbound (a twice, foreign once), 3 outbound.
    wait_until("refusals counted", || {
        handshake_failures("inbound", "tls") >= before_in + 3
            && handshake_failures("outbound", "tls") >= before_out + 3
    })
    .await;

    // No refused connection delivered a stream: the first a sees is a cluster peer's.
    let (b, _b_inbound) = bind(ours.path(), 2);
    let (mut send, _recv) = b
        .open(a.me(), a.local_addr(), StreamKind::Raft)
        .await
        .unwrap();
    send.send(&Message::Pong { seq: 1 }).await.unwrap();
    let inbound = within("inbound stream", a_inbound.recv()).await.unwrap();
    assert_eq!(inbound.peer, NodeId(2));
    assert!(foreign_inbound.try_recv().is_err());
}

#[tokio::test]
async fn a_node_claiming_an_id_its_certificate_lacks_is_refused() {
    let before = handshake_failures("inbound", "identity");
    let dir = certs("test", &[1, 2]);
    let (a, mut a_inbound) = bind(dir.path(), 1);
    // Node 2's valid certificate, used to claim id 7.
    let mut impostor = NodeIdentity::load(dir.path(), NodeId(2)).unwrap();
    impostor.node = NodeId(7);
    let (impostor, _) = Transport::bind(
        localhost(),
        NodeId(7),
        impostor,
        TransportOptions::default(),
    )
    .unwrap();
    let error = within(
        "refusal",
        impostor.open(a.me(), a.local_addr(), StreamKind::Raft),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, TransportError::IdentityRefused { peer: NodeId(1), why } if why.contains("node-7")),
        "{error}"
    );
    wait_until("refusal counted", || {
        handshake_failures("inbound", "identity") > before
    })
    .await;

    let (b, _b_inbound) = bind(dir.path(), 2);
    let (mut send, _recv) = b
        .open(a.me(), a.local_addr(), StreamKind::Raft)
        .await
        .unwrap();
    send.send(&Message::Pong { seq: 1 }).await.unwrap();
    let inbound = within("inbound stream", a_inbound.recv()).await.unwrap();
    assert_eq!(inbound.peer, NodeId(2));
}

#[test]
fn bind_refuses_an_identity_of_another_node() {
    let dir = certs("test", &[1, 2]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let identity = NodeIdentity::load(dir.path(), NodeId(1)).unwrap();
    let error = Transport::bind(
        localhost(),
        NodeId(2),
        identity,
        TransportOptions::default(),
    )
    .err()
    .unwrap();
    assert!(
        matches!(
            error,
            TransportError::Options {
                field: "identity",
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_killed_peer_fails_waiting_streams_within_the_idle_timeout() {
    let dir = certs("test", &[1, 2]);
    let options = TransportOptions::default();
    let (a, _a_inbound) = bind(dir.path(), 1);
    // Node 2 lives in its own runtime, so that it can die without sending a goodbye.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (b, mut b_inbound) = {
        let _guard = doomed.enter();
        bind(dir.path(), 2)
    };
    doomed.spawn(async move {
        let mut inbound = b_inbound.recv().await.unwrap();
        let ping = inbound.recv.recv::<Message>().await.unwrap().unwrap();
        inbound.send.send(&ping).await.unwrap();
        // Holds the stream open without answering again.
        std::future::pending::<()>().await;
    });
    let (mut send, mut recv) = a
        .open(b.me(), b.local_addr(), StreamKind::Inference)
        .await
        .unwrap();
    send.send(&Message::Pong { seq: 1 }).await.unwrap();
    let echo = within("echo", recv.recv::<Message>()).await.unwrap();
    assert_eq!(echo, Some(Message::Pong { seq: 1 }));

    // Kill node 2: its endpoint and connection drivers stop mid-flight, no close is sent.
    doomed.shutdown_background();
    let started = Instant::now();
    let slack = Duration::from_secs(1);
    let result = tokio::time::timeout(options.idle_timeout + slack, recv.recv::<Message>())
        .await
        .expect("a stream to a dead peer must fail within the idle timeout, not hang");
    assert!(
        matches!(
            result,
            Err(TransportError::ConnectionLost(ConnectionError::TimedOut))
        ),
        "{result:?}"
    );
    assert!(started.elapsed() >= options.idle_timeout / 2);
    drop(b);
}

#[tokio::test]
async fn after_the_peer_restarts_at_the_same_address_open_reconnects() {
    let dir = certs("test", &[1, 2]);
    let options = TransportOptions {
        connect_timeout: Duration::from_millis(500),
        ..TransportOptions::default()
    };
    let (a, _a_inbound) = bind_with(dir.path(), 1, options);
    let (b, mut b_inbound) = bind(dir.path(), 2);
    let b_addr = b.local_addr();
    ping(&a, &b, &mut b_inbound, StreamKind::Raft, 1).await;
    let (_send, mut recv) = a.open(NodeId(2), b_addr, StreamKind::Raft).await.unwrap();

    // A clean close reaches streams at once, well before any idle timeout.
    b.close();
    let result = within("stream failure", recv.recv::<Message>()).await;
    assert!(
        matches!(
            result,
            Err(TransportError::ConnectionLost(
                ConnectionError::ApplicationClosed(_)
            ))
        ),
        "{result:?}"
    );
    drop((b, b_inbound));

    // Nobody serves node 2 (or a closing endpoint refuses): the dial fails, then backs off.
    let error = within("failed dial", a.open(NodeId(2), b_addr, StreamKind::Raft))
        .await
        .unwrap_err();
    assert!(matches!(error, TransportError::Connect { .. }), "{error}");
    let error = a
        .open(NodeId(2), b_addr, StreamKind::Raft)
        .await
        .unwrap_err();
    assert!(matches!(error, TransportError::Backoff { .. }), "{error}");

    // Node 2 comes back on the same port once its old socket is released.
    let (b, mut b_inbound) = within("rebind", async {
        loop {
            let identity = NodeIdentity::load(dir.path(), NodeId(2)).unwrap();
            match Transport::bind(b_addr, NodeId(2), identity, TransportOptions::default()) {
                Ok(bound) => break bound,
                Err(TransportError::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind: {e}"),
            }
        }
    })
    .await;
    assert_eq!(b.local_addr(), b_addr);

    // a dials again once its backoff allows.
    let (mut send, mut recv) = within("reconnect", async {
        loop {
            match a.open(NodeId(2), b_addr, StreamKind::Raft).await {
                Ok(stream) => break stream,
                Err(TransportError::Backoff { retry_in, .. }) => tokio::time::sleep(retry_in).await,
                Err(TransportError::Connect { .. }) => {}
                Err(e) => panic!("reconnect: {e}"),
            }
        }
    })
    .await;
    send.send(&Message::Pong { seq: 2 }).await.unwrap();
    let mut inbound = within("inbound stream", b_inbound.recv()).await.unwrap();
    assert_eq!(inbound.peer, NodeId(1));
    assert_eq!(
        inbound.recv.recv::<Message>().await.unwrap(),
        Some(Message::Pong { seq: 2 })
    );
    inbound.send.send(&Message::Pong { seq: 3 }).await.unwrap();
    assert_eq!(
        within("answer", recv.recv::<Message>()).await.unwrap(),
        Some(Message::Pong { seq: 3 })
    );
}

#[test]
fn backoff_doubles_from_50_ms_to_2_s_and_clears_on_success() {
    let start = Instant::now();
    let mut backoff = Backoff::default();
    assert_eq!(backoff.retry_in(start), None);
    let mut delays = Vec::new();
    for _ in 0..8 {
        backoff.failed(start);
        delays.push(backoff.retry_in(start).unwrap());
    }
    let ms: Vec<u64> = delays.iter().map(|d| d.as_millis() as u64).collect();
    assert_eq!(ms, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    assert_eq!(
        backoff.retry_in(start + Duration::from_millis(1999)),
        Some(Duration::from_millis(1))
    );
    assert_eq!(backoff.retry_in(start + Duration::from_secs(2)), None);
    backoff.succeeded();
    backoff.failed(start);
    assert_eq!(backoff.retry_in(start), Some(FIRST_BACKOFF));
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_certs_refuses_to_overwrite_the_ca_and_issue_adds_nodes() {
    let dir = certs("test", &[1, 2]);
    let path = dir.path();
    for file in [
        "ca.pem",
        "ca.key",
        "node-1.pem",
        "node-1.key",
        "node-2.pem",
        "node-2.key",
    ] {
        assert!(path.join(file).is_file(), "{file}");
    }
    #[cfg(unix)]
    for file in ["ca.key", "node-1.key", "node-2.key"] {
        assert_eq!(mode(&path.join(file)), 0o600, "{file}");
    }
    let ca_before = std::fs::read(path.join("ca.key")).unwrap();

    let error = init_certs(path, "test", &[(NodeId(3), vec![])]).unwrap_err();
    match &error {
        TransportError::Config { file, .. } => assert_eq!(file, &path.join("ca.key")),
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains("already exists"), "{error}");
    assert_eq!(std::fs::read(path.join("ca.key")).unwrap(), ca_before);
    assert!(!path.join("node-3.pem").exists());

    issue_node_cert(path, NodeId(3), &[]).unwrap();
    NodeIdentity::load(path, NodeId(3)).unwrap();
    let error = issue_node_cert(path, NodeId(3), &[]).unwrap_err();
    assert!(error.to_string().contains("node-3.key"), "{error}");
}

#[test]
fn init_certs_refuses_duplicate_node_ids() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = [(NodeId(1), vec![]), (NodeId(1), vec![])];
    let error = init_certs(dir.path(), "test", &nodes).unwrap_err();
    assert!(
        error.to_string().contains("node-1 is listed twice"),
        "{error}"
    );
}

/// Asserts that loading node `id` from `dir` fails naming `file`.
fn assert_load_names(dir: &Path, id: u64, file: &str) {
    let error = NodeIdentity::load(dir, NodeId(id)).unwrap_err();
    let message = error.to_string();
    assert!(message.contains(file), "{file} not named in: {message}");
}

#[test]
fn load_names_the_missing_or_bad_file() {
    let dir = certs("test", &[1, 2]);
    let path = dir.path();
    let foreign = certs("other", &[1]);
    let write = |file: &str, contents: &[u8]| std::fs::write(path.join(file), contents).unwrap();
    let copy = |from: &Path, to: &str| std::fs::copy(from, path.join(to)).unwrap();

    assert_load_names(path, 4, "node-4.pem");

    let (cert_1, key_1) = tls::node_files(path, NodeId(1));
    let (cert_2, _) = tls::node_files(path, NodeId(2));
    let cert = std::fs::read(&cert_1).unwrap();
    let key = std::fs::read(&key_1).unwrap();

    write("node-1.key", b"garbage");
    assert_load_names(path, 1, "node-1.key");
    write("node-1.key", &key);

    write(
        "node-1.pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    assert_load_names(path, 1, "node-1.pem");

    // Node 2's certificate with node 1's key.
    copy(&cert_2, "node-1.pem");
    assert_load_names(path, 1, "node-1.key");

    // A matching pair from another CA.
    let (foreign_cert, foreign_key) = tls::node_files(foreign.path(), NodeId(1));
    copy(&foreign_cert, "node-1.pem");
    copy(&foreign_key, "node-1.key");
    assert_load_names(path, 1, "node-1.pem");
    write("node-1.pem", &cert);
    write("node-1.key", &key);

    // Node 1's valid pair filed as node 6's.
    copy(&cert_1, "node-6.pem");
    copy(&key_1, "node-6.key");
    assert_load_names(path, 6, "node-6.pem");

    NodeIdentity::load(path, NodeId(1)).unwrap();
    write("ca.pem", b"not a certificate");
    assert_load_names(path, 1, "ca.pem");
}
