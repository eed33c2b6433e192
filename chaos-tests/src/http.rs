//! The few HTTP calls the tests make — cluster status, keys, chat completions, metrics — with
//! the wire types they read. Errors are transport failures only; an HTTP error status is a
//! [`Reply`] like any other, because the tests assert on statuses.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};

/// The model every chaos cluster serves.
pub const MODEL: &str = "tiny-llama";

/// Longest any single request may take: a request to a paused or dead node fails instead of
/// hanging the test.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /admin/v1/cluster`, as one node sees the cluster.
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub applied: u64,
    pub placement_epoch: u64,
    pub nodes: Vec<NodeEntry>,
    pub placements: Vec<Placement>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NodeEntry {
    pub id: u64,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    /// `up`, `suspect`, `down`, `joining` or `draining`.
    pub status: String,
    pub voter: bool,
    pub silence_ms: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Placement {
    pub model: String,
    pub node: u64,
    pub epoch: u64,
}

impl ClusterStatus {
    /// The committed status of node `id` (`None`: not in the metadata).
    pub fn status_of(&self, id: u64) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.status.as_str())
    }

    /// The nodes `model` is placed on, ascending.
    pub fn hosts_of(&self, model: &str) -> Vec<u64> {
        let mut hosts: Vec<u64> = self
            .placements
            .iter()
            .filter(|p| p.model == model)
            .map(|p| p.node)
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }
}

/// An HTTP answer: status and body text.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("HTTP {}: not JSON: {}", self.status, self.body))
    }

    /// The first choice's text of a chat completion (`message.content`) or completion (`text`).
    pub fn completion_text(&self) -> anyhow::Result<String> {
        let value = self.json()?;
        let choice = &value["choices"][0];
        choice["message"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("no completion text in {value}"))
    }
}

/// A greedy, non-streaming chat request for `max_tokens` tokens of `prompt`: the same answer
/// from every replica, so answers can be compared across nodes.
pub fn greedy_chat(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "ignore_eos": true,
    })
}

/// An HTTP client for one cluster: the admin key for admin calls, any key for the rest.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    admin_key: String,
}

impl Client {
    pub fn new(admin_key: &str) -> Client {
        let http = reqwest::Client::builder()
            // Proxies from the environment must not see (or break) loopback traffic.
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a reqwest client with default TLS settings builds");
        Client {
            http,
            admin_key: admin_key.to_owned(),
        }
    }

    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// `GET /admin/v1/cluster`; an error for a non-200 answer too.
    pub async fn cluster_status(&self, url: &str) -> anyhow::Result<ClusterStatus> {
        self.cluster_status_within(url, REQUEST_TIMEOUT).await
    }

    /// [`Client::cluster_status`] with a shorter timeout, for polling nodes that may be dead.
    pub async fn cluster_status_within(
        &self,
        url: &str,
        timeout: Duration,
    ) -> anyhow::Result<ClusterStatus> {
        let reply = self
            .send(
                self.http
                    .get(format!("{url}/admin/v1/cluster"))
                    .bearer_auth(&self.admin_key)
                    .timeout(timeout),
            )
            .await?;
        anyhow::ensure!(reply.status == 200, "HTTP {}: {}", reply.status, reply.body);
        serde_json::from_str(&reply.body)
            .with_context(|| format!("cluster status not understood: {}", reply.body))
    }

    /// `GET /ready`: whether the node serves (200). A node that does not answer is not ready.
    pub async fn ready(&self, url: &str, timeout: Duration) -> bool {
        self.http
            .get(format!("{url}/ready"))
            .timeout(timeout)
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    }

    /// `POST /admin/v1/keys` with `{"name", "role"}`.
    pub async fn create_key(&self, url: &str, name: &str, role: &str) -> anyhow::Result<Reply> {
        self.send(
            self.http
                .post(format!("{url}/admin/v1/keys"))
                .bearer_auth(&self.admin_key)
                .json(&json!({"name": name, "role": role})),
        )
        .await
    }

    /// `DELETE /admin/v1/keys/{name}`.
    pub async fn revoke_key(&self, url: &str, name: &str) -> anyhow::Result<Reply> {
        self.send(
            self.http
                .delete(format!("{url}/admin/v1/keys/{name}"))
                .bearer_auth(&self.admin_key),
        )
        .await
    }

    /// `POST /admin/v1/nodes`: asks the cluster to add node `id` (as `helixflow join` does).
    pub async fn join_node(
        &self,
        url: &str,
        id: u64,
        http_addr: SocketAddr,
        peer_addr: SocketAddr,
    ) -> anyhow::Result<Reply> {
        self.send(
            self.http
                .post(format!("{url}/admin/v1/nodes"))
                .bearer_auth(&self.admin_key)
                .json(&json!({
                    "id": id,
                    "http_addr": http_addr.to_string(),
                    "peer_addr": peer_addr.to_string(),
                })),
        )
        .await
    }

    /// `POST /v1/chat/completions` with `key`.
    pub async fn chat(&self, url: &str, key: &str, body: &Value) -> anyhow::Result<Reply> {
        self.send(
            self.http
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(body),
        )
        .await
    }

