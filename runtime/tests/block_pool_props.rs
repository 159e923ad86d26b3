//! Property tests of the KV block pool against a model of sequences sharing blocks.
//!
//! Random programs of engine-like operations (admit a sequence, taking its cached prefix and
//! allocating the rest; grow one, copying a shared partial block first; fork one for n > 1
//! sampling; free one; drain the pool; reset the prefix cache) run on a small pool. After every
//! operation the pool's invariants hold, each block's ref count equals the number of live
//! sequences holding it, and no block is both free and owned; freeing every sequence at the end
//! returns every usable block (no leak).
//!
//! A second test counts heap allocations made by the pool's methods under churn: there must be
//! none (the engine's step allocates nothing).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ember::kv::{hash_block, BlockHash, BlockId, BlockPool};
use proptest::prelude::*;
use proptest::sample::Index;

/// Token slots per block: small, so sequences span several blocks and prefixes repeat.
const BS: usize = 2;

/// A live sequence: its tokens and the blocks holding them, in logical order.
#[derive(Clone, Debug)]
struct Seq {
    tokens: Vec<u32>,
    blocks: Vec<BlockId>,
    /// Chained hashes of its full blocks, computed so far (`hashes[i]` is block `i`'s).
    hashes: Vec<BlockHash>,
}

#[derive(Clone, Debug)]
enum Op {
    /// Admit a sequence with these tokens: take its cached prefix, allocate the rest.
    Admit(Vec<u32>),
    /// Append tokens to a sequence (copy-on-write if it writes into a shared block).
    Grow(Index, Vec<u32>),
    /// Share every block of a sequence with a new one (n > 1 sampling).
    Fork(Index),
    /// Release a sequence's blocks, last block first or first block first.
    Release(Index, bool),
    /// Allocate until the pool is exhausted, then give everything back.
    Drain,
    /// Drop every free block's hash.
    ResetCache,
}

fn tokens(max_len: usize) -> impl Strategy<Value = Vec<u32>> {
    // A 2-letter alphabet: many sequences share prefixes.
    prop::collection::vec(0u32..2, 0..=max_len)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => tokens(9).prop_map(Op::Admit),
        3 => (any::<Index>(), tokens(4)).prop_map(|(i, t)| Op::Grow(i, t)),
        2 => any::<Index>().prop_map(Op::Fork),
        3 => (any::<Index>(), any::<bool>()).prop_map(|(i, r)| Op::Release(i, r)),
        1 => Just(Op::Drain),
        1 => Just(Op::ResetCache),
    ]
}

/// Enter a sequence's newly full blocks in the prefix cache, as the engine does after computing.
fn cache_full_blocks(pool: &mut BlockPool, s: &mut Seq) {
    while s.hashes.len() < s.tokens.len() / BS {
        let i = s.hashes.len();
        let h = hash_block(s.hashes.last().copied(), &s.tokens[i * BS..(i + 1) * BS]);
        let b = s.blocks[i];
        if pool.set_hash(b, h) {
            assert_eq!(pool.hash_of(b), Some(h));
        } else {
            // The same prefix is cached in another block, which keeps the hash.
            assert!(pool.lookup(h).is_some_and(|c| c != b));
            assert_eq!(pool.hash_of(b), None);
        }
        s.hashes.push(h);
    }
}

fn admit(pool: &mut BlockPool, seqs: &mut Vec<Seq>, tokens: Vec<u32>) {
    let mut s = Seq {
        tokens,
        blocks: Vec::new(),
        hashes: Vec::new(),
    };
    // Longest cached prefix of whole blocks.
    while s.hashes.len() < s.tokens.len() / BS {
        let i = s.hashes.len();
        let h = hash_block(s.hashes.last().copied(), &s.tokens[i * BS..(i + 1) * BS]);
        let Some(b) = pool.lookup(h) else { break };
        assert_eq!(pool.hash_of(b), Some(h));
        let (free, cached, rc) = (pool.num_free(), pool.num_cached(), pool.ref_count(b));
        pool.retain(b);
        assert_eq!(pool.ref_count(b), rc + 1);
        if rc == 0 {
            // A hit on a free block pulls it off the free list.
            assert_eq!((pool.num_free(), pool.num_cached()), (free - 1, cached - 1));
        }
        s.blocks.push(b);
        s.hashes.push(h);
    }
    let need = s.tokens.len().div_ceil(BS) - s.blocks.len();
    if need > pool.num_free() {
        // Not admitted: give the prefix back.
        for b in s.blocks.drain(..).rev() {
            pool.free(b);
        }
        return;
    }
    for _ in 0..need {
        s.blocks.push(pool.allocate().expect("free count checked"));
    }
    cache_full_blocks(pool, &mut s);
    seqs.push(s);
}

