//! [`NodeHandle`]: the node's actors as the HTTP layer sees them — authenticate, admit, submit,
//! record usage — each one message to the actor that owns the decision.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use helixflow_runtime::config::{KeyConfig, ModelConfig};
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use crate::gpu_worker::{Fault, GpuWorkerMsg};
use crate::node::NodeSupervisorMsg;
use crate::quota::{Principal, QuotaMsg, QuotaRejection, UsageRecord, UsageRow};
use crate::request::{InferenceEvent, InferenceRequest, RequestKind, Ticket};
use crate::scheduler::{Rejection, SchedulerMsg, SchedulerStats};

/// The node cannot answer: an actor it needs has stopped (the node is shutting down or failed).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the node's {actor} is not running")]
    Unavailable { actor: &'static str },
    #[error("the usage ledger could not be written: {0}")]
    Ledger(String),
}

#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) supervisor: ActorRef<NodeSupervisorMsg>,
    pub(crate) scheduler: ActorRef<SchedulerMsg>,
    pub(crate) quota: ActorRef<QuotaMsg>,
    pub(crate) next_ticket: Arc<AtomicU64>,
}

async fn ask<M, T>(
    actor: &ActorRef<M>,
    name: &'static str,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, NodeError>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(build, None).await {
        Ok(CallResult::Success(value)) => Ok(value),
        _ => Err(NodeError::Unavailable { actor: name }),
    }
}

impl NodeHandle {
    /// A fresh node-unique ticket for a request.
    pub fn next_ticket(&self) -> Ticket {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    pub async fn authenticate(&self, secret: &str) -> Result<Option<Principal>, NodeError> {
        let secret = secret.to_owned();
        ask(&self.quota, "quota", |reply| QuotaMsg::Authenticate {
            secret,
            reply,
        })
        .await
    }

    pub async fn admit(
        &self,
        key: &str,
        prompt_tokens: u64,
    ) -> Result<Result<(), QuotaRejection>, NodeError> {
        let key = key.to_owned();
        ask(&self.quota, "quota", |reply| QuotaMsg::Admit {
            key,
            prompt_tokens,
            reply,
        })
        .await
    }

    /// Queues a request. Its events arrive through the returned [`Submission`]; dropping that
    /// before the request completes cancels it (and frees its KV blocks).
    pub async fn submit(
        &self,
        request: InferenceRequest,
        key_limit: usize,
    ) -> Result<Result<Submission, Rejection>, NodeError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let ticket = request.ticket;
        let choices = match request.kind {
            RequestKind::Generate => request.n,
            RequestKind::Embed => 1,
        };
        let accepted = ask(&self.scheduler, "scheduler", |reply| SchedulerMsg::Submit {
            request,
            events: tx,
            key_limit,
            reply,
        })
        .await?;
        Ok(accepted.map(|()| Submission {
            ticket,
            events: rx,
            unfinished: choices,
            scheduler: self.scheduler.clone(),
        }))
    }

    /// Adds an answered request's usage to the ledger; returns once it is on disk.
    pub async fn record(&self, usage: UsageRecord) -> Result<(), NodeError> {
        ask(&self.quota, "quota", |reply| QuotaMsg::Record {
            usage,
            reply,
        })
        .await?
        .map_err(NodeError::Ledger)
    }

    pub async fn usage(&self) -> Result<Vec<UsageRow>, NodeError> {
        ask(&self.quota, "quota", QuotaMsg::Usage).await
    }

    /// Returns once everything recorded is on disk.
    pub async fn flush_ledger(&self) -> Result<(), NodeError> {
        ask(&self.quota, "quota", QuotaMsg::Flush)
            .await?
            .map_err(NodeError::Ledger)
    }

    pub async fn scheduler_stats(&self) -> Result<SchedulerStats, NodeError> {
        ask(&self.scheduler, "scheduler", SchedulerMsg::Stats).await
    }

    /// The worker serving `model`, if one is up.
    pub async fn worker(&self, model: &str) -> Result<Option<ActorRef<GpuWorkerMsg>>, NodeError> {
        let model = model.to_owned();
        ask(&self.supervisor, "supervisor", |reply| {
            NodeSupervisorMsg::Worker { model, reply }
        })
        .await
    }

    /// Makes the engine of `model`'s worker fail; false if no worker serves it.
    pub async fn inject_fault(&self, model: &str, fault: Fault) -> Result<bool, NodeError> {
        Ok(match self.worker(model).await? {
            Some(worker) => worker.cast(GpuWorkerMsg::InjectFault(fault)).is_ok(),
            None => false,
        })
    }

    /// Replaces the key set (the cluster committed a change).
    pub fn set_keys(&self, keys: Vec<KeyConfig>) -> Result<(), NodeError> {
        self.quota
            .cast(QuotaMsg::SetKeys(keys))
            .map_err(|_| NodeError::Unavailable { actor: "quota" })
    }

    /// Serves exactly `models` (workers start and stop to match); returns once new workers
    /// have loaded their models, or with the error of one that could not.
    pub async fn set_models(
        &self,
        models: Vec<ModelConfig>,
    ) -> Result<Result<(), String>, NodeError> {
        ask(&self.supervisor, "supervisor", |reply| {
            NodeSupervisorMsg::SetModels { models, reply }
        })
        .await
    }

    /// Stops the actor tree (workers, scheduler, quota) and waits for it.
    pub async fn stop(&self) {
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), None)
            .await;
    }
}

/// A queued request's event stream. Dropping it before the request completes cancels the
/// request wherever it is (queued or running).
pub struct Submission {
    ticket: Ticket,
    events: mpsc::UnboundedReceiver<InferenceEvent>,
    unfinished: usize,
    scheduler: ActorRef<SchedulerMsg>,
}

impl Submission {
    /// The next event; `None` after the last one (every choice finished, the embedding, or a
    /// failure).
    pub async fn next(&mut self) -> Option<InferenceEvent> {
        if self.unfinished == 0 {
            return None;
        }
        let Some(event) = self.events.recv().await else {
            // Every sender is gone without an ending: the node is stopping.
            self.unfinished = 0;
            return Some(InferenceEvent::Failed(crate::RequestFailure::ShuttingDown));
        };
        event.settle(&mut self.unfinished);
        Some(event)
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        if self.unfinished > 0 {
            let _ = self.scheduler.cast(SchedulerMsg::Cancel(self.ticket));
        }
    }
}
