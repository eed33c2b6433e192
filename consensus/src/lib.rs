//! The cluster's metadata: [`state::ClusterState`] with its one enum of commands and a
//! deterministic `apply`, and the placement planner ([`placement::plan`]), a pure function from
//! nodes, catalog and current placements to the next placements. The openraft state machine and
//! sled log store that replicate the state come with the cluster (issue 4).

pub mod placement;
pub mod state;
