//! The usage ledger: per key and model, the requests answered and their prompt and completion
//! tokens, persisted in sled.
//!
//! Totals live in memory (budgets are checked against them without IO) and every change is
//! written to sled by one writer thread that commits in groups: it takes every record waiting,
//! writes each affected total, flushes once, and only then acknowledges them. A request is
//! acknowledged — and its answer completed to the client — only after its usage is on disk, so a
//! restart, even a crash, loses nothing already answered.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use serde::{Deserialize, Serialize};

/// Usage of one key on one model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl UsageTotals {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// One answered request's usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub key: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A ledger row for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub key: String,
    pub model: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("opening the usage ledger in {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("usage ledger entry {entry:?} is corrupt: {reason}")]
    Corrupt { entry: String, reason: String },
    #[error("usage ledger: {0}")]
    Sled(#[from] sled::Error),
}

/// Called once the record is durable (or failed to become so).
pub type Ack = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Write {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        ack: Option<Ack>,
    },
    Flush(Ack),
}

pub struct Ledger {
    totals: BTreeMap<(String, String), UsageTotals>,
    writer: mpsc::Sender<Write>,
}

const TREE: &str = "usage";

impl Ledger {
    /// Opens (or creates) a sled database under `dir` holding only the ledger.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        let db = open_db(dir).map_err(|source| LedgerError::Open {
            path: dir.display().to_string(),
            source,
        })?;
        Ledger::open_in(db)
    }

    /// Opens the ledger's tree in the node's database and loads its totals.
    pub fn open_in(db: sled::Db) -> Result<Ledger, LedgerError> {
        let tree = db.open_tree(TREE)?;
        let mut totals = BTreeMap::new();
        for item in tree.iter() {
            let (k, v) = item?;
            let entry = String::from_utf8_lossy(&k).into_owned();
            let Some((key, model)) = entry.split_once('\0') else {
                return Err(LedgerError::Corrupt {
                    entry,
                    reason: "no key/model separator".into(),
                });
            };
            let value: UsageTotals =
                serde_json::from_slice(&v).map_err(|e| LedgerError::Corrupt {
                    entry: entry.clone(),
                    reason: e.to_string(),
                })?;
            totals.insert((key.to_owned(), model.to_owned()), value);
        }
        let (writer, rx) = mpsc::channel();
        thread::Builder::new()
            .name("helixflow-ledger".into())
            .spawn(move || write_loop(db, tree, rx))
            .map_err(|e| LedgerError::Sled(sled::Error::Io(e)))?;
        Ok(Ledger { totals, writer })
    }

    /// Adds a request's usage; `ack` runs once it is on disk.
    pub fn record(&mut self, record: &UsageRecord, ack: Ack) {
        let totals = self
            .totals
            .entry((record.key.clone(), record.model.clone()))
            .or_default();
        totals.requests += 1;
        totals.prompt_tokens += record.prompt_tokens;
        totals.completion_tokens += record.completion_tokens;
        let key = format!("{}\0{}", record.key, record.model).into_bytes();
        // Serializing three integers cannot fail.
        let value = serde_json::to_vec(totals).unwrap_or_default();
        if let Err(mpsc::SendError(Write::Put { ack: Some(ack), .. })) =
            self.writer.send(Write::Put {
                key,
                value,
                ack: Some(ack),
            })
        {
            ack(Err("the ledger writer has stopped".into()));
        }
    }

    /// Runs `ack` once everything recorded so far is on disk.
    pub fn flush(&self, ack: Ack) {
        if let Err(mpsc::SendError(Write::Flush(ack))) = self.writer.send(Write::Flush(ack)) {
            ack(Err("the ledger writer has stopped".into()));
        }
    }

    /// Prompt + completion tokens of `key` over all models.
    pub fn key_tokens(&self, key: &str) -> u64 {
        // Rows are ordered by (key, model): the key's rows are one contiguous range.
        self.totals
            .range((key.to_owned(), String::new())..)
            .take_while(|((k, _), _)| k == key)
            .map(|(_, t)| t.tokens())
            .sum()
    }

    pub fn rows(&self) -> Vec<UsageRow> {
        self.totals
            .iter()
            .map(|((key, model), totals)| UsageRow {
                key: key.clone(),
                model: model.clone(),
                totals: *totals,
            })
            .collect()
    }
}

/// Opens the node's sled database. Writes are made durable by explicit flushes (the ledger's
/// writer, the Raft log), never by a background timer.
pub fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new().path(dir).flush_every_ms(None).open()
}

fn write_loop(db: sled::Db, tree: sled::Tree, rx: mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        let mut result = Ok(());
        let mut pending = Some(first);
        while let Some(write) = pending.take().or_else(|| rx.try_recv().ok()) {
            match write {
                Write::Put { key, value, ack } => {
                    if let Err(e) = tree.insert(key, value) {
                        result = Err(e.to_string());
                    }
                    acks.extend(ack);
                }
                Write::Flush(ack) => acks.push(ack),
            }
        }
        if result.is_ok()
            && let Err(e) = db.flush()
        {
            result = Err(e.to_string());
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "usage ledger write failed");
        }
        for ack in acks {
            ack(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, model: &str, prompt: u64, completion: u64) -> UsageRecord {
        UsageRecord {
            key: key.into(),
            model: model.into(),
            prompt_tokens: prompt,
            completion_tokens: completion,
        }
    }

    fn durable(ledger: &mut Ledger, r: &UsageRecord) {
        let (tx, rx) = mpsc::channel();
        ledger.record(r, Box::new(move |res| tx.send(res).unwrap()));
        rx.recv().unwrap().unwrap();
    }

    #[test]
    fn totals_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut ledger = Ledger::open(dir.path()).unwrap();
            durable(&mut ledger, &record("a", "m", 10, 5));
            durable(&mut ledger, &record("a", "m", 1, 2));
            durable(&mut ledger, &record("a", "other", 7, 0));
            durable(&mut ledger, &record("b", "m", 3, 3));
            assert_eq!(ledger.key_tokens("a"), 25);
        }
        // sled releases its lock when the writer thread drops the last handle.
        let reopened = (0..100)
            .find_map(|_| {
                Ledger::open(dir.path()).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                })
            })
            .expect("ledger reopens");
        assert_eq!(
            reopened.rows(),
            vec![
                UsageRow {
                    key: "a".into(),
                    model: "m".into(),
                    totals: UsageTotals {
                        requests: 2,
                        prompt_tokens: 11,
                        completion_tokens: 7
                    }
                },
                UsageRow {
                    key: "a".into(),
                    model: "other".into(),
                    totals: UsageTotals {
                        requests: 1,
                        prompt_tokens: 7,
                        completion_tokens: 0
                    }
                },
                UsageRow {
                    key: "b".into(),
                    model: "m".into(),
                    totals: UsageTotals {
                        requests: 1,
                        prompt_tokens: 3,
                        completion_tokens: 3
                    }
                },
            ]
        );
        assert_eq!(reopened.key_tokens("a"), 25);
        assert_eq!(reopened.key_tokens("nobody"), 0);
    }
}
