//! Requests to a node without a replica are forwarded to the one that has it, and behave as if
//! served locally: a streamed answer is the non-streamed answer, token for token; a client that
//! hangs up mid-stream stops the generation on the host, not only on the node it talked to.

use std::time::{Duration, Instant};

use helixflow_chaos_tests::{
    ChaosRng, Cluster, ClusterOptions, MODEL, greedy_chat, hold_for, metric_sum, wait_for,
};
use serde_json::{Value, json};

const FORWARDED: &str = "helixflow_forwarded_requests_total";
const KV_USED: &str = "helixflow_kv_cache_blocks_used";
const RUNNING: &str = "helixflow_running_sequences";
const REQUESTS: &str = "helixflow_requests_total";
const CANCELLED: &str = "status=\"cancelled\"";

/// One replica on three nodes: two of them must forward.
fn one_replica() -> ClusterOptions {
    ClusterOptions {
        replicas: 1,
        ..ClusterOptions::default()
    }
}

/// The host of the one replica, and the other nodes.
async fn host_and_others(cluster: &Cluster) -> (u64, Vec<u64>) {
    let ids = cluster.ids();
    let status = cluster.status(ids[0]).await;
    let hosts = status.hosts_of(MODEL);
    assert_eq!(hosts.len(), 1, "replicas = 1: {status:?}");
    let others = ids.iter().copied().filter(|&id| id != hosts[0]).collect();
    (hosts[0], others)
}

