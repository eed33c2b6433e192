//! kill -9 of the Raft leader: the survivors elect a new leader (another node, a higher term)
//! within 2 s, and the cluster takes admin writes again: a key created through a survivor works
//! on both survivors at once.

use std::time::{Duration, Instant};

use helixflow_chaos_tests::{ChaosRng, Cluster, ClusterOptions, greedy_chat, wait_for};

const TEST: &str = "leader_kill";
/// The election timeout is 0.4–0.8 s, so a new leader is due well within this.
const NEW_LEADER_WITHIN: Duration = Duration::from_secs(2);
/// Polls of a survivor give up after this, so one slow answer does not hide the moment.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill() {
    let mut rng = ChaosRng::from_env(TEST);
    let mut cluster = Cluster::start(TEST, &rng, ClusterOptions::default()).await;
    let ids = cluster.ids();
    let (old_leader, old_term) = cluster.agreed_leader(&ids, Duration::from_secs(10)).await;
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != old_leader).collect();
    eprintln!("[chaos] {TEST}: leader node-{old_leader} (term {old_term}); killing it");

    cluster.kill(old_leader);
    let killed_at = Instant::now();
    let urls: Vec<(u64, String)> = survivors.iter().map(|&id| (id, cluster.url(id))).collect();
    // A generous deadline so that a slow election is measured and reported, not just a timeout.
    let ((new_leader, new_term), _) = wait_for(
        Duration::from_secs(15),
        "every survivor to report the same new leader in a higher term",
        || {
            let client = cluster.client.clone();
            let urls = urls.clone();
            async move {
                let mut agreed: Option<(u64, u64)> = None;
                for (id, url) in urls {
                    let status = client
                        .cluster_status_within(&url, POLL_TIMEOUT)
                        .await
                        .map_err(|e| format!("node-{id}: {e:#}"))?;
                    let leader = match status.leader {
                        Some(leader) if leader != old_leader && status.term > old_term => leader,
                        other => {
                            return Err(format!(
                                "node-{id} reports leader {other:?} in term {}",
                                status.term
                            ));
                        }
                    };
                    if let Some((seen, _)) = agreed
                        && seen != leader
                    {
                        return Err(format!("node-{id} reports {leader}, another {seen}"));
                    }
                    agreed = Some((leader, status.term));
                }
                agreed.ok_or_else(|| "no survivors".to_owned())
            }
        },
    )
    .await;
    let took = killed_at.elapsed();
    eprintln!(
        "[chaos] {TEST}: new leader node-{new_leader} (term {new_term}) reported by nodes \
         {survivors:?} {took:?} after the kill"
    );
    assert!(survivors.contains(&new_leader));
    assert!(
        took < NEW_LEADER_WITHIN,
        "the survivors agreed on a new leader only {took:?} after the kill (limit \
         {NEW_LEADER_WITHIN:?})"
    );

    // An admin write through a survivor, chosen by the seed: the new leader takes it, or the
    // survivor forwards it there.
    let writer = rng.pick(&survivors);
    let written_at = Instant::now();
    let reply = cluster
        .client
        .create_key(&cluster.url(writer), "after-leader-kill", "user")
        .await
        .expect("POST /admin/v1/keys answered");
    assert_eq!(
        reply.status, 201,
        "creating a key via node-{writer}: {}",
        reply.body
    );
    eprintln!(
        "[chaos] {TEST}: key created via node-{writer} in {:?}",
        written_at.elapsed()
    );
    let key = reply.json().unwrap()["key"]
        .as_str()
        .expect("the new key in the answer")
        .to_owned();

    // The write returned once every live node applied it: the key works on both survivors now,
    // and generates the same text on each.
    let body = greedy_chat("After the leader fell", 8);
    let mut answers = Vec::new();
    for &id in &survivors {
        let url = cluster.url(id);
        let models = cluster.client.models(&url, &key).await.unwrap();
        assert_eq!(
            models.status, 200,
            "the new key on node-{id}: {}",
            models.body
        );
        let reply = cluster.client.chat(&url, &key, &body).await.unwrap();
        assert_eq!(
            reply.status, 200,
            "a chat with the new key on node-{id}: {}",
            reply.body
        );
        answers.push((id, reply.completion_text().unwrap()));
    }
    assert!(
        answers.windows(2).all(|w| w[0].1 == w[1].1),
        "greedy answers differ between survivors: {answers:?}"
    );
}
