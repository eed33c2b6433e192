//! The cluster's metadata: [`state::ClusterState`] with its one enum of commands and a
//! deterministic `apply`, the placement planner ([`placement::plan`]), a pure function from
//! nodes, catalog and current placements to the next placements, and the openraft binding
//! ([`raft`]): the type config and the sled log store and state machine that replicate the state.
//! The network between peers and the running Raft node belong to the node crate.

pub mod placement;
pub mod raft;
pub mod state;
