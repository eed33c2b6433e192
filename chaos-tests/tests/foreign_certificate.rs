//! A node with a certificate from another CA — same cluster file, same node id, its own
//! `helixflow certs init` — never joins: no node lists it `up`, it never becomes ready, and the
//! cluster's nodes count the refused QUIC handshakes. The cluster keeps serving meanwhile.

use std::time::Duration;

use helixflow_chaos_tests::{
    ChaosRng, Client, Cluster, ClusterOptions, greedy_chat, hold_for, metric_sum, wait_for,
};

const TEST: &str = "foreign_certificate";
const HANDSHAKE_FAILURES: &str = "helixflow_quic_handshake_failures_total";
/// The stranger: listed in the cluster file as a non-voter, started with foreign certificates.
const STRANGER: u64 = 4;
/// How long the stranger is watched not joining: several report intervals (200 ms), failure
/// detector periods (1 s suspect, 3 s down) and dial backoffs (up to 2 s).
const WATCH: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificate() {
    let rng = ChaosRng::from_env(TEST);
    let options = ClusterOptions {
        listed_non_voters: 1,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(TEST, &rng, options).await;
    let members: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != STRANGER)
        .collect();
    let (leader, term) = cluster
        .agreed_leader(&members, Duration::from_secs(10))
        .await;

    // Before the stranger: no refused handshake anywhere (the members share a CA), so what is
    // counted later is the stranger's doing.
    for &id in &members {
        let failures = handshake_failures(&cluster.client, &cluster.url(id), &[]).await;
        assert_eq!(
            failures, 0.0,
            "node-{id} refused handshakes before the stranger came"
        );
    }

    let foreign = cluster.write_config_with_own_ca("foreign.toml", "foreign-certs");
    cluster.node_mut(STRANGER).set_config(&foreign);
    cluster.start_node(STRANGER);
    let stranger_url = cluster.url(STRANGER);
    // It runs and serves HTTP (so it is trying to reach the cluster), whatever it then says.
    let client = cluster.client.clone();
    wait_for(
        Duration::from_secs(30),
        "the stranger to serve /metrics",
        || {
            let (client, url) = (client.clone(), stranger_url.clone());
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

    let member_urls: Vec<(u64, String)> = members.iter().map(|&id| (id, cluster.url(id))).collect();
    let checks = hold_for(WATCH, "the stranger staying out", || {
        let (client, url, members) = (client.clone(), stranger_url.clone(), member_urls.clone());
        async move {
            if client.ready(&url, Duration::from_secs(1)).await {
                return Err(format!(
                    "node-{STRANGER} (foreign CA) answers /ready with 200"
                ));
            }
            for (id, member) in members {
                let status = client
                    .cluster_status_within(&member, Duration::from_secs(2))
                    .await
                    .map_err(|e| format!("node-{id}: {e:#}"))?;
                if status.status_of(STRANGER) == Some("up") {
                    return Err(format!("node-{id} lists node-{STRANGER} as up: {status:?}"));
                }
                if status
                    .hosts_of(helixflow_chaos_tests::MODEL)
                    .contains(&STRANGER)
                {
                    return Err(format!("node-{id} placed a replica on node-{STRANGER}"));
                }
            }
            Ok(())
        }
    })
    .await;
    assert!(
        cluster.node_mut(STRANGER).exited().is_none(),
        "the stranger exited; a refused node should keep trying, not crash"
    );

    // Every member refused it: inbound (the stranger dials them) and outbound (they dial the
    // node-4 address the cluster file lists and get a certificate from the wrong CA).
    let mut counted = Vec::new();
    for (id, url) in &member_urls {
        let client = client.clone();
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
            handshake_failures(&client, url, &["direction=\"inbound\"", "reason=\"tls\""]).await;
        counted.push((*id, failures, inbound));
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
        .agreed_leader(&members, Duration::from_secs(5))
        .await;
    assert_eq!(
        (leader_now, term_now),
        (leader, term),
        "the stranger disturbed the leadership"
    );
    for (id, url) in &member_urls {
        let reply = client
            .chat(
                url,
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

async fn handshake_failures(client: &Client, url: &str, labels: &[&str]) -> f64 {
    let text = client
        .metrics(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}/metrics: {e:#}"));
    metric_sum(&text, HANDSHAKE_FAILURES, labels).unwrap_or(0.0)
}
