//! The `Quota` actor: API keys, per-key rate limits and budgets, and the usage ledger.
//!
//! Keys are known only by their SHA-256 ([`KeyHash`]); a presented key is hashed and compared
//! with every known digest in constant time. Limits are token buckets ([`limiter`]); budgets are
//! checked against the ledger's totals ([`ledger`]), which are persisted before a request's
//! answer completes.
//!
//! Every message is answered from memory except `Record` and `Flush`, whose replies wait for the
//! ledger's disk flush (done on the ledger's own thread, so the actor never blocks on IO).

pub mod ledger;
pub mod limiter;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use helixflow_runtime::config::{KeyConfig, Role};
use helixflow_runtime::keys::find_key;
use helixflow_runtime::metric_names;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

pub use ledger::{Ledger, LedgerError, UsageRecord, UsageRow, UsageTotals};
use limiter::{KeyLimiter, LimitExceeded};

pub struct QuotaActor;

pub struct QuotaArgs {
    pub keys: Vec<KeyConfig>,
    /// The node's sled database (one per process); the ledger keeps its own tree in it.
    pub db: sled::Db,
}

/// Who a request is from, once its key checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// Requests of this key that may wait for a worker.
    pub max_queued: usize,
}

/// Why a request was refused by its key's limits.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum QuotaRejection {
    #[error("rate limit reached for key `{key}`: {per_minute} {limit}; retry in {}s", retry_after.as_secs().max(1))]
    RateLimited {
        key: String,
        limit: &'static str,
        per_minute: u64,
        retry_after: Duration,
    },
    #[error(
        "request too large for key `{key}`: it needs {needed} tokens but the key's limit is {per_minute} tokens per minute"
    )]
    TooLarge {
        key: String,
        needed: u64,
        per_minute: u64,
    },
    #[error("key `{key}` has used {used} of its budget of {budget} tokens")]
    BudgetExhausted { key: String, budget: u64, used: u64 },
    #[error("unknown key `{key}`")]
    UnknownKey { key: String },
}

struct KeyEntry {
    config: KeyConfig,
    limiter: KeyLimiter,
}

pub struct QuotaState {
    keys: Vec<KeyEntry>,
    by_name: HashMap<String, usize>,
    ledger: Ledger,
}

pub enum QuotaMsg {
    /// Which key, if any, `secret` is.
    Authenticate {
        secret: String,
        reply: RpcReplyPort<Option<Principal>>,
    },
    /// Charges one request with `prompt_tokens` against the key's limits and budget.
    Admit {
        key: String,
        prompt_tokens: u64,
        reply: RpcReplyPort<Result<(), QuotaRejection>>,
    },
    /// Adds an answered request's usage; replies once it is on disk (`Err` if the write failed).
    Record {
        usage: UsageRecord,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// The whole ledger.
    Usage(RpcReplyPort<Vec<UsageRow>>),
    /// Replies once everything recorded is on disk.
    Flush(RpcReplyPort<Result<(), String>>),
    /// The cluster's key set changed (replaces every key; revoked keys are left out).
    SetKeys(Vec<KeyConfig>),
}

// Local only: never sent to another node (ractor's `cluster` feature asks every message to say).
impl ractor::Message for QuotaMsg {}

impl QuotaState {
    pub fn new(keys: Vec<KeyConfig>, ledger: Ledger, now: Instant) -> QuotaState {
        let mut state = QuotaState {
            keys: Vec::new(),
            by_name: HashMap::new(),
            ledger,
        };
        state.set_keys(keys, now);
        state
    }

