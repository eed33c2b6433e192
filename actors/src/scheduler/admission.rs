//! [`Admission`]: the scheduler's decisions, sans-IO. It keeps one queue per API key, bounds the
//! node's queue and each key's share of it, and hands requests to workers round-robin across keys
//! whenever a worker has room: a free running slot, a short engine queue, and KV-cache blocks for
//! the prompt. It never touches a channel or an actor; the [`Scheduler`](super::SchedulerActor)
//! carries out what it returns.

use std::collections::{BTreeMap, HashMap, VecDeque};

use helixflow_kernels::engine::EngineStats;

use crate::WorkerId;
use crate::request::Ticket;

/// Requests a worker's engine may hold without having started them. Kept short so that the order
/// in which requests start is decided here (fairly between keys), not by the engine's FIFO, yet
/// long enough that a burst joins the running batch within a few steps.
pub const ENGINE_QUEUE_TARGET: usize = 8;

/// A request waiting for (or given to) a worker; `payload` is whatever the driver needs to send.
#[derive(Debug)]
pub struct Entry<T> {
    pub ticket: Ticket,
    pub key: String,
    pub model: String,
    pub prompt_tokens: usize,
    pub payload: T,
}

/// What a worker can take, reported when it comes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerCapacity {
    pub max_running: usize,
    pub block_size: usize,
    pub kv_blocks_total: usize,
}

/// How busy this node is with one model.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelLoad {
    pub model: String,
    /// Workers that have loaded the model and take requests.
    pub workers_up: usize,
    /// Requests waiting for a worker.
    pub queued: usize,
    /// Requests given to workers and not completed.
    pub in_flight: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
}

/// Why a request was not queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Rejection {
    #[error("too many requests of this key are waiting ({limit}); retry shortly")]
    KeyQueueFull { limit: usize },
    #[error("the node is overloaded ({limit} requests waiting); retry shortly")]
    Overloaded { limit: usize },
    #[error("model `{model}` is not served on this node")]
    NoWorker { model: String },
    #[error("the prompt needs {needed} KV-cache blocks but the largest worker holds {capacity}")]
    TooLarge { needed: usize, capacity: usize },
}

/// Where a cancelled request was.
#[derive(Debug)]
pub enum Cancelled<T> {
    Queued(Entry<T>),
    Dispatched(WorkerId, Entry<T>),
    Unknown,
}

#[derive(Debug)]
struct Worker {
    model: String,
    up: bool,
    capacity: WorkerCapacity,
    /// Dispatched and not completed.
    outstanding: usize,
    /// Dispatched since the worker's last report (the report's stats do not show them yet).
    unreported: usize,
    unreported_blocks: usize,
    stats: Option<EngineStats>,
}

impl Worker {
    fn blocks_for(&self, prompt_tokens: usize) -> usize {
        (prompt_tokens + 1).div_ceil(self.capacity.block_size.max(1))
    }

    fn has_room_for(&self, prompt_tokens: usize) -> bool {
        if !self.up || self.outstanding >= self.capacity.max_running {
            return false;
        }
        let (waiting, used) = self
            .stats
            .as_ref()
            .map_or((0, 0), |s| (s.waiting, s.kv_blocks_used));
        if waiting + self.unreported >= ENGINE_QUEUE_TARGET {
            return false;
        }
        let free = self
            .capacity
            .kv_blocks_total
            .saturating_sub(used)
            .saturating_sub(self.unreported_blocks);
        // An idle worker takes anything that fits its cache at all, so a big prompt cannot wait
        // forever behind a stale estimate.
        self.outstanding == 0 || self.blocks_for(prompt_tokens) <= free
    }
}

#[derive(Debug)]
pub struct Admission<T> {
    max_queue: usize,
    queues: HashMap<String, VecDeque<Entry<T>>>,
    /// Keys with waiting requests, in round-robin order.
    order: VecDeque<String>,
    queued: usize,
    workers: BTreeMap<WorkerId, Worker>,
    dispatched: HashMap<Ticket, (WorkerId, Entry<T>)>,
}

impl<T> Admission<T> {
    pub fn new(max_queue: usize) -> Admission<T> {
        Admission {
            max_queue,
            queues: HashMap::new(),
            order: VecDeque::new(),
            queued: 0,
            workers: BTreeMap::new(),
            dispatched: HashMap::new(),
        }
    }

