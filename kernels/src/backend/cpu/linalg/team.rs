//! Parallel dispatch for the CPU backend: a team of the pool's threads held spinning for the
//! length of a forward pass, and helpers that hand work to it.
//!
//! A batch-1 decode step makes ~50 parallel calls of 50–400 µs each. Handing each to rayon
//! (`broadcast`) lets the worker that finishes first go idle and fall asleep; the next call then
//! waits for it to be woken, and a sleeping vCPU takes tens of µs to wake. On 2 threads that
//! cost ~20% of the step. [`Workers::run_pass`] instead starts one rayon broadcast per pass:
//! the pool's thread 0 runs the pass, the others spin waiting for jobs, and every
//! [`for_each_thread`] call made by the pass on that pool goes to them through two atomics.
//!
//! A pool of one thread runs the pass on the calling thread, as a team of one (no hand-off).
//! Outside a pass (or on another pool) the helpers fall back to `rayon::ThreadPool::broadcast`,
//! so they work from any thread.

use std::cell::Cell;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Spin iterations before a waiting thread starts yielding its core between checks (~20–60 µs):
/// long enough to cover the gaps between a pass's parallel calls, short enough not to starve
/// other processes for long when a pass does serial work.
const SPINS_BEFORE_YIELD: u32 = 1 << 11;

/// A job: called once per team thread with `(index, count)`.
type Job<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// State shared by a pass's threads.
struct Team {
    /// The pool whose threads are the team (an address, only compared).
    pool: usize,
    threads: usize,
    /// The current job, valid while `pending > 0`; written by the leader between jobs only.
    job: Mutex<Option<Job<'static>>>,
    /// Bumped (Release) when a job is posted.
    generation: AtomicUsize,
    /// Members still running the current job.
    pending: AtomicUsize,
    /// The pass is over: members return.
    closed: AtomicBool,
    /// A member's job panicked (the leader re-raises it).
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

thread_local! {
    /// The team this thread leads, while it runs a pass.
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// A rayon pool that can run a forward pass as a spinning team.
pub struct Workers {
    pool: rayon::ThreadPool,
    /// One pass at a time: two passes' broadcasts could reach the threads in different orders
    /// and each wait for a thread the other holds.
    pass: Mutex<()>,
}

impl Workers {
    pub fn new(pool: rayon::ThreadPool) -> Workers {
        Workers {
            pool,
            pass: Mutex::new(()),
        }
    }

    pub fn pool(&self) -> &rayon::ThreadPool {
        &self.pool
    }

    /// Runs `pass` on thread 0 of the pool while the other threads spin, ready for the pass's
    /// [`for_each_thread`] calls. A panic in the pass or in a job reaches the caller.
    ///
    /// A pool of one thread runs the pass on the calling thread instead, as a team of one: handing
    /// it to the pool's thread cost every step futex calls, context switches, the worker's
    /// yielding spin before it slept and the caller's wake-up, for no parallelism (1-thread
    /// batch-1 f16 decode on Zen 5 ran a median 1.10× faster without; docs/BENCHMARKS.md).
    /// Passes still run one at a time, so a one-thread backend computes on one core whoever
    /// calls it.
    pub fn run_pass<R: Send>(&self, pass: impl FnOnce() -> R + Send) -> R {
        let threads = self.pool.current_num_threads();
        if leading(&self.pool).is_some() {
            return pass(); // nested: this thread already leads a pass on this pool
        }
        let _one_pass = self.pass.lock().unwrap_or_else(|e| e.into_inner());
        let team = Team {
            pool: pool_id(&self.pool),
            threads,
            job: Mutex::new(None),
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            panicked: Mutex::new(None),
        };
        if threads == 1 {
            return team.lead(pass);
        }
        let pass = Mutex::new(Some(pass));
        let result = Mutex::new(None);
        self.pool.broadcast(|ctx| {
            if ctx.index() != 0 {
                team.serve(ctx.index());
                return;
            }
            let pass = lock(&pass).take().expect("the pass runs once");
            *lock(&result) = Some(team.lead(pass));
        });
        result
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .expect("thread 0 ran the pass")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pool_id(pool: &rayon::ThreadPool) -> usize {
    std::ptr::from_ref(pool) as usize
}

/// The team this thread leads on `pool`, if any.
fn leading(pool: &rayon::ThreadPool) -> Option<&'static Team> {
    let team = LEADING.with(Cell::get);
    // SAFETY: LEADING is set only while `run_pass` holds the team on this thread's stack, and
    // cleared before it is dropped; the reference does not escape the current call.
    let team = unsafe { team.as_ref() }?;
    (team.pool == pool_id(pool)).then_some(team)
}

/// Waits until `done()` holds: spins, then spins and yields.
fn wait_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
        } else {
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
}

impl Team {
    /// Runs `pass` on this thread as the team's leader (index 0), then ends the pass, even if it
    /// panics: members return and this thread leads no more.
    fn lead<R>(&self, pass: impl FnOnce() -> R) -> R {
        struct Close<'a>(&'a Team);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                LEADING.with(|l| l.set(std::ptr::null()));
                self.0.closed.store(true, Ordering::Release);
            }
        }
        LEADING.with(|l| l.set(self));
        let _close = Close(self);
        pass()
    }

    /// A member's loop: run each posted job, until the pass closes.
    fn serve(&self, index: usize) {
        let mut seen = 0;
        loop {
            wait_until(|| {
                self.generation.load(Ordering::Acquire) != seen
                    || self.closed.load(Ordering::Acquire)
            });
            let generation = self.generation.load(Ordering::Acquire);
            if generation == seen {
                return; // closed, and no job left unseen
            }
            seen = generation;
            let job = lock(&self.job).expect("a posted job");
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| job(index, self.threads))) {
                lock(&self.panicked).get_or_insert(panic);
            }
            self.pending.fetch_sub(1, Ordering::Release);
        }
    }

    /// Runs `job` on every team thread (this one, the leader, as index 0) and returns when all
    /// are done.
    fn dispatch(&self, job: Job<'_>) {
        // SAFETY: only the lifetime is erased. Members call the job only between the
        // `generation` bump below and their `pending` decrement, and `Joined` waits for every
        // decrement before this function returns or unwinds, so no call outlives `job`.
        let job: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(job) };
        *lock(&self.job) = Some(job);
        self.pending.store(self.threads - 1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);

        struct Joined<'a>(&'a Team);
        impl Drop for Joined<'_> {
            fn drop(&mut self) {
                wait_until(|| self.0.pending.load(Ordering::Acquire) == 0);
            }
        }
        let joined = Joined(self);
        job(0, self.threads);
        drop(joined);
        if let Some(panic) = lock(&self.panicked).take() {
            resume_unwind(panic);
        }
    }
}

