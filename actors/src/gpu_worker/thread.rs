//! The engine thread: one OS thread per worker that owns the [`WorkerCore`] and runs continuous
//! batching. Between steps it takes new requests and cancellations from its command channel
//! (blocking only when it has nothing to compute), then runs one step, delivers the events to
//! each request's sink, and reports completions and engine stats to the scheduler.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use helixflow_kernels::backend::Backend;
use helixflow_kernels::engine::EngineStats;
use helixflow_runtime::metric_names;

use super::core::WorkerCore;
use crate::request::{EventSink, InferenceEvent, InferenceRequest, Ticket};

/// What the worker actor tells its engine thread.
pub enum WorkerCommand {
    Submit(Box<InferenceRequest>, EventSink),
    Cancel(Ticket),
    /// Deliberate failure, for testing the supervision tree.
    Fault(Fault),
}

/// A failure to inject into a running engine thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Panic at the next step.
    Panic,
    /// Stop making progress for this long while holding work.
    Stall(Duration),
}

/// What the engine thread reports after each step.
#[derive(Clone, Debug)]
pub struct WorkerReport {
    pub completed: Vec<Ticket>,
    pub stats: EngineStats,
}

/// Liveness of an engine thread, read by the worker's watchdog.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last step (or of becoming busy).
    last_progress_ms: AtomicU64,
    busy: AtomicBool,
}

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat {
            epoch: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }
    }

    fn beat(&self) {
        self.last_progress_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
    }

    fn set_busy(&self, busy: bool) {
        if busy && !self.busy.load(Ordering::Acquire) {
            self.beat();
        }
        self.busy.store(busy, Ordering::Release);
    }

    /// How long the thread has had work without finishing a step; zero when idle.
    pub fn stalled_for(&self) -> Duration {
        if !self.busy.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(last)
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

/// Runs the engine until the command channel closes (the worker actor stopped).
pub fn run<B: Backend>(
    mut core: WorkerCore<B>,
    commands: Receiver<WorkerCommand>,
    heartbeat: Arc<Heartbeat>,
    model: String,
    mut report: impl FnMut(WorkerReport),
) {
    let mut sinks: HashMap<Ticket, EventSink> = HashMap::new();
    let gauges = Gauges::new(&model);
    gauges.publish(&core.stats());
    loop {
        let mut completed = Vec::new();
        // Block for the next command only when there is nothing to compute.
        if !core.has_work() {
            heartbeat.set_busy(false);
            match commands.recv() {
                Ok(command) => apply(command, &mut core, &mut sinks, &mut completed, &heartbeat),
                Err(_) => return,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(command) => apply(command, &mut core, &mut sinks, &mut completed, &heartbeat),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        if core.has_work() {
            heartbeat.set_busy(true);
            let out = core.step();
            heartbeat.beat();
            let mut gone = Vec::new();
            for (ticket, event) in out.events {
                if let Some(sink) = sinks.get(&ticket)
                    && !sink.send(event)
                {
                    gone.push(ticket);
                }
            }
            for ticket in out.completed {
                sinks.remove(&ticket);
                completed.push(ticket);
            }
            // The client went away (or the sink was revoked): stop computing for it.
            gone.sort_unstable();
            gone.dedup();
            for ticket in gone {
                if sinks.remove(&ticket).is_some() {
                    core.cancel(ticket);
                    completed.push(ticket);
                }
            }
        }
        let stats = core.stats();
        gauges.publish(&stats);
        report(WorkerReport { completed, stats });
    }
}

fn apply<B: Backend>(
    command: WorkerCommand,
    core: &mut WorkerCore<B>,
    sinks: &mut HashMap<Ticket, EventSink>,
    completed: &mut Vec<Ticket>,
    heartbeat: &Heartbeat,
) {
    match command {
        WorkerCommand::Submit(request, sink) => match core.submit(&request) {
            Ok(()) => {
                sinks.insert(request.ticket, sink);
            }
            Err(failure) => {
                sink.send(InferenceEvent::Failed(failure));
                completed.push(request.ticket);
            }
        },
        WorkerCommand::Cancel(ticket) => {
            if core.cancel(ticket) {
                sinks.remove(&ticket);
                completed.push(ticket);
            }
        }
        WorkerCommand::Fault(Fault::Panic) => panic!("injected fault: engine thread panic"),
        WorkerCommand::Fault(Fault::Stall(duration)) => {
            heartbeat.set_busy(true);
            // The injected fault itself: an engine that holds work and makes no progress.
            std::thread::sleep(duration);
        }
    }
}

/// The worker's gauges, registered once: publishing after every step is then five stores.
struct Gauges {
    running: metrics::Gauge,
    waiting: metrics::Gauge,
    used: metrics::Gauge,
    total: metrics::Gauge,
    usage: metrics::Gauge,
}

impl Gauges {
    fn new(model: &str) -> Gauges {
        let label = [("model", model.to_owned())];
        Gauges {
            running: metrics::gauge!(metric_names::RUNNING_SEQUENCES, &label),
            waiting: metrics::gauge!(metric_names::WAITING_SEQUENCES, &label),
            used: metrics::gauge!(metric_names::KV_BLOCKS_USED, &label),
            total: metrics::gauge!(metric_names::KV_BLOCKS_TOTAL, &label),
            usage: metrics::gauge!(metric_names::KV_CACHE_USAGE, &label),
        }
    }

    fn publish(&self, stats: &EngineStats) {
        self.running.set(stats.running as f64);
        self.waiting.set(stats.waiting as f64);
        self.used.set(stats.kv_blocks_used as f64);
        self.total.set(stats.kv_blocks_total as f64);
        self.usage
            .set(stats.kv_blocks_used as f64 / stats.kv_blocks_total.max(1) as f64);
    }
}
