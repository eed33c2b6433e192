//! A whole cluster stopped and started again on the same data directories comes back as it was.
//! Stopped cleanly, every node exits 0 on SIGTERM (the last ones without a quorum too); killed
//! with -9, nothing acknowledged is lost. After the restart the nodes agree on a leader again
//! (the term never lower), a key created before works on every node, the model is placed again
//! (same placement epoch or a later one), greedy answers are the ones from before, and the
//! metadata takes writes again.

use std::time::{Duration, Instant};

use helixflow_chaos_tests::{ChaosRng, Cluster, ClusterOptions, MODEL, greedy_chat};

const KEY_NAME: &str = "survives-restarts";
/// SIGTERM to exit: the harness's clusters drain for at most 5 s (`shutdown_grace_secs`).
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// One greedy answer per node of `ids`, asked with `key`.
async fn answers(cluster: &Cluster, key: &str, ids: &[u64]) -> Vec<(u64, String)> {
    let body = greedy_chat("Remember me after a restart", 24);
    let mut texts = Vec::new();
    for &id in ids {
        let reply = cluster
            .client
            .chat(&cluster.url(id), key, &body)
            .await
            .unwrap_or_else(|e| panic!("chat via node-{id}: {e:#}"));
        assert_eq!(reply.status, 200, "the key via node-{id}: {}", reply.body);
        texts.push((id, reply.completion_text().unwrap()));
    }
    texts
}

/// How the whole cluster goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// SIGTERM to each node in turn; each must exit 0.
    Terminate,
    /// kill -9 to each node in turn: nothing drained or flushed beyond what the node already
    /// made durable.
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_stopped_with_sigterm_comes_back() {
    restart_everything("restart_after_sigterm", Stop::Terminate).await;
}

/// What was acknowledged (a created key) survives every process crashing at once. (The page
/// cache survives a kill -9; a power cut, which loses it too, is not simulated here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_killed_outright_comes_back() {
    restart_everything("restart_after_kill", Stop::Kill).await;
}

async fn restart_everything(test: &str, stop: Stop) {
    let mut rng = ChaosRng::from_env(test);
    let mut cluster = Cluster::start(test, &rng, ClusterOptions::default()).await;
    let ids = cluster.ids();
    let (leader, term) = cluster.agreed_leader(&ids, Duration::from_secs(10)).await;

    let creator = rng.pick(&ids);
    let reply = cluster
        .client
        .create_key(&cluster.url(creator), KEY_NAME, "user")
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "creating a key: {}", reply.body);
    let key = reply.json().unwrap()["key"].as_str().unwrap().to_owned();
    let before = answers(&cluster, &key, &ids).await;
    let text = before[0].1.clone();
    assert!(
        before.iter().all(|(_, t)| *t == text),
        "one greedy answer from every node: {before:?}"
    );
    let status = cluster.status(leader).await;
    let (epoch, hosts) = (status.placement_epoch, status.hosts_of(MODEL));
    assert_eq!(hosts.len(), 2, "{status:?}");

    // Stop them one after another, in a random order: the last two stop without a quorum.
    let mut order = ids.clone();
    rng.shuffle(&mut order);
    let mut stops = Vec::new();
    for &id in &order {
        let start = Instant::now();
        match stop {
            Stop::Terminate => {
                let exit = cluster.terminate(id, STOP_DEADLINE);
                assert!(
                    exit.success(),
                    "node-{id} exited with {exit} on SIGTERM (stopped in the order {order:?})"
                );
            }
            Stop::Kill => cluster.kill(id),
        }
        stops.push((id, start.elapsed()));
    }
    eprintln!("[chaos] {test}: every node stopped ({stop:?}): {stops:?}");

    let restarting = Instant::now();
    cluster.launch(&ids).await;
    let (new_leader, new_term) = cluster.agreed_leader(&ids, Duration::from_secs(10)).await;
    let back = restarting.elapsed();
    // Terms never go back. The same term is fine: a leader whose vote a quorum had committed
    // (and persisted) may resume leading in that term after the restart, as openraft does.
    assert!(
        new_term >= term,
        "the term went back after the restart: {term} before, {new_term} after"
    );
    let status = cluster.status(new_leader).await;
    let new_hosts = status.hosts_of(MODEL);
    assert!(
        status.placement_epoch >= epoch,
        "the placement epoch went back from {epoch}: {status:?}"
    );
    assert_eq!(new_hosts.len(), 2, "two replicas placed again: {status:?}");

    for &id in &ids {
        assert_eq!(
            status.status_of(id),
            Some("up"),
            "node-{id} after the restart: {status:?}"
        );
    }

    let mut order = ids.clone();
    rng.shuffle(&mut order);
    let after = answers(&cluster, &key, &order).await;
    for (id, answer) in &after {
        assert_eq!(
            *answer, text,
            "node-{id} answers differently after the restart"
        );
    }
    // The leader it agreed on commits: metadata is writable again.
    let writer = rng.pick(&ids);
    let reply = cluster
        .client
        .create_key(&cluster.url(writer), "after-the-restart", "user")
        .await
        .unwrap();
    assert_eq!(
        reply.status, 201,
        "a write via node-{writer} after the restart: {}",
        reply.body
    );
    eprintln!(
        "[chaos] {test}: back in {back:?}: leader node-{new_leader} (term {term} -> \
         {new_term}), {MODEL} on {hosts:?} -> {new_hosts:?} (epoch {epoch} -> {}), key \
         `{KEY_NAME}` and answers unchanged",
        status.placement_epoch
    );
}