    /// Replaces the key set (the cluster committed a change). A key whose limits did not change
    /// keeps its token buckets, so a metadata change elsewhere does not refill them.
    pub fn set_keys(&mut self, keys: Vec<KeyConfig>, now: Instant) {
        let mut old: HashMap<String, KeyEntry> = self
            .keys
            .drain(..)
            .map(|entry| (entry.config.name.clone(), entry))
            .collect();
        self.keys = keys
            .into_iter()
            .map(|config| {
                let limiter = match old.remove(&config.name) {
                    Some(entry)
                        if entry.config.requests_per_minute == config.requests_per_minute
                            && entry.config.tokens_per_minute == config.tokens_per_minute =>
                    {
                        entry.limiter
                    }
                    _ => KeyLimiter::new(config.requests_per_minute, config.tokens_per_minute, now),
                };
                KeyEntry { config, limiter }
            })
            .collect();
        self.by_name = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.config.name.clone(), i))
            .collect();
    }

    pub fn authenticate(&self, secret: &str) -> Option<Principal> {
        let index = find_key(
            secret,
            self.keys
                .iter()
                .enumerate()
                .map(|(i, k)| (&k.config.hash, i)),
        )?;
        let config = &self.keys[index].config;
        Some(Principal {
            name: config.name.clone(),
            role: config.role,
            max_queued: config.max_queued,
        })
    }

    pub fn admit(
        &mut self,
        key: &str,
        prompt_tokens: u64,
        now: Instant,
    ) -> Result<(), QuotaRejection> {
        let Some(&index) = self.by_name.get(key) else {
            return Err(QuotaRejection::UnknownKey {
                key: key.to_owned(),
            });
        };
        let entry = &mut self.keys[index];
        let over_budget = entry.config.token_budget.and_then(|budget| {
            let used = self.ledger.key_tokens(key);
            (used + prompt_tokens > budget).then_some((budget, used))
        });
        let result = match over_budget {
            Some((budget, used)) => Err(QuotaRejection::BudgetExhausted {
                key: key.to_owned(),
                budget,
                used,
            }),
            _ => entry
                .limiter
                .admit(prompt_tokens, now)
                .map_err(|e| match e {
                    LimitExceeded::Wait {
                        limit,
                        per_minute,
                        retry_after,
                    } => QuotaRejection::RateLimited {
                        key: key.to_owned(),
                        limit: limit.as_str(),
                        per_minute,
                        retry_after,
                    },
                    LimitExceeded::TooLarge { needed, per_minute } => QuotaRejection::TooLarge {
                        key: key.to_owned(),
                        needed,
                        per_minute,
                    },
                }),
        };
        if let Err(rejection) = &result {
            let reason = match rejection {
                QuotaRejection::RateLimited { .. } => "rate_limit",
                QuotaRejection::TooLarge { .. } => "too_large",
                QuotaRejection::BudgetExhausted { .. } => "budget",
                QuotaRejection::UnknownKey { .. } => "unknown_key",
            };
            metrics::counter!(metric_names::KEY_REJECTIONS, "key" => key.to_owned(), "reason" => reason).increment(1);
        }
        result
    }

    pub fn record(&mut self, usage: UsageRecord, now: Instant, ack: ledger::Ack) {
        if let Some(&index) = self.by_name.get(&usage.key) {
            self.keys[index]
                .limiter
                .charge_completion(usage.completion_tokens, now);
        }
        let labels = [("key", usage.key.clone()), ("model", usage.model.clone())];
        metrics::counter!(metric_names::KEY_REQUESTS, &labels).increment(1);
        metrics::counter!(metric_names::KEY_TOKENS, &labels)
            .increment(usage.prompt_tokens + usage.completion_tokens);
        self.ledger.record(&usage, ack);
    }

    pub fn usage(&self) -> Vec<UsageRow> {
        self.ledger.rows()
    }
}

impl Actor for QuotaActor {
    type Msg = QuotaMsg;
    type State = QuotaState;
    type Arguments = QuotaArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: QuotaArgs,
    ) -> Result<QuotaState, ActorProcessingErr> {
        let db = args.db;
        let ledger = tokio::task::spawn_blocking(move || Ledger::open_in(db)).await??;
        Ok(QuotaState::new(args.keys, ledger, Instant::now()))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: QuotaMsg,
        state: &mut QuotaState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            QuotaMsg::Authenticate { secret, reply } => {
                let _ = reply.send(state.authenticate(&secret));
            }
            QuotaMsg::Admit {
                key,
                prompt_tokens,
                reply,
            } => {
                let _ = reply.send(state.admit(&key, prompt_tokens, Instant::now()));
            }
            QuotaMsg::Record { usage, reply } => {
                state.record(
                    usage,
                    Instant::now(),
                    Box::new(move |result| {
                        let _ = reply.send(result);
                    }),
                );
            }
            QuotaMsg::Usage(reply) => {
                let _ = reply.send(state.usage());
            }
            QuotaMsg::Flush(reply) => state.ledger.flush(Box::new(move |result| {
                let _ = reply.send(result);
            })),
            QuotaMsg::SetKeys(keys) => state.set_keys(keys, Instant::now()),
        }
        Ok(())
    }
}
