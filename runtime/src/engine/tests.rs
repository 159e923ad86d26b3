//! Scheduler unit tests on a tiny synthetic model: small enough for Miri (`scripts/ci/miri.sh`),
//! which interprets every forward pass. They check the scheduler's bookkeeping — preemption
//! and recompute, chunked prefill, prefix sharing, forks with copy-on-write, cancellation,
//! release — by its observable results: outputs equal to runs in a roomy engine, and every
//! block back in the pool.

use super::*;
use crate::gguf::GgufFile;
use crate::synth::{synth_gguf, SynthSpec};

/// The tiny model's shape: f32 weights allow a width of 8 (quantized blocks need 32): Miri
/// interprets every multiply-add, and the scheduler does not care how wide the model is.
pub(super) fn tiny_spec() -> SynthSpec {
    SynthSpec {
        n_embd: 8,
        n_layer: 1,
        n_head: 2,
        n_head_kv: 1,
        n_ff: 16,
        n_ctx: 64,
        weight_type: ember_kernels::GgmlType::F32,
        embd_type: ember_kernels::GgmlType::F32,
        ..SynthSpec::default()
    }
}

pub(super) fn tiny_model() -> Model {
    // Written once per test binary: under Miri, generating the weights is the slow part.
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let bytes = BYTES.get_or_init(|| synth_gguf(&tiny_spec()).unwrap().to_bytes().unwrap());
    Model::from_gguf(GgufFile::from_bytes(bytes.clone()).unwrap()).unwrap()
}

pub(super) fn engine(kv_blocks: usize, max_seqs: usize, max_batch_tokens: usize) -> Engine {
    let cfg = EngineConfig {
        n_ctx: 32,
        kv_budget: KvBudget::Blocks(kv_blocks),
        block_size: 4,
        max_seqs,
        max_batch_tokens,
        max_requests: 8,
        threads: 1,
        prefix_caching: true,
        ..EngineConfig::default()
    };
    Engine::new(tiny_model(), cfg).unwrap()
}

/// An engine for speculative decoding tests: context 64, blocks of 4, four sequences, 17
/// logits rows per step (1 + the largest draft).
pub(super) fn spec_engine(kv_blocks: usize) -> Engine {
    let cfg = EngineConfig {
        n_ctx: 64,
        kv_budget: KvBudget::Blocks(kv_blocks),
        block_size: 4,
        max_seqs: 4,
        max_batch_tokens: 64,
        max_requests: 8,
        threads: 1,
        prefix_caching: true,
        ..EngineConfig::default()
    };
    Engine::open(tiny_model(), cfg, crate::backend::BackendKind::Cpu, 17).unwrap()
}

/// Run one request of `params` per prompt to the end: ids per sequence, drafted and accepted
/// tokens; checks that every block came back.
pub(super) fn run_requests(
    e: &mut Engine,
    prompts: &[Vec<u32>],
    params: &RequestParams,
) -> (Vec<Vec<u32>>, usize, usize) {
    let ids: Vec<RequestId> = prompts
        .iter()
        .map(|p| e.submit(p, params).unwrap())
        .collect();
    run_to_end(e);
    let (mut outs, mut drafted, mut accepted) = (Vec::new(), 0, 0);
    for id in ids {
        for o in e.output(id).unwrap() {
            outs.push(o.ids.clone());
            drafted += o.draft_tokens;
            accepted += o.accepted_tokens;
        }
        e.release(id).unwrap();
    }
    assert_eq!(e.metrics().blocks_used, 0, "every block returned");
    (outs, drafted, accepted)
}

/// The requests speculative decoding must not change: greedy, sampled (temperature 0.9,
/// `seed`) with `n = 2`, and under a grammar; `max_tokens` each, past end of generation.
pub(super) fn equivalence_cases(max_tokens: usize, seed: u64) -> [RequestParams; 3] {
    let base = RequestParams {
        max_tokens,
        ignore_eos: true,
        ..RequestParams::default()
    };
    let grammar = crate::grammar::Grammar::parse("root ::= [^x]+").unwrap();
    [
        base.clone(),
        RequestParams {
            sampling: crate::sampler::SamplingParams {
                temperature: 0.9,
                seed,
                ..Default::default()
            },
            n: 2,
            ..base.clone()
        },
        RequestParams {
            grammar: Some(std::sync::Arc::new(grammar)),
            ..base
        },
    ]
}

