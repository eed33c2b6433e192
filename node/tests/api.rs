//! The OpenAI API of a real node process serving `tests/fixtures/tiny-llama`, over real HTTP.

mod common;

use std::time::Duration;

use common::{KEY, MODEL, Node, USER_KEY, config, reference, stream_texts, wait_until};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn chat_prompts() -> Vec<Value> {
    reference()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "chat")
        .cloned()
        .collect()
}

fn greedy(messages: &Value) -> Value {
    json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 24, "ignore_eos": true})
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_chat_equals_the_fixture_streamed_or_not() {
    let node = Node::start(&config("", ""));
    for prompt in chat_prompts() {
        let expected = prompt["greedy"]["text_skip_special"].as_str().unwrap();
        let body = greedy(&prompt["messages"]);
        let response = node.chat(body.clone()).await;
        let choice = &response["choices"][0];
        assert_eq!(choice["message"]["content"], expected, "{}", prompt["id"]);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(response["object"], "chat.completion");
        assert_eq!(response["model"], MODEL);
        assert_eq!(response["usage"]["prompt_tokens"], prompt["num_tokens"]);
        assert_eq!(response["usage"]["completion_tokens"], 24);
        assert_eq!(
            response["usage"]["total_tokens"],
            prompt["num_tokens"].as_u64().unwrap() + 24
        );

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let events = node.stream("/v1/chat/completions", &streamed).await;
        assert_eq!(events.last().unwrap(), "[DONE]");
        assert_eq!(
            stream_texts(&events),
            vec![expected.to_owned()],
            "{}",
            prompt["id"]
        );
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        // Without include_usage no chunk carries usage.
        assert!(events.iter().all(|e| !e.contains("\"usage\":{")));
    }
    // The greedy token ids themselves, through completions with a token-id prompt.
    for prompt in reference()["prompts"].as_array().unwrap() {
        let (status, response) = node
            .call(
                "/v1/completions",
                &json!({"model": "tiny", "prompt": prompt["input_ids"], "max_tokens": 24, "temperature": 0,
                        "ignore_eos": true, "logprobs": 0}),
            )
            .await;
        assert_eq!(status, 200, "{response}");
        let tokens: Vec<String> = response["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(tokens.len(), 24);
        assert_eq!(
            response["choices"][0]["text"],
            prompt["greedy"]["text_skip_special"]
        );
        assert_eq!(response["usage"]["prompt_tokens"], prompt["num_tokens"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_parameter_changes_what_it_should() {
    let node = Node::start(&config("", ""));
    let prompt = &chat_prompts()[0];
    let messages = &prompt["messages"];
    let greedy_text = prompt["greedy"]["text_skip_special"]
        .as_str()
        .unwrap()
        .to_owned();
    let content = |r: &Value, i: usize| {
        r["choices"][i]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // max_tokens and max_completion_tokens.
    for field in ["max_tokens", "max_completion_tokens"] {
        let r = node
            .chat(json!({"model": MODEL, "messages": messages, "temperature": 0, field: 5, "ignore_eos": true}))
            .await;
        assert_eq!(r["usage"]["completion_tokens"], 5, "{field}");
        assert_eq!(r["choices"][0]["finish_reason"], "length");
        assert!(greedy_text.starts_with(&content(&r, 0)), "{field}");
    }

    // stop: the text ends before the stop string, which never appears.
    let stop = &greedy_text[6..9];
    let r = node
        .chat(json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 24, "stop": [stop]}))
        .await;
    let expected = &greedy_text[..greedy_text.find(stop).unwrap()];
    assert_eq!(content(&r, 0), expected);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() < 24);
    // The same through streaming.
    let events = node
        .stream(
            "/v1/chat/completions",
            &json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 24, "stop": stop, "stream": true}),
        )
        .await;
    assert_eq!(stream_texts(&events), vec![expected.to_owned()]);

    // stop_token_ids: the 5th greedy token ends the choice with "stop".
    let fifth = prompt["greedy"]["new_token_ids"][4].clone();
    let r = node
        .chat(json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 24, "stop_token_ids": [fifth]}))
        .await;
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert_eq!(r["usage"]["completion_tokens"], 5);

    // seed + temperature: the same seed repeats, another seed differs, and sampling differs
    // from greedy.
    let sampled = |seed: u64| json!({"model": MODEL, "messages": messages, "temperature": 1.0, "max_tokens": 24, "seed": seed, "ignore_eos": true});
    let a = content(&node.chat(sampled(7)).await, 0);
    let b = content(&node.chat(sampled(7)).await, 0);
    let c = content(&node.chat(sampled(8)).await, 0);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, greedy_text);

    // top_p near zero keeps only the most likely token: greedy even at temperature 1.
    let r = node
        .chat(json!({"model": MODEL, "messages": messages, "temperature": 1.0, "top_p": 1e-6, "max_tokens": 24, "seed": 7, "ignore_eos": true}))
        .await;
    assert_eq!(content(&r, 0), greedy_text);

    // n: three different seeded choices, usage summed, each streamed identically.
    let body = json!({"model": MODEL, "messages": messages, "temperature": 1.0, "n": 3, "max_tokens": 10, "seed": 3, "ignore_eos": true});
    let r = node.chat(body.clone()).await;
    let choices: Vec<String> = (0..3).map(|i| content(&r, i)).collect();
    assert_eq!(r["choices"].as_array().unwrap().len(), 3);
    assert_eq!(r["usage"]["completion_tokens"], 30);
    assert_ne!(choices[0], choices[1]);
    let mut streamed = body;
    streamed["stream"] = json!(true);
    assert_eq!(
        stream_texts(&node.stream("/v1/chat/completions", &streamed).await),
        choices
    );

    // Penalties change a greedy output that repeats tokens.
    for penalty in ["presence_penalty", "frequency_penalty"] {
        let r = node
            .chat(json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 24, "ignore_eos": true, penalty: 2.0}))
            .await;
        assert_ne!(content(&r, 0), greedy_text, "{penalty} had no effect");
    }

    // logprobs and top_logprobs: the greedy token is the top alternative.
    let r = node
        .chat(json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 4, "logprobs": true, "top_logprobs": 3, "ignore_eos": true}))
        .await;
    let entries = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    for e in entries {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], e["token"]);
        assert_eq!(top[0]["logprob"], e["logprob"]);
        assert!(e["logprob"].as_f64().unwrap() < 0.0);
    }
    let r = node
        .chat(json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 4, "ignore_eos": true}))
        .await;
    assert!(r["choices"][0]["logprobs"].is_null());

    // Content as an array of text parts reads as the joined string; `user` is accepted.
    let text = messages[0]["content"].as_str().unwrap();
    let (left, right) = text.split_at(4);
    let mut parts = messages.clone();
    parts[0]["content"] = json!([{"type": "text", "text": left}, {"type": "text", "text": right}]);
    let r = node
        .chat(json!({"model": MODEL, "messages": parts, "temperature": 0, "max_tokens": 24, "ignore_eos": true, "user": "u-42"}))
        .await;
    assert_eq!(content(&r, 0), greedy_text);

    // stream_options.include_usage: a final chunk with no choices carries the usage.
    let events = node
        .stream(
            "/v1/chat/completions",
            &json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 7, "ignore_eos": true,
                    "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 7);
    assert_eq!(last["usage"]["prompt_tokens"], prompt["num_tokens"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_and_embeddings() {
    let node = Node::start(&config("", ""));
    let reference = reference();
    let fox = &reference["prompts"][0];
    // A text prompt, echo, two prompts in one request.
    let (status, r) = node
        .call(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": [fox["text"], fox["text"]], "max_tokens": 24, "temperature": 0, "ignore_eos": true, "echo": true}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    let expected = format!(
        "{}{}",
        fox["text"].as_str().unwrap(),
        fox["greedy"]["text_skip_special"].as_str().unwrap()
    );
    assert_eq!(r["choices"][0]["text"], expected.as_str());
    assert_eq!(r["choices"][1]["text"], expected.as_str());
    assert_eq!(
        r["usage"]["prompt_tokens"],
        2 * fox["num_tokens"].as_u64().unwrap()
    );
    assert_eq!(r["usage"]["completion_tokens"], 48);
    // The default max_tokens of completions is 16.
    let (_, r) = node
        .call(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "Hi", "temperature": 0, "ignore_eos": true}),
        )
        .await;
    assert_eq!(r["usage"]["completion_tokens"], 16);

    // Embeddings: the fixture's mean-pooled vectors, as floats and as base64.
    let (status, r) = node
        .call(
            "/v1/embeddings",
            &json!({"model": MODEL, "input": [fox["text"], "a b c"]}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let got: Vec<f64> = r["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want: Vec<f64> = fox["embedding_mean_pooled_normalized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let cosine: f64 = got.iter().zip(&want).map(|(a, b)| a * b).sum::<f64>()
        / (got.iter().map(|a| a * a).sum::<f64>().sqrt()
            * want.iter().map(|b| b * b).sum::<f64>().sqrt());
    assert!(cosine >= 0.9999, "cosine {cosine}");
    assert_eq!(r["data"][1]["index"], 1);
    assert_eq!(
        r["usage"]["prompt_tokens"],
        fox["num_tokens"].as_u64().unwrap() + 3
    );
    let (_, b64) = node
        .call(
            "/v1/embeddings",
            &json!({"model": MODEL, "input": fox["text"], "encoding_format": "base64"}),
        )
        .await;
    assert!(b64["data"][0]["embedding"].as_str().unwrap().len() > 64 * 4);

    // Models: listed with aliases; an alias resolves.
    let models: Value = node
        .client
        .get(format!("{}/v1/models", node.url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    let model: Value = node
        .client
        .get(format!("{}/v1/models/tiny", node.url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(model["id"], MODEL);
}

async fn error_of(
    node: &Node,
    key: Option<&str>,
    path: &str,
    body: &str,
) -> (u16, Value, Option<String>) {
    let mut request = node
        .client
        .post(format!("{}{path}", node.url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text}"));
    let error = &value["error"];
    assert!(
        error["message"].is_string() && error["type"].is_string(),
        "{value}"
    );
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{value}"
    );
    (status, value, retry)
}

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
async fn thirty_two_concurrent_streams_complete_with_exact_usage() {
    let node = Node::start(&config("", ""));
    let prompts = chat_prompts();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let prompt = prompts[i % prompts.len()].clone();
        let url = node.url.clone();
        let client = node.client.clone();
        tasks.push(tokio::spawn(async move {
            let max_tokens = 8 + i % 9;
            let body = json!({"model": MODEL, "messages": prompt["messages"], "temperature": 0, "max_tokens": max_tokens,
                              "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
            let text = client
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let events: Vec<String> = text
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
                .collect();
            assert_eq!(events.last().unwrap(), "[DONE]");
            let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
            assert_eq!(usage["usage"]["completion_tokens"], max_tokens as u64);
            assert_eq!(usage["usage"]["prompt_tokens"], prompt["num_tokens"]);
            // Batched with 31 others, greedy output is still the fixture's prefix.
            let expected = prompt["greedy"]["text_skip_special"].as_str().unwrap();
            let got = stream_texts(&events).remove(0);
            assert!(expected.starts_with(&got), "{got:?} vs {expected:?}");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

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
    assert!(node.metric(&used).await.unwrap() > 0.0);
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
    let body =
        json!({"model": MODEL, "prompt": [1, 2, 3, 4], "max_tokens": 10, "ignore_eos": true})
            .to_string();
    let path = "/v1/completions";

    for _ in 0..2 {
        let r = node
            .post(path, "hf-rpm", &serde_json::from_str(&body).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (status, v, retry) = error_of(&node, Some("hf-rpm"), path, &body).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // Other keys are unaffected.
    assert_eq!(
        node.post(path, USER_KEY, &serde_json::from_str(&body).unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Budget of 40 tokens at 4 + 10 per request: the third still starts (28 + 4 <= 40) and
    // overdraws, the fourth is refused.
    for _ in 0..3 {
        assert_eq!(
            node.post(path, "hf-budget", &serde_json::from_str(&body).unwrap())
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let (status, v, _) = error_of(&node, Some("hf-budget"), path, &body).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("insufficient_quota")),
        "{v}"
    );

    // 10 tokens per minute: a 4-token prompt passes, its 10 generated tokens empty the bucket.
    assert_eq!(
        node.post(path, "hf-tpm", &serde_json::from_str(&body).unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
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
