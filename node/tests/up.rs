//! `helixflow up` as a new user runs it, and the shipped single-node config.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

/// Starts `helixflow ARGS`, returns the child, the URL it listens on, and its stderr so far.
fn spawn(args: &[&str]) -> (common::ChildGuard, String, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_helixflow"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (url_tx, url_rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(at) = line.find("http://") {
                let _ = url_tx.send(line[at..].trim().to_owned());
            }
        }
    });
    let (err_tx, err_rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let url = url_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("listening within 120s");
    (common::ChildGuard(child), url, err_rx)
}

async fn chat(url: &str, key: &str, model: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn up_writes_a_demo_model_and_serves_it_with_the_printed_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    let args = [
        "up",
        "--data-dir",
        data.to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
    ];
    let (child, url, stderr) = spawn(&args);
    let mut key = None;
    let mut curl = false;
    while let Ok(line) = stderr.recv_timeout(Duration::from_secs(10)) {
        if let Some(k) = line.strip_prefix("API key: ") {
            key = Some(k.trim().to_owned());
        }
        curl |= line.contains("curl http://");
        if key.is_some() && curl {
            break;
        }
    }
    let key = key.expect("`up` printed the key");
    assert!(curl, "`up` printed a request to paste");
    let (status, body) = chat(&url, &key, "demo-llama").await;
    assert_eq!(status, 200, "{body}");
    // Random weights may sample EOS early; otherwise the choice runs to max_tokens.
    let generated = body["usage"]["completion_tokens"].as_u64().unwrap();
    match body["choices"][0]["finish_reason"].as_str() {
        Some("length") => assert_eq!(generated, 8),
        Some("stop") => assert!((1..=8).contains(&generated)),
        other => panic!("finish_reason {other:?}"),
    }
    let (status, _) = chat(&url, "hf-not-the-key", "demo-llama").await;
    assert_eq!(status, 401);
    drop(child);

    // The second run reuses the model, the key and the config.
    let config = std::fs::read_to_string(data.join("cluster.toml")).unwrap();
    assert!(
        !config.contains(&key),
        "the config holds only the key's hash"
    );
    let (_child, url, _) = spawn(&args);
    common::wait_ready(&url, Duration::from_secs(60));
    let (status, _) = chat(&url, &key, "demo").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_single_node_config_serves_with_its_demo_key() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs/single.toml");
    let dir = tempfile::tempdir().unwrap();
    let (_child, url, _) = spawn(&[
        "node",
        "--config",
        config.to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    common::wait_ready(&url, Duration::from_secs(60));
    let (status, body) = chat(&url, "hf-single-demo-key", "tiny").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "tiny-llama");
}
