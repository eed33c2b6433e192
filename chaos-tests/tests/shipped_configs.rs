//! The cluster files shipped in `cluster-configs/` work as written: started with only the
//! overrides a second copy needs (`--data-dir`, `--certs-dir` into a temporary directory, the
//! certificates from `helixflow certs init --config <file> --certs-dir …`), every node is ready,
//! the nodes agree on one leader, the model is placed as the file asks, and every node gives the
//! same greedy answer — forwarding to a replica where it has none (`local-3node.toml`, where the
//! file's alias works too), serving from its own region where every region has one
//! (`multi-region.toml`).
//!
//! The files' addresses are fixed (127.0.0.1–.3 and .4–.6, HTTP :8090, QUIC :7490): the two
//! tests do not collide with each other, but nothing else may use those addresses meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use helixflow_chaos_tests::{
    ChaosRng, Cluster, ClusterStatus, MODEL, greedy_chat, metric_sum, repo_file, wait_for,
};

/// The admin key both files admit (`demo-admin`; public, as the files say).
const SHIPPED_KEY: &str = "hf-single-demo-key";
const FORWARDED: &str = "helixflow_forwarded_requests_total";
/// From every node ready to a status that shows every node up and every replica placed.
const SETTLE: Duration = Duration::from_secs(15);
const ANSWER_TOKENS: u32 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_3node_as_shipped() {
    const TEST: &str = "shipped_local_3node";
    let mut rng = ChaosRng::from_env(TEST);
    let cluster = Cluster::start_shipped(
        TEST,
        &rng,
        &repo_file("cluster-configs/local-3node.toml"),
        SHIPPED_KEY,
    )
    .await;
    let ids = cluster.ids();
    assert_eq!(ids, [1, 2, 3], "the file lists nodes 1, 2, 3");
    let status = settled(TEST, &cluster, &ids, 2).await;
    let hosts = status.hosts_of(MODEL);
    let non_host: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !hosts.contains(id))
        .collect();
    assert_eq!(non_host.len(), 1, "2 replicas on 3 nodes: {status:?}");
    eprintln!(
        "[chaos] {TEST}: leader {:?}, {MODEL} on {hosts:?}, node-{} forwards",
        status.leader, non_host[0]
    );

    let before = forwarded(&cluster, &ids).await;
    let answers = answers(&cluster, &mut rng, &ids).await;
    let after = forwarded(&cluster, &ids).await;
    for &id in &ids {
        if hosts.contains(&id) {
            assert_eq!(
                after[&id], before[&id],
                "host node-{id} forwarded a request it could serve itself"
            );
        } else {
            assert!(
                after[&id] > before[&id],
                "node-{id} hosts no replica but its {FORWARDED} did not rise: {} -> {}",
                before[&id],
                after[&id]
            );
        }
    }
    // The file's alias names the same model, forwarded too.
    let mut body = greedy_chat("Shipped configs should just work", ANSWER_TOKENS);
    body["model"] = "tiny".into();
    let reply = cluster
        .client
        .chat(&cluster.url(non_host[0]), SHIPPED_KEY, &body)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "the alias `tiny`: {}", reply.body);
    assert_eq!(
        reply.completion_text().unwrap(),
        answers,
        "the alias `tiny` via node-{} answers like {MODEL}",
        non_host[0]
    );
    eprintln!("[chaos] {TEST}: same answer from every node: {answers:?}; forwarded {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_region_as_shipped() {
    const TEST: &str = "shipped_multi_region";
    let mut rng = ChaosRng::from_env(TEST);
    let cluster = Cluster::start_shipped(
        TEST,
        &rng,
        &repo_file("cluster-configs/multi-region.toml"),
        SHIPPED_KEY,
    )
    .await;
    let ids = cluster.ids();
    assert_eq!(ids, [1, 2, 3], "the file lists nodes 1, 2, 3");
    let status = settled(TEST, &cluster, &ids, 3).await;
    let regions: BTreeMap<u64, &str> = status
        .nodes
        .iter()
        .map(|n| (n.id, n.region.as_str()))
        .collect();
    let distinct: BTreeSet<&str> = regions.values().copied().collect();
    assert_eq!(
        distinct,
        BTreeSet::from(["ap-south", "eu-west", "us-east"]),
        "{status:?}"
    );
    let hosts = status.hosts_of(MODEL);
    assert_eq!(hosts, ids, "a replica on every node, so in every region");
    let host_regions: BTreeSet<&str> = hosts.iter().map(|id| regions[id]).collect();
    assert_eq!(host_regions.len(), 3, "one replica per region: {status:?}");

    let answers = answers(&cluster, &mut rng, &ids).await;
    let after = forwarded(&cluster, &ids).await;
    for &id in &ids {
        assert_eq!(
            after[&id], 0.0,
            "node-{id} ({}) holds a replica but forwarded requests",
            regions[&id]
        );
    }
    eprintln!("[chaos] {TEST}: regions {regions:?}, every node answered itself: {answers:?}");
}

