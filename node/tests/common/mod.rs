//! Test harness: real `helixflow node` processes on 127.0.0.1 with a port chosen by the OS, a
//! temporary data directory each, and an HTTP client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use helixflow_runtime::keys::KeyHash;
use serde_json::{Value, json};

pub const KEY: &str = "hf-test-admin";
pub const USER_KEY: &str = "hf-test-user";
pub const MODEL: &str = "tiny-llama";

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama")
}

pub fn reference() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A cluster config for one node serving tiny-llama; `keys` and `extra` are appended TOML.
pub fn config(keys: &str, extra: &str) -> String {
    format!(
        r#"
[cluster]
name = "test"

[[nodes]]
id = 1
http_addr = "127.0.0.1:0"
data_dir = "data"
devices = [{{ kind = "cpu", threads = 1 }}]

[[models]]
id = "{MODEL}"
path = "{model}"
aliases = ["tiny"]
kv_cache_mib = 16

[[keys]]
name = "admin"
sha256 = "{admin}"
role = "admin"

[[keys]]
name = "user"
sha256 = "{user}"
{keys}
{extra}
"#,
        model = fixture_dir().display(),
        admin = KeyHash::of(KEY),
        user = KeyHash::of(USER_KEY),
    )
}

pub struct Node {
    pub child: Child,
    pub url: String,
    dir: Option<tempfile::TempDir>,
    pub client: reqwest::Client,
}

impl Node {
    pub fn start(config_text: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.toml"), config_text).unwrap();
        Node::start_in(dir)
    }

    pub fn start_in(dir: tempfile::TempDir) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_helixflow"))
            .arg("node")
            .arg("--config")
            .arg(dir.path().join("cluster.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(at) = line.find("http://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the node printed its address within 60s");
        wait_ready(&url, Duration::from_secs(60));
        Node {
            child,
            url,
            dir: Some(dir),
            client: reqwest::Client::new(),
        }
    }

    /// SIGTERM, wait for a clean exit, and start again on the same data directory.
    pub fn restart(self) -> Node {
        let dir = self.stop();
        Node::start_in(dir)
    }

    /// SIGKILL (a crash), then start again on the same data directory.
    pub fn crash_and_restart(mut self) -> Node {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = self.into_dir();
        Node::start_in(dir)
    }

    /// SIGTERM and wait (deadline 60s) for exit status 0; returns the data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.terminate();
        let status = wait_exit(&mut self.child, Duration::from_secs(60));
        assert!(status.success(), "node exited with {status}");
        self.into_dir()
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn into_dir(mut self) -> tempfile::TempDir {
        self.dir.take().expect("a running node has its directory")
    }

    pub fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(body)
    }

    /// POSTs and returns (status, JSON body).
    pub async fn call(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.post(path, KEY, body).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, value)
    }

    /// POSTs and returns only the status (the body is read to the end).
    pub async fn status(&self, path: &str, key: &str, body: &Value) -> u16 {
        let response = self.post(path, key, body).send().await.unwrap();
        let status = response.status().as_u16();
        response.bytes().await.unwrap();
        status
    }

    pub async fn chat(&self, body: Value) -> Value {
        let (status, value) = self.call("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{value}");
        value
    }

    /// Streams a request and returns every `data:` payload (the last is `[DONE]` on success).
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let response = self.post(path, KEY, body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let text = response.text().await.unwrap();
        text.split("\n\n")
            .filter_map(|event| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .map(str::to_owned)
            })
            .collect()
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a metric line that starts with `name` (labels included in `name`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < end,
            "process did not exit within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `condition` until it holds or `deadline` passes (then panics naming `what`).
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while !condition().await {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The text of every chunk's delta (chat) or text (completions), concatenated per choice index.
pub fn stream_texts(events: &[String]) -> Vec<String> {
    let mut texts: Vec<String> = Vec::new();
    for event in events {
        if event == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(event).unwrap();
        for choice in v["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
            }
            let piece = choice["delta"]["content"]
                .as_str()
                .or_else(|| choice["text"].as_str())
                .unwrap_or("");
            texts[i].push_str(piece);
        }
    }
    texts
}

/// Kills the process when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fixture's chat prompts.
pub fn chat_prompts() -> Vec<Value> {
    reference()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "chat")
        .cloned()
        .collect()
}

/// A greedy chat request for the fixture's 24 tokens.
pub fn greedy(messages: &Value) -> Value {
    json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 24, "ignore_eos": true})
}

/// POSTs a raw body (key optional) expecting an error: returns status, body and `Retry-After`,
/// after checking the body has the OpenAI error shape.
pub async fn error_of(
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

/// Blocks until `GET {url}/ready` answers 200 (the node has loaded the models placed on it).
pub fn wait_ready(url: &str, deadline: Duration) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").to_owned();
    let until = Instant::now() + deadline;
    loop {
        let status = std::net::TcpStream::connect(&addr)
            .ok()
            .and_then(|mut tcp| {
                tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                write!(tcp, "GET /ready HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
                let mut response = String::new();
                tcp.read_to_string(&mut response).ok()?;
                response.split_whitespace().nth(1).map(str::to_owned)
            });
        if status.as_deref() == Some("200") {
            return;
        }
        assert!(
            Instant::now() < until,
            "{url} not ready within {deadline:?} (last status {status:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
