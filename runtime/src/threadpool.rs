//! A persistent fork-join pool for the forward pass: `run(f)` calls `f(0)` on the calling thread
//! and `f(t)` on each worker `t` that joins the region before `f(0)` returns, and returns when
//! every call has returned. Callers hand out their work in chunks ([`ChunkCounter`]): whoever
//! runs claims the next chunk, so the work is done whatever the number of threads that join.
//!
//! Why not rayon: a decode step runs ~200 small parallel regions; rayon's fork-join costs about
//! 10 µs each on a 2-core box and its global injector allocates a block every few dozen jobs,
//! while the engine promises no heap allocation after start-up. Here a job is a pointer to the
//! caller's closure published through a generation counter; workers spin briefly for the next
//! job, then sleep on a condition variable. Nothing is allocated per job.
//!
//! A worker that has not started a region by the time the caller has finished its own share
//! (all chunks claimed) is not waited for: the caller closes the region, and the late worker,
//! finding it closed, never touches the closure. On a busy machine a descheduled worker then
//! holds a region up only while it holds a chunk, not while it waits to be scheduled.
//!
//! When the caller had to wait for the workers inside a region more than `STALL` (2 ms) and
//! more than four times its own share took (one of them was descheduled while holding a chunk:
//! the machine is oversubscribed; a long chunk of a prefill is not a stall), the next regions
//! run on the caller alone for `SOLO` (100 ms), then the workers are tried again: on a busy
//! 2-core machine one thread that runs beats two that wait for each other.
//!
//! Invariant: at most one job is in flight; `run` does not return before every worker that
//! joined has finished with the closure, and no worker can join after it closed the region,
//! which is what makes lending the closure to the workers sound.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spins before a worker goes to sleep waiting for the next job (a decode step issues jobs
/// every few microseconds, so sleeping between them would cost more than the work).
const SPIN_ITERS: u32 = 20_000;

type Job = *const (dyn Fn(usize) + Sync);

/// A wait for the workers inside a region longer than this means one was descheduled.
const STALL: std::time::Duration = std::time::Duration::from_millis(2);
/// How long regions then run on the caller alone before the workers are tried again.
const SOLO: std::time::Duration = std::time::Duration::from_millis(100);

/// [`Shared::region`] bit: the caller finished its share; no worker may join any more.
const CLOSED: u64 = 1 << 31;
/// [`Shared::region`] bits counting the workers inside the region.
const INSIDE: u64 = CLOSED - 1;

/// The [`Shared::region`] value of an open, empty region of generation `g`.
fn open_region(g: u64) -> u64 {
    (g & 0xffff_ffff) << 32
}

struct Shared {
    /// The current job; written by the caller before `generation` is bumped (Release) and read
    /// by workers after they observe the new generation (Acquire).
    job: UnsafeCell<Option<Job>>,
    generation: AtomicU64,
    /// The current region: its generation (high 32 bits, wrapping), [`CLOSED`], and the number
    /// of workers that joined it and have not finished (low 31 bits). Workers join with a CAS
    /// that fails once the region is closed or a later one began.
    region: AtomicU64,
    shutdown: AtomicBool,
    /// Workers inside the sleeping section (under `sleep_lock`, about to wait or waiting): `run`
    /// takes the lock and signals `wake` only when this is non-zero, so a busy decode step
    /// (workers spinning) costs no lock and no futex system call per parallel region.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    /// Start of the pool's clock, and until when (nanoseconds on it) regions run on the caller
    /// alone after a stall (only `run` uses them).
    epoch: std::time::Instant,
    solo_until: AtomicU64,
}

// SAFETY: `job` is only written by the thread inside `run` while no worker reads it (the
// previous region was closed with no worker inside), and read by workers only between joining
// the current region and leaving it. The closure it points to is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// The worker threads of one model instance.
pub struct ThreadPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// `run` is not reentrant; this guards against a nested call from inside a job.
    busy: AtomicBool,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads)
            .finish()
    }
}

