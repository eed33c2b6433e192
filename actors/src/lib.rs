//! The per-node actor system: a ractor supervision tree (see [`node`]) whose `GpuWorker`s own
//! engine threads, a `Scheduler` that admits and routes requests, and a `Quota` that checks keys,
//! limits and budgets and keeps the usage ledger. [`NodeHandle`] is how the HTTP layer talks to
//! it; nothing here knows about HTTP.

pub mod gpu_worker;
pub mod handle;
pub mod node;
pub mod quota;
pub mod request;
pub mod scheduler;

use std::fmt;

pub use handle::{NodeError, NodeHandle, Submission};
pub use node::{NodeSpec, NodeSupervisorActor, NodeSupervisorMsg};
pub use request::{
    FinishReason, InferenceEvent, InferenceRequest, RequestFailure, RequestKind, Ticket,
    TokenLogprob, TopLogprob,
};

/// A worker slot of this node: one device serving one model. A restarted worker keeps its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub u32);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker-{}", self.0)
    }
}