async fn metric(cluster: &Cluster, id: u64, name: &str, labels: &[&str]) -> Option<f64> {
    let text = cluster
        .client
        .metrics(&cluster.url(id))
        .await
        .unwrap_or_else(|e| panic!("node-{id} metrics: {e:#}"));
    metric_sum(&text, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_stream_is_the_plain_answer() {
    const TEST: &str = "forwarded_stream";
    let mut rng = ChaosRng::from_env(TEST);
    let cluster = Cluster::start(TEST, &rng, one_replica()).await;
    let (host, others) = host_and_others(&cluster).await;
    let via = rng.pick(&others);
    let body = greedy_chat("Stream it to me through another node", 48);

    let plain = cluster
        .client
        .chat(&cluster.url(host), cluster.client.admin_key(), &body)
        .await
        .unwrap();
    assert_eq!(plain.status, 200, "{}", plain.body);
    let plain = plain.completion_text().unwrap();
    assert!(!plain.is_empty(), "48 tokens of text");

    let forwarded_before = metric(&cluster, via, FORWARDED, &[]).await.unwrap_or(0.0);
    let mut streamed_body = body.clone();
    streamed_body["stream"] = Value::Bool(true);
    let streamed = cluster
        .client
        .chat_stream(
            &cluster.url(via),
            cluster.client.admin_key(),
            &streamed_body,
        )
        .await
        .unwrap()
        .chat_text()
        .await
        .unwrap_or_else(|e| panic!("the stream via node-{via}: {e:#}"));
    let forwarded_after = metric(&cluster, via, FORWARDED, &[]).await.unwrap_or(0.0);
    assert_eq!(
        streamed, plain,
        "the stream via node-{via} is not the answer of host node-{host}"
    );
    assert!(
        forwarded_after > forwarded_before,
        "node-{via} hosts nothing, yet its {FORWARDED} stayed {forwarded_before}"
    );
    eprintln!(
        "[chaos] {TEST}: node-{via} streamed host node-{host}'s answer ({} chars) exactly",
        plain.len()
    );
}

/// 64 choices of 400 tokens, never stopping early: seconds of work for the host's one thread
/// (about 6 s on two loaded cores), so a disconnect lands mid-generation.
fn long_generation(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Go on for a long while"}],
        "temperature": 0,
        "max_tokens": 400,
        "n": 64,
        "ignore_eos": true,
        "stream": stream,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_stops_the_remote_generation() {
    const TEST: &str = "forwarded_disconnect";
    let mut rng = ChaosRng::from_env(TEST);
    let cluster = Cluster::start(TEST, &rng, one_replica()).await;
    let (host, others) = host_and_others(&cluster).await;
    let via = rng.pick(&others);
    let used = format!("model=\"{MODEL}\"");
    let host_busy = || async {
        let kv = metric(&cluster, host, KV_USED, &[&used]).await;
        let running = metric(&cluster, host, RUNNING, &[&used]).await;
        (kv.unwrap_or(0.0), running.unwrap_or(0.0))
    };
    assert_eq!(
        host_busy().await,
        (0.0, 0.0),
        "host node-{host} idle at first"
    );

    // How long the whole generation takes when nobody hangs up (forwarded the same way).
    let start = Instant::now();
    let reply = cluster
        .client
        .chat(
            &cluster.url(via),
            cluster.client.admin_key(),
            &long_generation(false),
        )
        .await
        .unwrap();
    let uncancelled = start.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let generated = reply.json().unwrap()["usage"]["completion_tokens"].clone();
    assert_eq!(
        generated,
        json!(64 * 400),
        "all of it generated: {generated}"
    );
    eprintln!("[chaos] {TEST}: uncancelled via node-{via}: {uncancelled:?}");

    let cancelled_before = metric(&cluster, via, REQUESTS, &[CANCELLED])
        .await
        .unwrap_or(0.0);
    let start = Instant::now();
    let mut stream = cluster
        .client
        .chat_stream(
            &cluster.url(via),
            cluster.client.admin_key(),
            &long_generation(true),
        )
        .await
        .unwrap();
    assert_eq!(stream.status, 200);
    // The first events only open the 64 choices (`role`); read until tokens flow.
    let mut tokens = 0;
    while tokens < 8 {
        let data = stream.next_data().await.unwrap();
        let data = match data.as_deref() {
            Some("[DONE]") | None => panic!("the stream ended early: {data:?}"),
            Some(data) => data,
        };
        let event: Value = serde_json::from_str(data).unwrap();
        let has_content = event["choices"].as_array().into_iter().flatten().any(|c| {
            c["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        });
        tokens += usize::from(has_content);
    }
    // The host's worker publishes its gauges right after it hands out a step's tokens; on a
    // loaded machine the tokens can reach us first.
    wait_for(
        Duration::from_secs(2),
        &format!("host node-{host} to show the running request"),
        || async {
            match host_busy().await {
                (kv, running) if kv > 0.0 && running > 0.0 => Ok(()),
                (kv, running) => Err(format!("{kv} KV blocks used, {running} running")),
            }
        },
    )
    .await;
    drop(stream);
    let hung_up = start.elapsed();

    // Freed long before the generation would have ended by itself.
    let budget = uncancelled / 2;
    let ((), freed) = wait_for(
        budget.saturating_sub(hung_up),
        &format!("host node-{host} to free the KV blocks of the request node-{via} dropped"),
        || async {
            match host_busy().await {
                (0.0, 0.0) => Ok(()),
                (kv, running) => Err(format!("{kv} KV blocks used, {running} running")),
            }
        },
    )
    .await;
    let cancelled_after = metric(&cluster, via, REQUESTS, &[CANCELLED])
        .await
        .unwrap_or(0.0);
    assert_eq!(
        cancelled_after,
        cancelled_before + 1.0,
        "node-{via} counts the request as cancelled"
    );
    // Stopped, not paused: nothing starts again on the host.
    hold_for(
        Duration::from_millis(300),
        "the host stays idle",
        || async {
            match host_busy().await {
                (0.0, 0.0) => Ok(()),
                (kv, running) => Err(format!("{kv} KV blocks used, {running} running")),
            }
        },
    )
    .await;
    eprintln!(
        "[chaos] {TEST}: hung up {hung_up:?} in; host node-{host} idle {freed:?} later \
         (uncancelled: {uncancelled:?})"
    );
}
