//! The KV block pool: reference counts, an LRU free list and the prefix cache (PagedAttention
//! with automatic prefix caching, after vLLM v1's block pool).
//!
//! Every block of the arena has one `BlockMeta` in a flat array indexed by [`BlockId`]: its
//! reference count, the hash of its contents when it is a full, cached block, and the links of an
//! intrusive doubly linked free list. Freeing the last reference appends the block at the tail of
//! the free list (most recently used) *keeping its hash*: its keys and values stay valid, so a
//! later request with the same prefix can take it back ([`BlockPool::lookup`] then
//! [`BlockPool::retain`]). [`BlockPool::allocate`] pops the head (least recently used) and evicts
//! its hash first. Every operation is O(1) except [`BlockPool::reset_prefix_cache`] (O(free)).
//!
//! # The null block
//!
//! Block 0 is the null block, as in vLLM: it is never handed out, never freed and never hashed.
//! Its list links serve as the free list's sentinel (`meta[0].next` is the head, `meta[0].prev`
//! the tail; `0` means "none"), so a pool over an arena of `n` blocks hands out `n - 1` of them
//! and [`BlockPool::num_blocks`] reports that usable count. Size the arena one block larger than
//! the blocks sequences need.
//!
//! # Invariants (checked by [`BlockPool::check_invariants`])
//!
//! - Every non-null block is either on the free list with ref count 0, or off it with ref
//!   count ≥ 1; the list links agree forwards and backwards and hold no block twice; the list is
//!   `num_free()` long.
//! - A block carries a hash iff the hash index maps that hash to it. A hash names at most one
//!   block; a block's hash never changes while it is referenced (it is dropped only on eviction or
//!   [`BlockPool::reset_prefix_cache`], both of which only touch free blocks).
//! - The null block has ref count 0, no hash, and is never on the free list.
//!
//! Breaking one of these is an engine bug, not bad input: double frees, retaining a free block
//! that holds no cached prefix, hashing a free block, touching the null block or an id out of
//! range all panic with a message naming the block.
//!
//! # Memory
//!
//! [`BlockPool::new`] allocates everything: the metadata array and a fixed open-addressing hash
//! index of at least `2 × n_blocks` slots. No other method allocates (the engine counts heap
//! allocations per step and expects zero; `runtime/tests/block_pool_props.rs` proves it with a counting
//! allocator). The index is our own rather than `std::collections::HashMap` because the standard
//! map gives no such guarantee: under insert/remove churn its tombstones use up the spare
//! capacity, and it then rehashes in place only while the item count is at most half its
//! capacity, growing (allocating) otherwise, an implementation detail of hashbrown that
//! `with_capacity(n_blocks)` does not cover. Linear probing with backward-shift deletion leaves no
//! tombstones, and a load factor of at most ½ keeps probes short.

use std::fmt;

/// Hash of a full block's token ids, chained through the hashes of the blocks before it, so equal
/// hashes mean equal prefixes (see [`hash_block`]).
pub type BlockHash = u64;

/// Index of a block in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

impl BlockId {
    /// The null block: never handed out by the pool (see the module docs).
    pub const NULL: BlockId = BlockId(0);