pub(super) fn greedy(max_tokens: usize) -> RequestParams {
    RequestParams {
        max_tokens,
        ignore_eos: true,
        ..RequestParams::default()
    }
}

pub(super) fn run_to_end(e: &mut Engine) -> usize {
    let mut steps = 0;
    while e.has_work() {
        e.step().unwrap();
        steps += 1;
        assert!(steps < 1000, "engine does not terminate");
    }
    steps
}

fn outputs(e: &Engine, id: RequestId) -> Vec<Vec<u32>> {
    e.output(id).unwrap().map(|o| o.ids.clone()).collect()
}

fn prompts() -> Vec<Vec<u32>> {
    (0..4u32)
        .map(|i| {
            (0..3 + 2 * i)
                .map(|k| 10 + (i * 31 + k * 7) % 250)
                .collect()
        })
        .collect()
}

/// Requests in an arena too small for all of them, with a token budget that splits prompts
/// into chunks, give exactly what they give in a roomy engine; every block comes back.
#[test]
fn preemption_and_chunked_prefill_match_a_roomy_engine() {
    // Under Miri, which interprets every forward pass, three of the four prompts (still 8
    // blocks of 4 for an arena of 5) and the arena case only.
    let mut ps = prompts();
    if cfg!(miri) {
        ps.truncate(3);
    }
    let run = |blocks, seqs, budget| {
        let mut e = engine(blocks, seqs, budget);
        let ids: Vec<RequestId> = ps
            .iter()
            .map(|p| e.submit(p, &greedy(4)).unwrap())
            .collect();
        run_to_end(&mut e);
        let outs: Vec<Vec<u32>> = ids.iter().map(|&id| outputs(&e, id).remove(0)).collect();
        for id in ids {
            assert_eq!(
                e.output(id).unwrap().next().unwrap().finish,
                Some(FinishReason::Length)
            );
            e.release(id).unwrap();
        }
        let m = e.metrics();
        assert_eq!(m.blocks_used, 0, "every block returned");
        (outs, m.preemptions)
    };
    let (roomy, p0) = run(32, 4, 64);
    assert_eq!(p0, 0);
    // 5 blocks of 4 tokens: the four sequences (7 to 13 tokens, 12 blocks in all) cannot all
    // stay; then the same with prompts prefilled in chunks (4 tokens a step).
    let budgets: &[usize] = if cfg!(miri) { &[64] } else { &[64, 4] };
    for &budget in budgets {
        let (tight, p1) = run(5, 4, budget);
        assert!(
            budget < 64 || p1 > 0,
            "the tiny arena should preempt (budget {budget})"
        );
        assert_eq!(tight, roomy, "budget {budget}");
    }
}

/// A second request with the same prompt takes its full blocks from the prefix cache; `n = 2`
/// samples share the prompt and copy the partial block before writing into it.
#[test]
fn prefix_cache_and_forks_share_blocks_safely() {
    let mut e = engine(16, 4, 64);
    let prompt: Vec<u32> = (0..9).map(|k| 20 + 3 * k).collect(); // 2 full blocks + 1 token
    let a = e.submit(&prompt, &greedy(3)).unwrap();
    run_to_end(&mut e);
    let first = outputs(&e, a).remove(0);
    e.release(a).unwrap();
    let params = RequestParams { n: 2, ..greedy(3) };
    let b = e.submit(&prompt, &params).unwrap();
    e.step().unwrap();
    let m = e.metrics();
    assert_eq!(m.prefix_hit_tokens, 8, "both full prompt blocks reused");
    // First run: 9 prompt tokens + 2 fed-back samples; now only the last prompt token.
    assert_eq!(
        m.tokens_computed,
        9 + 2 + 1,
        "only the last prompt token computed again"
    );
    run_to_end(&mut e);
    for out in outputs(&e, b) {
        assert_eq!(out, first, "greedy samples equal the first run");
    }
    e.release(b).unwrap();
    assert_eq!(e.metrics().blocks_used, 0);
}

