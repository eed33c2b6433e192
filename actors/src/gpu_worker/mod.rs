//! The `GpuWorker` actor: the control surface of one device's engine. It loads the model, starts
//! the engine thread ([`thread`]) and forwards requests and cancellations to it. A watchdog tick
//! checks the thread: if it died (a panic) or has had work without finishing a step for the stall
//! timeout, the actor fails, and its supervisor reports it down to the scheduler and starts a new
//! one.
//!
//! A stalled thread cannot be killed; it is abandoned. Its requests' sinks are revoked by the
//! scheduler, so if it ever wakes it delivers nothing, finds its command channel closed and exits.

pub mod core;
pub mod thread;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use helixflow_kernels::backend::cpu::CpuBackend;
use helixflow_kernels::dtype::DType;
use helixflow_kernels::engine::{Engine, EngineConfig, KvCacheDtype};
use helixflow_kernels::model::Model;
use helixflow_kernels::tokenizer::Tokenizer;
use helixflow_runtime::config::{self, ModelConfig};
use ractor::{Actor, ActorProcessingErr, ActorRef};

pub use self::core::WorkerCore;
pub use thread::{Fault, Heartbeat, WorkerCommand, WorkerReport};

use crate::WorkerId;
use crate::request::{EventSink, InferenceRequest, Ticket};
use crate::scheduler::{SchedulerMsg, WorkerCapacity};

/// How often the watchdog looks at the engine thread.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(200);

/// KV-cache block size of every engine.
const BLOCK_SIZE: usize = 16;

pub struct GpuWorkerActor;

#[derive(Clone)]
pub struct GpuWorkerArgs {
    pub id: WorkerId,
    pub model: ModelConfig,
    /// CPU compute threads.
    pub threads: usize,
    pub scheduler: ActorRef<SchedulerMsg>,
    pub stall_timeout: Duration,
}

pub struct GpuWorkerState {
    id: WorkerId,
    commands: mpsc::Sender<WorkerCommand>,
    thread: std::thread::JoinHandle<()>,
    heartbeat: Arc<Heartbeat>,
    stall_timeout: Duration,
    watchdog: tokio::task::JoinHandle<()>,
}

pub enum GpuWorkerMsg {
    /// Start computing a request; its events go to the sink.
    Submit(Box<InferenceRequest>, EventSink),
    /// Drop a request and free its KV blocks.
    Cancel(Ticket),
    /// Periodic liveness check of the engine thread.
    Watchdog,
    /// Make the engine thread fail (tests and chaos runs).
    InjectFault(Fault),
}

// Local only: never sent to another node (ractor's `cluster` feature asks every message to say).
impl ractor::Message for GpuWorkerMsg {}

/// Why the worker gave up on its engine thread.
#[derive(Debug, thiserror::Error)]
pub enum WorkerFailure {
    #[error("{id}: the engine thread died")]
    ThreadDied { id: WorkerId },
    #[error("{id}: the engine made no progress for {stalled:?} with work queued")]
    Stalled { id: WorkerId, stalled: Duration },
}

impl GpuWorkerState {
    fn check(&self) -> Result<(), WorkerFailure> {
        if self.thread.is_finished() {
            return Err(WorkerFailure::ThreadDied { id: self.id });
        }
        let stalled = self.heartbeat.stalled_for();
        if stalled >= self.stall_timeout {
            return Err(WorkerFailure::Stalled {
                id: self.id,
                stalled,
            });
        }
        Ok(())
    }

    fn send(&self, command: WorkerCommand) -> Result<(), WorkerFailure> {
        self.commands
            .send(command)
            .map_err(|_| WorkerFailure::ThreadDied { id: self.id })
    }
}

impl Actor for GpuWorkerActor {
    type Msg = GpuWorkerMsg;
    type State = GpuWorkerState;
    type Arguments = GpuWorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: GpuWorkerArgs,
    ) -> Result<GpuWorkerState, ActorProcessingErr> {
        let model_config = args.model.clone();
        let threads = args.threads;
        let loading = std::time::Instant::now();
        let core = tokio::task::spawn_blocking(
            move || -> Result<WorkerCore<CpuBackend>, ActorProcessingErr> {
                let tokenizer = Tokenizer::from_dir(&model_config.path)?;
                let backend = CpuBackend::new(threads)?;
                let model = Model::load(&model_config.path, backend)?;
                let engine = Engine::new(
                    model,
                    EngineConfig {
                        block_size: BLOCK_SIZE,
                        kv_cache_bytes: model_config.kv_cache_bytes,
                        max_batch_tokens: model_config.max_batch_tokens,
                        max_prefill_chunk: model_config
                            .max_prefill_chunk
                            .min(model_config.max_batch_tokens),
                        max_running: model_config.max_running,
                        kv_cache_dtype: match model_config.kv_cache_dtype {
                            config::KvCacheDtype::F32 => KvCacheDtype::Fixed(DType::F32),
                            config::KvCacheDtype::F16 => KvCacheDtype::Fixed(DType::F16),
                            config::KvCacheDtype::Bf16 => KvCacheDtype::Fixed(DType::BF16),
                            config::KvCacheDtype::Auto => KvCacheDtype::Auto,
                        },
                    },
                )?;
                Ok(WorkerCore::new(engine, tokenizer))
            },
        )
        .await??;
        let stats = core.stats();
        // How long a start or a re-placement takes to serve this model: what an operator
        // reads when a failover is slow.
        tracing::info!(
            worker = %args.id,
            model = %args.model.id,
            seconds = loading.elapsed().as_secs_f64(),
            kv_blocks = stats.kv_blocks_total,
            "model loaded"
        );
        let capacity = WorkerCapacity {
            max_running: args.model.max_running,
            block_size: BLOCK_SIZE,
            kv_blocks_total: stats.kv_blocks_total,
        };

        let (commands, receiver) = mpsc::channel();
        let heartbeat = Arc::new(Heartbeat::new());
        let scheduler = args.scheduler.clone();
        let id = args.id;
        let model_id = args.model.id.clone();
        let thread = std::thread::Builder::new()
            .name(format!("helixflow-engine-{}", id.0))
            .spawn({
                let heartbeat = heartbeat.clone();
                let model_id = model_id.clone();
                move || {
                    thread::run(core, receiver, heartbeat, model_id, |report| {
                        let _ = scheduler.cast(SchedulerMsg::WorkerReport {
                            id,
                            completed: report.completed,
                            stats: report.stats,
                        });
                    })
                }
            })?;
        let watchdog = myself.send_interval(WATCHDOG_PERIOD, || GpuWorkerMsg::Watchdog);
        args.scheduler.cast(SchedulerMsg::WorkerUp {
            id,
            model: model_id,
            capacity,
            worker: myself.clone(),
        })?;
        Ok(GpuWorkerState {
            id,
            commands,
            thread,
            heartbeat,
            stall_timeout: args.stall_timeout,
            watchdog,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut GpuWorkerState,
    ) -> Result<(), ActorProcessingErr> {
        state.watchdog.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: GpuWorkerMsg,
        state: &mut GpuWorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GpuWorkerMsg::Submit(request, sink) => {
                state.send(WorkerCommand::Submit(request, sink))?
            }
            GpuWorkerMsg::Cancel(ticket) => state.send(WorkerCommand::Cancel(ticket))?,
            GpuWorkerMsg::Watchdog => state.check()?,
            GpuWorkerMsg::InjectFault(fault) => state.send(WorkerCommand::Fault(fault))?,
        }
        Ok(())
    }
}
