//! A real node process through disconnects, restarts, crashes, SIGTERM and failing engines.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_frees_its_kv_blocks() {
    let node = Node::start(&config("", ""));
    let used = format!("helixflow_kv_cache_blocks_used{{model=\"{MODEL}\"}}");
    wait_until(Duration::from_secs(10), "the worker's gauges", || async {
        node.metric(&used).await == Some(0.0)
    })
    .await;
    // 64 choices of 480 tokens: seconds of work, so the disconnect lands mid-generation.
    let body = json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 480, "n": 64, "ignore_eos": true, "stream": true});
    let response = node
        .post("/v1/completions", KEY, &body)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    // Read until tokens flow, then check the sequences hold blocks.
    let mut seen = 0;
    while seen < 8 {
        let chunk = stream.next().await.unwrap().unwrap();
        seen += chunk.windows(6).filter(|w| w == b"data: ").count();
    }
    // The worker updates its gauges right after it sends a step's tokens, so a client on a
    // loaded machine can see tokens first: wait for the gauge rather than read it once.
    wait_until(
        Duration::from_secs(5),
        "the sequences hold KV blocks",
        || async { node.metric(&used).await.is_some_and(|v| v > 0.0) },
    )
    .await;
    drop(stream);
    wait_until(
        Duration::from_secs(20),
        "KV blocks freed after the disconnect",
        || async { node.metric(&used).await == Some(0.0) },
    )
    .await;
    let cancelled = node.metrics().await;
    assert!(cancelled.contains("status=\"cancelled\""), "{cancelled}");
    // It stopped early, and the ledger charged what was generated until then.
    let usage: Value = node
        .client
        .get(format!("{}/v1/usage", node.url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generated = usage["data"][0]["completion_tokens"].as_u64().unwrap();
    assert!((1..64 * 480).contains(&generated), "{usage}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_survives_restarts_and_crashes() {
    let node = Node::start(&config("", ""));
    let body = json!({"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 4, "ignore_eos": true});
    for _ in 0..3 {
        let (status, _) = node.call("/v1/completions", &body).await;
        assert_eq!(status, 200);
    }
    let usage = |node: &Node| {
        let request = node
            .client
            .get(format!("{}/v1/usage", node.url))
            .bearer_auth(KEY);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let expected = json!({"object": "list", "data": [
        {"key": "admin", "model": MODEL, "requests": 3, "prompt_tokens": 9, "completion_tokens": 12}
    ]});
    assert_eq!(usage(&node).await, expected);
    let node = node.restart();
    assert_eq!(usage(&node).await, expected);
    // Answered requests are on disk before the answer is sent: a crash loses none.
    node.call("/v1/completions", &body).await;
    let node = node.crash_and_restart();
    let after = usage(&node).await;
    assert_eq!(after["data"][0]["requests"], 4, "{after}");
    assert_eq!(after["data"][0]["completion_tokens"], 16);
    // A user key sees only its own rows.
    let own: Value = node
        .client
        .get(format!("{}/v1/usage", node.url))
        .bearer_auth(USER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["data"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_streams_then_exits() {
    let node = Node::start(&config("", ""));
    let ready = node
        .client
        .get(format!("{}/ready", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // Seconds of work (64 × 480 tokens): SIGTERM arrives mid-generation.
    let body = json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 480, "n": 64, "ignore_eos": true, "stream": true});
    let response = node
        .post("/v1/completions", KEY, &body)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    node.terminate();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "stream cut short: ...{}",
        &rest[rest.len().saturating_sub(200)..]
    );
    let mut node = node;
    let status = common::wait_exit(&mut node.child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_engine_is_restarted_and_its_started_requests_fail_retriably() {
    let node = Node::start(&config("", "[limits]\nfault_injection = true"));
    // Seconds of work (64 × 480 tokens): the panic lands mid-generation.
    let body = json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 480, "n": 64, "ignore_eos": true, "stream": true});
    let response = node
        .post("/v1/completions", KEY, &body)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    let (status, v) = node
        .call(
            "/admin/v1/fault",
            &json!({"model": MODEL, "fault": "panic"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    let last = rest.trim_end().rsplit("data: ").next().unwrap();
    let error: Value =
        serde_json::from_str(last).unwrap_or_else(|_| panic!("no error event: {last}"));
    assert_eq!(error["error"]["type"], "service_unavailable", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retry")
    );

    // The error reaches the client when the worker goes down, before its replacement has
    // loaded the model (meanwhile the node answers 503 "retry shortly" and `/ready` is 503):
    // wait for the node to report ready, as a load balancer would.
    wait_until(Duration::from_secs(30), "the restarted worker", || async {
        node.client
            .get(format!("{}/ready", node.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    // A new worker takes over and answers exactly.
    let prompt = &chat_prompts()[0];
    let r = node.chat(greedy(&prompt["messages"])).await;
    assert_eq!(
        r["choices"][0]["message"]["content"],
        prompt["greedy"]["text_skip_special"]
    );
    let restarts = node
        .metric(&format!(
            "helixflow_worker_restarts_total{{model=\"{MODEL}\"}}"
        ))
        .await;
    assert_eq!(restarts, Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_engine_is_restarted_and_unstarted_requests_run_elsewhere() {
    let node = Node::start(&config(
        "",
        "[limits]\nfault_injection = true\nstall_timeout_secs = 1",
    ));
    // The engine stops making progress; a request given to it then waits there.
    let (status, v) = node
        .call(
            "/admin/v1/fault",
            &json!({"model": MODEL, "fault": "stall", "seconds": 120}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let prompt = &chat_prompts()[1];
    let started = std::time::Instant::now();
    let r = node.chat(greedy(&prompt["messages"])).await;
    // It was re-queued to the restarted worker: the client sees a normal, exact answer.
    assert_eq!(
        r["choices"][0]["message"]["content"],
        prompt["greedy"]["text_skip_special"]
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    let restarts = node
        .metric(&format!(
            "helixflow_worker_restarts_total{{model=\"{MODEL}\"}}"
        ))
        .await;
    assert_eq!(restarts, Some(1.0));
}
