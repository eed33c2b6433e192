//! The `NodeSupervisor`: root of a node's actor tree. It starts the children, restarts failed
//! workers and owns shutdown.
//!
//! ```text
//! NodeSupervisor
//! ├── Quota          keys, limits, budgets, usage ledger (sled)
//! ├── Scheduler      admission queues, routing to workers
//! └── GpuWorker × N  one per (device, model); each owns one engine thread
//! ```
//!
//! - A `GpuWorker` that fails (its engine thread panicked or stalled) is reported down to the
//!   `Scheduler` — which re-queues its requests that had produced nothing and fails the others
//!   with a retriable error — and a new worker with the same id and arguments is started; it
//!   announces itself to the scheduler when its model is loaded. A restart that fails is retried
//!   every second.
//! - A `Quota` or `Scheduler` failure stops the node: they hold the node's admission state, and
//!   a node that cannot admit or account must not serve. The process exits non-zero and its
//!   service manager restarts it; the ledger on disk is intact.
//! - Stopping the supervisor stops every child; the HTTP layer drains requests and flushes the
//!   ledger first.
//!
//! One node per process: there is no process-global state besides the metrics recorder.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use helixflow_runtime::config::{DeviceConfig, KeyConfig, Limits, ModelConfig, NodeConfig};
use helixflow_runtime::metric_names;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use crate::WorkerId;
use crate::gpu_worker::{GpuWorkerActor, GpuWorkerArgs, GpuWorkerMsg};
use crate::handle::NodeHandle;
use crate::quota::{QuotaActor, QuotaArgs, QuotaMsg};
use crate::scheduler::{SchedulerActor, SchedulerArgs, SchedulerMsg};

/// Everything a node's actor tree is built from.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub node: NodeConfig,
    /// Models to serve from the start (more come and go with [`NodeSupervisorMsg::SetModels`]).
    pub models: Vec<ModelConfig>,
    pub keys: Vec<KeyConfig>,
    pub limits: Limits,
    /// The process's sled database (the ledger keeps a tree in it).
    pub db: sled::Db,
}

pub struct NodeSupervisorActor;

pub struct NodeSupervisorState {
    scheduler: ActorRef<SchedulerMsg>,
    quota: ActorRef<QuotaMsg>,
    /// Live worker actors by actor id, with what restarts them.
    workers: HashMap<ActorId, (GpuWorkerArgs, ActorRef<GpuWorkerMsg>)>,
    /// Compute threads of the node's CPU device.
    threads: usize,
    stall_timeout: Duration,
    next_worker: u32,
}

pub enum NodeSupervisorMsg {
    /// The actor refs the HTTP layer needs.
    Refs(RpcReplyPort<(ActorRef<SchedulerMsg>, ActorRef<QuotaMsg>)>),
    /// The live worker serving `model`.
    Worker {
        model: String,
        reply: RpcReplyPort<Option<ActorRef<GpuWorkerMsg>>>,
    },
    /// Try again to start a worker whose restart failed.
    RestartWorker(GpuWorkerArgs),
    /// The models this node should serve now (the cluster's placements changed): workers start
    /// for models new to the list and stop for models no longer on it. Replies when every new
    /// worker has loaded its model (or failed to: the error names the model).
    SetModels {
        models: Vec<ModelConfig>,
        reply: RpcReplyPort<Result<(), String>>,
    },
}

// Local only: never sent to another node (ractor's `cluster` feature asks every message to say).
impl ractor::Message for NodeSupervisorMsg {}

impl NodeSupervisorActor {
    /// Starts a node's actor tree; returns when every worker has loaded its model.
    pub async fn start(
        spec: NodeSpec,
    ) -> Result<(NodeHandle, tokio::task::JoinHandle<()>), ActorProcessingErr> {
        // Tickets (and the response ids made from them) are unique across the cluster: the
        // node id is in the high bits.
        let first_ticket = (spec.node.id.0 << 40) | 1;
        let (supervisor, join) = Actor::spawn(None, NodeSupervisorActor, spec).await?;
        let (scheduler, quota) = match supervisor.call(NodeSupervisorMsg::Refs, None).await? {
            ractor::rpc::CallResult::Success(refs) => refs,
            _ => return Err("node supervisor did not answer".into()),
        };
        Ok((
            NodeHandle {
                supervisor,
                scheduler,
                quota,
                next_ticket: Arc::new(AtomicU64::new(first_ticket)),
            },
            join,
        ))
    }
}

