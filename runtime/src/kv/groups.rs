//! Layer groups: which layers' keys and values one KV block holds.
//!
//! A model whose layers all attend to the whole context has one group: a block holds every
//! layer, and a sequence has one block table. A model with sliding-window layers (Gemma 3: five
//! of six layers see only the last 512 positions) splits its layers into groups of equal size,
//! each of one kind, as vLLM's hybrid KV cache manager does: every block still has the same
//! size, so all groups share one pool, but a sequence has one block table per group, and the
//! blocks of a sliding group that fall out of the window go back to the pool while the
//! sequence runs. The group size is the greatest common divisor of the two layer counts, so no
//! slot of a block is wasted (Gemma 3 270M: 3 full + 15 sliding layers, 6 groups of 3).

/// The layer groups of a KV arena (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvGroups {
    /// Layers per block.
    size: usize,
    /// Per model layer: its group and its slot within that group's blocks.
    of_layer: Vec<(u32, u32)>,
    /// The layers of group `g` in slot order: `layers[g * size..(g + 1) * size]`.
    layers: Vec<usize>,
    /// Per group: the attention window of its layers (0: the whole context, or layers of both
    /// kinds in one group: nothing is released).
    window: Vec<usize>,
    /// Per group and slot (`[groups][size]`): whether the slot's layer has a sliding window
    /// (its keys use the sliding-window RoPE table).
    sliding: Vec<bool>,
}

impl KvGroups {
    /// One group holding all `n_layer` layers, attending to the whole context.
    pub fn single(n_layer: usize) -> KvGroups {
        KvGroups::unsplit(&vec![0; n_layer])
    }

    /// One group holding every layer, whatever their windows: nothing is released (`--swa-full`,
    /// llama.cpp's name for it).
    pub fn unsplit(window_of_layer: &[usize]) -> KvGroups {
        let n_layer = window_of_layer.len();
        KvGroups {
            size: n_layer,
            of_layer: (0..n_layer).map(|l| (0, l as u32)).collect(),
            layers: (0..n_layer).collect(),
            window: vec![0],
            sliding: window_of_layer.iter().map(|&w| w > 0).collect(),
        }
    }

    /// Groups for layers whose windows are `window_of_layer` (0: the whole context): the
    /// full-attention layers first, then the sliding ones, in groups of the greatest common
    /// divisor of their counts. Every sliding layer must have the same window. One group (no
    /// release) when no layer slides, or when the window covers `n_ctx` anyway.
    pub fn new(window_of_layer: &[usize], n_ctx: usize) -> KvGroups {
        let n_layer = window_of_layer.len();
        let window = window_of_layer.iter().copied().max().unwrap_or(0);
        let sliding = |w: usize| w > 0;
        let n_sliding = window_of_layer.iter().filter(|&&w| sliding(w)).count();
        let uniform = window_of_layer.iter().all(|&w| w == 0 || w == window);
        if n_sliding == 0 || window >= n_ctx || !uniform {
            return KvGroups::unsplit(window_of_layer);
        }
        let size = gcd(n_layer - n_sliding, n_sliding);
        let mut layers: Vec<usize> = (0..n_layer)
            .filter(|&l| !sliding(window_of_layer[l]))
            .collect();
        layers.extend((0..n_layer).filter(|&l| sliding(window_of_layer[l])));
        let mut of_layer = vec![(0, 0); n_layer];
        for (i, &l) in layers.iter().enumerate() {
            of_layer[l] = ((i / size) as u32, (i % size) as u32);
        }
        let window = layers
            .chunks_exact(size)
            .map(|g| window_of_layer[g[0]])
            .collect();
        let sliding = layers
            .iter()
            .map(|&l| sliding(window_of_layer[l]))
            .collect();
        KvGroups {
            size,
            of_layer,
            layers,
            window,
            sliding,
        }
    }

    /// Layers per block.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Number of groups (block tables per sequence).
    pub fn len(&self) -> usize {
        self.window.len()
    }

    /// Whether there is no group (a model without layers).
    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// The group of model layer `layer`.
    pub fn group_of(&self, layer: usize) -> usize {
        self.of_layer[layer].0 as usize
    }

    /// The slot of model layer `layer` within its group's blocks.
    pub fn slot_of(&self, layer: usize) -> usize {
        self.of_layer[layer].1 as usize
    }

    /// The model layers of group `g`, in slot order.
    pub fn layers(&self, g: usize) -> &[usize] {
        &self.layers[g * self.size..(g + 1) * self.size]
    }

    /// The attention window of group `g` (0: the whole context).
    pub fn window(&self, g: usize) -> usize {
        self.window[g]
    }

