//! `helixflow node --config FILE`: runs one node of a cluster config until SIGTERM or Ctrl-C.

use std::io::Write;

use anyhow::{Context, bail};
use helixflow_runtime::config::{ClusterConfig, NodeId};

use crate::cli::NodeArgs;
use crate::server;

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let mut config = ClusterConfig::load(&args.config)?;
    let node_id = match args.node_id {
        Some(id) => NodeId(id),
        None if config.nodes.len() == 1 => config.nodes[0].id,
        None => bail!(
            "{} lists {} nodes: say which this is with --node-id",
            args.config.display(),
            config.nodes.len()
        ),
    };
    let node = config
        .nodes
        .iter_mut()
        .find(|n| n.id == node_id)
        .with_context(|| format!("{node_id} is not in {}", args.config.display()))?;
    if let Some(addr) = args.http_addr {
        node.http_addr = addr;
    }
    if let Some(dir) = args.data_dir {
        node.data_dir = dir;
    }
    if let Some(dir) = args.certs_dir {
        config.certs_dir = Some(dir);
    }
    serve(config, node_id, |_| {})
}

/// Runs the node on a fresh tokio runtime; `announce` runs once it is ready to serve.
pub fn serve(
    config: ClusterConfig,
    node_id: NodeId,
    announce: impl FnOnce(std::net::SocketAddr) + Send + 'static,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("helixflow-io")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(server::run(
        config,
        node_id,
        server::shutdown_signal(),
        |addr| {
            // The first line on stdout says where the node listens (tests and scripts read it).
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "helixflow {node_id} listening on http://{addr}");
            let _ = out.flush();
        },
        announce,
    ))
}
