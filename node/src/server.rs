//! `run`: one node from a validated cluster config — the actor tree, the HTTP API on the node's
//! address, and shutdown.
//!
//! Shutdown (SIGTERM, Ctrl-C, or the `shutdown` future): `/ready` turns 503 and new inference
//! requests get 503; the listener stops accepting; in-flight requests (streams included) run to
//! completion for up to `limits.shutdown_grace`; then the ledger is flushed and the actor tree
//! stopped. Requests still running at the deadline are cancelled (their usage so far is
//! recorded by their own tasks when the ledger is still up).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, anyhow};
use axum::serve::ListenerExt;
use helixflow_actors::quota::ledger::open_db;
use helixflow_actors::{NodeSpec, NodeSupervisorActor};
use helixflow_runtime::config::{ClusterConfig, NodeId};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::catalog::Catalog;
use crate::api::{AppState, router};
use crate::cluster::Cluster;

/// Latency buckets (seconds) of every `*_seconds` histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The process's metrics recorder (one per process, like the node).
fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Runs node `node_id` of `config` until `shutdown` resolves, then drains. `on_listening` is
/// called with the bound address (useful with port 0) as soon as HTTP is served; `on_ready` once
/// the node serves its models (see [`Cluster::readiness`]).
pub async fn run(
    config: ClusterConfig,
    node_id: NodeId,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
    on_ready: impl FnOnce(SocketAddr) + Send + 'static,
) -> anyhow::Result<()> {
    let node = config
        .node(node_id)
        .with_context(|| format!("{node_id} is not in the cluster config"))?
        .clone();
    std::fs::create_dir_all(&node.data_dir)
        .with_context(|| format!("creating data directory {}", node.data_dir.display()))?;
    let metrics = metrics_handle()?;
    let upkeep = tokio::spawn({
        let metrics = metrics.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        }
    });
    let catalog = Arc::new(Catalog::load(&config.models)?);
    let listener = TcpListener::bind(node.http_addr)
        .await
        .with_context(|| format!("binding {}", node.http_addr))?;
    let addr = listener.local_addr()?;

    // One sled database per process: the usage ledger and the Raft store keep trees in it.
    let db_dir = node.data_dir.join("db");
    let db = tokio::task::spawn_blocking(move || open_db(&db_dir))
        .await?
        .with_context(|| format!("opening the node database in {}", node.data_dir.display()))?;
    // Workers start as the cluster places models here (see `cluster::reconcile`).
    let (handle, mut supervisor) = NodeSupervisorActor::start(NodeSpec {
        node: node.clone(),
        models: Vec::new(),
        keys: config.keys.clone(),
        limits: config.limits.clone(),
        db: db.clone(),
    })
    .await
    .map_err(|e| anyhow!("starting the node: {e}"))?;

    let draining = Arc::new(AtomicBool::new(false));
    let (cluster, inbound) =
        Cluster::open(&config, &node, &db, handle.clone(), draining.clone()).await?;
    let tasks = cluster.spawn_tasks(inbound, &node);
    let app = router(AppState {
        cluster: cluster.clone(),
        node: handle.clone(),
        catalog,
        metrics,
        max_body_bytes: config.limits.max_body_bytes,
        draining: draining.clone(),
        fault_injection: config.limits.fault_injection,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopping = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Streamed tokens are small writes: without TCP_NODELAY, Nagle's algorithm holds each one
    // back until the client's (delayed) ACK, adding up to 40 ms per token.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
    });
    let serve = axum::serve(listener, app).with_graceful_shutdown({
        let draining = draining.clone();
        let stop = stopping(stop_rx.clone());
        async move {
            stop.await;
            draining.store(true, Ordering::Release);
            tracing::info!("shutting down: draining in-flight requests");
        }
    });
    on_listening(addr);
    let ready_watch = tokio::spawn({
        let cluster = cluster.clone();
        async move {
            // Readiness depends on Raft, the committed state, peers' reports and the workers;
            // no single event says it changed, so it is polled (cheaply: local reads and one
            // actor message) until it holds, once, at start-up.
            while !cluster.readiness().await.ready {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::info!(%addr, "ready: serving the models placed on this node");
            on_ready(addr);
        }
    });
    let grace = config.limits.shutdown_grace;
    let result = tokio::select! {
        served = serve.into_future() => served.context("serving HTTP"),
        () = async { stopping(stop_rx).await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "shutdown grace expired with requests in flight; cancelling them");
            Ok(())
        }
        _ = &mut supervisor => Err(anyhow!("the node's actors stopped unexpectedly")),
    };
    draining.store(true, Ordering::Release);
    // Requests peers forwarded here are not HTTP connections: wait for them too (same grace).
    let deadline = tokio::time::Instant::now() + grace;
    while let Ok(stats) = handle.scheduler_stats().await {
        if stats.queued + stats.in_flight == 0 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ready_watch.abort();
    drop(tasks);
    if let Err(e) = cluster.raft.shutdown().await {
        tracing::warn!(error = %e, "stopping Raft");
    }
    if let Some(transport) = cluster.transport() {
        transport.close();
    }
    if let Err(e) = handle.flush_ledger().await {
        tracing::error!(error = %e, "flushing the usage ledger at shutdown");
    }
    handle.stop().await;
    upkeep.abort();
    result
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
