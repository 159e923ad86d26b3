//! How an engine is sized: its start-up parameters, the bounds they are checked against before
//! anything is allocated, and the resources allocated from them once (tokenizer, backend with
//! its KV arena, block pool, forward-pass scratch).

use crate::backend::{Backend, BackendKind, BackendSizes, CudaWeights};
use crate::error::{Error, Result};
use crate::kv::{BlockPool, KvGroups, KvLayout, KvType};
use crate::model::{Model, Scratch};
use crate::tokenizer::Tokenizer;

use super::KvBudget;

/// Start-up parameters of an [`Engine`](super::Engine).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Longest sequence (prompt + generated) in tokens; 0: the model's training context.
    pub n_ctx: usize,
    /// KV arena size.
    pub kv_budget: KvBudget,
    /// Token slots per KV block.
    pub block_size: usize,
    /// Most sequences running at once (1..=[`MAX_SEQS`]).
    pub max_seqs: usize,
    /// Most tokens computed per step (`max_seqs..=`[`MAX_BATCH_TOKENS`]; lowered to
    /// `n_ctx × max_seqs` when above it).
    pub max_batch_tokens: usize,
    /// Most requests held at once (waiting, running, or finished but not yet released;
    /// 1..=[`MAX_REQUESTS`]).
    pub max_requests: usize,
    /// Worker threads (0: physical cores).
    pub threads: usize,
    /// Reuse cached KV blocks of identical prompt prefixes.
    pub prefix_caching: bool,
    /// Where the CUDA backend keeps the weights (ignored by the CPU backend).
    pub cuda_weights: CudaWeights,
    /// How the KV arena stores keys and values: f16 (default), or Q8_0 / Q4_0 rows, which hold
    /// 1.9× / 3.6× the tokens in the same budget (head sizes must be multiples of 32).
    pub kv_type: KvType,
    /// Keep every block of sliding-window layers (llama.cpp's `--swa-full`). Off (the
    /// default), a model with sliding-window layers (Gemma 3) and a context longer than the
    /// window keeps those layers in blocks of their own and returns the blocks that fall out of
    /// the window to the pool ([`KvGroups`]).
    pub swa_full: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            n_ctx: 4096,
            kv_budget: KvBudget::Bytes(256 << 20),
            block_size: 16,
            max_seqs: 32,
            max_batch_tokens: 512,
            max_requests: 256,
            threads: 0,
            prefix_caching: true,
            cuda_weights: CudaWeights::Upload,
            kv_type: KvType::F16,
            swa_full: false,
        }
    }
}

pub(super) fn invalid(name: &'static str, what: impl Into<String>) -> Error {
    Error::InvalidParam {
        name,
        what: what.into(),
    }
}

/// Most requests an engine holds at once (`EngineConfig::max_requests`). Request and sequence
/// slots are `u32` and every held request costs a slab entry whether used or not; a million
/// requests in flight is far beyond what one edge device serves, and the bound keeps every
/// slab size (at most `2 × MAX_REQUESTS` sequence slots) far from overflowing anything.
pub const MAX_REQUESTS: usize = 1 << 20;

/// Most sequences running at once (`EngineConfig::max_seqs`). Each one takes a row of
/// `n_vocab` logits in the forward pass's scratch (a 49k-token vocabulary: 192 KiB a row) and
/// at least one KV block; 65 536 of them is past any arena an edge device holds.
pub const MAX_SEQS: usize = 1 << 16;

/// Most tokens per step (`EngineConfig::max_batch_tokens`): the forward pass's scratch holds
/// every activation of that many tokens, about 30 KiB a token for the smallest supported model,
/// so 2^20 tokens already ask for 32 GiB. A budget above `n_ctx × max_seqs` is lowered to it
/// (a step never has more tokens to compute than its running sequences hold).
pub const MAX_BATCH_TOKENS: usize = 1 << 20;

