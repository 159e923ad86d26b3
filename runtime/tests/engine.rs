//! The continuous-batching engine on the real model: concurrent requests give exactly the ids
//! each gives alone (also under preemption and chunked prefill), shared prefixes are stored and
//! computed once, `n > 1` samples share the prompt and diverge exactly as solo runs with their
//! seeds, refusals and cancellation behave.
//!
//! The engines compared here make passes of fewer than 64 tokens (`BUDGET`): from 64 on,
//! attention follows ggml's tiled path (as llama.cpp's does, `attention_tiled`), which rounds
//! differently, so how a scheduler cuts the work would change the last bits; under 64 it must
//! change nothing.

use std::path::PathBuf;

use ember::engine::{Engine, EngineConfig, RequestId, RequestParams};
use ember::model::Model;
use ember::sampler::SamplingParams;
use ember::session::{FinishReason, KvBudget};
use ember::Error;

/// Most tokens per pass of the engines compared: under the tiled attention path's 64.
const BUDGET: usize = 48;

fn model() -> Model {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-model.sh",
        p.display()
    );
    Model::load(&p).unwrap()
}

fn engine(kv_blocks: usize, max_seqs: usize, max_batch_tokens: usize) -> Engine {
    let cfg = EngineConfig {
        cuda_weights: Default::default(),
        n_ctx: 512,
        kv_budget: KvBudget::Blocks(kv_blocks),
        block_size: 16,
        max_seqs,
        max_batch_tokens,
        max_requests: 128,
        threads: 2,
        prefix_caching: true,
        kv_type: Default::default(),
        swa_full: false,
    };
    Engine::new(model(), cfg).unwrap()
}

/// Token prompts of varied lengths cut from the GPL text.
fn prompts(e: &Engine, n: usize) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/GPL-3.txt"),
    )
    .unwrap();
    let ids = e.tokenizer().encode(&text, false, false).unwrap();
    (0..n)
        .map(|i| {
            let start = 97 * i % 3000;
            let len = 3 + (i * 7) % 45;
            ids[start..start + len].to_vec()
        })
        .collect()
}

fn greedy(max_tokens: usize) -> RequestParams {
    RequestParams {
        max_tokens,
        ignore_eos: true,
        ..RequestParams::default()
    }
}

fn run_to_end(e: &mut Engine) {
    let mut steps = 0;
    while e.has_work() {
        e.step().unwrap();
        steps += 1;
        assert!(steps < 100_000, "engine does not terminate");
    }
}

fn ids_of(e: &Engine, id: RequestId) -> Vec<Vec<u32>> {
    e.output(id).unwrap().map(|o| o.ids.clone()).collect()
}

/// Each prompt alone, in a roomy engine.
fn solo(prompts: &[Vec<u32>], lens: &[usize]) -> Vec<Vec<u32>> {
    let mut e = engine(256, 1, BUDGET);
    prompts
        .iter()
        .zip(lens)
        .map(|(p, &n)| {
            let id = e.submit(p, &greedy(n)).unwrap();
            run_to_end(&mut e);
            let out = ids_of(&e, id).remove(0);
            e.release(id).unwrap();
            out
        })
        .collect()
}

#[test]
fn concurrent_equals_solo_with_preemption_and_chunked_prefill() {
    let probe = engine(8, 1, 16);
    let ps = prompts(&probe, 32);
    drop(probe);
    let lens: Vec<usize> = (0..32).map(|i| 2 + (i * 5) % 17).collect();
    let alone = solo(&ps, &lens);
    // (kv blocks, max seqs, max batch tokens): roomy; an arena so small that sequences must be
    // preempted; a token budget so small that prompts are prefilled in chunks.
    for (blocks, seqs, budget, expect_preempt) in [
        (200, 32, BUDGET, false),
        (24, 32, BUDGET, true),
        (200, 8, 8, false),
    ] {
        let mut e = engine(blocks, seqs, budget);
        let ids: Vec<RequestId> = ps
            .iter()
            .zip(&lens)
            .map(|(p, &n)| e.submit(p, &greedy(n)).unwrap())
            .collect();
        run_to_end(&mut e);
        for (i, id) in ids.iter().enumerate() {
            let got = ids_of(&e, *id).remove(0);
            assert_eq!(
                got, alone[i],
                "request {i} (arena {blocks}, seqs {seqs}, budget {budget})"
            );
            assert_eq!(
                e.output(*id).unwrap().next().unwrap().finish,
                Some(FinishReason::Length)
            );
        }
        let m = e.metrics();
        if expect_preempt {
            assert!(m.preemptions > 0, "the small arena should force preemption");
        }
        assert_eq!(m.blocks_used, 0, "every block returned");
    }
}