    /// Per slot of group `g`'s blocks: whether its layer has a sliding window.
    pub fn sliding(&self, g: usize) -> &[bool] {
        &self.sliding[g * self.size..(g + 1) * self.size]
    }

    /// Whether some group releases blocks that fall out of its window.
    pub fn releases(&self) -> bool {
        self.window.iter().any(|&w| w > 0)
    }

    /// The first block of group `g` that a query at position `pos` (or later) reads: the
    /// blocks before it are out of the window for good. Attention at `pos` reads positions
    /// `pos + 1 - window ..= pos`.
    pub fn first_needed_block(&self, g: usize, pos: usize, block_size: usize) -> usize {
        match self.window[g] {
            0 => 0,
            w => (pos + 1).saturating_sub(w) / block_size,
        }
    }

    /// Most blocks one sequence of `n_ctx` positions holds at once in group `g`, when a step
    /// adds at most `max_step` tokens to it: a full group holds the whole context; a sliding
    /// group holds the window before the step's first position and the step's own tokens.
    pub fn max_blocks(&self, g: usize, n_ctx: usize, max_step: usize, block_size: usize) -> usize {
        let full = n_ctx.div_ceil(block_size);
        match self.window[g] {
            0 => full,
            w => full.min((w - 1 + max_step.max(1)).div_ceil(block_size) + 1),
        }
    }
}

/// The prefix-cache hash of group `g`'s block whose tokens hash to `h` ([`super::hash_block`]):
/// `h` itself for group 0 (so a model of one group caches as before), a distinct mix for the
/// others (their blocks hold other layers of the same tokens).
pub fn group_hash(h: super::BlockHash, g: usize) -> super::BlockHash {
    match g {
        0 => h,
        _ => super::block_pool::mix64(h ^ (g as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)),
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gemma 3's pattern: every sixth layer attends to the whole context.
    fn gemma(n_layer: usize) -> Vec<usize> {
        (0..n_layer)
            .map(|l| if (l + 1) % 6 == 0 { 0 } else { 512 })
            .collect()
    }

    #[test]
    fn gemma_layers_form_equal_groups_of_one_kind() {
        let g = KvGroups::new(&gemma(18), 8192);
        assert_eq!((g.size(), g.len()), (3, 6));
        assert_eq!(g.layers(0), [5, 11, 17]);
        assert_eq!(g.layers(1), [0, 1, 2]);
        assert_eq!(g.layers(5), [14, 15, 16]);
        assert_eq!((g.window(0), g.window(3)), (0, 512));
        assert_eq!(
            (g.sliding(0), g.sliding(1)),
            (&[false; 3][..], &[true; 3][..])
        );
        for l in 0..18 {
            assert_eq!(g.layers(g.group_of(l))[g.slot_of(l)], l);
        }
        // 26 layers (Gemma 3 1B): 4 full, 22 sliding: groups of 2.
        let g = KvGroups::new(&gemma(26), 8192);
        assert_eq!((g.size(), g.len()), (2, 13));
        assert!(g.releases());
    }

    #[test]
    fn one_group_when_nothing_would_be_released() {
        let g = KvGroups::new(&gemma(18), 512);
        assert_eq!((g.len(), g.window(0)), (1, 0));
        assert_eq!(g.sliding(0)[..6], [true, true, true, true, true, false]);
        assert_eq!(g, KvGroups::unsplit(&gemma(18)));
        assert_eq!(KvGroups::new(&[0; 30], 8192), KvGroups::single(30));
        assert_eq!(
            KvGroups::new(&[0, 256, 512], 8192),
            KvGroups::unsplit(&[0, 256, 512])
        );
        assert!(!KvGroups::single(30).releases());
        // Every layer sliding: one group that releases.
        let g = KvGroups::new(&[4096; 32], 32768);
        assert_eq!((g.size(), g.len(), g.window(0)), (32, 1, 4096));
    }

    #[test]
    fn window_bounds() {
        let g = KvGroups::new(&gemma(18), 8192);
        // A query at 527 reads 16..=527: block 0 (0..16) is out.
        assert_eq!(g.first_needed_block(1, 526, 16), 0);
        assert_eq!(g.first_needed_block(1, 527, 16), 1);
        assert_eq!(g.first_needed_block(0, 5000, 16), 0);
        assert_eq!(g.max_blocks(0, 8192, 512, 16), 512);
        // 511 positions before the step, 512 in it: 1023 positions over at most 65 blocks.
        assert_eq!(g.max_blocks(1, 8192, 512, 16), 65);
        assert_eq!(g.max_blocks(1, 100, 512, 16), 7);
    }
}
