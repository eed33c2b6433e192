//! What every HelixFlow crate shares: the cluster config schema and its one-time validation,
//! API-key hashing, the frame codec of node-to-node streams, the QUIC transport that carries
//! them (mutual TLS under the cluster CA, authenticated peer ids, reconnects with backoff), and
//! the names of the metrics a node exports.
//!
//! This crate holds no actors, no consensus and no HTTP: it moves frames between nodes and
//! leaves what they mean to its callers.

pub mod config;
pub mod frame;
pub mod keys;
pub mod metric_names;
pub mod transport;

pub use config::{ClusterConfig, ConfigError};