/// Arena exhaustion under load (hostile-input issue): 100 requests at once, greedy and seeded
/// sampling mixed, in an arena of 12 blocks (192 tokens: room for about 4 of them) with 16 of
/// them admitted as running sequences at a time; every request finishes, by preemption and recompute, with
/// exactly the ids it gives alone, and the arena is empty afterwards.
#[test]
fn hundred_requests_in_a_tiny_arena_equal_solo_runs() {
    let probe = engine(8, 1, 16);
    let ps = prompts(&probe, 100);
    drop(probe);
    let params: Vec<RequestParams> = (0..100)
        .map(|i| RequestParams {
            max_tokens: 1 + (i * 7) % 13,
            ignore_eos: true,
            sampling: if i % 3 == 0 {
                SamplingParams {
                    temperature: 0.8,
                    top_k: 40,
                    top_p: 0.95,
                    min_p: 0.05,
                    repeat_penalty: 1.1,
                    repeat_last_n: 64,
                    seed: 77 + i as u64,
                }
            } else {
                RequestParams::default().sampling
            },
            ..RequestParams::default()
        })
        .collect();
    let t0 = std::time::Instant::now();
    let mut alone_engine = engine(256, 1, BUDGET);
    let alone: Vec<Vec<u32>> = ps
        .iter()
        .zip(&params)
        .map(|(p, r)| {
            let id = alone_engine.submit(p, r).unwrap();
            run_to_end(&mut alone_engine);
            let out = ids_of(&alone_engine, id).remove(0);
            alone_engine.release(id).unwrap();
            out
        })
        .collect();
    drop(alone_engine);
    let t_alone = t0.elapsed();

    let mut e = engine(12, 16, BUDGET);
    let ids: Vec<RequestId> = ps
        .iter()
        .zip(&params)
        .map(|(p, r)| e.submit(p, r).unwrap())
        .collect();
    run_to_end(&mut e);
    for (i, id) in ids.iter().enumerate() {
        let out = e.output(*id).unwrap().next().unwrap();
        assert_eq!(out.ids, alone[i], "request {i}");
        assert_eq!(out.finish, Some(FinishReason::Length), "request {i}");
    }
    let m = e.metrics();
    eprintln!(
        "100 requests, 12-block arena: {} steps, {} preemptions, {} tokens computed for {} \
         generated; solo runs {:?}, all {:?}",
        m.steps,
        m.preemptions,
        m.tokens_computed,
        m.tokens_generated,
        t_alone,
        t0.elapsed()
    );
    assert!(
        m.preemptions >= 10,
        "a 12-block arena should preempt often (got {})",
        m.preemptions
    );
    assert_eq!(m.blocks_used, 0, "every block returned");
    for id in ids {
        e.release(id).unwrap();
    }
}

#[test]
fn shared_prefix_is_stored_and_computed_once() {
    let mut e = engine(400, 16, BUDGET);
    let text = "The GNU General Public License is a free, copyleft license for software and other kinds of works. ".repeat(12);
    let all = e.tokenizer().encode(&text, false, false).unwrap();
    // One pass computes the first prompt (under BUDGET tokens).
    let prefix = &all[..40];
    let suffixes: Vec<Vec<u32>> = (0..16u32).map(|i| vec![504 + i, 3575, 282 + i]).collect();
    let prompt = |i: usize| [prefix, &suffixes[i][..]].concat();
    let alone = solo(&(0..16).map(prompt).collect::<Vec<_>>(), &[6; 16]);

    let first = e.submit(&prompt(0), &greedy(6)).unwrap();
    e.step().unwrap(); // the first request's prompt is computed and its full blocks cached
    let mut ids = vec![first];
    for i in 1..16 {
        ids.push(e.submit(&prompt(i), &greedy(6)).unwrap());
    }
    e.step().unwrap();
    let m = e.metrics();
    // 40 shared tokens = 2 full blocks held once, plus each request's own tail blocks.
    let full = prefix.len() / 16;
    assert!(
        m.blocks_used <= full + 16 * 2,
        "{} blocks used: the shared prefix is not stored once",
        m.blocks_used
    );
    run_to_end(&mut e);
    let m = e.metrics();
    assert_eq!(m.prefix_hit_tokens, 15 * (full * 16) as u64);
    // Computed: one full prompt, then per request its uncached tail and 5 fed-back samples.
    let n = prefix.len() + 3;
    let tail = n - full * 16;
    assert_eq!(m.tokens_computed, (n + 15 * tail + 16 * 5) as u64);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(ids_of(&e, *id).remove(0), alone[i], "request {i}");
    }
}