/// Checks the sizes of `cfg` before anything is allocated from them. Every bound is stated in
/// the message.
pub(super) fn check_limits(cfg: &EngineConfig) -> Result<()> {
    if cfg.max_seqs == 0 || cfg.max_seqs > MAX_SEQS {
        return Err(invalid(
            "max_seqs",
            format!("{} (must be 1..={MAX_SEQS})", cfg.max_seqs),
        ));
    }
    if cfg.max_requests == 0 || cfg.max_requests > MAX_REQUESTS {
        return Err(invalid(
            "max_requests",
            format!("{} (must be 1..={MAX_REQUESTS})", cfg.max_requests),
        ));
    }
    if cfg.max_batch_tokens < cfg.max_seqs {
        return Err(invalid(
            "max_batch_tokens",
            format!(
                "{} is below max_seqs ({}): every running sequence needs a token per step",
                cfg.max_batch_tokens, cfg.max_seqs
            ),
        ));
    }
    if cfg.max_batch_tokens > MAX_BATCH_TOKENS {
        return Err(invalid(
            "max_batch_tokens",
            format!(
                "{} (must be max_seqs..={MAX_BATCH_TOKENS}: the forward pass's scratch is sized \
                 for this many tokens)",
                cfg.max_batch_tokens
            ),
        ));
    }
    Ok(())
}

pub(super) fn alloc_failed(name: &'static str, n: usize) -> Error {
    invalid(
        name,
        format!("cannot allocate {n} entries: lower {name} or free memory"),
    )
}

/// An empty `Vec` with room for exactly `n` elements, allocated fallibly: sizes come from the
/// caller's configuration, and a size the machine cannot hold is an error, not an abort.
pub(super) fn slab<T>(n: usize, name: &'static str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| alloc_failed(name, n))?;
    Ok(v)
}

pub(super) fn reserve_failed(max_tokens: usize) -> Error {
    invalid(
        "max_tokens",
        format!("cannot allocate the output of {max_tokens} tokens: ask for fewer"),
    )
}

/// An empty `Vec` with room for `n` elements of a sequence (`n` bounded by the context).
pub(super) fn reserved<T>(n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| reserve_failed(n))?;
    Ok(v)
}

/// `n` as a `u32` slot count (bounded by [`MAX_REQUESTS`] before this is called).
pub(super) fn slot_u32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| invalid("max_requests", format!("{n} slots exceed u32")))
}

/// Number of physical cores (falls back to the logical count).
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    // /proc/cpuinfo lists "core id" per logical CPU; count distinct (physical id, core id).
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let mut phys = "";
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("physical id") {
            phys = v.trim_start_matches([' ', '\t', ':']);
        } else if let Some(v) = line.strip_prefix("core id") {
            cores.insert((
                phys.to_string(),
                v.trim_start_matches([' ', '\t', ':']).to_string(),
            ));
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// The worker threads a request for `requested` gets: 0 means the physical cores; more threads
/// than the machine runs at once (`available_parallelism`) are capped to it, because spinning
/// workers that outnumber the cores make every parallel region wait for a descheduled thread
/// (measured: `--threads 1000` on 2 cores gave no token in 60 s).
pub fn effective_threads(requested: usize) -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    if requested == 0 {
        physical_cores()
    } else {
        requested.min(available)
    }
}

/// What running a model needs besides the model, allocated once at start-up: the tokenizer,
/// the backend (worker threads or a GPU) with its KV arena, the block pool, and the forward
/// pass's scratch (on the host: it receives the logits whichever backend computes them).
pub(crate) struct Resources {
    pub tokenizer: Tokenizer,
    pub backend: Backend,
    pub pool: BlockPool,
    pub scratch: Scratch,
}

