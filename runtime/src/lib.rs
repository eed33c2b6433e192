//! What every HelixFlow crate shares: the cluster config schema and its one-time validation,
//! API-key hashing, the frame codec of node-to-node streams, and the names of the metrics a node
//! exports.
//!
//! This crate holds no actors, no consensus and no HTTP; the QUIC endpoint that carries the
//! frames joins it with the cluster.

pub mod config;
pub mod frame;
pub mod keys;
pub mod metric_names;

pub use config::{ClusterConfig, ConfigError};
