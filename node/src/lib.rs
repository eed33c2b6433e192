//! The `helixflow` node: command-line tools around the engine (and, as the node grows, its
//! bootstrap and HTTP API). Library code here only wires crates together; decisions live in
//! `helixflow-kernels` and the crates beside it.

pub mod cli;
pub mod commands;
