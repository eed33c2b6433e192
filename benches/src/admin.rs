//! `helixflow bench-admin`: how fast a cluster commits admin writes. `--concurrency` clients each
//! create a key (`POST /admin/v1/keys`) and revoke it again (`DELETE`), back to back, for
//! `--writes` writes in all. A write returns once Raft committed it and every live node applied
//! it, so its latency is what an operator waits for a change to take effect cluster-wide.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;

use crate::load::{Percentiles, percentiles};

#[derive(Debug, Clone, clap::Args)]
pub struct AdminBenchArgs {
    /// Any node of the cluster (writes to a follower are forwarded to the leader).
    #[arg(long)]
    pub url: String,
    /// An admin key.
    #[arg(long)]
    pub key: String,
    /// Writes in all (each create or revoke is one).
    #[arg(long, default_value_t = 400)]
    pub writes: usize,
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Print the report as JSON too.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct AdminReport {
    pub url: String,
    pub concurrency: usize,
    pub writes: usize,
    pub elapsed_s: f64,
    pub writes_per_s: f64,
    pub latency: Percentiles,
}

pub fn run(args: AdminBenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.writes < 2 {
        bail!("--concurrency must be at least 1 and --writes at least 2");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(measure(&args))?;
    println!(
        "{} admin writes via {} with {} clients: {:.1} writes/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        report.writes,
        report.url,
        report.concurrency,
        report.writes_per_s,
        report.latency.p50_ms,
        report.latency.p90_ms,
        report.latency.p99_ms,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

async fn measure(args: &AdminBenchArgs) -> anyhow::Result<AdminReport> {
    let client = reqwest::Client::new();
    let base = args.url.trim_end_matches('/').to_owned();
    let pairs = args.writes / 2;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let client = client.clone();
        let base = base.clone();
        let key = args.key.clone();
        let count = pairs / args.concurrency + usize::from(worker < pairs % args.concurrency);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count * 2);
            for i in 0..count {
                let name = format!("bench-{}-{worker}-{i}", std::process::id());
                let t = Instant::now();
                let created = client
                    .post(format!("{base}/admin/v1/keys"))
                    .bearer_auth(&key)
                    .json(&json!({"name": name}))
                    .send()
                    .await?;
                if !created.status().is_success() {
                    bail!(
                        "creating a key: {}: {}",
                        created.status(),
                        created.text().await?
                    );
                }
                latencies.push(t.elapsed());
                let t = Instant::now();
                let revoked = client
                    .delete(format!("{base}/admin/v1/keys/{name}"))
                    .bearer_auth(&key)
                    .send()
                    .await?;
                if !revoked.status().is_success() {
                    bail!(
                        "revoking a key: {}: {}",
                        revoked.status(),
                        revoked.text().await?
                    );
                }
                latencies.push(t.elapsed());
            }
            Ok::<Vec<Duration>, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(AdminReport {
        url: base,
        concurrency: args.concurrency,
        writes: latencies.len(),
        elapsed_s: elapsed,
        writes_per_s: latencies.len() as f64 / elapsed,
        latency: percentiles(&mut latencies),
    })
}
