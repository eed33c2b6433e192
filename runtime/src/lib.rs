//! What every HelixFlow crate shares: the cluster config schema and its one-time validation,
//! API-key hashing, and the names of the metrics a node exports.
//!
//! This crate holds no actors, no consensus and no HTTP; the QUIC transport joins it with the
//! cluster.

pub mod config;
pub mod keys;
pub mod metric_names;

pub use config::{ClusterConfig, ConfigError};