#[test]
fn parallel_samples_share_the_prompt_and_match_solo_seeds() {
    let mut e = engine(200, 8, 256);
    let prompt = e
        .tokenizer()
        .encode("Once upon a time, in a land far away,", false, false)
        .unwrap();
    assert!(
        !prompt.len().is_multiple_of(16),
        "the last prompt block must be partial to exercise copy-on-write"
    );
    let sampling = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 1234,
    };
    let params = RequestParams {
        sampling: sampling.clone(),
        max_tokens: 12,
        n: 4,
        ignore_eos: true,
        ..RequestParams::default()
    };
    let id = e.submit(&prompt, &params).unwrap();
    e.step().unwrap(); // prompt computed once, siblings forked
    let m = e.metrics();
    let prompt_blocks = prompt.len().div_ceil(16);
    assert_eq!(
        m.blocks_used, prompt_blocks,
        "the four samples share the prompt blocks"
    );
    assert_eq!(m.tokens_computed, prompt.len() as u64);
    run_to_end(&mut e);
    let outs = ids_of(&e, id);
    assert_eq!(outs.len(), 4);
    // Each sample equals a solo run with seed + i (copy-on-write kept the shared block intact).
    for (i, out) in outs.iter().enumerate() {
        let mut s = engine(200, 1, 256);
        let p = RequestParams {
            sampling: SamplingParams {
                seed: 1234 + i as u64,
                ..sampling.clone()
            },
            n: 1,
            ..params.clone()
        };
        let solo_id = s.submit(&prompt, &p).unwrap();
        run_to_end(&mut s);
        assert_eq!(out, &ids_of(&s, solo_id)[0], "sample {i}");
    }
    assert!(
        outs.iter().any(|o| o != &outs[0]),
        "samples with different seeds should diverge"
    );
}

#[test]
fn refusals_and_cancellation() {
    let mut e = engine(10, 4, 64);
    // Beyond the context (512).
    let e1 = e.submit(&[1; 500], &greedy(20)).unwrap_err();
    assert!(
        matches!(
            e1,
            Error::ContextFull {
                n_ctx: 512,
                requested: 520
            }
        ),
        "{e1}"
    );
    // More blocks than the whole arena (10 blocks of 16 tokens).
    let e2 = e.submit(&[1; 150], &greedy(20)).unwrap_err();
    assert!(
        matches!(
            e2,
            Error::KvCacheFull {
                total_blocks: 10,
                ..
            }
        ),
        "{e2}"
    );
    let e3 = e.submit(&[], &greedy(1)).unwrap_err();
    assert!(e3.to_string().contains("no tokens"), "{e3}");
    let e4 = e.submit(&[1, 2], &greedy(0)).unwrap_err();
    assert!(e4.to_string().contains("max_tokens"), "{e4}");
    assert_eq!(e.metrics().blocks_used, 0);

    // Cancel a running request: its blocks come back at once.
    let id = e.submit(&[504, 3575, 282, 4649, 314], &greedy(50)).unwrap();
    e.step().unwrap();
    e.step().unwrap();
    assert!(e.metrics().blocks_used > 0);
    e.cancel(id).unwrap();
    assert_eq!(e.metrics().blocks_used, 0);
    assert_eq!(
        e.output(id).unwrap().next().unwrap().finish,
        Some(FinishReason::Cancelled)
    );
    assert!(!e.has_work());
    e.release(id).unwrap();
    assert!(e.output(id).is_err(), "a released id is stale");
    assert!(e.cancel(id).is_err());
}

/// Speculative decoding by prompt lookup on a summary that reuses its source's wording: the
/// same ids as plain greedy decoding, with most drafts accepted.
#[test]
fn prompt_lookup_gives_the_plain_greedy_output() {
    use ember::backend::BackendKind;
    use ember::engine::Speculative;
    let cfg = EngineConfig {
        n_ctx: 512,
        kv_budget: KvBudget::Blocks(64),
        max_seqs: 1,
        ..EngineConfig::default()
    };
    let mut e = Engine::with_draft_rows(model(), cfg, BackendKind::Cpu).unwrap();
    let prompt = "<|im_start|>user\nRepeat this sentence exactly: The KV cache is \
                  PagedAttention: one fixed block arena, preallocated at start-up from an \
                  explicit budget, split into blocks of sixteen tokens.<|im_end|>\n\
                  <|im_start|>assistant\n";
    let run = |e: &mut Engine, spec: Option<Speculative>| {
        let params = RequestParams {
            max_tokens: 40,
            speculative: spec,
            ..RequestParams::default()
        };
        let id = e.submit_text(prompt, &params).unwrap();
        while e.has_work() {
            e.step().unwrap();
        }
        let o = e.output(id).unwrap().next().unwrap();
        let r = (o.ids.clone(), o.draft_tokens, o.accepted_tokens);
        e.release(id).unwrap();
        r
    };
    let (plain, _, _) = run(&mut e, None);
    for k in [3, 8] {
        let (ids, drafted, accepted) = run(&mut e, Some(Speculative::lookup(k)));
        assert_eq!(ids, plain, "k = {k}");
        assert!(
            accepted * 2 > ids.len(),
            "k = {k}: {accepted} of {drafted} drafts accepted, {} tokens",
            ids.len()
        );
    }
}
