//! Names of the metrics a node exports on `/metrics`, in one place so that dashboards, tests and
//! the code that records them agree.

/// Histogram, seconds: request arrival to the first generated token.
pub const TIME_TO_FIRST_TOKEN: &str = "helixflow_time_to_first_token_seconds";
/// Histogram, seconds: between consecutive tokens of one choice.
pub const INTER_TOKEN_LATENCY: &str = "helixflow_inter_token_latency_seconds";
/// Histogram, seconds: request arrival to its last byte.
pub const END_TO_END_LATENCY: &str = "helixflow_request_duration_seconds";
/// Counter: finished requests, labelled `endpoint` and `status`.
pub const REQUESTS: &str = "helixflow_requests_total";
/// Gauge: requests admitted but not yet given to a worker.
pub const QUEUE_DEPTH: &str = "helixflow_queue_depth";
/// Gauge, labelled `model`: sequences in the worker's running batch.
pub const RUNNING_SEQUENCES: &str = "helixflow_running_sequences";
/// Gauge, labelled `model`: sequences the worker's engine holds but has not started.
pub const WAITING_SEQUENCES: &str = "helixflow_waiting_sequences";
/// Gauge, labelled `model`: KV-cache blocks held by sequences.
pub const KV_BLOCKS_USED: &str = "helixflow_kv_cache_blocks_used";
/// Gauge, labelled `model`: KV-cache blocks in all.
pub const KV_BLOCKS_TOTAL: &str = "helixflow_kv_cache_blocks_total";
/// Gauge, labelled `model`: fraction of the KV cache held by sequences, 0..=1.
pub const KV_CACHE_USAGE: &str = "helixflow_kv_cache_usage_ratio";
/// Counter, labelled `model`: prompt tokens of answered requests.
pub const PROMPT_TOKENS: &str = "helixflow_prompt_tokens_total";
/// Counter, labelled `model`: generated tokens of answered requests.
pub const COMPLETION_TOKENS: &str = "helixflow_completion_tokens_total";
/// Counter, labelled `key` and `model`: requests answered per API key.
pub const KEY_REQUESTS: &str = "helixflow_key_requests_total";
/// Counter, labelled `key` and `model`: prompt + completion tokens per API key.
pub const KEY_TOKENS: &str = "helixflow_key_tokens_total";
/// Counter, labelled `key` and `reason`: requests refused by the key's limits.
pub const KEY_REJECTIONS: &str = "helixflow_key_rejections_total";
/// Counter, labelled `model`: engine workers restarted after a panic or a stall.
pub const WORKER_RESTARTS: &str = "helixflow_worker_restarts_total";
/// Counter, labelled `direction` (`inbound`/`outbound`) and `reason` (`tls`: a certificate not
/// signed by the cluster CA, or not valid for the name dialled; `identity`: a certificate not
/// valid for the node id its holder claimed): QUIC handshakes refused over credentials.
pub const QUIC_HANDSHAKE_FAILURES: &str = "helixflow_quic_handshake_failures_total";
/// Gauge, seconds, labelled `peer`: round-trip time of the QUIC connection to a peer.
pub const QUIC_PEER_RTT: &str = "helixflow_quic_peer_rtt_seconds";
/// Counter, labelled `peer`: requests this node forwarded to another node.
pub const FORWARDED_REQUESTS: &str = "helixflow_forwarded_requests_total";
/// Counter: requests moved to another replica after theirs failed before answering.
pub const REQUEST_RETRIES: &str = "helixflow_request_retries_total";
/// Gauge: this node's current Raft term.
pub const RAFT_TERM: &str = "helixflow_raft_term";
/// Gauge: id of the Raft leader this node knows (0: none).
pub const RAFT_LEADER: &str = "helixflow_raft_leader";
/// Gauge: 1 when this node leads.
pub const RAFT_IS_LEADER: &str = "helixflow_raft_is_leader";
/// Gauge: index of the last Raft log entry this node holds.
pub const RAFT_LAST_LOG_INDEX: &str = "helixflow_raft_last_log_index";
/// Gauge: index of the last entry this node knows to be committed.
pub const RAFT_COMMIT_INDEX: &str = "helixflow_raft_commit_index";
/// Gauge: index of the last committed entry this node applied.
pub const RAFT_APPLIED_INDEX: &str = "helixflow_raft_applied_index";
/// Gauge, labelled `status`: nodes of the cluster in each status, as committed.
pub const CLUSTER_NODES: &str = "helixflow_cluster_nodes";
/// Gauge: ractor_cluster sessions to peers that are authenticated (one per connected peer).
pub const ACTOR_SESSIONS: &str = "helixflow_actor_sessions";
/// Counter, labelled `actor`: messages from a peer's actor session that did not decode (or were
/// of a kind the actor does not take) and were dropped.
pub const ACTOR_SESSION_DECODE_ERRORS: &str = "helixflow_actor_session_decode_errors_total";
