//! Commands that talk to a running cluster over its admin API: `status`, `keys create|list|
//! revoke`, `models list`. Any node answers (writes are forwarded to the leader).

use std::fmt::Write as _;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cli::AdminArgs;

/// Sends one admin request and returns the JSON body, or the API's error message.
fn call(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let url = format!("{}{path}", admin.url.trim_end_matches('/'));
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let mut request = client.request(method, &url).bearer_auth(&admin.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching {url}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("(no message)");
            bail!("{url}: {status}: {message}");
        }
        Ok(body)
    })
}

pub fn status(admin: AdminArgs) -> anyhow::Result<()> {
    let body = call(&admin, reqwest::Method::GET, "/admin/v1/cluster", None)?;
    if admin.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    print!("{}", status_table(&body));
    Ok(())
}

/// The cluster state as text tables.
pub fn status_table(body: &Value) -> String {
    let mut out = String::new();
    let leader = body["leader"]
        .as_u64()
        .map_or("none".to_owned(), |l| format!("node-{l}"));
    let _ = writeln!(
        out,
        "cluster {}  leader {}  term {}  applied {}  placement epoch {}  (as seen by node-{})\n",
        body["cluster"].as_str().unwrap_or("?"),
        leader,
        body["term"],
        body["applied"],
        body["placement_epoch"],
        body["node"],
    );
    let mut rows = vec![
        [
            "NODE", "REGION", "ZONE", "STATUS", "ROLE", "HTTP", "DEVICES", "LOAD",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for node in body["nodes"].as_array().into_iter().flatten() {
        let id = node["id"].as_u64().unwrap_or(0);
        let role = if body["leader"].as_u64() == Some(id) {
            "leader"
        } else if node["voter"].as_bool() == Some(true) {
            "voter"
        } else {
            "learner"
        };
        let devices = node["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                format!(
                    "cpu{} {:.1}GiB",
                    d["ordinal"],
                    d["memory_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let load = match node["load"].as_array() {
            None => "(not heard from)".to_owned(),
            Some(models) if models.is_empty() => "idle".to_owned(),
            Some(models) => models
                .iter()
                .map(|m| {
                    format!(
                        "{}: {} running, {} queued, kv {}/{}",
                        m["model"].as_str().unwrap_or("?"),
                        m["in_flight"],
                        m["queued"],
                        m["kv_blocks_used"],
                        m["kv_blocks_total"]
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        };
        rows.push(vec![
            format!("node-{id}"),
            node["region"].as_str().unwrap_or("").to_owned(),
            node["zone"].as_str().unwrap_or("").to_owned(),
            node["status"].as_str().unwrap_or("").to_owned(),
            role.to_owned(),
            node["http_addr"].as_str().unwrap_or("").to_owned(),
            devices,
            load,
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    out.push_str(&placements_table(body));
    out
}

fn placements_table(body: &Value) -> String {
    let mut rows = vec![
        ["MODEL", "REPLICAS", "PLACED ON"]
            .map(String::from)
            .to_vec(),
    ];
    for model in body["models"].as_array().into_iter().flatten() {
        let id = model["id"].as_str().unwrap_or("?");
        let placed: Vec<String> = body["placements"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["model"].as_str() == Some(id))
            .map(|p| {
                format!(
                    "node-{} dev {} (epoch {})",
                    p["node"], p["device"], p["epoch"]
                )
            })
            .collect();
        rows.push(vec![
            id.to_owned(),
            format!("{}/{}", placed.len(), model["replicas"]),
            if placed.is_empty() {
                "(unplaced)".into()
            } else {
                placed.join(", ")
            },
        ]);
    }
    table(&rows)
}

fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

pub fn models(admin: AdminArgs) -> anyhow::Result<()> {
    let body = call(&admin, reqwest::Method::GET, "/admin/v1/cluster", None)?;
    if admin.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"models": body["models"], "placements": body["placements"]})
            )?
        );
        return Ok(());
    }
    print!("{}", placements_table(&body));
    Ok(())
}

pub fn create_key(
    admin: &AdminArgs,
    name: &str,
    role: &str,
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
    token_budget: Option<u64>,
) -> anyhow::Result<()> {
    let body = call(
        admin,
        reqwest::Method::POST,
        "/admin/v1/keys",
        Some(json!({
            "name": name,
            "role": role,
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "token_budget": token_budget,
        })),
    )?;
    if admin.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        println!("key: {}", body["key"].as_str().unwrap_or(""));
        println!("(shown once; the cluster keeps only its SHA-256)");
    }
    Ok(())
}

pub fn list_keys(admin: &AdminArgs) -> anyhow::Result<()> {
    let body = call(admin, reqwest::Method::GET, "/admin/v1/keys", None)?;
    if admin.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let limit = |v: &Value| v.as_u64().map_or("-".to_owned(), |n| n.to_string());
    let mut rows = vec![
        ["NAME", "ROLE", "RPM", "TPM", "BUDGET", "STATUS"]
            .map(String::from)
            .to_vec(),
    ];
    for key in body["data"].as_array().into_iter().flatten() {
        rows.push(vec![
            key["name"].as_str().unwrap_or("").to_owned(),
            key["role"].as_str().unwrap_or("").to_owned(),
            limit(&key["requests_per_minute"]),
            limit(&key["tokens_per_minute"]),
            limit(&key["token_budget"]),
            if key["revoked"].as_bool() == Some(true) {
                "revoked"
            } else {
                "active"
            }
            .to_owned(),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

pub fn join(args: crate::cli::JoinArgs) -> anyhow::Result<()> {
    let config = helixflow_runtime::config::ClusterConfig::load(&args.config)?;
    let id = helixflow_runtime::config::NodeId(args.id);
    let node = config
        .node(id)
        .with_context(|| format!("{id} is not in {}", args.config.display()))?;
    let peer_addr = node
        .peer_addr
        .with_context(|| format!("{id} has no peer_addr in {}", args.config.display()))?;
    let body = call(
        &args.admin,
        reqwest::Method::POST,
        "/admin/v1/nodes",
        Some(json!({
            "id": args.id,
            "region": node.region,
            "zone": node.zone,
            "http_addr": node.http_addr.to_string(),
            "peer_addr": peer_addr.to_string(),
            "device_memory_bytes": node.devices.iter().map(|d| d.memory_bytes()).collect::<Vec<_>>(),
        })),
    )?;
    println!(
        "{id} joined the cluster as a voter (log index {})",
        body["applied"]
    );
    Ok(())
}

pub fn revoke_key(admin: &AdminArgs, name: &str) -> anyhow::Result<()> {
    let path = format!("/admin/v1/keys/{}", urlencode(name));
    call(admin, reqwest::Method::DELETE, &path, None)?;
    println!("revoked `{name}`: every node refuses it now");
    Ok(())
}

/// Percent-encodes a path segment.
fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