fn grow(pool: &mut BlockPool, s: &mut Seq, more: &[u32]) {
    let len = s.tokens.len();
    let written = len / BS;
    let cow = !len.is_multiple_of(BS) && pool.ref_count(s.blocks[written]) > 1;
    let need = (len + more.len()).div_ceil(BS) - s.blocks.len() + usize::from(cow);
    if need > pool.num_free() {
        return;
    }
    if cow {
        let old = s.blocks[written];
        let new = pool.allocate().expect("free count checked");
        s.blocks[written] = new;
        pool.free(old);
    }
    if let Some(&b) = s.blocks.get(written) {
        if !more.is_empty() {
            // Only full blocks are ever hashed, and nobody else writes into this one.
            assert_eq!((pool.hash_of(b), pool.ref_count(b)), (None, 1));
        }
    }
    while s.blocks.len() < (len + more.len()).div_ceil(BS) {
        s.blocks.push(pool.allocate().expect("free count checked"));
    }
    s.tokens.extend_from_slice(more);
    cache_full_blocks(pool, s);
}

fn release(pool: &mut BlockPool, s: Seq, reverse: bool) {
    let before = pool.num_free();
    let mut freed = 0;
    let mut give = |b: BlockId| {
        let rc = pool.ref_count(b);
        pool.free(b);
        freed += usize::from(rc == 1);
    };
    if reverse {
        s.blocks.iter().rev().copied().for_each(&mut give);
    } else {
        s.blocks.iter().copied().for_each(&mut give);
    }
    assert_eq!(pool.num_free(), before + freed);
}

fn drain(pool: &mut BlockPool) {
    let free = pool.num_free();
    let got: Vec<BlockId> = std::iter::from_fn(|| pool.allocate()).collect();
    assert_eq!(got.len(), free);
    assert_eq!((pool.num_free(), pool.num_cached()), (0, 0));
    assert!(got
        .iter()
        .all(|&b| b != BlockId::NULL && pool.ref_count(b) == 1));
    assert!(got.iter().all(|&b| pool.hash_of(b).is_none()));
    // A failed allocation changes nothing.
    assert_eq!(pool.allocate(), None);
    pool.check_invariants().unwrap();
    for b in got {
        pool.free(b);
    }
}

/// The pool agrees with the model: invariants, ref counts, ownership, counters.
fn check(pool: &BlockPool, seqs: &[Seq]) {
    pool.check_invariants().unwrap();
    let n = pool.num_blocks() + 1;
    let mut holders = vec![0u32; n];
    for s in seqs {
        assert_eq!(s.blocks.len(), s.tokens.len().div_ceil(BS));
        for &b in &s.blocks {
            assert_ne!(b, BlockId::NULL);
            holders[b.index()] += 1;
        }
        for (i, &h) in s.hashes.iter().enumerate() {
            // A full block carries the hash of its prefix, or none when a twin holding the same
            // prefix was cached first (the twin may since have been evicted).
            if let Some(got) = pool.hash_of(s.blocks[i]) {
                assert_eq!(got, h, "hash of block {i} of {s:?}");
                assert_eq!(pool.lookup(h), Some(s.blocks[i]));
            }
        }
    }
    for (i, &want) in holders.iter().enumerate().skip(1) {
        let b = BlockId(i as u32);
        // Ref count 0 iff free (check_invariants ties that to the free list).
        assert_eq!(pool.ref_count(b), want, "ref count of {b:?}");
    }
    assert_eq!(pool.ref_count(BlockId::NULL), 0);
    let used = holders.iter().filter(|&&h| h > 0).count();
    assert_eq!(pool.num_used(), used);
    assert_eq!(pool.num_free() + pool.num_used(), pool.num_blocks());
    assert!(pool.num_cached() <= pool.num_free());
}

