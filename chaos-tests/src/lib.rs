//! Chaos tests for HelixFlow: real multi-node clusters of `helixflow node` processes on
//! 127.0.0.1, hurt the way production hurts them — kill -9, SIGTERM, SIGSTOP, restarts on the
//! same data directory, a stranger with another CA's certificate — while tests watch what a user
//! would notice: leaders, placements, answers and keys.
//!
//! - [`cli`]: the `helixflow` command line: one-shot commands, and `helixflow up --nodes N`.
//! - [`cluster`]: a cluster file, certificates and node processes in a temporary directory;
//!   prints the node logs when a test fails. Or a shipped cluster file (`cluster-configs/`)
//!   as it is, with only data and certificate directories moved.
//! - [`node`]: one node process and the signals it can get.
//! - [`http`]: the admin, OpenAI and metrics calls the tests make.
//! - [`seed`]: the run's seed; every random choice comes from it.
//! - [`wait`]: deadlines for conditions (the only place that sleeps).
//!
//! This crate runs the `helixflow` binary; it never builds it (see [`binary`]). It is test
//! support code: errors are `anyhow` and misuse panics with a message.

pub mod binary;
pub mod cli;
pub mod cluster;
pub mod env;
pub mod http;
pub mod node;
pub mod ports;
pub mod seed;
pub mod wait;

pub use cli::{CliOutput, UpProcess, helixflow};
pub use cluster::{ADMIN_KEY, Cluster, ClusterOptions, repo_file};
pub use http::{Client, ClusterStatus, MODEL, Reply, Sse, greedy_chat, metric_sum};
pub use seed::ChaosRng;
pub use wait::{hold_for, wait_for, wait_until};
