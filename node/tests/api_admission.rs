//! The OpenAI API of a real node over real HTTP: what it refuses — error shapes and statuses,
//! rate limits and budgets, full queues.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn errors_have_the_openai_shape_and_the_right_status() {
    let node = Node::start(&config("", "[limits]\nmax_body_bytes = 65536"));
    let chat = "/v1/chat/completions";
    let ok_body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});

    let (status, v, _) = error_of(&node, None, chat, &ok_body.to_string()).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let (status, _, _) = error_of(&node, Some("hf-wrong"), chat, &ok_body.to_string()).await;
    assert_eq!(status, 401);

    let mut unknown_model = ok_body.clone();
    unknown_model["model"] = json!("gpt-9");
    let (status, v, _) = error_of(&node, Some(KEY), chat, &unknown_model.to_string()).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "model_not_found");

    for (field, value) in [
        ("temperature", json!(3.5)),
        ("top_p", json!(1.5)),
        ("n", json!(0)),
        ("max_tokens", json!(0)),
        ("presence_penalty", json!(-9)),
        ("frequency_penalty", json!(9)),
        ("top_logprobs", json!(50)),
        ("stop", json!(["a", "b", "c", "d", "e"])),
        ("temperature", json!("warm")),
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
        ),
        ("frobnicate", json!(1)),
        ("stream_options", json!({"include_usage": true})),
    ] {
        let mut body = ok_body.clone();
        body[field] = value;
        if field == "top_logprobs" {
            body["logprobs"] = json!(true);
        }
        let (status, v, _) = error_of(&node, Some(KEY), chat, &body.to_string()).await;
        assert_eq!(status, 400, "{field}: {v}");
        assert_eq!(v["error"]["param"], field, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let (status, v, _) = error_of(&node, Some(KEY), chat, r#"{"model": "tiny-llama""#).await;
    assert_eq!(status, 400, "{v}");
    let (status, v, _) = error_of(&node, Some(KEY), chat, r#"{"messages": []}"#).await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("model")),
        "{v}"
    );
    let (status, _, _) = error_of(&node, Some(KEY), chat, "").await;
    assert_eq!(status, 400);

    // Over the context window: the limit and the count are in the message.
    let long = "word ".repeat(600);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": long}]});
    let (status, v, _) = error_of(&node, Some(KEY), chat, &body.to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("512") && message.contains("tokens"),
        "{message}"
    );
    let body = json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 510});
    let (status, v, _) = error_of(&node, Some(KEY), "/v1/completions", &body.to_string()).await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("513"),
        "{v}"
    );
    let body = json!({"model": MODEL, "prompt": [1, 2, 99999]});
    let (status, v, _) = error_of(&node, Some(KEY), "/v1/completions", &body.to_string()).await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("prompt")),
        "{v}"
    );
    // Completions name their own logprobs field.
    let body = json!({"model": MODEL, "prompt": [1, 2], "logprobs": 50});
    let (status, v, _) = error_of(&node, Some(KEY), "/v1/completions", &body.to_string()).await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("logprobs")),
        "{v}"
    );

    // Oversized body.
    let huge =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let (status, _, _) = error_of(&node, Some(KEY), chat, &huge.to_string()).await;
    assert_eq!(status, 413);

    let (status, _, _) = error_of(&node, Some(KEY), "/v1/nothing", "{}").await;
    assert_eq!(status, 404);

    // After all that the node still serves.
    node.chat(ok_body).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_answer_429_and_overload_503() {
    let keys = r#"
[[keys]]
name = "rpm"
sha256 = "RPM"
requests_per_minute = 2

[[keys]]
name = "budget"
sha256 = "BUDGET"
token_budget = 40

[[keys]]
name = "tpm"
sha256 = "TPM"
tokens_per_minute = 10
"#
    .replace(
        "RPM",
        &helixflow_runtime::keys::KeyHash::of("hf-rpm").to_string(),
    )
    .replace(
        "BUDGET",
        &helixflow_runtime::keys::KeyHash::of("hf-budget").to_string(),
    )
    .replace(
        "TPM",
        &helixflow_runtime::keys::KeyHash::of("hf-tpm").to_string(),
    );
    let node = Node::start(&config(&keys, ""));
    let request =
        json!({"model": MODEL, "prompt": [1, 2, 3, 4], "max_tokens": 10, "ignore_eos": true});
    let body = request.to_string();
    let path = "/v1/completions";

    for _ in 0..2 {
        assert_eq!(node.status(path, "hf-rpm", &request).await, 200);
    }
    let (status, v, retry) = error_of(&node, Some("hf-rpm"), path, &body).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // Other keys are unaffected.
    assert_eq!(node.status(path, USER_KEY, &request).await, 200);

    // Budget of 40 tokens at 4 + 10 per request: the third still starts (28 + 4 <= 40) and
    // overdraws, the fourth is refused.
    for _ in 0..3 {
        assert_eq!(node.status(path, "hf-budget", &request).await, 200);
    }
    let (status, v, _) = error_of(&node, Some("hf-budget"), path, &body).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("insufficient_quota")),
        "{v}"
    );

    // 10 tokens per minute: a 4-token prompt passes, its 10 generated tokens empty the bucket.
    assert_eq!(node.status(path, "hf-tpm", &request).await, 200);
    let (status, _, retry) = error_of(&node, Some("hf-tpm"), path, &body).await;
    assert_eq!(status, 429);
    assert!(retry.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn full_queues_answer_429_per_key_and_503_per_node() {
    let keys = format!(
        "max_queued = 1\n\n[[keys]]\nname = \"other\"\nsha256 = \"{}\"\n",
        helixflow_runtime::keys::KeyHash::of("hf-other")
    );
    // One running sequence at most, two waiting per node.
    let text = config(&keys, "[limits]\nmax_queue = 2\nfault_injection = true")
        .replace("kv_cache_mib = 16", "kv_cache_mib = 16\nmax_running = 1");
    let node = Node::start(&text);
    let long = json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 100, "ignore_eos": true, "stream": true});
    // The engine stalls for a few seconds; the first request takes the only running slot and
    // holds it meanwhile.
    let (status, v) = node
        .call(
            "/admin/v1/fault",
            &json!({"model": MODEL, "fault": "stall", "seconds": 8}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    // (Held until the end: a dropped response is a client that left, and cancels.)
    let running = node
        .post("/v1/completions", KEY, &long)
        .send()
        .await
        .unwrap();
    let ready = || {
        let request = node.client.get(format!("{}/ready", node.url));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    wait_until(Duration::from_secs(10), "one request running", || async {
        ready().await["in_flight"] == 1
    })
    .await;
    let queued_user = node.post("/v1/completions", USER_KEY, &long);
    let queued_user =
        tokio::spawn(async move { queued_user.send().await.unwrap().text().await.unwrap() });
    wait_until(Duration::from_secs(10), "one request queued", || async {
        node.metric("helixflow_queue_depth").await == Some(1.0)
    })
    .await;
    // The user key may queue one: the next is 429.
    let (status, _, retry) =
        error_of(&node, Some(USER_KEY), "/v1/completions", &long.to_string()).await;
    assert_eq!(status, 429);
    assert!(retry.is_some());
    // Another key fills the node queue (2), then the node is full: 503.
    let other = node.post("/v1/completions", "hf-other", &long);
    let other = tokio::spawn(async move { other.send().await.unwrap().text().await.unwrap() });
    wait_until(Duration::from_secs(10), "two requests queued", || async {
        node.metric("helixflow_queue_depth").await == Some(2.0)
    })
    .await;
    let (status, v, retry) = error_of(&node, Some(KEY), "/v1/completions", &long.to_string()).await;
    assert_eq!(status, 503, "{v}");
    assert!(retry.is_some());
    // Once the engine resumes, everything admitted completes.
    assert!(running.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert!(queued_user.await.unwrap().ends_with("data: [DONE]\n\n"));
    assert!(other.await.unwrap().ends_with("data: [DONE]\n\n"));
}
