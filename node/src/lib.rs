//! The `helixflow` node: the command line, the HTTP API and the wiring that starts a node from a
//! cluster config. Decisions live in the crates beside it: the engine in `helixflow-kernels`,
//! admission, quotas and workers in `helixflow-actors`, config and the QUIC transport in
//! `helixflow-runtime`, metadata and placement in `helixflow-consensus`. [`cluster`] wires a node
//! into its cluster.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod server;
