//! Threaded matrix products over quantized weights.
//!
//! `runtime/` never names an instruction set: it calls the kernel table of each weight type
//! (`TypeTraits`) in the [`KernelSet`] the pool was built with. A product reads each weight row once per call and multiplies it with every
//! activation row of the batch, so a batch of T tokens costs one pass over the weights.

use std::sync::Mutex;

use ember_kernels::dispatch::KernelSet;
use ember_kernels::reference::attention_tiled;
use ember_kernels::tile::TileDotFn;
use ember_kernels::traits::TypeTraits;

use crate::model::weights::Mat;
use crate::threadpool::{ChunkCounter, ThreadPool};

/// A pointer that may be shared between the threads of one parallel region, each writing a
/// disjoint set of elements.
pub(crate) struct SharedOut<T = f32>(pub(crate) *mut T);
// SAFETY: only used for parallel regions in which every thread writes a disjoint set of indices
// of a buffer that outlives the region (each use states why its indices are disjoint).
unsafe impl<T> Send for SharedOut<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SharedOut<T> {}

// Manual impls: a derive would require `T: Copy`; the wrapper copies only the pointer.
impl<T> Clone for SharedOut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the field).
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }
}

/// Most products in one [`Compute::matmuls`] region.
pub const MAX_JOBS: usize = 4;

/// One product of [`Compute::matmuls`]: `out = act W^T`.
pub struct MatJob<'a> {
    /// The matrix.
    pub w: &'a Mat,
    /// Its bytes (`w.rows * w.row_bytes`).
    pub weights: &'a [u8],
    /// `[n_tok, w.rows]`.
    pub out: &'a mut [f32],
}

/// f32 elements of each thread's workspace in [`Compute::parallel_for_ws`] (what tiled attention
/// needs at the largest head size), rounded to whole cache lines.
pub const WORKSPACE: usize = attention_tiled::WORKSPACE.next_multiple_of(16);

/// The worker threads of one model instance.
pub struct Compute {
    pool: ThreadPool,
    n_threads: usize,
    kernels: KernelSet,
    /// [`WORKSPACE`] elements per thread, allocated at start-up as zero pages (touched only by
    /// the work that uses it); locked for the length of one parallel region.
    workspace: Mutex<Vec<f32>>,
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("n_threads", &self.n_threads)
            .finish()
    }
}

impl Compute {
    /// A pool of `n_threads` workers (at least 1) computing with `kernels`.
    pub fn new(n_threads: usize, kernels: KernelSet) -> Result<Compute, String> {
        let n_threads = n_threads.max(1);
        let pool = ThreadPool::new(n_threads)
            .map_err(|e| format!("cannot start {n_threads} worker threads: {e}"))?;
        let workspace = crate::zeroed::zeroed_vec(n_threads * WORKSPACE)
            .ok_or_else(|| format!("cannot allocate the workspace of {n_threads} threads"))?;
        Ok(Compute {
            pool,
            n_threads,
            kernels,
            workspace: Mutex::new(workspace),
        })
    }

    /// The kernels every product and operation of this pool uses.
    pub fn kernels(&self) -> KernelSet {
        self.kernels
    }

    /// Number of worker threads.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Call `body(i)` for every `i` in `0..n`, spread over the threads.
    pub fn parallel_for(&self, n: usize, body: impl Fn(usize) + Sync) {
        if n <= 1 || self.n_threads == 1 {
            (0..n).for_each(body);
            return;
        }
        let chunks = ChunkCounter::new(n);
        self.pool.run(|_| {
            while let Some(i) = chunks.next() {
                body(i);
            }
        });
    }

    /// [`Compute::parallel_for`] with a workspace: `body(ws, i)` gets the calling thread's
    /// [`WORKSPACE`] elements, which no other call sees while it runs (their contents are
    /// whatever the thread's previous call left).
    pub fn parallel_for_ws(&self, n: usize, body: impl Fn(&mut [f32], usize) + Sync) {
        let mut ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        let base = SharedOut(ws.as_mut_ptr());
        let run = |t: usize, i: usize| {
            // SAFETY: thread `t < n_threads` owns elements `t*WORKSPACE .. (t+1)*WORKSPACE` of
            // the workspace (`n_threads * WORKSPACE` long), which is locked for the whole region;
            // a thread runs one item at a time, so the slice is never aliased.
            let w =
                unsafe { std::slice::from_raw_parts_mut(base.ptr().add(t * WORKSPACE), WORKSPACE) };
            body(w, i)
        };
        if n <= 1 || self.n_threads == 1 {
            (0..n).for_each(|i| run(0, i));
            return;
        }
        let chunks = ChunkCounter::new(n);
        self.pool.run(|t| {
            while let Some(i) = chunks.next() {
                run(t, i);
            }
        });
    }

