//! The `Scheduler` actor: admission and routing of requests to this node's GPU workers.
//!
//! It carries out what [`Admission`] decides: requests wait in per-key queues and go to a worker
//! when it has room. Each dispatch gets a fresh [`EventSink`] so that, when a worker dies, the
//! scheduler can cut the dead worker off and either re-queue the request (it had produced nothing
//! yet) or end it with a retriable error (it had).
//!
//! Its mailbox is fed by HTTP requests, but every `Submit` is answered at once: accepted into a
//! bounded queue or refused, so the mailbox holds at most one message per in-flight HTTP request.

pub mod admission;

use std::collections::HashMap;

use helixflow_kernels::engine::EngineStats;
use helixflow_runtime::metric_names;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

pub use admission::{Admission, Cancelled, Entry, ModelLoad, Rejection, WorkerCapacity};

use crate::WorkerId;
use crate::gpu_worker::GpuWorkerMsg;
use crate::request::{EventSink, InferenceEvent, InferenceRequest, RequestFailure, Ticket};

pub struct SchedulerActor;

pub struct SchedulerArgs {
    /// Requests waiting for a worker at most (node-wide).
    pub max_queue: usize,
}

/// Times a request that produced nothing is re-queued after its worker died before it is failed
/// instead: a request that kills every worker it reaches must not crash-loop the node.
pub const MAX_REQUEUES: u32 = 2;

/// What a queued request carries until it is dispatched.
#[derive(Debug)]
pub struct Pending {
    pub request: InferenceRequest,
    pub events: mpsc::UnboundedSender<InferenceEvent>,
    /// Times it was re-queued after a worker died.
    pub requeued: u32,
}

pub struct SchedulerState {
    admission: Admission<Pending>,
    workers: HashMap<WorkerId, ActorRef<GpuWorkerMsg>>,
    /// The sink each dispatched request's worker writes to.
    sinks: HashMap<Ticket, EventSink>,
}

/// A snapshot for `/metrics` and `/ready`.
#[derive(Clone, Debug, Default)]
pub struct SchedulerStats {
    pub queued: usize,
    pub in_flight: usize,
    pub workers_up: usize,
    /// Load per model (models with a worker or a waiting request).
    pub models: Vec<ModelLoad>,
}

pub enum SchedulerMsg {
    /// Admit a request: `Ok` once it is queued (its events then arrive on `events`), or the
    /// reason it was refused. `key_limit` is the most requests of its key that may wait.
    Submit {
        request: InferenceRequest,
        events: mpsc::UnboundedSender<InferenceEvent>,
        key_limit: usize,
        reply: RpcReplyPort<Result<(), Rejection>>,
    },
    /// The client is gone or the request ended: drop it wherever it is.
    Cancel(Ticket),
    /// A worker loaded its model and takes requests (also after a restart).
    WorkerUp {
        id: WorkerId,
        model: String,
        capacity: WorkerCapacity,
        worker: ActorRef<GpuWorkerMsg>,
    },
    /// A worker died; its requests are re-queued or failed.
    WorkerDown(WorkerId),
    /// A worker finished a step.
    WorkerReport {
        id: WorkerId,
        completed: Vec<Ticket>,
        stats: EngineStats,
    },
    Stats(RpcReplyPort<SchedulerStats>),
}

// Local only: never sent to another node (ractor's `cluster` feature asks every message to say).
impl ractor::Message for SchedulerMsg {}

impl SchedulerState {
    pub fn new(max_queue: usize) -> SchedulerState {
        SchedulerState {
            admission: Admission::new(max_queue),
            workers: HashMap::new(),
            sinks: HashMap::new(),
        }
    }

    pub fn submit(
        &mut self,
        request: InferenceRequest,
        events: mpsc::UnboundedSender<InferenceEvent>,
        key_limit: usize,
    ) -> Result<(), Rejection> {
        let entry = Entry {
            ticket: request.ticket,
            key: request.key.clone(),
            model: request.model.clone(),
            prompt_tokens: request.prompt.len(),
            payload: Pending {
                request,
                events,
                requeued: 0,
            },
        };
        let started = self.admission.submit(entry, key_limit)?;
        self.start(started);
        Ok(())
    }

    pub fn cancel(&mut self, ticket: Ticket) {
        if let Cancelled::Dispatched(worker, _) = self.admission.cancel(ticket) {
            self.sinks.remove(&ticket);
            if let Some(w) = self.workers.get(&worker) {
                // A worker that is gone has dropped the request already.
                let _ = w.cast(GpuWorkerMsg::Cancel(ticket));
            }
            // Its slot is free now.
            let started = self.admission.dispatch();
            self.start(started);
        }
        self.publish();
    }

    pub fn worker_up(
        &mut self,
        id: WorkerId,
        model: String,
        capacity: WorkerCapacity,
        worker: ActorRef<GpuWorkerMsg>,
    ) {
        tracing::info!(worker = %id, %model, ?capacity, "worker up");
        self.workers.insert(id, worker);
        let started = self.admission.worker_up(id, model, capacity);
        self.start(started);
    }

    /// Requests that had produced nothing go back to the head of their queue; the others end
    /// with [`RequestFailure::WorkerLost`].
    pub fn worker_down(&mut self, id: WorkerId) {
        self.workers.remove(&id);
        let lost = self.admission.worker_down(id);
        tracing::warn!(worker = %id, requests = lost.len(), "worker down");
        let mut started = Vec::new();
        for mut entry in lost {
            let Some(sink) = self.sinks.remove(&entry.ticket) else {
                continue;
            };
            match sink.revoke() {
                Some((_, false)) if entry.payload.requeued < MAX_REQUEUES => {
                    entry.payload.requeued += 1;
                    started.extend(self.admission.requeue(entry));
                }
                Some((tx, _)) => {
                    let _ = tx.send(InferenceEvent::Failed(RequestFailure::WorkerLost));
                }
                None => {}
            }
        }
        self.start(started);
    }