impl ThreadPool {
    /// Start `n_threads - 1` workers (the caller of [`ThreadPool::run`] is the last thread).
    pub fn new(n_threads: usize) -> std::io::Result<ThreadPool> {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            generation: AtomicU64::new(0),
            region: AtomicU64::new(open_region(0) | CLOSED),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            epoch: std::time::Instant::now(),
            solo_until: AtomicU64::new(0),
        });
        let mut handles = Vec::with_capacity(n_threads - 1);
        for tid in 1..n_threads {
            let s = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("ember-worker-{tid}"))
                .spawn(move || worker(&s, tid));
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    let pool = ThreadPool {
                        shared,
                        handles,
                        n_threads,
                        busy: AtomicBool::new(false),
                    };
                    drop(pool);
                    return Err(e);
                }
            }
        }
        Ok(ThreadPool {
            shared,
            handles,
            n_threads,
            busy: AtomicBool::new(false),
        })
    }

    /// Number of threads, the caller included.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Call `f(0)` on the calling thread and, concurrently, `f(t)` on each worker `t` that joins
    /// before `f(0)` returns (at most once each; a worker that is late, descheduled or asleep,
    /// is not waited for). Returns when all calls have returned. `f` must hand out its work in
    /// chunks that whichever thread runs claims ([`ChunkCounter`]): `f(0)` alone must be able to
    /// do all of it. A panic in a worker's call aborts the process (it would otherwise leave the
    /// pool without a thread).
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        if self.n_threads == 1 {
            f(0);
            return;
        }
        assert!(
            !self.busy.swap(true, Ordering::Acquire),
            "ThreadPool::run is not reentrant"
        );
        if self.clock() < self.shared.solo_until.load(Ordering::Relaxed) {
            // A recent region stalled on a descheduled worker: run this one alone.
            f(0);
            self.busy.store(false, Ordering::Release);
            return;
        }
        let s = &*self.shared;
        let job: &(dyn Fn(usize) + Sync) = &f;
        // SAFETY: the lifetime is erased only to publish the pointer; `run` closes the region
        // and waits below until no worker is inside it, i.e. until no worker can touch `f` any
        // more, before `f` is dropped.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
        // SAFETY: no worker reads `job` now: the previous `run` returned only after closing its
        // region with no worker inside, and workers read it only after joining a region, which
        // opens below.
        unsafe { *s.job.get() = Some(job) };
        let gen = s.generation.load(Ordering::Relaxed).wrapping_add(1);
        // Release: a worker whose join reads this value sees the job written above.
        s.region.store(open_region(gen), Ordering::Release);
        // A worker about to sleep cannot miss the bump: it counts itself in `sleepers` and then
        // re-reads `generation`, both SeqCst, while this side bumps `generation` and then reads
        // `sleepers`, both SeqCst. In their single total order either the worker's re-read sees
        // the bump (it does not wait), or the read here sees the sleeper and takes the lock,
        // which the worker holds from its re-read until it is waiting: the signal reaches it.
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            drop(s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner()));
            s.wake.notify_all();
        }
        let t_share = self.clock();
        f(0);
        let share = self.clock() - t_share;
        // Close the region: workers that have not joined by now never will (their CAS fails).
        s.region.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        let mut wait_start = None;
        // Acquire: pairs with each worker's Release when it leaves; after this, no worker is
        // inside and none can enter.
        while s.region.load(Ordering::Acquire) & INSIDE != 0 {
            wait_start.get_or_insert_with(|| self.clock());
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Some(t0) = wait_start {
            let now = self.clock();
            let waited = now - t0;
            if waited > STALL.as_nanos() as u64 && waited > 4 * share {
                s.solo_until
                    .store(now + SOLO.as_nanos() as u64, Ordering::Relaxed);
            }
        }
        self.busy.store(false, Ordering::Release);
    }
}

impl ThreadPool {
    /// Nanoseconds since the pool started.
    fn clock(&self) -> u64 {
        self.shared.epoch.elapsed().as_nanos() as u64
    }
}

fn worker(s: &Shared, tid: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new generation: spin, then sleep.
        let mut spins = 0u32;
        let gen = loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen || s.shutdown.load(Ordering::Acquire) {
                break g;
            }
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                let guard = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                // See `run` for why counting in before the re-read makes the wake-up certain.
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let guard = if s.generation.load(Ordering::SeqCst) == seen
                    && !s.shutdown.load(Ordering::SeqCst)
                {
                    s.wake.wait(guard).unwrap_or_else(|e| e.into_inner())
                } else {
                    guard
                };
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                drop(guard);
                spins = 0;
            }
        };
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = gen;
        // Join this generation's region unless it is closed (the caller finished without us) or
        // a later region has begun (we are that late: the next loop turn sees its generation).
        let mut r = s.region.load(Ordering::Acquire);
        let joined = loop {
            if r & CLOSED != 0 || r & !(CLOSED | INSIDE) != open_region(gen) {
                break false;
            }
            match s
                .region
                .compare_exchange_weak(r, r + 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(now) => r = now,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: we joined the open region of this generation (the CAS read the Release store
        // in `run` made after `job` was written), and `run` keeps the closure alive until no
        // worker is inside, which needs our leave below.
        let job = unsafe { (*s.job.get()).expect("a job is published before its region opens") };
        // A panic here must not unwind past `pending`: the caller would wait forever.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: see above: the pointee is alive and `Sync`.
            unsafe { (*job)(tid) }
        }));
        if r.is_err() {
            eprintln!("ember: a worker thread panicked inside a parallel region; aborting");
            std::process::abort();
        }
        // Leave the region (Release: our work is visible to `run` once it sees us gone).
        s.region.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _g = self
                .shared
                .sleep_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Hands out chunk indices `0..n` to whichever thread asks first (dynamic load balancing).