/// Waits until every node of `ids` sees the same leader, every node `up`, and `MODEL` on
/// `replicas` distinct nodes (the same ones), and exactly one node says it leads
/// (`helixflow_raft_is_leader`). Returns the leader's view.
async fn settled(test: &str, cluster: &Cluster, ids: &[u64], replicas: usize) -> ClusterStatus {
    let (status, took) = wait_for(SETTLE, "a settled cluster status", || async {
        let mut views = Vec::new();
        for &id in ids {
            let status = cluster
                .client
                .cluster_status_within(&cluster.url(id), Duration::from_secs(2))
                .await
                .map_err(|e| format!("node-{id}: {e:#}"))?;
            let leader = status
                .leader
                .ok_or_else(|| format!("node-{id} knows no leader"))?;
            let mut listed: Vec<u64> = status.nodes.iter().map(|n| n.id).collect();
            listed.sort_unstable();
            if listed != ids {
                return Err(format!("node-{id} lists nodes {listed:?}"));
            }
            if let Some(n) = status.nodes.iter().find(|n| n.status != "up") {
                return Err(format!("node-{id} sees node-{} {}", n.id, n.status));
            }
            let placed = status
                .placements
                .iter()
                .filter(|p| p.model == MODEL)
                .count();
            let hosts = status.hosts_of(MODEL);
            if placed != replicas || hosts.len() != replicas {
                return Err(format!(
                    "node-{id} sees {placed} placements of {MODEL} on {hosts:?}, want \
                     {replicas} on distinct nodes"
                ));
            }
            views.push((leader, hosts, status));
        }
        let (leader, hosts, first) = &views[0];
        if let Some((other, other_hosts, status)) =
            views.iter().find(|(l, h, _)| l != leader || h != hosts)
        {
            return Err(format!(
                "node-{} sees leader {other} and hosts {other_hosts:?}, node-{} sees {leader} \
                 and {hosts:?}",
                status.node, first.node
            ));
        }
        let mut leading = Vec::new();
        for &id in ids {
            let metrics = cluster
                .client
                .metrics(&cluster.url(id))
                .await
                .map_err(|e| format!("node-{id} metrics: {e:#}"))?;
            if metric_sum(&metrics, "helixflow_raft_is_leader", &[]) == Some(1.0) {
                leading.push(id);
            }
        }
        if leading != [*leader] {
            return Err(format!(
                "helixflow_raft_is_leader is 1 on {leading:?}, the leader is {leader}"
            ));
        }
        let leader = *leader;
        Ok(views
            .into_iter()
            .find(|(_, _, s)| s.node == leader)
            .expect("the leader is one of the nodes asked")
            .2)
    })
    .await;
    eprintln!("[chaos] {test}: status settled {took:?} after every node was ready");
    status
}

/// `helixflow_forwarded_requests_total` of each node, all peers together (0 when absent).
async fn forwarded(cluster: &Cluster, ids: &[u64]) -> BTreeMap<u64, f64> {
    let mut counts = BTreeMap::new();
    for &id in ids {
        let metrics = cluster
            .client
            .metrics(&cluster.url(id))
            .await
            .unwrap_or_else(|e| panic!("node-{id} metrics: {e:#}"));
        counts.insert(id, metric_sum(&metrics, FORWARDED, &[]).unwrap_or(0.0));
    }
    counts
}

/// One greedy chat to each node of `ids` (in a random order); asserts every answer is the same
/// text and returns it.
async fn answers(cluster: &Cluster, rng: &mut ChaosRng, ids: &[u64]) -> String {
    let body = greedy_chat("Shipped configs should just work", ANSWER_TOKENS);
    let mut order = ids.to_vec();
    rng.shuffle(&mut order);
    let mut first: Option<(u64, String)> = None;
    for id in order {
        let reply = cluster
            .client
            .chat(&cluster.url(id), SHIPPED_KEY, &body)
            .await
            .unwrap_or_else(|e| panic!("chat via node-{id}: {e:#}"));
        assert_eq!(reply.status, 200, "chat via node-{id}: {}", reply.body);
        let text = reply.completion_text().unwrap();
        match &first {
            None => first = Some((id, text)),
            Some((first_id, first_text)) => assert_eq!(
                &text, first_text,
                "node-{id} and node-{first_id} answered the same greedy request differently"
            ),
        }
    }
    first.expect("at least one node").1
}
