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
use helixflow_actors::{NodeSpec, NodeSupervisorActor};
use helixflow_runtime::config::{ClusterConfig, NodeId};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::catalog::Catalog;
use crate::api::{AppState, router};

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
/// called with the bound address (useful with port 0).
pub async fn run(
    config: ClusterConfig,
    node_id: NodeId,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
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

    let (handle, mut supervisor) = NodeSupervisorActor::start(NodeSpec {
        node: node.clone(),
        models: config.models.clone(),
        keys: config.keys.clone(),
        limits: config.limits.clone(),
    })
    .await
    .map_err(|e| anyhow!("starting the node: {e}"))?;

    let draining = Arc::new(AtomicBool::new(false));
    let app = router(AppState {
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
    let grace = config.limits.shutdown_grace;
    let result = tokio::select! {
        served = serve.into_future() => served.context("serving HTTP"),
        () = async { stopping(stop_rx).await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "shutdown grace expired with requests in flight; cancelling them");
            Ok(())
        }
        _ = &mut supervisor => Err(anyhow!("the node's actors stopped unexpectedly")),
    };
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