/// Calls `job(index, count)` once on each of `count` threads of `pool` (through the running
/// pass's team when this thread leads one on `pool`, otherwise through a rayon broadcast) and
/// returns when all calls have.
pub fn for_each_thread(pool: &rayon::ThreadPool, job: &(dyn Fn(usize, usize) + Sync)) {
    if let Some(team) = leading(pool) {
        team.dispatch(job);
    } else if pool.current_num_threads() <= 1 {
        pool.install(|| job(0, 1));
    } else {
        pool.broadcast(|ctx| job(ctx.index(), ctx.num_threads()));
    }
}

/// Calls `f` on disjoint ranges covering `0..len`, of `grain` items each (the last may be
/// shorter), claimed by the pool's threads one at a time, so threads that meet cheaper items
/// take more of them.
pub fn for_each_chunk(
    pool: &rayon::ThreadPool,
    len: usize,
    grain: usize,
    f: &(dyn Fn(Range<usize>) + Sync),
) {
    let grain = grain.max(1);
    let next = AtomicUsize::new(0);
    for_each_thread(pool, &|_, _| {
        loop {
            let start = next.fetch_add(grain, Ordering::Relaxed);
            if start >= len {
                break;
            }
            f(start..(start + grain).min(len));
        }
    });
}

/// Calls `f` on disjoint ranges covering `0..units`, from the pool's threads, keeping each
/// thread on one forward stream while balancing the load.
///
/// Thread `t` owns the `t`-th contiguous share and walks it front to back, claiming a quarter of
/// what is left at a time (one unit at the end). A thread whose share is done steals the back
/// half of the unclaimed part of the fullest other share, and walks that forward as its own.
/// So a memory-bound product reads each range as one sequential stream (what the prefetchers
/// want), and a thread slowed down, by another tenant on its core say, hands its tail to the
/// others instead of holding up the call.
pub fn for_each_share(pool: &rayon::ThreadPool, units: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
    assert!(
        u32::try_from(units).is_ok(),
        "for_each_share: {units} units"
    );
    let threads = pool.current_num_threads().max(1);
    let shares: Vec<Share> = (0..threads)
        .map(|t| Share::new(units * t / threads..units * (t + 1) / threads))
        .collect();
    for_each_thread(pool, &|index, count| {
        debug_assert_eq!(count, shares.len());
        let own = &shares[index];
        loop {
            while let Some(range) = own.claim_front() {
                f(range);
            }
            // The fullest other share; stop when every share is claimed.
            let victim = shares
                .iter()
                .enumerate()
                .filter(|&(t, _)| t != index)
                .map(|(_, s)| (s.unclaimed(), s))
                .max_by_key(|&(left, _)| left);
            match victim {
                Some((left, victim)) if left > 0 => {
                    if let Some(stolen) = victim.steal_back_half() {
                        own.set(stolen);
                    }
                }
                _ => return,
            }
        }
    });
}