    pub fn report(&mut self, id: WorkerId, completed: &[Ticket], stats: EngineStats) {
        for ticket in completed {
            self.sinks.remove(ticket);
        }
        let started = self.admission.report(id, completed, stats);
        self.start(started);
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            queued: self.admission.queue_depth(),
            in_flight: self.admission.in_flight(),
            workers_up: self.workers.len(),
            models: self.admission.model_loads(),
        }
    }

    fn start(&mut self, started: Vec<(Ticket, WorkerId)>) {
        for (ticket, worker) in started {
            let Some(entry) = self.admission.dispatched(ticket) else {
                continue;
            };
            let sink = EventSink::new(entry.payload.events.clone());
            let request = entry.payload.request.clone();
            self.sinks.insert(ticket, sink.clone());
            let sent = self.workers.get(&worker).is_some_and(|w| {
                w.cast(GpuWorkerMsg::Submit(Box::new(request), sink))
                    .is_ok()
            });
            if !sent {
                // The worker's mailbox is closed: it is dying and its supervisor will report it
                // down, which re-queues this request with the others.
                tracing::debug!(ticket, worker = %worker, "dispatch to a stopping worker");
            }
        }
        self.publish();
    }

    fn publish(&self) {
        metrics::gauge!(metric_names::QUEUE_DEPTH).set(self.admission.queue_depth() as f64);
    }
}

impl Actor for SchedulerActor {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        Ok(SchedulerState::new(args.max_queue))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Submit {
                request,
                events,
                key_limit,
                reply,
            } => {
                let _ = reply.send(state.submit(request, events, key_limit));
            }
            SchedulerMsg::Cancel(ticket) => state.cancel(ticket),
            SchedulerMsg::WorkerUp {
                id,
                model,
                capacity,
                worker,
            } => state.worker_up(id, model, capacity, worker),
            SchedulerMsg::WorkerDown(id) => state.worker_down(id),
            SchedulerMsg::WorkerReport {
                id,
                completed,
                stats,
            } => state.report(id, &completed, stats),
            SchedulerMsg::Stats(reply) => {
                let _ = reply.send(state.stats());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use helixflow_kernels::sampler::SamplingParams;

    use super::*;
    use crate::request::RequestKind;

    /// A mailbox standing in for a worker: it accepts and drops every message.
    struct Inbox;

    impl Actor for Inbox {
        type Msg = GpuWorkerMsg;
        type State = ();
        type Arguments = ();
        async fn pre_start(
            &self,
            _: ActorRef<GpuWorkerMsg>,
            _: (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    fn request(ticket: Ticket) -> InferenceRequest {
        InferenceRequest {
            ticket,
            key: "k".into(),
            model: "m".into(),
            kind: RequestKind::Generate,
            prompt: vec![1, 2, 3],
            sampling: SamplingParams::greedy(),
            max_tokens: 4,
            n: 1,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: false,
            arrived: Instant::now(),
        }
    }

    const CAP: WorkerCapacity = WorkerCapacity {
        max_running: 4,
        block_size: 16,
        kv_blocks_total: 64,
    };

    #[tokio::test]
    async fn requests_lost_with_a_worker_are_requeued_a_bounded_number_of_times() {
        let (inbox, _) = Actor::spawn(None, Inbox, ()).await.unwrap();
        let mut state = SchedulerState::new(8);
        state.worker_up(WorkerId(0), "m".into(), CAP, inbox.clone());
        let (tx, mut rx) = mpsc::unbounded_channel();
        state.submit(request(1), tx, 8).unwrap();
        for round in 0..=MAX_REQUEUES {
            assert_eq!(state.stats().in_flight, 1, "round {round}");
            state.worker_down(WorkerId(0));
            if round < MAX_REQUEUES {
                assert_eq!(state.stats().queued, 1, "re-queued in round {round}");
                assert!(rx.try_recv().is_err());
                state.worker_up(WorkerId(0), "m".into(), CAP, inbox.clone());
            }
        }
        assert_eq!(
            rx.try_recv().unwrap(),
            InferenceEvent::Failed(RequestFailure::WorkerLost)
        );
        assert_eq!((state.stats().queued, state.stats().in_flight), (0, 0));
    }

    #[tokio::test]
    async fn a_request_that_produced_tokens_fails_retriably_and_nothing_stale_arrives() {
        let (inbox, _) = Actor::spawn(None, Inbox, ()).await.unwrap();
        let mut state = SchedulerState::new(8);
        state.worker_up(WorkerId(0), "m".into(), CAP, inbox.clone());
        let (tx, mut rx) = mpsc::unbounded_channel();
        state.submit(request(1), tx, 8).unwrap();
        // The worker's sink delivers one token, then the worker dies.
        let sink = state.sinks[&1].clone();
        let delta = InferenceEvent::Delta {
            choice: 0,
            text: "a".into(),
            tokens: 1,
            logprobs: Vec::new(),
        };
        assert!(sink.send(delta.clone()));
        state.worker_down(WorkerId(0));
        assert_eq!(rx.try_recv().unwrap(), delta);
        assert_eq!(
            rx.try_recv().unwrap(),
            InferenceEvent::Failed(RequestFailure::WorkerLost)
        );
        // A stalled engine that wakes up cannot deliver through its revoked sink.
        assert!(!sink.send(InferenceEvent::Failed(RequestFailure::ShuttingDown)));
        assert!(rx.try_recv().is_err());
    }
}
