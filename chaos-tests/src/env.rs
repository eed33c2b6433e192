//! Every environment variable the harness reads, in one place.

/// The run's seed (decimal, or hex with `0x`); random when unset. Printed at the start of every
/// test so that a failure can be replayed.
pub const SEED: &str = "CHAOS_SEED";
/// Path of the `helixflow` binary; by default the one next to the test executable.
pub const BINARY: &str = "HELIXFLOW_BIN";
/// Log filter of the nodes (the usual `tracing` syntax); [`DEFAULT_NODE_LOG`] when unset.
pub const NODE_LOG: &str = "RUST_LOG";
/// Keep the cluster's temporary directory (configs, certificates, data, logs) after a test
/// that passed too; a failed test always keeps it.
pub const KEEP_DIR: &str = "CHAOS_KEEP";

/// What the nodes log unless [`NODE_LOG`] says otherwise: enough to follow elections, node
/// statuses, placements and retries in the log files without openraft's per-RPC chatter.
pub const DEFAULT_NODE_LOG: &str = "info,openraft=warn";