/// The unclaimed units `front..back` of one thread's share, packed in one atomic (`front` in the
/// low half), on a cache line of its own.
#[repr(align(128))]
struct Share(AtomicU64);

impl Share {
    fn new(range: Range<usize>) -> Share {
        Share(AtomicU64::new(Share::pack(range)))
    }

    fn pack(range: Range<usize>) -> u64 {
        range.start as u64 | (range.end as u64) << 32
    }

    fn unpack(v: u64) -> Range<usize> {
        (v as u32 as usize)..((v >> 32) as usize)
    }

    fn unclaimed(&self) -> usize {
        Share::unpack(self.0.load(Ordering::Relaxed)).len()
    }

    /// Replaces an empty share (only its owner calls this, and only when it is empty: other
    /// threads never change an empty share, so nothing is lost).
    fn set(&self, range: Range<usize>) {
        self.0.store(Share::pack(range), Ordering::Relaxed);
    }

    /// Atomically takes a part of the unclaimed range: `split(range)` gives what stays and what
    /// is taken (`None` when there is nothing to take).
    fn take(
        &self,
        split: impl Fn(Range<usize>) -> Option<(Range<usize>, Range<usize>)>,
    ) -> Option<Range<usize>> {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let (stays, taken) = split(Share::unpack(current))?;
            // Relaxed: a claim only has to be exclusive; the results are published by the
            // join at the end of `for_each_thread`.
            match self.0.compare_exchange_weak(
                current,
                Share::pack(stays),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(taken),
                Err(now) => current = now,
            }
        }
    }

    /// The owner's next range: a quarter of what is left, at least one unit.
    fn claim_front(&self) -> Option<Range<usize>> {
        self.take(|r| {
            let n = (r.len() / 4).max(1);
            (!r.is_empty()).then(|| (r.start + n..r.end, r.start..r.start + n))
        })
    }

    /// A thief's take: the back half of what is left (all of it when one unit is).
    fn steal_back_half(&self) -> Option<Range<usize>> {
        self.take(|r| {
            let mid = r.start + r.len() / 2;
            (!r.is_empty()).then_some((r.start..mid, mid..r.end))
        })
    }
}

/// Calls `f(first_row, rows)` over `out` split into rows of `width` elements, handed out in
/// chunks of `grain` rows by [`for_each_chunk`]: each row is written by exactly one call.
pub fn for_each_row_chunk<T: Send>(
    pool: &rayon::ThreadPool,
    out: &mut [T],
    width: usize,
    grain: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let width = width.max(1);
    let rows = out.len() / width;
    let shared = Disjoint {
        ptr: out.as_mut_ptr(),
        len: rows * width,
    };
    for_each_chunk(pool, rows, grain, &|chunk| {
        // SAFETY: the chunks of `for_each_chunk` are disjoint, and so are their rows; `out` is
        // borrowed mutably until every call has returned.
        let part = unsafe { shared.range(chunk.start * width..chunk.end * width) };
        f(chunk.start, part);
    });
}