impl Resources {
    /// `max_seqs` sizes a [`KvBudget::FullContext`] arena (one full context per sequence).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &Model,
        kv_budget: KvBudget,
        block_size: usize,
        kv_type: KvType,
        swa_full: bool,
        n_ctx: usize,
        max_seqs: usize,
        max_batch_tokens: usize,
        max_logits: usize,
        threads: usize,
        backend: BackendKind,
        cuda_weights: CudaWeights,
    ) -> Result<Resources> {
        let c = &model.config;
        if block_size == 0 || block_size > 4096 {
            return Err(Error::InvalidParam {
                name: "block_size",
                what: format!("{block_size} (must be 1..=4096)"),
            });
        }
        if kv_type.row_bytes(c.head_dim).is_none() {
            return Err(Error::InvalidParam {
                name: "kv_type",
                what: format!(
                    "{kv_type} keys and values need a head size that is a multiple of {}; this \
                     model's is {} (use f16)",
                    kv_type.block_elems(),
                    c.head_dim
                ),
            });
        }
        let windows: Vec<usize> = c
            .swa_layers
            .iter()
            .map(|&s| if s { c.sliding_window } else { 0 })
            .collect();
        let groups = if swa_full {
            KvGroups::unsplit(&windows)
        } else {
            KvGroups::new(&windows, n_ctx)
        };
        let releases = groups.releases();
        let layout = KvLayout {
            block_layers: groups.size(),
            n_kv_head: c.n_head_kv,
            head_dim: c.head_dim,
            block_size,
            kv_type,
        };
        // One extra block: block 0 is the pool's null block, never handed out. Checked: a
        // count near `usize::MAX` must be reported as too large, not wrap to "no block".
        let overflow = |what: String| Error::InvalidParam {
            name: "kv_blocks",
            what: format!("{what} overflow the address space: give a smaller KV budget"),
        };
        let n_blocks = match kv_budget {
            KvBudget::Blocks(n) => n
                .checked_add(1)
                .ok_or_else(|| overflow(format!("{n} blocks")))?,
            KvBudget::Bytes(b) => 1 + layout.blocks_for_bytes(b).saturating_sub(1),
            KvBudget::FullContext => (0..groups.len())
                .map(|g| groups.max_blocks(g, n_ctx, max_batch_tokens, block_size))
                .sum::<usize>()
                .checked_mul(max_seqs)
                .and_then(|n| n.checked_add(1))
                .ok_or_else(|| {
                    overflow(format!(
                        "{max_seqs} full contexts of {n_ctx} tokens (one per sequence)"
                    ))
                })?,
        };
        // Block ids are `u32` (the pool asserts it): refuse more before allocating the arena.
        if n_blocks > u32::MAX as usize {
            return Err(Error::InvalidParam {
                name: "kv_blocks",
                what: format!(
                    "{} blocks (at most {}: block ids are 32-bit): give a smaller KV budget",
                    n_blocks - 1,
                    u32::MAX - 1
                ),
            });
        }
        if n_blocks < 2 {
            return Err(Error::InvalidParam {
                name: "kv_budget",
                what: "the KV budget does not hold a single block".into(),
            });
        }
        layout
            .block_bytes()
            .checked_mul(n_blocks)
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| {
                overflow(format!(
                    "{} blocks of {} bytes",
                    n_blocks - 1,
                    layout.block_bytes()
                ))
            })?;
        // A bad EMBER_CPU request is reported at start-up, never a silent fallback.
        let kernels =
            ember_kernels::dispatch::KernelSet::detect().map_err(|what| Error::InvalidParam {
                name: "EMBER_CPU",
                what,
            })?;
        let tokenizer = crate::gguf::tokenizer_from_gguf(&model.file)?;
        let threads = effective_threads(threads);
        // The arena first: it is the large allocation a budget can make fail, and it fails
        // cleanly before the scratch (RoPE tables of the whole context) is computed.
        let backend = Backend::new(
            backend,
            model,
            BackendSizes {
                layout,
                n_blocks,
                max_tokens: max_batch_tokens,
                max_logits,
                n_ctx,
                threads,
                cuda_weights,
                kernels,
            },
            groups,
        )?;
        // RoPE tables only for positions a sequence can reach: its blocks come from the arena
        // (all of its positions, unless sliding-window groups give blocks back as it goes).
        let reachable = match releases {
            true => n_ctx,
            false => (n_blocks - 1).saturating_mul(block_size),
        };
        let mut scratch = Scratch::new(model, max_batch_tokens, max_logits, n_ctx.min(reachable))?;
        if backend.selects_top() {
            scratch.reserve_device_top()?;
        }
        Ok(Resources {
            tokenizer,
            backend,
            pool: BlockPool::new(n_blocks),
            scratch,
        })
    }
}
