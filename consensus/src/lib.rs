//! The cluster's metadata. Today: the placement planner ([`placement::plan`]), a pure function
//! from the cluster's nodes, its model catalog and the current placements to the next placements.
//! The openraft state machine and sled log store that will hold these, and call the planner on
//! the leader, come with the cluster (issue 4).

pub mod placement;