/// A mutable slice that parallel jobs write in disjoint ranges.
struct Disjoint<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: only `range` hands out access, and its callers promise disjoint ranges.
unsafe impl<T: Send> Send for Disjoint<T> {}
// SAFETY: see `Send`.
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    /// The elements in `range`.
    ///
    /// # Safety
    /// No two live results overlap, and none outlives the slice this was made from.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, range: Range<usize>) -> &mut [T] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "Disjoint::range {range:?} of {}",
            self.len
        );
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(threads: usize) -> Workers {
        Workers::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn a_pass_reaches_every_thread_for_every_call() {
        for threads in [1, 2, 3] {
            let w = workers(threads);
            let calls = w.run_pass(|| {
                let hits = AtomicUsize::new(0);
                for _ in 0..1000 {
                    for_each_thread(w.pool(), &|index, count| {
                        assert!(index < count && count == threads);
                        hits.fetch_add(1 << (8 * index), Ordering::Relaxed);
                    });
                }
                hits.into_inner()
            });
            let expected: usize = (0..threads).map(|i| 1000 << (8 * i)).sum();
            assert_eq!(calls, expected, "{threads} threads");
        }
    }

    #[test]
    fn chunks_cover_the_range_once_inside_and_outside_a_pass() {
        let w = workers(2);
        let check = || {
            let seen: Vec<AtomicUsize> = (0..1001).map(|_| AtomicUsize::new(0)).collect();
            for_each_chunk(w.pool(), seen.len(), 7, &|r| {
                r.for_each(|i| {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                })
            });
            assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
        };
        check();
        w.run_pass(check);
    }

    #[test]
    fn shares_cover_the_units_once_even_when_a_thread_is_slow() {
        for threads in [1, 2, 3] {
            let w = workers(threads);
            for units in [0, 1, 2, 5, 64, 1000] {
                let check = || {
                    let seen: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
                    let slow = std::thread::current().id();
                    for_each_share(w.pool(), units, &|r| {
                        if std::thread::current().id() == slow {
                            // The leader is slow: the others must take over its share.
                            std::thread::yield_now();
                        }
                        r.for_each(|i| {
                            seen[i].fetch_add(1, Ordering::Relaxed);
                        })
                    });
                    assert!(
                        seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                        "{threads} threads, {units} units"
                    );
                };
                w.run_pass(check);
                check();
            }
        }
    }

    #[test]
    fn a_stalled_thread_loses_its_share_to_the_others() {
        let w = workers(2);
        let by_member = w.run_pass(|| {
            let by_member = AtomicUsize::new(0);
            let leader = std::thread::current().id();
            let stalled = AtomicBool::new(false);
            for_each_share(w.pool(), 100, &|r| {
                if std::thread::current().id() != leader {
                    by_member.fetch_add(r.len(), Ordering::Relaxed);
                } else if !stalled.swap(true, Ordering::Relaxed) {
                    // The leader's first claim (a quarter of its 50 units) stalls until the
                    // member has taken all the rest: its own 50 and the leader's other 38.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                    while by_member.load(Ordering::Relaxed) < 88 {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "the member never stole"
                        );
                        std::thread::yield_now();
                    }
                }
            });
            by_member.into_inner()
        });
        assert_eq!(by_member, 88);
    }

    #[test]
    fn row_chunks_write_every_row_once() {
        let w = workers(2);
        let mut out = vec![0usize; 3 * 101];
        for_each_row_chunk(w.pool(), &mut out, 3, 4, &|first, rows| {
            for (r, row) in rows.chunks_exact_mut(3).enumerate() {
                row.iter_mut().for_each(|v| *v += first + r + 1);
            }
        });
        let expected: Vec<usize> = (0..101).flat_map(|r| [r + 1; 3]).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn a_panicking_job_reaches_the_caller_and_the_pool_still_works() {
        let w = workers(2);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            w.run_pass(|| {
                for_each_thread(w.pool(), &|index, _| {
                    assert_ne!(index, 1, "member job fails");
                })
            })
        }));
        assert!(caught.is_err());
        let caught = catch_unwind(AssertUnwindSafe(|| w.run_pass(|| panic!("pass fails"))));
        assert!(caught.is_err());
        assert_eq!(w.run_pass(|| 7), 7);
    }

    #[test]
    fn a_nested_pass_runs_inline() {
        for threads in [1, 2] {
            let w = workers(threads);
            assert_eq!(w.run_pass(|| w.run_pass(|| 3) + 1), 4);
        }
    }

    #[test]
    fn a_one_thread_pass_runs_on_the_caller_one_pass_at_a_time() {
        let w = workers(1);
        let caller = std::thread::current().id();
        w.run_pass(|| {
            assert_eq!(std::thread::current().id(), caller);
            for_each_share(w.pool(), 10, &|_| {
                assert_eq!(std::thread::current().id(), caller);
            });
        });
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..200 {
                        w.run_pass(|| {
                            most.fetch_max(
                                inside.fetch_add(1, Ordering::SeqCst) + 1,
                                Ordering::SeqCst,
                            );
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(
            most.into_inner(),
            1,
            "passes of a one-thread pool overlapped"
        );
    }
}
