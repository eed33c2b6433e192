//! The OpenAI API of a real node serving `tests/fixtures/tiny-llama`, over real HTTP: what it
//! generates — exact against the fixture, every parameter, streaming, completions, embeddings.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

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

/// `kv_cache_dtype = "f16"` in a model's entry: the worker fits twice the KV blocks in the same
/// `kv_cache_mib`, and serves the fixture's greedy text where HuggingFace's top-1 margins are
/// wide (text_fox: every step's margin is above 0.05, the f16 cache moves logits by < 0.007).
#[tokio::test(flavor = "multi_thread")]
async fn a_model_with_an_f16_kv_cache_holds_twice_the_blocks_and_serves() {
    let f32_blocks = kv_blocks_total(&Node::start(&config("", ""))).await;
    let f16 = config("", "").replace(
        "kv_cache_mib = 16",
        "kv_cache_mib = 16\nkv_cache_dtype = \"f16\"",
    );
    let node = Node::start(&f16);
    assert_eq!(kv_blocks_total(&node).await, 2.0 * f32_blocks);
    let fox = &reference()["prompts"][0];
    let (status, r) = node
        .call(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": fox["input_ids"], "max_tokens": 24, "temperature": 0, "ignore_eos": true}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], fox["greedy"]["text_skip_special"]);
}

/// The worker's `helixflow_kv_cache_blocks_total` once it has published it.
async fn kv_blocks_total(node: &Node) -> f64 {
    let name = format!("helixflow_kv_cache_blocks_total{{model=\"{MODEL}\"}}");
    wait_until(Duration::from_secs(20), &name, || async {
        node.metric(&name).await.is_some_and(|v| v > 0.0)
    })
    .await;
    node.metric(&name).await.unwrap()
}