    /// The index as `usize`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Hash of one full block: its token ids chained onto the hash of the block before it (`None`
/// for the first block of a sequence). Equal hashes therefore stand for equal whole prefixes.
///
/// Deterministic across runs, builds and platforms (it mixes integer values, never bytes in
/// memory order, and has no random seed). Each token is folded in with the SplitMix64 finalizer, a
/// bijective 64-bit mixer with full avalanche, and the length closes the hash. For
/// non-adversarial inputs two different prefixes collide with probability about 2⁻⁶⁴: with a
/// million cached blocks and a million lookups, the chance that any lookup ever returns the wrong
/// block is below 10⁻⁷. It is not a cryptographic hash: a multi-tenant server sharing one cache
/// between untrusted users would want a keyed or cryptographic hash instead (vLLM offers SHA-256
/// for that reason); like vLLM, we store only the hash, not the tokens.
pub fn hash_block(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    const ROOT: u64 = 0x6a09_e667_f3bc_c908; // first block of a sequence: no parent
    const PARENT_KEY: u64 = 0xbb67_ae85_84ca_a73b;
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = match parent {
        None => ROOT,
        Some(p) => mix64(p ^ PARENT_KEY),
    };
    for &t in tokens {
        h = mix64((h ^ u64::from(t)).wrapping_add(GAMMA));
    }
    mix64(h ^ (tokens.len() as u64).wrapping_mul(GAMMA))
}

/// SplitMix64's finalizer (Steele, Lea and Flood 2014; Stafford's "mix13" constants).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `0` as a list link: no block (the null block is the sentinel).
const NIL: u32 = 0;

/// What the pool knows about one block.
#[derive(Clone, Copy, Debug, Default)]
struct BlockMeta {
    /// Holders of the block (block tables); 0 iff the block is on the free list.
    ref_count: u32,
    /// Previous block on the free list (`NIL`: the sentinel). Meaningless off the list.
    prev: u32,
    /// Next block on the free list (`NIL`: the sentinel). Meaningless off the list.
    next: u32,
    /// The block's prefix hash while it is in the prefix cache.
    hash: Option<BlockHash>,
    /// How many times the block has been handed out by [`BlockPool::allocate`] (wrapping): its
    /// contents can change only under a new epoch, so a caller that noted the epoch with the
    /// contents knows they are still there while it is unchanged.
    epoch: u32,
}

/// The arena's blocks: reference counts, an LRU free list and the prefix cache.
/// See the module docs for the invariants.
pub struct BlockPool {
    /// `[n_blocks.max(1)]`; entry 0 is the null block, whose links are the list's sentinel.
    meta: Vec<BlockMeta>,
    /// Cached hash → block.
    index: HashIndex,
    /// Blocks on the free list.
    num_free: usize,
    /// Blocks on the free list that still carry a hash.
    num_cached: usize,
}

impl fmt::Debug for BlockPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockPool")
            .field("num_blocks", &self.num_blocks())
            .field("num_free", &self.num_free)
            .field("num_cached", &self.num_cached)
            .finish_non_exhaustive()
    }
}

impl BlockPool {
    /// A pool over an arena of `n_blocks` blocks, all free. Block 0 is the null block, so
    /// `n_blocks - 1` are usable (none when `n_blocks` ≤ 1). The free list starts in id order,
    /// so blocks 1, 2, 3, ... are handed out first. This is the only method that allocates.
    ///
    /// Panics if `n_blocks` does not fit in `u32`.
    pub fn new(n_blocks: usize) -> BlockPool {
        assert!(
            n_blocks <= u32::MAX as usize,
            "{n_blocks} KV blocks: block ids are u32"
        );
        let len = n_blocks.max(1);
        let mut meta = vec![BlockMeta::default(); len];
        // Chain 0 → 1 → ... → len-1 → 0 (a ring through the sentinel).
        for (i, m) in meta.iter_mut().enumerate() {
            m.prev = ((i + len - 1) % len) as u32;
            m.next = ((i + 1) % len) as u32;
        }
        BlockPool {
            meta,
            index: HashIndex::new(len),
            num_free: len - 1,
            num_cached: 0,
        }
    }

    /// Usable blocks: the arena's blocks minus the null block.
    pub fn num_blocks(&self) -> usize {
        self.meta.len() - 1
    }