proptest! {
    // Under Miri (scripts/ci/miri.sh) each case is interpreted: fewer cases, no persistence file.
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence },
        ..ProptestConfig::default()
    })]

    #[test]
    fn pool_matches_sequence_model(
        n_blocks in 1usize..32,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut pool = BlockPool::new(n_blocks);
        prop_assert_eq!(pool.num_blocks(), n_blocks.saturating_sub(1));
        let mut seqs: Vec<Seq> = Vec::new();
        check(&pool, &seqs);
        for op in ops {
            match op {
                Op::Admit(t) => admit(&mut pool, &mut seqs, t),
                Op::Grow(i, t) if !seqs.is_empty() => {
                    let k = i.index(seqs.len());
                    grow(&mut pool, &mut seqs[k], &t);
                }
                Op::Fork(i) if !seqs.is_empty() => {
                    let s = seqs[i.index(seqs.len())].clone();
                    for &b in &s.blocks {
                        pool.retain(b);
                    }
                    seqs.push(s);
                }
                Op::Release(i, rev) if !seqs.is_empty() => {
                    let s = seqs.swap_remove(i.index(seqs.len()));
                    release(&mut pool, s, rev);
                }
                Op::Drain => drain(&mut pool),
                Op::ResetCache => {
                    let cached = pool.num_cached();
                    prop_assert_eq!(pool.reset_prefix_cache(), cached);
                    prop_assert_eq!(pool.num_cached(), 0);
                }
                Op::Grow(..) | Op::Fork(_) | Op::Release(..) => {}
            }
            check(&pool, &seqs);
        }
        for s in seqs.drain(..) {
            release(&mut pool, s, false);
        }
        check(&pool, &seqs);
        prop_assert_eq!(pool.num_free(), pool.num_blocks());
        prop_assert_eq!(pool.num_used(), 0);
    }
}

// --- No allocation after construction ---------------------------------------------------------

struct Counting;

thread_local! {
    /// Heap allocations made by this thread while `COUNTING` is set. Per thread, so the proptest
    /// running beside this test does not disturb the count.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts. The thread-locals
// are const-initialized without destructors, so touching them never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn count() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn pool_methods_never_allocate() {
    const N: usize = 64;
    let mut pool = BlockPool::new(N);
    // The test's own storage, taken up front: held references (a block may be held many times).
    let mut held: Vec<BlockId> = Vec::with_capacity(4 * N);
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    COUNTING.with(|c| c.set(true));
    let steps = if cfg!(miri) { 2_000 } else { 200_000u32 };
    for step in 0..steps {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let pick = (rng >> 32) as usize;
        match rng % 8 {
            0 | 1 => {
                if let Some(b) = pool.allocate() {
                    held.push(b);
                }
            }
            2 | 3 if !held.is_empty() => {
                let b = held.swap_remove(pick % held.len());
                pool.free(b);
            }
            4 if !held.is_empty() => {
                // Few distinct prefixes: hits, duplicates and evictions all happen.
                let tokens = [(pick % 97) as u32, 7, 1, 2];
                let h = hash_block(None, &tokens);
                let b = held[pick % held.len()];
                if pool.hash_of(b).is_none() {
                    let _ = pool.set_hash(b, h);
                }
            }
            5 | 6 if held.len() < held.capacity() => {
                let h = hash_block(None, &[(pick % 97) as u32, 7, 1, 2]);
                if let Some(b) = pool.lookup(h) {
                    pool.retain(b);
                    held.push(b);
                }
            }
            7 if step % 1024 == 7 => {
                pool.reset_prefix_cache();
            }
            _ => {
                let _ = (pool.num_free(), pool.num_used(), pool.num_cached());
            }
        }
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.with(Cell::get);
    pool.check_invariants().unwrap();
    assert_eq!(
        allocs, 0,
        "the block pool allocated {allocs} times after construction"
    );
}
