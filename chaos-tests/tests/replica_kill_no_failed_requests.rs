//! kill -9 of a node hosting a replica of tiny-llama, under load sent only to the other nodes:
//! no request fails and every answer is the same greedy text as before the kill (requests in
//! flight to the dead replica are retried on the other one). Then the killed node restarts on
//! its data directory: it is `up` again, catches up with the leader's log, and serves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use helixflow_chaos_tests::{
    ChaosRng, Client, Cluster, ClusterOptions, MODEL, greedy_chat, metric_sum, wait_for, wait_until,
};

const TEST: &str = "replica_kill_no_failed_requests";
const CLIENTS: usize = 4;
const MAX_TOKENS: u32 = 8;
const PROMPTS: [&str; 5] = [
    "The quick brown fox",
    "Once upon a time",
    "Distributed systems fail",
    "1, 2, 3,",
    "Hello",
];
/// Load before the kill: at least this long, and until the victim has had forwarded requests.
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(1500);
/// Load after the kill: past the failure detector (suspect after 1 s, down after 3 s) and the
/// re-placement that follows.
const LOAD_AFTER_KILL: Duration = Duration::from_secs(5);

/// One request of the load.
#[derive(Debug)]
struct Outcome {
    node: u64,
    prompt: usize,
    after_kill: bool,
    latency: Duration,
    /// Status and text, or the transport error.
    result: Result<(u16, String), String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_kill_no_failed_requests() {
    let mut rng = ChaosRng::from_env(TEST);
    let mut cluster = Cluster::start(TEST, &rng, ClusterOptions::default()).await;
    let ids = cluster.ids();
    let key = cluster.client.admin_key().to_owned();

    let hosts = cluster.status(ids[0]).await.hosts_of(MODEL);
    assert_eq!(hosts.len(), 2, "tiny-llama has 2 replicas: {hosts:?}");
    let victim = rng.pick(&hosts);
    let targets: Vec<u64> = ids.iter().copied().filter(|&id| id != victim).collect();
    let forwarder = *ids
        .iter()
        .find(|id| !hosts.contains(id))
        .expect("3 nodes, 2 replicas: one node hosts none");
    eprintln!(
        "[chaos] {TEST}: replicas on {hosts:?}; will kill node-{victim}; load goes to \
         {targets:?} (node-{forwarder} forwards everything)"
    );

    // The answers before any harm, from every node (the victim included): replicas agree.
    let mut expected: Vec<String> = Vec::new();
    for prompt in PROMPTS {
        let mut answers = BTreeMap::new();
        for &id in &ids {
            let reply = cluster
                .client
                .chat(&cluster.url(id), &key, &greedy_chat(prompt, MAX_TOKENS))
                .await
                .unwrap();
            assert_eq!(reply.status, 200, "node-{id}: {}", reply.body);
            answers.insert(id, reply.completion_text().unwrap());
        }
        let first = answers.values().next().unwrap().clone();
        assert!(
            answers.values().all(|a| *a == first),
            "greedy answers to {prompt:?} differ between nodes: {answers:?}"
        );
        expected.push(first);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(Mutex::new(None::<Instant>));
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let urls: Vec<(u64, String)> = targets.iter().map(|&id| (id, cluster.url(id))).collect();
        loops.spawn(load_loop(
            rng.fork(),
            cluster.client.clone(),
            key.clone(),
            urls,
            stop.clone(),
            killed.clone(),
        ));
    }

    // Kill only once the victim is taking forwarded requests: otherwise nothing is tested.
    let started = Instant::now();
    let forwarder_url = cluster.url(forwarder);
    let victim_label = format!("peer=\"{victim}\"");
    let client = cluster.client.clone();
    wait_until(
        Duration::from_secs(20),
        &format!("node-{forwarder} to forward requests to node-{victim}"),
        || {
            let client = client.clone();
            let url = forwarder_url.clone();
            let label = victim_label.clone();
            async move {
                let forwarded = client.metrics(&url).await.ok().and_then(|text| {
                    metric_sum(&text, "helixflow_forwarded_requests_total", &[&label])
                });
                started.elapsed() >= LOAD_BEFORE_KILL && forwarded.is_some_and(|n| n > 0.0)
            }
        },
    )
    .await;
    *killed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    cluster.kill(victim);
    tokio::time::sleep(LOAD_AFTER_KILL).await;
    stop.store(true, Ordering::Release);

    let mut outcomes: Vec<Outcome> = Vec::new();
    while let Some(result) = loops.join_next().await {
        outcomes.extend(result.expect("a load loop panicked"));
    }
    let before = outcomes.iter().filter(|o| !o.after_kill).count();
    let after = outcomes.len() - before;
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| match &o.result {
            Ok((status, text)) => *status != 200 || *text != expected[o.prompt],
            Err(_) => true,
        })
        .collect();
    let slowest = outcomes.iter().map(|o| o.latency).max().unwrap_or_default();
    let retries = retries(&cluster.client, &forwarder_url).await;
    let per_node: BTreeMap<u64, usize> = outcomes.iter().fold(BTreeMap::new(), |mut counts, o| {
        *counts.entry(o.node).or_default() += 1;
        counts
    });
    eprintln!(
        "[chaos] {TEST}: {} requests ({before} before the kill, {after} after; per node \
         {per_node:?}), {} failed, slowest {slowest:?}, {retries} retried by node-{forwarder}",
        outcomes.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed or answered differently (expected {expected:?}); first: {:#?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        before > 0 && after >= CLIENTS,
        "the load ran on both sides of the kill ({before} before, {after} after)"
    );

    // Back on its data directory: up again, caught up, serving.
    cluster.start_node(victim);
    let restarted = Instant::now();
    let survivors = targets.clone();
    let (leader, _) = cluster
        .agreed_leader(&survivors, Duration::from_secs(10))
        .await;
    let leader_url = cluster.url(leader);
    let victim_url = cluster.url(victim);
    wait_for(
        Duration::from_secs(30),
        &format!("node-{victim} to be up and caught up with leader node-{leader}"),
        || {
            let client = cluster.client.clone();
            let (leader_url, victim_url) = (leader_url.clone(), victim_url.clone());
            async move {
                let at_leader = client
                    .cluster_status_within(&leader_url, Duration::from_secs(2))
                    .await
                    .map_err(|e| format!("leader: {e:#}"))?;
                let status = at_leader.status_of(victim);
                if status != Some("up") {
                    return Err(format!("the leader has node-{victim} {status:?}"));
                }
                let at_victim = client
                    .cluster_status_within(&victim_url, Duration::from_secs(2))
                    .await
                    .map_err(|e| format!("node-{victim}: {e:#}"))?;
                if at_victim.applied < at_leader.applied {
                    return Err(format!(
                        "node-{victim} applied {} of the leader's {}",
                        at_victim.applied, at_leader.applied
                    ));
                }
                Ok(())
            }
        },
    )
    .await;
    let up_after = restarted.elapsed();
    cluster.wait_ready(&[victim], Duration::from_secs(30)).await;
    eprintln!(
        "[chaos] {TEST}: node-{victim} restarted: up and caught up {up_after:?} after the \
         restart, ready after {:?}",
        restarted.elapsed()
    );
    for (prompt, text) in PROMPTS.iter().zip(&expected) {
        let reply = cluster
            .client
            .chat(&victim_url, &key, &greedy_chat(prompt, MAX_TOKENS))
            .await
            .unwrap();
        assert_eq!(
            reply.status, 200,
            "the restarted node-{victim}: {}",
            reply.body
        );
        assert_eq!(
            reply.completion_text().unwrap(),
            *text,
            "the restarted node-{victim} answers {prompt:?} differently"
        );
    }
}

/// Sends greedy chat requests to `urls` in a seeded random order until `stop`.
async fn load_loop(
    mut rng: ChaosRng,
    client: Client,
    key: String,
    urls: Vec<(u64, String)>,
    stop: Arc<AtomicBool>,
    killed: Arc<Mutex<Option<Instant>>>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let (node, url) = rng.pick(&urls);
        let prompt = rng.below(PROMPTS.len());
        let after_kill = killed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        let sent = Instant::now();
        let result = client
            .chat(&url, &key, &greedy_chat(PROMPTS[prompt], MAX_TOKENS))
            .await
            .map_err(|e| format!("{e:#}"))
            .and_then(|reply| {
                let text = if reply.status == 200 {
                    reply.completion_text().map_err(|e| format!("{e:#}"))?
                } else {
                    reply.body
                };
                Ok((reply.status, text))
            });
        outcomes.push(Outcome {
            node,
            prompt,
            after_kill,
            latency: sent.elapsed(),
            result,
        });
    }
    outcomes
}

/// Requests node `url` moved to another replica after theirs failed.
async fn retries(client: &Client, url: &str) -> f64 {
    client
        .metrics(url)
        .await
        .ok()
        .and_then(|text| metric_sum(&text, "helixflow_request_retries_total", &[]))
        .unwrap_or(0.0)
}