    /// Blocks [`allocate`](Self::allocate) can hand out now: free blocks, cached ones included.
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Blocks in use (ref count ≥ 1).
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free
    }

    /// Free blocks that still hold a cached prefix (reusable until evicted).
    pub fn num_cached(&self) -> usize {
        self.num_cached
    }

    /// Take the least recently used free block, evicting its cached hash if it has one. The
    /// block comes back with ref count 1 and no hash. `None` when no block is free; nothing
    /// changes then.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let b = self.meta[0].next;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        let m = &mut self.meta[b as usize];
        if let Some(h) = m.hash.take() {
            let evicted = self.index.remove(h);
            debug_assert_eq!(evicted, Some(b));
            self.num_cached -= 1;
        }
        m.ref_count = 1;
        m.epoch = m.epoch.wrapping_add(1);
        self.num_free -= 1;
        Some(BlockId(b))
    }

    /// Add a reference to `b`. A free block may be retained only while it holds a cached prefix
    /// (a prefix-cache hit found by [`lookup`](Self::lookup)): it leaves the free list.
    ///
    /// Panics if `b` is a free block with no hash (its contents may already be overwritten), the
    /// null block, or out of range.
    pub fn retain(&mut self, b: BlockId) {
        let i = self.check_id(b, "retain");
        let m = self.meta[i];
        if m.ref_count == 0 {
            assert!(
                m.hash.is_some(),
                "retain of free block {b:?}, which holds no cached prefix"
            );
            self.unlink(b.0);
            self.num_free -= 1;
            self.num_cached -= 1;
        }
        self.meta[i].ref_count = m
            .ref_count
            .checked_add(1)
            .expect("block ref count overflows u32");
    }

    /// Drop a reference to `b`. When the last one goes, the block joins the tail of the free list
    /// (most recently used), keeping its hash: it stays in the prefix cache until evicted.
    ///
    /// Panics if `b` is already free (double free), the null block, or out of range.
    pub fn free(&mut self, b: BlockId) {
        let i = self.check_id(b, "free");
        let m = &mut self.meta[i];
        assert!(m.ref_count > 0, "double free of block {b:?}");
        m.ref_count -= 1;
        if m.ref_count == 0 {
            let cached = m.hash.is_some();
            self.push_back(b.0);
            self.num_free += 1;
            self.num_cached += usize::from(cached);
        }
    }

    /// Enter the full block `b`, whose contents hash to `h` (see [`hash_block`]), in the prefix
    /// cache. Returns whether `b` now carries `h`: `false`, changing nothing, when `h` already
    /// names another block (the same prefix computed twice; the earlier block stays the cached
    /// one and `b` will be recycled when freed). Setting the hash a block already carries is a
    /// no-op that returns `true`.
    ///
    /// Panics if `b` is free, already carries a different hash (a block's hash is write-once),
    /// is the null block, or is out of range.
    pub fn set_hash(&mut self, b: BlockId, h: BlockHash) -> bool {
        let i = self.check_id(b, "set_hash");
        let m = self.meta[i];
        assert!(m.ref_count > 0, "set_hash on free block {b:?}");
        if let Some(old) = m.hash {
            assert_eq!(
                old, h,
                "set_hash({b:?}, {h:#018x}): the block is cached as {old:#018x} and a block's hash \
                 never changes"
            );
            return true;
        }
        if self.index.get(h).is_some() {
            return false;
        }
        self.index.insert(h, b.0);
        self.meta[i].hash = Some(h);
        true
    }

    /// The cached block holding the prefix with hash `h`, whether in use or free. Take it with
    /// [`retain`](Self::retain).
    pub fn lookup(&self, h: BlockHash) -> Option<BlockId> {
        self.index.get(h).map(BlockId)
    }

    /// References held on `b` (0 for a free block and for the null block). Panics if `b` is out of
    /// range.
    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.meta_of(b).ref_count
    }

    /// The number of times `b` has been allocated (wrapping; see `BlockMeta::epoch`): while it
    /// is unchanged, the block holds what it held when the epoch was read. Panics if `b` is out
    /// of range.
    pub fn epoch(&self, b: BlockId) -> u32 {
        self.meta_of(b).epoch
    }

    /// The prefix hash `b` carries, if it is cached. Panics if `b` is out of range.
    pub fn hash_of(&self, b: BlockId) -> Option<BlockHash> {
        self.meta_of(b).hash
    }

    /// Drop the hashes of all free blocks (blocks in use keep theirs). Returns how many were
    /// dropped; afterwards [`num_cached`](Self::num_cached) is 0.
    pub fn reset_prefix_cache(&mut self) -> usize {
        let mut dropped = 0;
        let mut b = self.meta[0].next;
        while b != NIL {
            let m = &mut self.meta[b as usize];
            if let Some(h) = m.hash.take() {
                let removed = self.index.remove(h);
                debug_assert_eq!(removed, Some(b));
                dropped += 1;
            }
            b = m.next;
        }
        debug_assert_eq!(dropped, self.num_cached);
        self.num_cached = 0;
        dropped
    }

    /// Check every invariant of the module docs, walking the whole pool; `Err` names the first
    /// one broken. For tests: it is O(blocks) and allocates.
    pub fn check_invariants(&self) -> Result<(), String> {
        let len = self.meta.len();
        let null = &self.meta[0];
        if null.ref_count != 0 || null.hash.is_some() {
            return Err(format!(
                "null block has ref count {} and hash {:?}",
                null.ref_count, null.hash
            ));
        }
        // Walk the free list forwards, checking back links.
        let mut on_list = vec![false; len];
        let (mut prev, mut b, mut n) = (NIL, null.next, 0usize);
        while b != NIL {
            let i = b as usize;
            if i >= len {
                return Err(format!("free list links to block {b}, out of range"));
            }
            if on_list[i] {
                return Err(format!("block {b} is on the free list twice"));
            }
            on_list[i] = true;
            if self.meta[i].prev != prev {
                return Err(format!(
                    "block {b}: prev link {} but reached from {prev}",
                    self.meta[i].prev
                ));
            }
            (prev, b, n) = (b, self.meta[i].next, n + 1);
        }
        if null.prev != prev {
            return Err(format!(
                "list tail is {} but the walk ended at {prev}",
                null.prev
            ));
        }
        if n != self.num_free {
            return Err(format!(
                "free list holds {n} blocks, num_free() = {}",
                self.num_free
            ));
        }
        let (mut hashed, mut cached) = (0, 0);
        for (i, m) in self.meta.iter().enumerate().skip(1) {
            if on_list[i] != (m.ref_count == 0) {
                return Err(format!(
                    "block {i}: ref count {} but {} the free list",
                    m.ref_count,
                    if on_list[i] { "on" } else { "off" }
                ));
            }
            if let Some(h) = m.hash {
                if self.index.get(h) != Some(i as u32) {
                    return Err(format!(
                        "block {i} carries hash {h:#018x} but the index maps it to {:?}",
                        self.index.get(h)
                    ));
                }
                hashed += 1;
                cached += usize::from(on_list[i]);
            }
        }
        // Each hashed block found its own entry, so equal counts mean no stray entries.
        if hashed != self.index.len() {
            return Err(format!(
                "{hashed} blocks carry a hash but the index holds {} entries",
                self.index.len()
            ));
        }
        if cached != self.num_cached {
            return Err(format!(
                "{cached} free blocks carry a hash, num_cached() = {}",
                self.num_cached
            ));
        }
        self.index.check()
    }

    /// Index of `b` in `meta`, panicking on ids no block table may hold.
    fn check_id(&self, b: BlockId, op: &str) -> usize {
        assert!(b != BlockId::NULL, "{op} of the null block");
        self.meta_of(b);
        b.index()
    }

    fn meta_of(&self, b: BlockId) -> &BlockMeta {
        match self.meta.get(b.index()) {
            Some(m) => m,
            None => panic!(
                "block {b:?} out of range: the pool has {} blocks",
                self.meta.len()
            ),
        }
    }

    /// Take block `b` off the free list.
    fn unlink(&mut self, b: u32) {
        let BlockMeta { prev, next, .. } = self.meta[b as usize];
        self.meta[prev as usize].next = next;
        self.meta[next as usize].prev = prev;
    }

    /// Append block `b` at the tail of the free list.
    fn push_back(&mut self, b: u32) {
        let tail = self.meta[0].prev;
        self.meta[b as usize].prev = tail;
        self.meta[b as usize].next = NIL;
        self.meta[tail as usize].next = b;
        self.meta[0].prev = b;
    }
}

