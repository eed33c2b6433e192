//! Follows the committed metadata on every node: the key set goes into Quota (so a key created
//! or revoked anywhere is honoured here), and the models placed on this node get workers
//! (and lose them when placed elsewhere).

use std::sync::Arc;

use helixflow_consensus::state::{CatalogEntry, ClusterState, KeyRecord};
use helixflow_runtime::config::{self, KeyConfig, ModelConfig, NodeId as ConfigNodeId, Role};
use helixflow_runtime::keys::KeyHash;

use super::Cluster;

pub async fn run(cluster: Arc<Cluster>) {
    let mut state = cluster.subscribe();
    let mut keys_seen: Option<Vec<KeyRecord>> = None;
    let mut models_seen: Option<Vec<String>> = None;
    loop {
        let current = state.borrow_and_update().clone();
        let keys: Vec<KeyRecord> = current.keys.values().cloned().collect();
        if keys_seen.as_ref() != Some(&keys) {
            // Until the seed commits, the cluster file's keys serve (a fresh cluster answers
            // at once); from then on the committed set is the truth.
            let configs = if current.seeded {
                key_configs(&cluster, &keys)
            } else {
                cluster.config.keys.clone()
            };
            if cluster.node.set_keys(configs).is_err() {
                return;
            }
            keys_seen = Some(keys);
        }
        // Quota's mailbox is ordered: a request authenticated after this point sees the keys
        // cast above, so this node may now report the index as in effect.
        cluster.set_effective(current.applied);
        let placed = placed_here(&cluster, &current);
        let ids: Vec<String> = placed.iter().map(|m| m.id.clone()).collect();
        if models_seen.as_ref() != Some(&ids) {
            tracing::info!(models = ?ids, "serving the models placed on this node");
            match cluster.node.set_models(placed).await {
                Ok(Ok(())) => models_seen = Some(ids),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "loading a placed model; retrying in 1s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
                Err(_) => return,
            }
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

fn key_configs(cluster: &Cluster, keys: &[KeyRecord]) -> Vec<KeyConfig> {
    keys.iter()
        .filter(|k| !k.revoked)
        .filter_map(|k| {
            let Some(hash) = KeyHash::from_hex(&k.sha256) else {
                tracing::error!(key = %k.name, "committed key has a malformed hash; ignoring it");
                return None;
            };
            let max_queued = cluster
                .config
                .keys
                .iter()
                .find(|c| c.name == k.name)
                .map_or(config::DEFAULT_MAX_QUEUED_PER_KEY, |c| c.max_queued);
            Some(KeyConfig {
                name: k.name.clone(),
                hash,
                role: if k.role == "admin" {
                    Role::Admin
                } else {
                    Role::User
                },
                requests_per_minute: k.requests_per_minute,
                tokens_per_minute: k.tokens_per_minute,
                token_budget: k.token_budget,
                max_queued,
            })
        })
        .collect()
}

/// The models the committed placements put on this node, as worker configs: the cluster
/// file's entry when it has one (its engine limits), else built from the catalog entry.
fn placed_here(cluster: &Cluster, state: &ClusterState) -> Vec<ModelConfig> {
    let mut ids: Vec<&str> = state
        .placements
        .iter()
        .filter(|p| p.node == ConfigNodeId(cluster.me))
        .map(|p| p.model.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| {
            cluster
                .config
                .models
                .iter()
                .find(|m| m.id == id)
                .cloned()
                .or_else(|| state.models.get(id).map(model_config))
        })
        .collect()
}

fn model_config(entry: &CatalogEntry) -> ModelConfig {
    ModelConfig {
        id: entry.id.clone(),
        path: entry.source.clone().into(),
        aliases: entry.aliases.clone(),
        context_window: (entry.context_window > 0).then_some(entry.context_window),
        // A catalog entry carries no engine limits: the cluster file's defaults apply.
        kv_cache_bytes: config::DEFAULT_KV_CACHE_MIB << 20,
        kv_cache_dtype: config::KvCacheDtype::default(),
        max_batch_tokens: config::DEFAULT_MAX_BATCH_TOKENS,
        max_prefill_chunk: config::DEFAULT_MAX_PREFILL_CHUNK,
        max_running: config::DEFAULT_MAX_RUNNING,
        replicas: entry.replicas,
    }
}
