//! Which tokens may come next: the vocabulary as a byte trie, and a sequence's grammar state.
//!
//! [`VocabTrie`] holds every token's bytes (as the detokenizer renders them) in a trie, built
//! once per model. [`GrammarMatcher::fill_mask`] walks it depth first, carrying the grammar
//! stacks (and a partial UTF-8 character) down each edge: a subtree whose prefix the grammar
//! rejects is skipped whole, so the cost follows what the grammar allows, not the vocabulary.
//! Tokens may end inside a UTF-8 character (byte tokens, split emoji); the partial character
//! is kept in the state, and a set that cannot hold any character with that prefix prunes it.
//!
//! End-of-generation tokens are allowed only when the grammar has matched completely (and no
//! partial character is pending); control tokens, which render as nothing, never are.
//!
//! Masks of recent states are cached (a JSON string's state repeats for every token inside
//! it). Memory: the cache holds at most [`CACHE_ENTRIES`] masks of `n_vocab` bits; the walk's
//! per-depth scratch grows to the longest token once. After warm-up a step allocates nothing
//! unless it adds a cache entry while the cache is not yet full.

use std::sync::Arc;

use super::{Grammar, Nodes, Stacks, NIL};
use crate::tokenizer::Tokenizer;

/// Masks remembered per sequence.
const CACHE_ENTRIES: usize = 32;

/// The vocabulary as a byte trie (children of each node sorted by byte).
#[derive(Debug)]
pub struct VocabTrie {
    /// Node `i`'s edges are `edge_byte[first_edge[i]..first_edge[i+1]]` (and `edge_child`).
    first_edge: Vec<u32>,
    edge_byte: Vec<u8>,
    edge_child: Vec<u32>,
    /// Tokens whose bytes end at node `i`: `tokens[first_token[i]..first_token[i+1]]`.
    first_token: Vec<u32>,
    tokens: Vec<u32>,
    /// Token bytes, for checking one token: `bytes[offsets[id]..offsets[id+1]]`.
    offsets: Vec<u32>,
    bytes: Vec<u8>,
    eog: Vec<u32>,
    n_vocab: usize,
}

impl VocabTrie {
    /// Builds the trie of `tok`'s vocabulary. Logits rows have `n_vocab` entries; ids past the
    /// tokenizer's vocabulary are never allowed.
    pub fn new(tok: &Tokenizer, n_vocab: usize) -> VocabTrie {
        let n_tok = tok.vocab_size().min(n_vocab);
        let mut offsets = Vec::with_capacity(n_vocab + 1);
        let mut bytes = Vec::new();
        offsets.push(0u32);
        for id in 0..n_vocab as u32 {
            if (id as usize) < n_tok && !tok.is_eog(id) {
                bytes.extend_from_slice(tok.token_bytes(id));
            }
            offsets.push(bytes.len() as u32);
        }
        let piece =
            |id: u32| &bytes[offsets[id as usize] as usize..offsets[id as usize + 1] as usize];
        // Children lists, then flattened.
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut ends: Vec<Vec<u32>> = vec![Vec::new()];
        for id in 0..n_vocab as u32 {
            let p = piece(id);
            if p.is_empty() {
                continue;
            }
            let mut node = 0usize;
            for &b in p {
                node = match children[node].iter().find(|e| e.0 == b) {
                    Some(&(_, c)) => c as usize,
                    None => {
                        let c = children.len();
                        children.push(Vec::new());
                        ends.push(Vec::new());
                        children[node].push((b, c as u32));
                        c
                    }
                };
            }
            ends[node].push(id);
        }
        let (mut first_edge, mut edge_byte, mut edge_child) = (vec![0u32], Vec::new(), Vec::new());
        let (mut first_token, mut tokens) = (vec![0u32], Vec::new());
        for (mut c, t) in children.into_iter().zip(ends) {
            c.sort_unstable();
            edge_byte.extend(c.iter().map(|e| e.0));
            edge_child.extend(c.iter().map(|e| e.1));
            first_edge.push(edge_byte.len() as u32);
            tokens.extend_from_slice(&t);
            first_token.push(tokens.len() as u32);
        }
        VocabTrie {
            first_edge,
            edge_byte,
            edge_child,
            first_token,
            tokens,
            offsets,
            bytes,
            eog: tok
                .eog_ids()
                .iter()
                .copied()
                .filter(|&e| (e as usize) < n_vocab)
                .collect(),
            n_vocab,
        }
    }