/// A fixed hash → block map: open addressing with linear probing and backward-shift deletion
/// (no tombstones). It holds at most one entry per non-null block, in at least twice as many
/// slots, so the load factor stays ≤ ½, probes stay short and every probe meets an empty slot.
struct HashIndex {
    /// `[2^bits]`; `block == NIL` marks an empty slot (the null block is never hashed).
    slots: Vec<Slot>,
    /// Entries held.
    len: usize,
    /// `64 - bits`: [`Self::home`] keeps the top `bits` bits of the multiplied hash.
    shift: u32,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    hash: BlockHash,
    block: u32,
}

impl HashIndex {
    /// An index for the hashes of a pool of `n_blocks` blocks (at most `n_blocks - 1` entries).
    fn new(n_blocks: usize) -> HashIndex {
        let n_slots = (2 * n_blocks).next_power_of_two().max(2);
        HashIndex {
            slots: vec![Slot::default(); n_slots],
            len: 0,
            shift: 64 - n_slots.trailing_zeros(),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot where a probe for `h` starts. Fibonacci hashing: callers may pass any `u64` (tests
    /// use small integers), so spread it rather than trust its low bits.
    fn home(&self, h: BlockHash) -> usize {
        (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    /// The slot holding `h`, if any.
    fn find(&self, h: BlockHash) -> Option<usize> {
        let mut i = self.home(h);
        loop {
            let s = self.slots[i];
            if s.block == NIL {
                return None;
            }
            if s.hash == h {
                return Some(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    fn get(&self, h: BlockHash) -> Option<u32> {
        self.find(h).map(|i| self.slots[i].block)
    }

    /// Insert `h → block`; `h` must be absent.
    fn insert(&mut self, h: BlockHash, block: u32) {
        debug_assert!(block != NIL && self.find(h).is_none());
        assert!(
            2 * (self.len + 1) <= self.slots.len(),
            "hash index over half full: more hashed blocks than blocks"
        );
        let mut i = self.home(h);
        while self.slots[i].block != NIL {
            i = (i + 1) & self.mask();
        }
        self.slots[i] = Slot { hash: h, block };
        self.len += 1;
    }

    /// Remove `h`, returning its block. Later entries of the probe run move back into the hole
    /// when their home allows, so every entry stays reachable without tombstones.
    fn remove(&mut self, h: BlockHash) -> Option<u32> {
        let mut hole = self.find(h)?;
        let block = self.slots[hole].block;
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.block == NIL {
                break;
            }
            // `s` may fill the hole iff its home is not cyclically within (hole, j].
            let home = self.home(s.hash);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
        Some(block)
    }

    /// Every entry is reachable from its home (no empty slot in between) and `len` is right.
    fn check(&self) -> Result<(), String> {
        let mut n = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.block == NIL {
                continue;
            }
            n += 1;
            if self.find(s.hash) != Some(i) {
                return Err(format!(
                    "hash index: entry {:#018x} in slot {i} is unreachable from its home",
                    s.hash
                ));
            }
        }
        if n != self.len {
            return Err(format!("hash index: {n} entries but len = {}", self.len));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<BlockId> {
        v.iter().map(|&i| BlockId(i)).collect()
    }

    #[test]
    fn null_block_is_never_allocated() {
        let mut p = BlockPool::new(4);
        assert_eq!(p.num_blocks(), 3);
        let got: Vec<_> = std::iter::from_fn(|| p.allocate()).collect();
        assert_eq!(got, ids(&[1, 2, 3]));
        assert!(!got.contains(&BlockId::NULL));
        assert_eq!(p.num_used(), 3);
        p.check_invariants().unwrap();
        for n in [0, 1] {
            let mut p = BlockPool::new(n);
            assert_eq!((p.num_blocks(), p.num_free()), (0, 0));
            assert_eq!(p.allocate(), None);
            p.check_invariants().unwrap();
        }
    }

    #[test]
    fn free_list_is_lru() {
        let mut p = BlockPool::new(5);
        let [a, b, c, d] = [(); 4].map(|_| p.allocate().unwrap());
        p.free(c);
        p.free(a);
        p.free(b);
        p.check_invariants().unwrap();
        // Least recently freed first; d is still in use.
        assert_eq!(
            [p.allocate(), p.allocate(), p.allocate()],
            [Some(c), Some(a), Some(b)]
        );
        assert_eq!(p.allocate(), None);
        assert_eq!(p.ref_count(d), 1);
    }

    #[test]
    fn exhaustion_returns_none_without_mutation() {
        let mut p = BlockPool::new(3);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        p.set_hash(b, 7);
        let before = format!("{p:?}");
        assert_eq!(p.allocate(), None);
        assert_eq!(format!("{p:?}"), before);
        assert_eq!(
            (p.ref_count(a), p.ref_count(b), p.lookup(7)),
            (1, 1, Some(b))
        );
        p.check_invariants().unwrap();
    }

    #[test]
    fn freed_block_stays_cached_until_reallocated() {
        let mut p = BlockPool::new(3);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert!(p.set_hash(a, 11));
        p.free(a);
        assert_eq!(
            (p.num_free(), p.num_cached(), p.lookup(11)),
            (1, 1, Some(a))
        );
        assert_eq!(p.hash_of(a), Some(11));
        p.check_invariants().unwrap();
        // The only free block is the cached one: allocating it evicts the hash.
        assert_eq!(p.allocate(), Some(a));
        assert_eq!(
            (p.num_cached(), p.lookup(11), p.hash_of(a)),
            (0, None, None)
        );
        p.check_invariants().unwrap();
        p.free(b);
    }

    #[test]
    fn prefix_hit_takes_block_off_the_free_list() {
        let mut p = BlockPool::new(4);
        let [a, b, c] = [(); 3].map(|_| p.allocate().unwrap());
        let h = hash_block(None, &[1, 2, 3, 4]);
        p.set_hash(b, h);
        p.free(a);
        p.free(b);
        p.free(c);
        assert_eq!((p.num_free(), p.num_cached()), (3, 1));
        let hit = p.lookup(h).unwrap();
        assert_eq!(hit, b);
        p.retain(hit);
        assert_eq!((p.ref_count(b), p.num_free(), p.num_cached()), (1, 2, 0));
        p.check_invariants().unwrap();
        // b is no longer on the free list: a and c come back, in LRU order.
        assert_eq!(
            [p.allocate(), p.allocate(), p.allocate()],
            [Some(a), Some(c), None]
        );
        // A referenced cached block is still found, and sharing adds references.
        assert_eq!(p.lookup(h), Some(b));
        p.retain(b);
        assert_eq!(p.ref_count(b), 2);
        p.free(b);
        p.free(b);
        assert_eq!(p.num_cached(), 1);
        p.check_invariants().unwrap();
    }

    #[test]
    fn set_hash_keeps_the_first_block_for_a_hash() {
        let mut p = BlockPool::new(4);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert!(p.set_hash(a, 5));
        assert!(p.set_hash(a, 5));
        assert!(!p.set_hash(b, 5));
        assert_eq!((p.lookup(5), p.hash_of(b)), (Some(a), None));
        p.check_invariants().unwrap();
    }

    #[test]
    fn reset_prefix_cache_drops_only_free_blocks_hashes() {
        let mut p = BlockPool::new(4);
        let [a, b, c] = [(); 3].map(|_| p.allocate().unwrap());
        p.set_hash(a, 1);
        p.set_hash(b, 2);
        p.free(a);
        assert_eq!(p.reset_prefix_cache(), 1);
        assert_eq!(
            (p.lookup(1), p.lookup(2), p.num_cached()),
            (None, Some(b), 0)
        );
        p.check_invariants().unwrap();
        p.free(b);
        p.free(c);
        assert_eq!(p.num_cached(), 1);
    }

    #[test]
    #[should_panic(expected = "double free of block BlockId(1)")]
    fn double_free_panics() {
        let mut p = BlockPool::new(2);
        let a = p.allocate().unwrap();
        p.free(a);
        p.free(a);
    }

    #[test]
    #[should_panic(expected = "holds no cached prefix")]
    fn retain_of_uncached_free_block_panics() {
        let mut p = BlockPool::new(2);
        p.retain(BlockId(1));
    }

    #[test]
    #[should_panic(expected = "free of the null block")]
    fn free_of_null_block_panics() {
        BlockPool::new(2).free(BlockId::NULL);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_id_panics() {
        BlockPool::new(2).retain(BlockId(2));
    }

    #[test]
    #[should_panic(expected = "never changes")]
    fn rehashing_a_block_panics() {
        let mut p = BlockPool::new(2);
        let a = p.allocate().unwrap();
        p.set_hash(a, 1);
        p.set_hash(a, 2);
    }

    #[test]
    fn hash_block_is_chained_and_stable() {
        let a = hash_block(None, &[1, 2, 3]);
        assert_ne!(a, hash_block(None, &[1, 2, 4]));
        assert_ne!(a, hash_block(None, &[3, 2, 1]));
        assert_ne!(a, hash_block(Some(0), &[1, 2, 3]));
        assert_ne!(hash_block(None, &[]), hash_block(None, &[0]));
        assert_ne!(hash_block(None, &[0]), hash_block(None, &[0, 0]));
        assert_ne!(hash_block(Some(a), &[4]), hash_block(Some(a ^ 1), &[4]));
        // Pinned (values from an independent Python transcription of the algorithm): the hashes
        // must not change between builds or platforms.
        assert_eq!(a, 0xda32_4671_38d9_8108);
        assert_eq!(hash_block(Some(a), &[4, 5]), 0x787b_1144_7bd8_c2f2);
    }

    /// The hash index against `std`'s map under random churn, with a tiny table so runs wrap and
    /// collide.
    #[test]
    fn hash_index_matches_a_model() {
        use std::collections::HashMap;
        let mut rng = 0x1234_5678_u64;
        let mut next = move || {
            rng = mix64(rng.wrapping_add(0x9e37_79b9_7f4a_7c15));
            rng
        };
        for n_blocks in [1, 2, 3, 8, 13] {
            let mut idx = HashIndex::new(n_blocks);
            let mut model: HashMap<u64, u32> = HashMap::new();
            // Miri interprets every step: a shorter churn still wraps and collides.
            let steps = if cfg!(miri) { 60 } else { 20_000u32 };
            for step in 0..steps {
                let h = next() % 24; // few distinct keys: many hits and removals
                if next() % 2 == 0 {
                    if idx.find(h).is_none() && model.len() + 1 < n_blocks {
                        let b = step % 1000 + 1;
                        idx.insert(h, b);
                        model.insert(h, b);
                    }
                } else {
                    assert_eq!(idx.remove(h), model.remove(&h));
                }
                assert_eq!(idx.len(), model.len());
                for k in 0..24 {
                    assert_eq!(idx.get(k), model.get(&k).copied());
                }
                idx.check().unwrap();
            }
        }
    }
}