impl NodeSupervisorState {
    async fn set_models(
        &mut self,
        myself: &ActorRef<NodeSupervisorMsg>,
        models: Vec<ModelConfig>,
    ) -> Result<(), ActorProcessingErr> {
        // Forget workers of models no longer wanted before stopping them, so their ends are
        // not taken for failures (and not restarted); the scheduler re-queues their requests.
        let gone: Vec<ActorId> = self
            .workers
            .iter()
            .filter(|(_, (args, _))| !models.iter().any(|m| m.id == args.model.id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some((args, worker)) = self.workers.remove(&id) {
                tracing::info!(worker = %args.id, model = %args.model.id, "model no longer placed here; stopping its worker");
                let _ = self.scheduler.cast(SchedulerMsg::WorkerDown(args.id));
                worker.stop(Some("model unplaced".into()));
            }
        }
        for model in models {
            if self.worker_for(&model.id).is_some() {
                continue;
            }
            let args = GpuWorkerArgs {
                id: WorkerId(self.next_worker),
                model: model.clone(),
                threads: self.threads,
                scheduler: self.scheduler.clone(),
                stall_timeout: self.stall_timeout,
            };
            self.next_worker += 1;
            let worker = spawn_worker(args.clone(), myself.get_cell())
                .await
                .map_err(|e| {
                    format!(
                        "loading model `{}` from {}: {e}",
                        model.id,
                        model.path.display()
                    )
                })?;
            self.workers.insert(worker.get_id(), (args, worker));
        }
        Ok(())
    }

    fn worker_for(&self, model: &str) -> Option<ActorRef<GpuWorkerMsg>> {
        self.workers
            .values()
            .find(|(args, _)| args.model.id == model)
            .map(|(_, worker)| worker.clone())
    }
}

async fn spawn_worker(
    args: GpuWorkerArgs,
    supervisor: ActorCell,
) -> Result<ActorRef<GpuWorkerMsg>, ActorProcessingErr> {
    let (worker, _) = Actor::spawn_linked(None, GpuWorkerActor, args, supervisor).await?;
    Ok(worker)
}

impl Actor for NodeSupervisorActor {
    type Msg = NodeSupervisorMsg;
    type State = NodeSupervisorState;
    type Arguments = NodeSpec;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        spec: NodeSpec,
    ) -> Result<NodeSupervisorState, ActorProcessingErr> {
        let (quota, _) = Actor::spawn_linked(
            None,
            QuotaActor,
            QuotaArgs {
                keys: spec.keys.clone(),
                db: spec.db.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        let (scheduler, _) = Actor::spawn_linked(
            None,
            SchedulerActor,
            SchedulerArgs {
                max_queue: spec.limits.max_queue,
            },
            myself.get_cell(),
        )
        .await?;
        let threads = spec
            .node
            .devices
            .iter()
            .map(|DeviceConfig::Cpu { threads, .. }| *threads)
            .next()
            .unwrap_or(1);
        let mut state = NodeSupervisorState {
            scheduler,
            quota,
            workers: HashMap::new(),
            threads,
            stall_timeout: spec.limits.stall_timeout,
            next_worker: 0,
        };
        state.set_models(&myself, spec.models).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: NodeSupervisorMsg,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NodeSupervisorMsg::Refs(reply) => {
                let _ = reply.send((state.scheduler.clone(), state.quota.clone()));
            }
            NodeSupervisorMsg::Worker { model, reply } => {
                let _ = reply.send(state.worker_for(&model));
            }
            NodeSupervisorMsg::RestartWorker(args) => restart(myself, state, args).await,
            NodeSupervisorMsg::SetModels { models, reply } => {
                let result = state.set_models(&myself, models).await;
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if let Some((args, _)) = state.workers.remove(&cell.get_id()) {
            tracing::error!(worker = %args.id, model = %args.model.id, %reason, "worker failed; restarting it");
            metrics::counter!(metric_names::WORKER_RESTARTS, "model" => args.model.id.clone())
                .increment(1);
            let _ = state.scheduler.cast(SchedulerMsg::WorkerDown(args.id));
            restart(myself, state, args).await;
            return Ok(());
        }
        if cell.get_id() == state.scheduler.get_id() || cell.get_id() == state.quota.get_id() {
            tracing::error!(%reason, "a core node actor stopped; stopping the node");
            myself.stop(Some(format!("core actor stopped: {reason}")));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        for (_, worker) in state.workers.values() {
            worker.stop(None);
        }
        state.scheduler.stop(None);
        // The quota actor's ledger thread flushes what it has before it exits.
        let _ = state
            .quota
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        Ok(())
    }
}

async fn restart(
    myself: ActorRef<NodeSupervisorMsg>,
    state: &mut NodeSupervisorState,
    args: GpuWorkerArgs,
) {
    match spawn_worker(args.clone(), myself.get_cell()).await {
        Ok(worker) => {
            state.workers.insert(worker.get_id(), (args, worker));
        }
        Err(e) => {
            tracing::error!(worker = %args.id, error = %e, "worker restart failed; retrying in 1s");
            myself.send_after(Duration::from_secs(1), move || {
                NodeSupervisorMsg::RestartWorker(args)
            });
        }
    }
}
