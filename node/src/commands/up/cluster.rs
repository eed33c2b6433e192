//! `helixflow up --nodes N`: a local cluster in one command. Writes (first run) a config of N
//! nodes on 127.0.0.1 … 127.0.0.N and a cluster CA with node certificates, starts each node as a
//! child process (`helixflow node --config … --id i`, logs in `node-i.log`), waits until every
//! node is ready, and prints where to send requests. Ctrl-C or SIGTERM stops the nodes cleanly;
//! a node that dies is reported and the others keep serving.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use helixflow_runtime::config::{ClusterConfig, NodeId};
use helixflow_runtime::transport::init_certs;

use super::{MODEL_ID, banner, model_and_key_toml};
use crate::cli::UpArgs;
use crate::commands::certs::node_ips;

const PEER_PORT: u16 = 7400;
/// How long the nodes get to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(120);

pub fn run(args: &UpArgs, key: &str) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    let config_path = dir.join(format!("cluster-{}.toml", args.nodes));
    if !config_path.is_file() {
        fs::write(&config_path, config_text(args, key))
            .with_context(|| format!("writing {}", config_path.display()))?;
    }
    let config = ClusterConfig::load(&config_path)?;
    let certs = config
        .certs_dir
        .clone()
        .context("the generated config names a certs_dir")?;
    if !certs.join("ca.key").is_file() {
        let nodes: Vec<(NodeId, Vec<IpAddr>)> =
            config.nodes.iter().map(|n| (n.id, node_ips(n))).collect();
        init_certs(&certs, &config.name, &nodes)?;
    }
    let exe = std::env::current_exe().context("locating the helixflow binary")?;
    let mut children = Vec::new();
    for node in &config.nodes {
        let log_path = dir.join(format!("node-{}.log", node.id.0));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(&config_path)
            .arg("--id")
            .arg(node.id.0.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", node.id))?;
        children.push((node.id, node.http_addr, child));
    }
    let result = serve(&config_path, key, &mut children);
    stop_all(&mut children);
    result
}

fn config_text(args: &UpArgs, key: &str) -> String {
    let port = args.http_addr.port();
    let mut text = format!(
        "# Written by `helixflow up --nodes {n}`. Edit freely; it is rewritten only if deleted.\n\
         [cluster]\nname = \"up-{n}\"\ncerts_dir = \"certs\"\n",
        n = args.nodes
    );
    for i in 1..=args.nodes {
        let ip = Ipv4Addr::new(127, 0, 0, i as u8);
        text.push_str(&format!(
            "\n[[nodes]]\nid = {i}\nregion = \"local\"\nzone = \"local-{i}\"\n\
             http_addr = \"{}\"\npeer_addr = \"{}\"\ndata_dir = \"node-{i}\"\n",
            SocketAddr::new(ip.into(), port),
            SocketAddr::new(ip.into(), PEER_PORT),
        ));
    }
    // Two replicas: a node can die and the model is still served while it is re-placed.
    text.push_str(&model_and_key_toml(key, args.nodes.min(2)));
    text
}

/// Waits for every node to be ready, prints the banner, then waits for a signal.
fn serve(
    config_path: &Path,
    key: &str,
    children: &mut [(NodeId, SocketAddr, Child)],
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + READY_DEADLINE;
        for (id, addr, child) in children.iter_mut() {
            loop {
                if let Some(status) = child.try_wait()? {
                    bail!("{id} exited with {status} while starting; see its log");
                }
                let ready = client
                    .get(format!("http://{addr}/ready"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{id} was not ready within {READY_DEADLINE:?}; see its log");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let url = format!("http://{}", children[0].1);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}", banner(&url, key, config_path));
        let _ = writeln!(
            err,
            "Every node serves `{MODEL_ID}` (requests are forwarded to a replica):"
        );
        for (id, addr, _) in children.iter() {
            let _ = writeln!(err, "  {id}: http://{addr}/v1");
        }
        let _ = writeln!(
            err,
            "\nCluster state: helixflow status --url {url} --key {key}\n"
        );
        drop(err);
        let mut exited = vec![false; children.len()];
        loop {
            tokio::select! {
                () = crate::server::shutdown_signal() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            for (i, (id, _, child)) in children.iter_mut().enumerate() {
                if !exited[i]
                    && let Some(status) = child.try_wait()?
                {
                    exited[i] = true;
                    eprintln!("{id} exited ({status}); the others keep serving");
                }
            }
            if exited.iter().all(|e| *e) {
                bail!("every node has exited");
            }
        }
    })
}

/// SIGTERM to every node (they drain), then wait for them.
fn stop_all(children: &mut [(NodeId, SocketAddr, Child)]) {
    for (_, _, child) in children.iter() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
    }
    for (id, _, child) in children.iter_mut() {
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("{id} exited with {status}"),
            Err(e) => eprintln!("waiting for {id}: {e}"),
        }
    }
}