    /// Requests waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.queued
    }

    /// Requests given to workers and not completed.
    pub fn in_flight(&self) -> usize {
        self.dispatched.len()
    }

    /// Per model: workers up, requests waiting and running, KV-cache use (what peers route by).
    pub fn model_loads(&self) -> Vec<ModelLoad> {
        fn load_of<'a>(
            loads: &'a mut BTreeMap<String, ModelLoad>,
            model: &str,
        ) -> &'a mut ModelLoad {
            loads.entry(model.to_owned()).or_insert_with(|| ModelLoad {
                model: model.to_owned(),
                ..ModelLoad::default()
            })
        }
        let mut loads = BTreeMap::new();
        for worker in self.workers.values() {
            let load = load_of(&mut loads, &worker.model);
            if worker.up {
                load.workers_up += 1;
                load.kv_blocks_total += worker.capacity.kv_blocks_total;
                load.kv_blocks_used += worker.stats.as_ref().map_or(0, |s| s.kv_blocks_used);
            }
            load.in_flight += worker.outstanding;
        }
        for entry in self.queues.values().flatten() {
            load_of(&mut loads, &entry.model).queued += 1;
        }
        loads.into_values().collect()
    }

    pub fn dispatched(&self, ticket: Ticket) -> Option<&Entry<T>> {
        self.dispatched.get(&ticket).map(|(_, e)| e)
    }

    /// Queues `entry` (at most `key_limit` of its key waiting) and returns what can start now.
    pub fn submit(
        &mut self,
        entry: Entry<T>,
        key_limit: usize,
    ) -> Result<Vec<(Ticket, WorkerId)>, Rejection> {
        let serving: Vec<&Worker> = self
            .workers
            .values()
            .filter(|w| w.model == entry.model)
            .collect();
        if serving.is_empty() {
            return Err(Rejection::NoWorker { model: entry.model });
        }
        let capacity = serving
            .iter()
            .map(|w| w.capacity.kv_blocks_total)
            .max()
            .unwrap_or(0);
        let needed = serving[0].blocks_for(entry.prompt_tokens);
        if needed > capacity {
            return Err(Rejection::TooLarge { needed, capacity });
        }
        if self.queued >= self.max_queue {
            return Err(Rejection::Overloaded {
                limit: self.max_queue,
            });
        }
        let waiting_of_key = self.queues.get(&entry.key).map_or(0, VecDeque::len);
        if waiting_of_key >= key_limit {
            return Err(Rejection::KeyQueueFull { limit: key_limit });
        }
        self.push(entry, false);
        Ok(self.dispatch())
    }

    /// Puts a request back at the head of its key's queue (its worker died before it produced
    /// anything) and returns what can start now.
    pub fn requeue(&mut self, entry: Entry<T>) -> Vec<(Ticket, WorkerId)> {
        self.push(entry, true);
        self.dispatch()
    }

    fn push(&mut self, entry: Entry<T>, front: bool) {
        let queue = self.queues.entry(entry.key.clone()).or_default();
        if queue.is_empty() {
            if front {
                self.order.push_front(entry.key.clone());
            } else {
                self.order.push_back(entry.key.clone());
            }
        }
        if front {
            queue.push_front(entry);
        } else {
            queue.push_back(entry);
        }
        self.queued += 1;
    }

    /// Removes a request wherever it is.
    pub fn cancel(&mut self, ticket: Ticket) -> Cancelled<T> {
        if let Some((worker, entry)) = self.dispatched.remove(&ticket) {
            if let Some(w) = self.workers.get_mut(&worker) {
                w.outstanding = w.outstanding.saturating_sub(1);
            }
            return Cancelled::Dispatched(worker, entry);
        }
        for (key, queue) in &mut self.queues {
            if let Some(at) = queue.iter().position(|e| e.ticket == ticket) {
                let entry = queue.remove(at).expect("position came from this queue");
                self.queued -= 1;
                if queue.is_empty() {
                    let key = key.clone();
                    self.queues.remove(&key);
                    self.order.retain(|k| *k != key);
                }
                return Cancelled::Queued(entry);
            }
        }
        Cancelled::Unknown
    }

    /// A worker (new or restarted) is ready.
    pub fn worker_up(
        &mut self,
        id: WorkerId,
        model: String,
        capacity: WorkerCapacity,
    ) -> Vec<(Ticket, WorkerId)> {
        self.workers.insert(
            id,
            Worker {
                model,
                up: true,
                capacity,
                outstanding: 0,
                unreported: 0,
                unreported_blocks: 0,
                stats: None,
            },
        );
        self.dispatch()
    }

    /// A worker died: nothing more goes to it, and the requests it held are returned for the
    /// driver to re-queue or fail.
    pub fn worker_down(&mut self, id: WorkerId) -> Vec<Entry<T>> {
        if let Some(w) = self.workers.get_mut(&id) {
            w.up = false;
            w.outstanding = 0;
            w.unreported = 0;
            w.unreported_blocks = 0;
            w.stats = None;
        }
        let lost: Vec<Ticket> = self
            .dispatched
            .iter()
            .filter(|(_, (w, _))| *w == id)
            .map(|(t, _)| *t)
            .collect();
        let mut entries: Vec<Entry<T>> = lost
            .into_iter()
            .filter_map(|t| self.dispatched.remove(&t).map(|(_, e)| e))
            .collect();
        entries.sort_by_key(|e| e.ticket);
        entries
    }

    /// A worker's report after a step: requests it completed and its engine's state.
    pub fn report(
        &mut self,
        id: WorkerId,
        completed: &[Ticket],
        stats: EngineStats,
    ) -> Vec<(Ticket, WorkerId)> {
        for ticket in completed {
            if let Some((worker, _)) = self.dispatched.get(ticket)
                && *worker == id
            {
                self.dispatched.remove(ticket);
                if let Some(w) = self.workers.get_mut(&id) {
                    w.outstanding = w.outstanding.saturating_sub(1);
                }
            }
        }
        if let Some(w) = self.workers.get_mut(&id) {
            w.stats = Some(stats);
            w.unreported = 0;
            w.unreported_blocks = 0;
        }
        self.dispatch()
    }

    /// Starts every waiting request a worker has room for, taking keys in turn: a key that is
    /// served moves to the back of the order, a key that cannot be served keeps its place.
    /// The other methods call it after each change; call it after anything else that freed room.
    pub fn dispatch(&mut self) -> Vec<(Ticket, WorkerId)> {
        let mut started = Vec::new();
        loop {
            let mut progressed = false;
            let mut i = 0;
            let mut tried = 0;
            let keys = self.order.len();
            while tried < keys && i < self.order.len() {
                tried += 1;
                let key = &self.order[i];
                let Some(head) = self.queues.get(key).and_then(VecDeque::front) else {
                    let key = self.order.remove(i).expect("index is in range");
                    self.queues.remove(&key);
                    continue;
                };
                let worker = self
                    .workers
                    .iter()
                    .filter(|(_, w)| w.model == head.model && w.has_room_for(head.prompt_tokens))
                    .min_by_key(|(_, w)| w.outstanding)
                    .map(|(id, _)| *id);
                let Some(worker) = worker else {
                    i += 1;
                    continue;
                };
                let key = self.order.remove(i).expect("index is in range");
                let queue = self
                    .queues
                    .get_mut(&key)
                    .expect("head came from this queue");
                let entry = queue.pop_front().expect("head was Some");
                if queue.is_empty() {
                    self.queues.remove(&key);
                } else {
                    self.order.push_back(key);
                }
                self.queued -= 1;
                let w = self.workers.get_mut(&worker).expect("chosen from workers");
                w.outstanding += 1;
                w.unreported += 1;
                w.unreported_blocks += w.blocks_for(entry.prompt_tokens);
                started.push((entry.ticket, worker));
                self.dispatched.insert(entry.ticket, (worker, entry));
                progressed = true;
            }
            if !progressed {
                return started;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: WorkerCapacity = WorkerCapacity {
        max_running: 4,
        block_size: 16,
        kv_blocks_total: 100,
    };

    fn entry(ticket: Ticket, key: &str, prompt_tokens: usize) -> Entry<()> {
        Entry {
            ticket,
            key: key.to_owned(),
            model: "m".to_owned(),
            prompt_tokens,
            payload: (),
        }
    }

    fn stats(running: usize, waiting: usize, used: usize) -> EngineStats {
        EngineStats {
            running,
            waiting,
            kv_blocks_total: CAP.kv_blocks_total,
            kv_blocks_used: used,
            kv_blocks_cached: 0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            preemptions: 0,
        }
    }

    #[test]
    fn requests_start_while_the_worker_has_slots_then_queue() {
        let mut a = Admission::new(10);
        assert_eq!(a.worker_up(WorkerId(0), "m".into(), CAP), vec![]);
        for t in 0..4 {
            assert_eq!(
                a.submit(entry(t, "k", 10), 10).unwrap(),
                vec![(t, WorkerId(0))]
            );
        }
        assert_eq!(a.submit(entry(4, "k", 10), 10).unwrap(), vec![]);
        assert_eq!(a.queue_depth(), 1);
        // One completes: the queued one starts.
        assert_eq!(
            a.report(WorkerId(0), &[1], stats(3, 0, 3)),
            vec![(4, WorkerId(0))]
        );
        assert_eq!(a.queue_depth(), 0);
        assert_eq!(a.in_flight(), 4);
    }

    #[test]
    fn keys_take_turns_whatever_order_they_arrived_in() {
        let mut a = Admission::new(100);
        a.worker_up(
            WorkerId(0),
            "m".into(),
            WorkerCapacity {
                max_running: 1,
                ..CAP
            },
        );
        a.submit(entry(0, "busy", 1), 100).unwrap();
        for t in 1..=5 {
            a.submit(entry(t, "busy", 1), 100).unwrap();
        }
        a.submit(entry(10, "quiet", 1), 100).unwrap();
        a.submit(entry(11, "quiet", 1), 100).unwrap();
        let mut order = Vec::new();
        let mut done = 0;
        while a.in_flight() > 0 {
            let started = a.report(WorkerId(0), &[done], stats(0, 0, 0));
            for (t, _) in started {
                order.push(t);
                done = t;
            }
        }
        // "quiet" does not wait for all of "busy"'s backlog.
        assert_eq!(order, vec![1, 10, 2, 11, 3, 4, 5]);
    }

    #[test]
    fn bounds_give_key_and_node_rejections() {
        let mut a = Admission::new(3);
        a.worker_up(
            WorkerId(0),
            "m".into(),
            WorkerCapacity {
                max_running: 1,
                ..CAP
            },
        );
        a.submit(entry(0, "a", 1), 2).unwrap();
        a.submit(entry(1, "a", 1), 2).unwrap();
        a.submit(entry(2, "a", 1), 2).unwrap();
        assert_eq!(
            a.submit(entry(3, "a", 1), 2),
            Err(Rejection::KeyQueueFull { limit: 2 })
        );
        a.submit(entry(4, "b", 1), 2).unwrap();
        assert_eq!(
            a.submit(entry(5, "c", 1), 2),
            Err(Rejection::Overloaded { limit: 3 })
        );
        let unknown = Entry {
            model: "other".into(),
            ..entry(6, "a", 1)
        };
        assert_eq!(
            a.submit(unknown, 2),
            Err(Rejection::NoWorker {
                model: "other".into()
            })
        );
        assert_eq!(
            a.submit(entry(7, "a", 100 * 16), 2),
            Err(Rejection::TooLarge {
                needed: 101,
                capacity: 100
            })
        );
    }

    #[test]
    fn kv_cache_use_holds_back_prompts_that_do_not_fit() {
        let mut a = Admission::new(10);
        a.worker_up(WorkerId(0), "m".into(), CAP);
        a.submit(entry(0, "k", 16 * 50), 10).unwrap();
        a.report(WorkerId(0), &[], stats(1, 0, 90));
        // 10 blocks free: a 20-block prompt waits, a 2-block one passes it for another key.
        assert_eq!(a.submit(entry(1, "k", 16 * 20), 10).unwrap(), vec![]);
        assert_eq!(
            a.submit(entry(2, "j", 20), 10).unwrap(),
            vec![(2, WorkerId(0))]
        );
        assert_eq!(
            a.report(WorkerId(0), &[0], stats(1, 0, 2)),
            vec![(1, WorkerId(0))]
        );
    }

    #[test]
    fn engine_queue_is_kept_short() {
        let mut a = Admission::new(100);
        a.worker_up(
            WorkerId(0),
            "m".into(),
            WorkerCapacity {
                max_running: 64,
                ..CAP
            },
        );
        let mut started = 0;
        for t in 0..20 {
            started += a.submit(entry(t, "k", 1), 100).unwrap().len();
        }
        assert_eq!(started, ENGINE_QUEUE_TARGET);
        // The engine admitted them all into its running batch: more may follow.
        assert_eq!(
            a.report(WorkerId(0), &[], stats(8, 0, 8)).len(),
            ENGINE_QUEUE_TARGET
        );
    }

    #[test]
    fn a_dead_workers_requests_come_back_and_cancel_finds_requests_anywhere() {
        let mut a = Admission::new(10);
        a.worker_up(
            WorkerId(0),
            "m".into(),
            WorkerCapacity {
                max_running: 2,
                ..CAP
            },
        );
        a.submit(entry(0, "k", 1), 10).unwrap();
        a.submit(entry(1, "k", 1), 10).unwrap();
        a.submit(entry(2, "k", 1), 10).unwrap();
        let lost = a.worker_down(WorkerId(0));
        assert_eq!(
            lost.iter().map(|e| e.ticket).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(a.requeue(lost.into_iter().next().unwrap()), vec![]);
        assert_eq!(a.queue_depth(), 2);
        // The restarted worker takes the re-queued request first.
        assert_eq!(
            a.worker_up(
                WorkerId(0),
                "m".into(),
                WorkerCapacity {
                    max_running: 1,
                    ..CAP
                }
            ),
            vec![(0, WorkerId(0))]
        );
        assert!(matches!(a.cancel(2), Cancelled::Queued(e) if e.ticket == 2));
        assert!(matches!(a.cancel(0), Cancelled::Dispatched(WorkerId(0), _)));
        assert!(matches!(a.cancel(0), Cancelled::Unknown));
        assert_eq!(a.queue_depth(), 0);
        assert_eq!(a.in_flight(), 0);
    }
}
