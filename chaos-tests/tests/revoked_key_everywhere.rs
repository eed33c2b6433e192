//! A key revoked through one node is refused by every node the moment the `DELETE` returns: no
//! node serves on a stale copy of the keys.

use helixflow_chaos_tests::{ChaosRng, Cluster, ClusterOptions, greedy_chat};

const TEST: &str = "revoked_key_everywhere";
const KEY_NAME: &str = "soon-revoked";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_everywhere() {
    let mut rng = ChaosRng::from_env(TEST);
    let cluster = Cluster::start(TEST, &rng, ClusterOptions::default()).await;
    let ids = cluster.ids();
    let creator = rng.pick(&ids);
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != creator).collect();
    let revoker = rng.pick(&others);
    let (leader, _) = cluster
        .agreed_leader(&ids, std::time::Duration::from_secs(10))
        .await;
    eprintln!(
        "[chaos] {TEST}: leader node-{leader}; creating via node-{creator}, revoking via \
         node-{revoker}"
    );

    let reply = cluster
        .client
        .create_key(&cluster.url(creator), KEY_NAME, "user")
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    let key = reply.json().unwrap()["key"].as_str().unwrap().to_owned();

    let body = greedy_chat("A key for a little while", 4);
    let mut order = ids.clone();
    rng.shuffle(&mut order);
    for &id in &order {
        let reply = cluster
            .client
            .chat(&cluster.url(id), &key, &body)
            .await
            .unwrap();
        assert_eq!(
            reply.status, 200,
            "the new key on node-{id}: {}",
            reply.body
        );
    }

    let reply = cluster
        .client
        .revoke_key(&cluster.url(revoker), KEY_NAME)
        .await
        .unwrap();
    assert_eq!(
        reply.status, 200,
        "revoking via node-{revoker}: {}",
        reply.body
    );

    // No waiting: every node is asked at once, right after the DELETE returned.
    let mut checks = tokio::task::JoinSet::new();
    for &id in &order {
        let client = cluster.client.clone();
        let url = cluster.url(id);
        let key = key.clone();
        let body = body.clone();
        checks.spawn(async move {
            let chat = client.chat(&url, &key, &body).await.unwrap();
            let models = client.models(&url, &key).await.unwrap();
            (id, chat, models)
        });
    }
    let mut refused = Vec::new();
    while let Some(result) = checks.join_next().await {
        let (id, chat, models) = result.expect("a check task panicked");
        assert_eq!(
            chat.status, 401,
            "node-{id} served a revoked key: {}",
            chat.body
        );
        assert_eq!(
            models.status, 401,
            "node-{id} listed models for a revoked key: {}",
            models.body
        );
        refused.push(id);
    }
    refused.sort_unstable();
    assert_eq!(refused, ids);
    eprintln!("[chaos] {TEST}: nodes {refused:?} refused the revoked key right away");
}
