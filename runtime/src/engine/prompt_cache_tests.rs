//! Prompt cache files through the engine, in memory: a loaded cache gives exactly the ids of
//! computing the prompt, and every kind of damage is refused with the pool left as it was.
//! (Not run under Miri, see scripts/ci/miri.sh.)

use std::path::Path;

use super::tests::{engine, greedy, run_to_end, tiny_model, tiny_spec};
use super::*;
use crate::gguf::GgufFile;
use crate::synth::{synth_gguf, SynthSpec};

const PROMPT: [u32; 14] = [3, 17, 40, 9, 77, 120, 5, 63, 201, 14, 88, 31, 7, 150];

fn run(e: &mut Engine, prompt: &[u32]) -> SeqOutput {
    let id = e.submit(prompt, &greedy(8)).unwrap();
    run_to_end(e);
    let out = e.take_output(id, 0).unwrap();
    e.release(id).unwrap();
    out
}

/// A cache of `PROMPT` written by an engine that computed it, and that run's ids.
fn saved() -> (Vec<u8>, Vec<u32>) {
    let mut e = engine(16, 2, 64);
    let out = run(&mut e, &PROMPT);
    let blocks = e.cached_prefix_blocks(&PROMPT).unwrap();
    assert_eq!(blocks.len(), 3, "14 tokens fill 3 blocks of 4");
    let mut bytes = Vec::new();
    let n = e
        .write_prompt_cache(&mut bytes, &PROMPT, &blocks, Path::new("mem"))
        .unwrap();
    assert_eq!(n, 12);
    (bytes, out.ids)
}

fn load(e: &mut Engine, bytes: &[u8]) -> Result<PromptCacheLoad> {
    e.read_prompt_cache(&mut &bytes[..], bytes.len() as u64, Path::new("mem"))
}

#[test]
fn a_loaded_cache_gives_the_ids_of_computing_the_prompt() {
    let (bytes, want) = saved();
    let mut e = engine(16, 2, 64);
    let l = load(&mut e, &bytes).unwrap();
    assert_eq!(l.tokens, PROMPT[..12]);
    assert_eq!(l.loaded_tokens, 12);
    assert_eq!(
        (e.pool.num_cached(), e.pool.num_used()),
        (3, 0),
        "loaded blocks wait in the prefix cache"
    );
    let out = run(&mut e, &PROMPT);
    assert_eq!(
        out.ids, want,
        "ids equal those of computing the whole prompt"
    );
    assert_eq!(out.n_cached, 12);
    assert_eq!(e.metrics().prefix_hit_tokens, 12);
    // A longer prompt with the same start takes the cached blocks too.
    let mut longer = PROMPT.to_vec();
    longer.extend([60, 61, 62]);
    let mut fresh = engine(16, 2, 64);
    let want_longer = run(&mut fresh, &longer).ids;
    let out = run(&mut e, &longer);
    // The 12 loaded tokens, and the 2 after them that computing PROMPT left in its last block
    // (taken below block granularity, engine/partial.rs).
    assert_eq!((out.ids, out.n_cached), (want_longer, 14));
    e.pool.check_invariants().unwrap();
}

#[test]
fn loading_twice_or_into_a_small_arena_stays_consistent() {
    let (bytes, _) = saved();
    let mut e = engine(16, 2, 64);
    load(&mut e, &bytes).unwrap();
    let again = load(&mut e, &bytes).unwrap();
    assert_eq!(
        again.loaded_tokens, 12,
        "already cached blocks count as loaded"
    );
    assert_eq!(e.pool.num_cached(), 3, "nothing stored twice");
    e.pool.check_invariants().unwrap();
    // An arena of 2 blocks takes the file's first 2 blocks only.
    let mut small = engine(2, 1, 64);
    let l = load(&mut small, &bytes).unwrap();
    assert_eq!(l.loaded_tokens, 8);
    small.pool.check_invariants().unwrap();
    // A request then reuses the first and evicts the second for its own tail: correct ids.
    let short = &PROMPT[..7];
    let one = |e: &mut Engine| {
        let id = e.submit(short, &greedy(1)).unwrap();
        run_to_end(e);
        let out = e.take_output(id, 0).unwrap();
        e.release(id).unwrap();
        (out.ids, out.n_cached)
    };
    let want_short = one(&mut engine(16, 1, 64)).0;
    assert_eq!(one(&mut small), (want_short, 4));
    small.pool.check_invariants().unwrap();
}

#[test]
fn every_damaged_byte_and_every_cut_is_refused_with_the_pool_untouched() {
    let (bytes, _) = saved();
    let mut e = engine(16, 2, 64);
    let before = (e.pool.num_free(), e.pool.num_cached());
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        let err = load(&mut e, &bad).unwrap_err();
        assert!(matches!(err, Error::PromptCache { .. }), "byte {i}: {err}");
        assert_eq!((e.pool.num_free(), e.pool.num_cached()), before, "byte {i}");
    }
    for n in [
        0,
        1,
        47,
        48,
        60,
        bytes.len() / 2,
        bytes.len() - 8,
        bytes.len() - 1,
    ] {
        let err = load(&mut e, &bytes[..n]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{n} bytes: {err}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let err = load(&mut e, &longer).unwrap_err();
    assert!(err.to_string().contains("more than its header"), "{err}");
    assert_eq!((e.pool.num_free(), e.pool.num_cached()), before);
    e.pool.check_invariants().unwrap();
}

#[test]
fn a_cache_of_another_model_or_block_size_is_refused() {
    let (bytes, _) = saved();
    let other = {
        let spec = SynthSpec {
            seed: 99,
            ..tiny_spec()
        };
        let b = synth_gguf(&spec).unwrap().to_bytes().unwrap();
        Model::from_gguf(GgufFile::from_bytes(b).unwrap()).unwrap()
    };
    let cfg = |block_size| EngineConfig {
        n_ctx: 32,
        kv_budget: KvBudget::Blocks(16),
        block_size,
        threads: 1,
        prefix_caching: true,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(other, cfg(4)).unwrap();
    let err = load(&mut e, &bytes).unwrap_err().to_string();
    assert!(err.contains("another model"), "{err}");
    let mut e = Engine::new(tiny_model(), cfg(8)).unwrap();
    let err = load(&mut e, &bytes).unwrap_err().to_string();
    assert!(err.contains("blocks of 4 tokens"), "{err}");
    let mut off = Engine::new(
        tiny_model(),
        EngineConfig {
            prefix_caching: false,
            ..cfg(4)
        },
    )
    .unwrap();
    let err = load(&mut off, &bytes).unwrap_err().to_string();
    assert!(err.contains("prefix caching"), "{err}");
}

#[test]
fn only_cached_full_blocks_are_saved() {
    let mut e = engine(16, 2, 64);
    assert!(e.cached_prefix_blocks(&PROMPT).unwrap().is_empty());
    run(&mut e, &PROMPT[..3]);
    assert!(
        e.cached_prefix_blocks(&PROMPT).unwrap().is_empty(),
        "3 tokens fill no block"
    );
    run(&mut e, &PROMPT[..6]);
    assert_eq!(e.cached_prefix_blocks(&PROMPT).unwrap().len(), 1);
}