pub struct ChunkCounter {
    next: AtomicUsize,
    n: usize,
}

impl ChunkCounter {
    /// A counter over `n` chunks.
    pub fn new(n: usize) -> ChunkCounter {
        ChunkCounter {
            next: AtomicUsize::new(0),
            n,
        }
    }

    /// The next unclaimed chunk, or `None` when all are taken.
    pub fn next(&self) -> Option<usize> {
        let c = self.next.fetch_add(1, Ordering::Relaxed);
        (c < self.n).then_some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every job runs on the caller, and on each worker at most once (a late worker skips it).
    #[test]
    fn every_job_runs_on_the_caller_and_each_worker_at_most_once() {
        let pool = ThreadPool::new(3).unwrap();
        for _ in 0..1000 {
            let hits: [AtomicUsize; 3] = Default::default();
            pool.run(|t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits[0].load(Ordering::Relaxed), 1);
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) <= 1));
        }
    }

    /// Jobs far apart let the workers fall asleep; each must still be woken for the next job:
    /// the caller's share waits (up to 10 s) until a worker has joined, so a missed wake-up
    /// (which `run` itself would no longer wait for) fails the test.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "sleeps and long spins; the protocol's memory safety is covered above"
    )]
    fn sleeping_workers_wake_for_every_job() {
        let pool = ThreadPool::new(3).unwrap();
        for i in 0..40 {
            if i % 4 == 0 {
                // Longer than the spin phase: the workers go to sleep.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let joined = AtomicUsize::new(0);
            pool.run(|t| {
                if t != 0 {
                    joined.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let t0 = std::time::Instant::now();
                while joined.load(Ordering::Relaxed) == 0
                    && t0.elapsed() < std::time::Duration::from_secs(10)
                {
                    std::hint::spin_loop();
                }
            });
            assert!(
                joined.load(Ordering::Relaxed) > 0,
                "job {i}: no worker woke up within 10 s"
            );
        }
    }

    /// A region that waits for a worker inside it (here: one that sleeps) longer than `STALL`
    /// and than four times the caller's share makes the following regions run on the caller
    /// alone.
    #[test]
    #[cfg_attr(miri, ignore = "sleeps")]
    fn a_stalled_region_makes_the_next_ones_run_alone() {
        let pool = ThreadPool::new(2).unwrap();
        let stalled = (0..100).any(|_| {
            let joined = AtomicBool::new(false);
            pool.run(|t| {
                if t == 1 {
                    joined.store(true, Ordering::Relaxed);
                    // Longer than STALL and than four times the caller's share (at most 10 ms).
                    std::thread::sleep(std::time::Duration::from_millis(50));
                } else {
                    // Keep the region open until the worker is in (or give up after 10 ms).
                    let t0 = std::time::Instant::now();
                    while !joined.load(Ordering::Relaxed)
                        && t0.elapsed() < std::time::Duration::from_millis(10)
                    {
                        std::hint::spin_loop();
                    }
                }
            });
            joined.load(Ordering::Relaxed)
        });
        assert!(stalled, "the worker never joined a region");
        let worker_calls = AtomicUsize::new(0);
        for _ in 0..10 {
            pool.run(|t| {
                if t != 0 {
                    worker_calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        assert_eq!(worker_calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn chunks_are_each_claimed_once() {
        let pool = ThreadPool::new(4).unwrap();
        let seen: Vec<AtomicUsize> = (0..257).map(|_| AtomicUsize::new(0)).collect();
        let c = ChunkCounter::new(seen.len());
        pool.run(|_| {
            while let Some(i) = c.next() {
                seen[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn single_thread_pool_runs_inline() {
        let pool = ThreadPool::new(1).unwrap();
        let hits = AtomicUsize::new(0);
        pool.run(|t| {
            assert_eq!(t, 0);
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 1);
    }
}
