//! `helixflow certs init|issue`: the cluster CA and node certificates that nodes present to each
//! other (mutual TLS). Keys are written readable by the owner only.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Context;
use helixflow_runtime::config::{ClusterConfig, NodeConfig, NodeId};
use helixflow_runtime::transport::{init_certs, issue_node_cert};

use crate::cli::{CertsArgs, CertsCommand};

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::Init {
            config,
            certs_dir: out,
        } => {
            let cluster = ClusterConfig::load(&config)?;
            let dir = match out {
                Some(dir) => dir,
                None => certs_dir(&cluster, &config)?,
            };
            let nodes: Vec<(NodeId, Vec<IpAddr>)> =
                cluster.nodes.iter().map(|n| (n.id, node_ips(n))).collect();
            init_certs(&dir, &cluster.name, &nodes)?;
            println!(
                "wrote the cluster CA and {} node certificates to {}",
                nodes.len(),
                dir.display()
            );
            println!(
                "copy ca.pem, node-<id>.pem and node-<id>.key to each node; keep ca.key offline"
            );
        }
        CertsCommand::Issue { config, id, ip } => {
            let cluster = ClusterConfig::load(&config)?;
            let dir = certs_dir(&cluster, &config)?;
            let mut ips: BTreeSet<IpAddr> = ip.into_iter().collect();
            if let Some(node) = cluster.node(NodeId(id)) {
                ips.extend(node_ips(node));
            }
            let ips: Vec<IpAddr> = ips.into_iter().collect();
            issue_node_cert(&dir, NodeId(id), &ips)?;
            println!("wrote node-{id}.pem and node-{id}.key to {}", dir.display());
        }
    }
    Ok(())
}

fn certs_dir(
    cluster: &ClusterConfig,
    config: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    cluster
        .certs_dir
        .clone()
        .with_context(|| format!("{}: [cluster] names no certs_dir", config.display()))
}

/// The addresses a node's certificate is valid for: its peer and HTTP IPs.
pub fn node_ips(node: &NodeConfig) -> Vec<IpAddr> {
    let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
    ips.extend(node.peer_addr.map(|a| a.ip()));
    ips.insert(node.http_addr.ip());
    ips.into_iter().filter(|ip| !ip.is_unspecified()).collect()
}