    /// `out[t][r] = W[r] · act[t]` for `t < n_tok`, `r < w.rows`.
    ///
    /// `weights`: the bytes of `w`; `act`: `n_tok` rows of `act_row_bytes`, already quantized to
    /// `w.act_type`; `out`: `[n_tok, w.rows]`.
    pub fn matmul(
        &self,
        w: &Mat,
        weights: &[u8],
        act: &[u8],
        act_row_bytes: usize,
        n_tok: usize,
        out: &mut [f32],
    ) {
        self.matmuls(&mut [MatJob { w, weights, out }], act, act_row_bytes, n_tok);
    }

    /// Several products of the same activations in one parallel region (Q, K and V; gate and
    /// up): `jobs[j].out[t][r] = jobs[j].w[r] · act[t]`. Every matrix must take `act`, i.e. have
    /// the same row length and activation type (asserted).
    pub fn matmuls(&self, jobs: &mut [MatJob<'_>], act: &[u8], act_row_bytes: usize, n_tok: usize) {
        let Some(first) = jobs.first() else {
            return;
        };
        let (cols, act_ty) = (first.w.cols, first.w.act_type);
        let mut n_chunks = 0;
        let mut plan = [(0usize, 0usize, SharedOut(std::ptr::null_mut())); MAX_JOBS];
        // Each job's kernels, looked up once per call (not per row).
        let mut kern: [Option<(Option<TileDotFn>, &TypeTraits)>; MAX_JOBS] = [None; MAX_JOBS];
        assert!(
            jobs.len() <= MAX_JOBS,
            "at most {MAX_JOBS} products per region"
        );
        for (j, job) in jobs.iter_mut().enumerate() {
            let w = job.w;
            assert_eq!(
                job.weights.len(),
                w.rows * w.row_bytes,
                "{}: weight bytes",
                w.name
            );
            assert!(
                w.cols == cols && w.act_type == act_ty,
                "{}: products of one region share their activations",
                w.name
            );
            assert!(act.len() >= n_tok * act_row_bytes && job.out.len() >= n_tok * w.rows);
            // Chunks of whole rows; several per thread so uneven progress balances out.
            let chunk = w.rows.div_ceil(self.n_threads * 4).max(16);
            plan[j] = (n_chunks, chunk, SharedOut(job.out.as_mut_ptr()));
            let traits = self
                .kernels
                .traits(w.ty)
                .expect("weight types are checked at load");
            kern[j] = Some((self.kernels.tile(w.ty), traits));
            n_chunks += w.rows.div_ceil(chunk);
        }
        let plan = &plan[..jobs.len()];
        let jobs = &*jobs;
        let body = |c: usize| {
            let j = plan.partition_point(|p| p.0 <= c) - 1;
            let (first_chunk, chunk, out_ptr) = plan[j];
            let (w, weights) = (jobs[j].w, jobs[j].weights);
            let rows = w.rows;
            let r0 = (c - first_chunk) * chunk;
            let r1 = (r0 + chunk).min(rows);
            let (tile, traits) = kern[j].expect("planned above");
            if let Some(tile) = tile {
                // SAFETY: the kernel writes `out[t * rows + r]` for `t < n_tok`,
                // `r0 <= r < r1`: inside job `j`'s `out` (asserted above), and rows `r0..r1`
                // of job `j` belong to chunk `c` only, so no two threads touch one element;
                // every `out` is borrowed mutably for the whole call.
                unsafe {
                    tile(
                        cols,
                        &weights[r0 * w.row_bytes..r1 * w.row_bytes],
                        w.row_bytes,
                        r1 - r0,
                        act,
                        act_row_bytes,
                        n_tok,
                        out_ptr.ptr().add(r0),
                        rows,
                    )
                };
                return;
            }
            for r in r0..r1 {
                let wrow = &weights[r * w.row_bytes..(r + 1) * w.row_bytes];
                for t in 0..n_tok {
                    let a = &act[t * act_row_bytes..(t + 1) * act_row_bytes];
                    // llama.cpp rounds some rows of a batch differently (k-quant gemm kernels).
                    let y = traits.dot_for_row(t, n_tok)(cols, wrow, a);
                    // SAFETY: as above, for the single element `t * rows + r`.
                    unsafe { *out_ptr.ptr().add(t * rows + r) = y };
                }
            }
        };
        self.parallel_for(n_chunks, body);
    }
}