    /// Bytes of token `id` (empty for control and end-of-generation tokens).
    fn piece(&self, id: u32) -> &[u8] {
        match (
            self.offsets.get(id as usize),
            self.offsets.get(id as usize + 1),
        ) {
            (Some(&a), Some(&b)) => &self.bytes[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Number of trie nodes.
    pub fn n_nodes(&self) -> usize {
        self.first_token.len() - 1
    }
}

/// A UTF-8 character being read byte by byte: the bits so far, the bytes still needed, and
/// how many bytes it has in all (an overlong encoding, such as `F0 80 81 BB` for `{`, is
/// refused: it would let a grammar's character through as bytes that are not that character).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Utf8 {
    value: u32,
    need: u8,
    len: u8,
}

/// The smallest code point of a UTF-8 sequence of each length (index 2, 3, 4).
const MIN_VALUE: [u32; 5] = [0, 0, 0x80, 0x800, 0x1_0000];

/// What one byte does to a [`Utf8`] reader.
enum Byte {
    /// A complete code point.
    Char(u32),
    /// More bytes are needed.
    Partial(Utf8),
    /// Not valid UTF-8 here.
    Invalid,
}

impl Utf8 {
    fn push(self, b: u8) -> Byte {
        if self.need == 0 {
            return match b {
                0x00..=0x7f => Byte::Char(u32::from(b)),
                0xc2..=0xdf => Byte::Partial(Utf8 {
                    value: u32::from(b & 0x1f),
                    need: 1,
                    len: 2,
                }),
                0xe0..=0xef => Byte::Partial(Utf8 {
                    value: u32::from(b & 0x0f),
                    need: 2,
                    len: 3,
                }),
                0xf0..=0xf4 => Byte::Partial(Utf8 {
                    value: u32::from(b & 0x07),
                    need: 3,
                    len: 4,
                }),
                _ => Byte::Invalid,
            };
        }
        if b & 0xc0 != 0x80 {
            return Byte::Invalid;
        }
        let value = (self.value << 6) | u32::from(b & 0x3f);
        if self.need > 1 {
            let u = Utf8 {
                value,
                need: self.need - 1,
                ..self
            };
            // Overlong prefixes are caught as soon as the second byte shows them.
            return if u.range().0 > u.range().1 {
                Byte::Invalid
            } else {
                Byte::Partial(u)
            };
        }
        match char::from_u32(value) {
            Some(_) if value >= MIN_VALUE[usize::from(self.len)] => Byte::Char(value),
            _ => Byte::Invalid,
        }
    }

    /// The code points this partial character can still become.
    fn range(self) -> (u32, u32) {
        let shift = 6 * u32::from(self.need);
        let lo = (self.value << shift).max(MIN_VALUE[usize::from(self.len)]);
        (
            lo,
            ((self.value << shift) | ((1 << shift) - 1)).min(0x10_ffff),
        )
    }
}

/// One level of the trie walk: the stacks after the bytes so far (their top nodes) live in
/// `levels[owner]` (a partial character does not change them), and the partial character.
#[derive(Clone, Debug, Default)]
struct Level {
    tops: Vec<u32>,
    owner: usize,
    utf8: Utf8,
}

/// A cached mask: the state it belongs to, its bits, and when it was last used.
#[derive(Debug)]
struct CacheEntry {
    key: Vec<u32>,
    bits: Vec<u64>,
    used: u64,
}

/// One sequence's position in a grammar: what it has matched so far, and scratch for masks.
#[derive(Debug)]
pub struct GrammarMatcher {
    grammar: Arc<Grammar>,
    pub(super) trie: Arc<VocabTrie>,
    stacks: Stacks,
    utf8: Utf8,
    /// Walk scratch, one level per byte depth (level 0 is the current state), and the nodes
    /// of their stacks.
    levels: Vec<Level>,
    nodes: Nodes,
    /// Scratch of the one-token check.
    run_stacks: [Stacks; 2],
    work: Vec<u32>,
    key: Vec<u32>,
    cache: Vec<CacheEntry>,
    clock: u64,
    /// Masks computed by a trie walk, and masks served from the cache.
    pub walks: u64,
    /// See `walks`.
    pub hits: u64,
}

impl GrammarMatcher {
    /// A matcher at the grammar's start.
    pub fn new(grammar: Arc<Grammar>, trie: Arc<VocabTrie>) -> GrammarMatcher {
        let mut stacks = Stacks::default();
        let mut work = Vec::new();
        grammar.start(&mut stacks, &mut work);
        GrammarMatcher {
            grammar,
            trie,
            stacks,
            utf8: Utf8::default(),
            levels: Vec::new(),
            nodes: Nodes::default(),
            run_stacks: Default::default(),
            work,
            key: Vec::new(),
            cache: Vec::new(),
            clock: 0,
            walks: 0,
            hits: 0,
        }
    }

    /// Forgets the cached masks (benchmarks use it to time the trie walk alone).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Whether the text so far is a complete match (end of generation is allowed).
    pub fn accepting(&self) -> bool {
        self.utf8.need == 0 && self.stacks.accepting()
    }

    /// Whether token `id` may come next.
    pub fn allows(&mut self, id: u32) -> bool {
        if self.trie.eog.contains(&id) {
            return self.accepting();
        }
        let trie = Arc::clone(&self.trie);
        let p = trie.piece(id);
        !p.is_empty() && self.run(p, false)
    }

    /// Advances past token `id`. Returns false (and changes nothing) when the grammar does not
    /// allow it. End-of-generation tokens change nothing.
    pub fn accept(&mut self, id: u32) -> bool {
        if self.trie.eog.contains(&id) {
            return self.accepting();
        }
        let trie = Arc::clone(&self.trie);
        let p = trie.piece(id);
        !p.is_empty() && self.run(p, true)
    }

    /// Runs `bytes` from the current state; keeps the result when `commit`.
    fn run(&mut self, bytes: &[u8], commit: bool) -> bool {
        let [a, b] = &mut self.run_stacks;
        a.copy_from(&self.stacks);
        let mut utf8 = self.utf8;
        for &byte in bytes {
            match utf8.push(byte) {
                Byte::Invalid => return false,
                Byte::Partial(u) => {
                    let tops = (0..a.len()).filter_map(|i| a.get(i).last().copied());
                    if !may_continue(&self.grammar, tops, u) {
                        return false;
                    }
                    utf8 = u;
                }
                Byte::Char(c) => {
                    self.grammar.advance(a, c, &mut self.work, b);
                    std::mem::swap(a, b);
                    if a.is_empty() {
                        return false;
                    }
                    utf8 = Utf8::default();
                }
            }
        }
        if commit {
            std::mem::swap(&mut self.stacks, a);
            self.utf8 = utf8;
        }
        true
    }

    fn ensure_levels(&mut self, n: usize) {
        if self.levels.len() < n {
            self.levels.resize_with(n, Level::default);
        }
    }

    /// Sets `logits[i]` to -inf for every token the grammar does not allow next. Returns how
    /// many tokens are allowed.
    pub fn apply(&mut self, logits: &mut [f32]) -> usize {
        let i = self.mask_index();
        let bits = &self.cache[i].bits;
        let mut allowed = 0;
        for (id, l) in logits.iter_mut().enumerate() {
            if bits.get(id / 64).is_some_and(|w| w >> (id % 64) & 1 == 1) {
                allowed += 1;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        allowed
    }

    /// The cache entry holding the current state's mask, computed if missing.
    fn mask_index(&mut self) -> usize {
        self.key.clear();
        self.key
            .extend_from_slice(&[self.utf8.value, u32::from(self.utf8.need)]);
        for i in 0..self.stacks.len() {
            let s = self.stacks.get(i);
            self.key.push(s.len() as u32);
            self.key.extend_from_slice(s);
        }
        self.clock += 1;
        if let Some(i) = self.cache.iter().position(|e| e.key == self.key) {
            self.cache[i].used = self.clock;
            self.hits += 1;
            return i;
        }
        self.walks += 1;
        let i = if self.cache.len() < CACHE_ENTRIES {
            self.cache.push(CacheEntry {
                key: Vec::new(),
                bits: vec![0; self.trie.n_vocab.div_ceil(64)],
                used: 0,
            });
            self.cache.len() - 1
        } else {
            (0..self.cache.len())
                .min_by_key(|&i| self.cache[i].used)
                .expect("cache is full")
        };
        let mut bits = std::mem::take(&mut self.cache[i].bits);
        self.fill_mask(&mut bits);
        let e = &mut self.cache[i];
        e.bits = bits;
        e.key.clear();
        e.key.extend_from_slice(&self.key);
        e.used = self.clock;
        i
    }

    /// Computes the mask of the current state into `bits` (one bit per token).
    fn fill_mask(&mut self, bits: &mut [u64]) {
        bits.fill(0);
        if self.accepting() {
            for &e in &self.trie.eog {
                bits[e as usize / 64] |= 1 << (e % 64);
            }
        }
        self.ensure_levels(1);
        self.nodes.truncate(0);
        let mut tops = std::mem::take(&mut self.levels[0].tops);
        tops.clear();
        for i in 0..self.stacks.len() {
            tops.push(self.nodes.push_stack(self.stacks.get(i)));
        }
        self.levels[0] = Level {
            tops,
            owner: 0,
            utf8: self.utf8,
        };
        let trie = Arc::clone(&self.trie);
        self.walk(&trie, 0, 0, bits);
    }

    /// Visits the children of trie `node`, reached with the state at `levels[depth]`.
    fn walk(&mut self, trie: &VocabTrie, node: usize, depth: usize, bits: &mut [u64]) {
        self.ensure_levels(depth + 2);
        let (e0, e1) = (
            trie.first_edge[node] as usize,
            trie.first_edge[node + 1] as usize,
        );
        for e in e0..e1 {
            let child = trie.edge_child[e] as usize;
            let (here, below) = self.levels.split_at_mut(depth + 1);
            let owner = here[depth].owner;
            let next = &mut below[0];
            // The nodes this edge pushes are popped when its subtree is done.
            let mark = self.nodes.len();
            match here[depth].utf8.push(trie.edge_byte[e]) {
                Byte::Invalid => continue,
                Byte::Partial(u) => {
                    let nodes = &self.nodes;
                    let tops = here[owner].tops.iter().filter(|&&t| t != NIL);
                    let tops = tops.map(|&t| nodes.pos[t as usize]);
                    if !may_continue(&self.grammar, tops, u) {
                        continue;
                    }
                    next.owner = owner;
                    next.utf8 = u;
                }
                Byte::Char(c) => {
                    let (grammar, nodes) = (&self.grammar, &mut self.nodes);
                    grammar.advance_nodes(&here[owner].tops, c, nodes, &mut next.tops);
                    if next.tops.is_empty() {
                        self.nodes.truncate(mark);
                        continue;
                    }
                    next.owner = depth + 1;
                    next.utf8 = Utf8::default();
                }
            }
            let (t0, t1) = (
                trie.first_token[child] as usize,
                trie.first_token[child + 1] as usize,
            );
            for &id in &trie.tokens[t0..t1] {
                bits[id as usize / 64] |= 1 << (id % 64);
            }
            self.walk(trie, child, depth + 1, bits);
            self.nodes.truncate(mark);
        }
    }
}

impl crate::sampler::Constraint for GrammarMatcher {
    fn allows(&mut self, id: u32) -> bool {
        GrammarMatcher::allows(self, id)
    }

    fn mask(&mut self, logits: &mut [f32]) -> usize {
        self.apply(logits)
    }
}

/// Whether some stack's next character set (at positions `tops`) may hold a character
/// starting with `u`.
fn may_continue(g: &Grammar, mut tops: impl Iterator<Item = u32>, u: Utf8) -> bool {
    let (lo, hi) = u.range();
    tops.any(|p| g.may_match(p, lo, hi))
}
