//! A node with a certificate from another CA — same cluster file, same node id, its own
//! `helixflow certs init` — never joins: no node lists it `up` or places a replica on it, it
//! never becomes ready, and the cluster's nodes count the refused QUIC handshakes. The cluster
//! keeps its leader and keeps serving meanwhile.

use std::time::{Duration, Instant};

use helixflow_chaos_tests::{
    ChaosRng, Client, Cluster, ClusterOptions, greedy_chat, hold_for, metric_sum, wait_for,
};

const TEST: &str = "foreign_certificate";
const HANDSHAKE_FAILURES: &str = "helixflow_quic_handshake_failures_total";
/// The stranger: listed in the cluster file as a non-voter, started with foreign certificates.
const STRANGER: u64 = 4;
const MEMBERS: [u64; 3] = [1, 2, 3];
/// How long the stranger is watched not joining: several report intervals (200 ms), failure
/// detector periods (1 s suspect, 3 s down) and dial backoffs (up to 2 s).
const WATCH: Duration = Duration::from_secs(5);

fn options() -> ClusterOptions {
    ClusterOptions {
        listed_non_voters: 1,
        ..ClusterOptions::default()
    }
}

/// Starts the stranger on a copy of the cluster file whose `certs_dir` holds a CA of its own.
async fn start_stranger(cluster: &mut Cluster) {
    let foreign = cluster.write_config_with_own_ca("foreign.toml", "foreign-certs");
    cluster.node_mut(STRANGER).set_config(&foreign);
    cluster.start_node(STRANGER);
    // It runs and serves HTTP, so it is trying to reach the cluster, whatever it then says.
    let (client, url) = (cluster.client.clone(), cluster.url(STRANGER));
    wait_for(
        Duration::from_secs(30),
        "the stranger to serve /metrics",
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .metrics(&url)
                    .await
                    .map(drop)
                    .map_err(|e| format!("{e:#}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificate() {
    let rng = ChaosRng::from_env(TEST);
    let mut cluster = Cluster::start(TEST, &rng, options()).await;
    let (leader, term) = cluster
        .agreed_leader(&MEMBERS, Duration::from_secs(10))
        .await;
    // Node 4 is listed but has not started. A node never heard from can be reported `up` during
    // a leader's first second (a node bug, see tests/unheard_voter.rs); wait that out, so that
    // this test is about the stranger alone.
    let cluster_ref = &cluster;
    let ((), took) = wait_for(
        Duration::from_secs(15),
        "no member to count node-4 in before it starts",
        || async move {
            match cluster_ref.counted_in(&MEMBERS, STRANGER).await? {
                Some(why) => Err(why),
                None => Ok(()),
            }
        },
    )
    .await;
    eprintln!("[chaos] {TEST}: members count node-{STRANGER} out after {took:?}");

    // Before the stranger: no refused handshake anywhere (the members share a CA), so what is
    // counted later is the stranger's doing.
    for id in MEMBERS {
        let failures = handshake_failures(&cluster.client, &cluster.url(id), &[]).await;
        assert_eq!(
            failures, 0.0,
            "node-{id} refused handshakes before the stranger came"
        );
    }

    start_stranger(&mut cluster).await;
    let stranger_url = cluster.url(STRANGER);
    let cluster_ref = &cluster;
    let checks = hold_for(WATCH, "the stranger staying out", || {
        let url = stranger_url.clone();
        async move {
            if cluster_ref.client.ready(&url, Duration::from_secs(1)).await {
                return Err(format!(
                    "node-{STRANGER} (foreign CA) answers /ready with 200"
                ));
            }
            match cluster_ref.counted_in(&MEMBERS, STRANGER).await? {
                Some(why) => Err(why),
                None => Ok(()),
            }
        }
    })
    .await;
    assert!(
        cluster.node_mut(STRANGER).exited().is_none(),
        "the stranger exited; a refused node should keep trying, not crash"
    );

    // Every member refused it: inbound (the stranger dials them) and outbound (they dial the
    // node-4 address the cluster file lists and get a certificate from the wrong CA).
    let client = cluster.client.clone();
    let mut counted = Vec::new();
    for id in MEMBERS {
        let url = cluster.url(id);
        let (failures, _) = wait_for(
            Duration::from_secs(10),
            &format!("node-{id} to count refused handshakes"),
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let failures = handshake_failures(&client, &url, &[]).await;
                    if failures > 0.0 {
                        Ok(failures)
                    } else {
                        Err(format!("{HANDSHAKE_FAILURES} is {failures}"))
                    }
                }
            },
        )
        .await;
        let inbound =
            handshake_failures(&client, &url, &["direction=\"inbound\"", "reason=\"tls\""]).await;
        counted.push((id, failures, inbound));
    }
    let stranger_refused = handshake_failures(&client, &stranger_url, &[]).await;
    eprintln!(
        "[chaos] {TEST}: over {WATCH:?} ({checks} checks) node-{STRANGER} never joined; refused \
         handshakes per member (total, inbound tls): {counted:?}; the stranger refused \
         {stranger_refused}"
    );
    assert!(
        counted.iter().any(|&(_, _, inbound)| inbound > 0.0),
        "no member refused the stranger's inbound handshake over TLS: {counted:?}"
    );

    // The members never noticed beyond that: same leader, same term, still serving.
    let (leader_now, term_now) = cluster
        .agreed_leader(&MEMBERS, Duration::from_secs(5))
        .await;
    assert_eq!(
        (leader_now, term_now),
        (leader, term),
        "the stranger disturbed the leadership"
    );
    for id in MEMBERS {
        let reply = client
            .chat(
                &cluster.url(id),
                client.admin_key(),
                &greedy_chat("Strangers at the door", 4),
            )
            .await
            .unwrap();
        assert_eq!(
            reply.status, 200,
            "node-{id} while the stranger knocks: {}",
            reply.body
        );
    }
}

/// An operator asks the cluster to add the stranger (`helixflow join`, `POST /admin/v1/nodes`).
/// The cluster cannot even complete a handshake with it, so it must not become a voter: a
/// voter that never answers leaves the cluster one failure from losing its quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_node_cannot_be_joined() {
    const TEST: &str = "a_foreign_node_cannot_be_joined";
    let mut rng = ChaosRng::from_env(TEST);
    let mut cluster = Cluster::start(TEST, &rng, options()).await;
    start_stranger(&mut cluster).await;

    let via = rng.pick(&MEMBERS);
    let stranger = cluster.node(STRANGER);
    let asked = Instant::now();
    let reply = cluster
        .client
        .join_node(
            &cluster.url(via),
            STRANGER,
            stranger.http_addr,
            stranger.peer_addr,
        )
        .await
        .expect("POST /admin/v1/nodes answered");
    eprintln!(
        "[chaos] {TEST}: join via node-{via} answered {} after {:?}: {}",
        reply.status,
        asked.elapsed(),
        reply.body
    );
    let status = cluster.status(via).await;
    let voter = status.nodes.iter().any(|n| n.id == STRANGER && n.voter);
    assert!(
        !(200..300).contains(&reply.status) && !voter,
        "node-{STRANGER}, whose certificate no member accepts, was joined (HTTP {}, voter \
         {voter}): {status:?}",
        reply.status
    );

    // What a user would notice otherwise: one member down and the metadata is read-only.
    let (leader, _) = cluster
        .agreed_leader(&MEMBERS, Duration::from_secs(10))
        .await;
    let followers: Vec<u64> = MEMBERS.into_iter().filter(|&id| id != leader).collect();
    let victim = rng.pick(&followers);
    cluster.kill(victim);
    let reply = cluster
        .client
        .create_key(&cluster.url(leader), "one-member-down", "user")
        .await
        .unwrap();
    assert_eq!(
        reply.status, 201,
        "with node-{victim} down, 2 of 3 members are a quorum: {}",
        reply.body
    );
}

async fn handshake_failures(client: &Client, url: &str, labels: &[&str]) -> f64 {
    let text = client
        .metrics(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}/metrics: {e:#}"));
    metric_sum(&text, HANDSHAKE_FAILURES, labels).unwrap_or(0.0)
}