/// A prompt that repeats an earlier one into the middle of a block takes those tokens too:
/// they are copied from the block that holds them (cached full block, or the released partial
/// block), so only the last prompt token is computed; outputs are unchanged.
#[test]
fn prefix_reuse_below_block_granularity() {
    let mut e = engine(16, 4, 64);
    // 2 full blocks of 4 + 3 tokens; the first sample fills block 2, the second starts block 3.
    let prompt: Vec<u32> = (0..11).map(|k| 30 + 5 * k).collect();
    let a = e.submit(&prompt, &greedy(3)).unwrap();
    run_to_end(&mut e);
    let first = outputs(&e, a).remove(0);
    e.release(a).unwrap();
    let before = e.metrics();
    assert_eq!(before.tokens_computed, 11 + 2);
    let b = e.submit(&prompt, &greedy(3)).unwrap();
    e.step().unwrap();
    let m = e.metrics();
    assert_eq!(m.prefix_hit_tokens, 10, "2 blocks + 2 tokens of the third");
    assert_eq!(m.tokens_computed - before.tokens_computed, 1);
    run_to_end(&mut e);
    assert_eq!(outputs(&e, b).remove(0), first);
    e.release(b).unwrap();
    // The prompt plus the whole first reply and one token more: the released partial block
    // (the reply's last computed token) continues the cached full blocks.
    let mut longer = prompt.clone();
    longer.extend_from_slice(&first);
    longer.push(7);
    let before = e.metrics();
    let c = e.submit(&longer, &greedy(2)).unwrap();
    e.step().unwrap();
    let m = e.metrics();
    // 11 + 3 reply tokens computed: 13 (the last sample was never fed back), all reused.
    assert_eq!(m.prefix_hit_tokens - before.prefix_hit_tokens, 13);
    run_to_end(&mut e);
    let got = outputs(&e, c).remove(0);
    e.release(c).unwrap();
    assert_eq!(e.metrics().blocks_used, 0);
    // The same request in an engine without any cache (numerics, checked natively: under Miri
    // a second engine and its prefill cost half a minute and touch no other pool path).
    if !cfg!(miri) {
        let mut fresh = engine(16, 4, 64);
        fresh.set_prefix_caching(false);
        let d = fresh.submit(&longer, &greedy(2)).unwrap();
        run_to_end(&mut fresh);
        assert_eq!(outputs(&fresh, d).remove(0), got);
    }
}

/// Cancelling returns a request's blocks at once and leaves the others running; released ids
/// are stale.
#[test]
fn cancel_and_release_return_blocks() {
    let mut e = engine(16, 4, 64);
    let ps = prompts();
    let ids: Vec<RequestId> = ps
        .iter()
        .take(3)
        .map(|p| e.submit(p, &greedy(5)).unwrap())
        .collect();
    e.step().unwrap();
    let used = e.metrics().blocks_used;
    e.cancel(ids[1]).unwrap();
    assert!(e.metrics().blocks_used < used);
    assert_eq!(
        e.output(ids[1]).unwrap().next().unwrap().finish,
        Some(FinishReason::Cancelled)
    );
    run_to_end(&mut e);
    for &id in &[ids[0], ids[2]] {
        assert_eq!(outputs(&e, id)[0].len(), 5);
    }
    for id in ids {
        e.release(id).unwrap();
        assert!(e.release(id).is_err(), "double release is an error");
        assert!(e.output(id).is_err(), "released ids are stale");
    }
    let m = e.metrics();
    assert_eq!((m.blocks_used, m.blocks_free), (0, m.blocks_total));
    assert!(!e.has_work());
}

fn config(kv_budget: KvBudget, max_seqs: usize, max_batch_tokens: usize) -> EngineConfig {
    EngineConfig {
        n_ctx: 32,
        kv_budget,
        block_size: 4,
        max_seqs,
        max_batch_tokens,
        max_requests: 8,
        threads: 1,
        ..EngineConfig::default()
    }
}