    /// `POST /v1/chat/completions` with `key` for a streamed answer (`"stream": true` in
    /// `body`): the status, and the body as it arrives. Dropping it disconnects.
    pub async fn chat_stream(&self, url: &str, key: &str, body: &Value) -> anyhow::Result<Sse> {
        let response = self
            .http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await?;
        Ok(Sse {
            status: response.status().as_u16(),
            response,
            buffer: Vec::new(),
        })
    }

    /// `GET /v1/models` with `key`.
    pub async fn models(&self, url: &str, key: &str) -> anyhow::Result<Reply> {
        self.send(self.http.get(format!("{url}/v1/models")).bearer_auth(key))
            .await
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self, url: &str) -> anyhow::Result<String> {
        let reply = self.send(self.http.get(format!("{url}/metrics"))).await?;
        anyhow::ensure!(reply.status == 200, "HTTP {}: {}", reply.status, reply.body);
        Ok(reply.body)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        Ok(Reply { status, body })
    }
}

/// A server-sent-events answer, read event by event. Dropping it closes the connection: the
/// client went away.
#[derive(Debug)]
pub struct Sse {
    pub status: u16,
    response: reqwest::Response,
    /// Received bytes not yet split into events (a chunk may end inside a character).
    buffer: Vec<u8>,
}

impl Sse {
    /// The data of the next event (its `data:` lines joined by newlines); `None` when the
    /// body ends. Events without data (comments, keep-alives) are skipped.
    pub async fn next_data(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(data) = take_event(&mut self.buffer) {
                return Ok(Some(data));
            }
            match self.response.chunk().await? {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }

    /// Reads a streamed chat completion to its end: the first choice's `delta.content`
    /// concatenated, up to `data: [DONE]`.
    ///
    /// # Errors
    /// On an HTTP error status, an event that is not JSON, a body that ends without
    /// `[DONE]`, or a transport failure.
    pub async fn chat_text(mut self) -> anyhow::Result<String> {
        anyhow::ensure!(self.status == 200, "HTTP {}", self.status);
        let mut text = String::new();
        while let Some(data) = self.next_data().await? {
            if data == "[DONE]" {
                return Ok(text);
            }
            let event: Value = serde_json::from_str(&data)
                .with_context(|| format!("an event that is not JSON: {data}"))?;
            let first = event["choices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|choice| choice["index"].as_u64().unwrap_or(0) == 0);
            for choice in first {
                if let Some(content) = choice["delta"]["content"].as_str() {
                    text.push_str(content);
                }
            }
        }
        anyhow::bail!("the stream ended without [DONE] after {text:?}")
    }
}

/// The next complete server-sent event's data out of `buffer` (removed from it), if one is
/// there; events without data are dropped. Events end with a blank line (`\n\n`, as the node
/// writes them).
fn take_event(buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        let end = buffer.windows(2).position(|w| w == b"\n\n")?;
        let event: Vec<u8> = buffer.drain(..end + 2).collect();
        let event = String::from_utf8_lossy(&event);
        let data: Vec<&str> = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|data| data.strip_prefix(' ').unwrap_or(data))
            .collect();
        if !data.is_empty() {
            return Some(data.join("\n"));
        }
    }
}

/// The sum of every sample of metric `name` (all label sets) in Prometheus text, `None` when
/// there is none. Label values are matched with `labels`, each `key="value"` text that must
/// appear in the sample's label set.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_set, value) = match rest.strip_prefix('{') {
            Some(inner) => match inner.split_once('}') {
                Some((label_set, value)) => (label_set, value),
                None => continue,
            },
            // Another metric whose name merely starts with `name`.
            None if !rest.starts_with(' ') => continue,
            None => ("", rest),
        };
        if !labels.iter().all(|label| label_set.contains(label)) {
            continue;
        }
        if let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# TYPE helixflow_quic_handshake_failures_total counter
helixflow_quic_handshake_failures_total{direction=\"inbound\",reason=\"tls\"} 3
helixflow_quic_handshake_failures_total{direction=\"outbound\",reason=\"tls\"} 2
helixflow_quic_handshake_failures_total_extra 100
helixflow_raft_term 7
helixflow_raft_term_seconds 9
";

    #[test]
    fn server_sent_events_split_on_blank_lines() {
        let mut buffer = b": keep-alive\n\ndata: {\"a\": 1}\n\ndata: [DO".to_vec();
        assert_eq!(take_event(&mut buffer).as_deref(), Some("{\"a\": 1}"));
        assert_eq!(take_event(&mut buffer), None);
        // A character split across chunks is whole once the event is.
        buffer.extend_from_slice(b"NE]\n\ndata: \xc3");
        assert_eq!(take_event(&mut buffer).as_deref(), Some("[DONE]"));
        buffer.extend_from_slice(b"\xa9\n\n");
        assert_eq!(take_event(&mut buffer).as_deref(), Some("\u{e9}"));
        assert!(buffer.is_empty());
    }

    #[test]
    fn metric_sum_adds_label_sets_and_filters() {
        let name = "helixflow_quic_handshake_failures_total";
        assert_eq!(metric_sum(SAMPLE, name, &[]), Some(5.0));
        assert_eq!(
            metric_sum(SAMPLE, name, &["direction=\"inbound\""]),
            Some(3.0)
        );
        assert_eq!(metric_sum(SAMPLE, "helixflow_raft_term", &[]), Some(7.0));
        assert_eq!(metric_sum(SAMPLE, "helixflow_raft_leader", &[]), None);
    }
}