/// Sizes near their type's maximum are refused with a message that states the bound, before
/// anything is allocated from them (they used to abort the process in an allocation).
#[test]
fn absurd_configs_are_errors_not_aborts() {
    let refused = |cfg: EngineConfig, want: &str| {
        let e = Engine::new(tiny_model(), cfg.clone()).unwrap_err();
        assert!(
            matches!(e, Error::InvalidParam { .. }),
            "{cfg:?}: {e} is not InvalidParam"
        );
        assert!(
            e.to_string().contains(want),
            "{cfg:?}: {e:?} lacks {want:?}"
        );
    };
    let huge = [u32::MAX as usize, usize::MAX, usize::MAX / 2 + 1];
    for n in huge {
        refused(config(KvBudget::Blocks(16), 4, n), "max_batch_tokens");
        refused(config(KvBudget::Blocks(16), n, n), "max_seqs");
        let requests = EngineConfig {
            max_requests: n,
            ..config(KvBudget::Blocks(16), 4, 64)
        };
        refused(requests, &format!("must be 1..={MAX_REQUESTS}"));
    }
    refused(
        config(KvBudget::Blocks(16), MAX_SEQS + 1, MAX_SEQS + 1),
        &format!("must be 1..={MAX_SEQS}"),
    );
    refused(
        config(KvBudget::Blocks(16), 4, MAX_BATCH_TOKENS + 1),
        &format!("max_seqs..={MAX_BATCH_TOKENS}"),
    );
    refused(config(KvBudget::Blocks(16), 0, 64), "max_seqs");
    let none = EngineConfig {
        max_requests: 0,
        ..config(KvBudget::Blocks(16), 4, 64)
    };
    refused(none, "max_requests");
    // `usize::MAX` blocks (plus the null block) overflow; they used to wrap to "no block".
    refused(config(KvBudget::Blocks(usize::MAX), 4, 64), "overflow");
    // Past the 32-bit block ids: refused before the arena is asked for.
    refused(
        config(KvBudget::Blocks(usize::MAX - 1), 4, 64),
        "block ids are 32-bit",
    );
    refused(
        config(KvBudget::Blocks(u32::MAX as usize), 4, 64),
        "block ids are 32-bit",
    );
}

/// A token budget above `n_ctx × max_seqs` can never be used: it is lowered, not allocated.
#[test]
fn batch_budget_is_lowered_to_what_the_sequences_hold() {
    let e = Engine::new(tiny_model(), config(KvBudget::Blocks(16), 2, 100_000)).unwrap();
    assert_eq!(e.cfg.max_batch_tokens, 64, "n_ctx 32 × 2 sequences");
    assert_eq!(e.scratch.max_tokens(), 64);
}

/// `max_tokens` up to `usize::MAX` is taken literally with checked arithmetic: beyond the room
/// the prompt leaves it is `ContextFull` (never a wrap, never a reservation of the caller's
/// count); the exact room runs to the end of the context. (A context of 12: Miri interprets
/// every step, and the boundary is the same at any size.)
#[test]
fn huge_max_tokens_are_context_full_not_a_wrap() {
    let prompt: Vec<u32> = (0..5).map(|k| 30 + 11 * k).collect();
    let cfg = EngineConfig {
        n_ctx: 12,
        ..config(KvBudget::Blocks(16), 2, 64)
    };
    let mut e = Engine::new(tiny_model(), cfg).unwrap();
    let id = e.submit(&prompt, &greedy(12 - 5)).unwrap();
    run_to_end(&mut e);
    let out = e.output(id).unwrap().next().unwrap();
    assert_eq!(out.ids.len(), 7);
    assert_eq!(out.finish, Some(FinishReason::Length));
    e.release(id).unwrap();
    for max_tokens in [usize::MAX, usize::MAX - 4, u32::MAX as usize, 12, 8] {
        let err = e.submit(&prompt, &greedy(max_tokens)).unwrap_err();
        assert!(
            matches!(err, Error::ContextFull { n_ctx: 12, requested } if requested == 5usize.saturating_add(max_tokens)),
            "max_tokens {max_tokens}: {err}"
        );
    }
    assert_eq!(e.metrics().blocks_used, 0);
}

/// A prompt that leaves no room, and a request larger than the whole arena, are refused with
/// messages that say so (the latter used to read "none is free" on an empty arena).
#[test]
fn requests_that_can_never_fit_say_why() {
    let mut e = engine(3, 2, 64);
    let long = vec![7u32; 32];
    let err = e.submit(&long, &greedy(usize::MAX)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PromptTooLong {
                n_prompt: 32,
                n_ctx: 32
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("prompt of 32 tokens does not fit the context of 32"),
        "{err}"
    );
    // 5 + 20 tokens: 7 blocks of 4; the arena holds 3.
    let err = e.submit(&[1, 2, 3, 4, 5], &greedy(20)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::KvCacheFull {
                total_blocks: 3,
                needed_blocks: 7
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("can never fit this arena"), "{msg}");
    assert!(!msg.contains("none is free"), "{msg}");
    assert_eq!(e.metrics().blocks_used, 0);
    assert!(!e.has_work());
}
