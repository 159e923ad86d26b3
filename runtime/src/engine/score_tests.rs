//! Scoring requests on the tiny synthetic model: the rows handed out do not depend on how the
//! scheduler chunks them, on what else runs in the step, on whether they come from one
//! submission or appends, or on the prefix cache; misuse is refused without changing anything;
//! a NaN row follows the engine's one NaN rule.

use super::tests::{engine, greedy, run_to_end, tiny_model};
use super::*;

/// Step until `id` is idle, collecting its rows.
fn rows_of(e: &mut Engine, id: RequestId) -> Vec<(usize, Vec<f32>)> {
    let mut rows = Vec::new();
    let mut steps = 0;
    while !e.is_idle(id).unwrap() {
        e.step_with(|r| {
            if r.request == id {
                rows.push((r.pos, r.logits.to_vec()));
            }
        })
        .unwrap();
        steps += 1;
        assert!(steps < 1000, "scoring request never idle");
    }
    rows
}

const TOKENS: [u32; 13] = [1, 17, 42, 5, 99, 3, 200, 8, 64, 12, 7, 150, 33];

/// Every row of `TOKENS`, scored in one engine with room for all rows in one step.
fn reference_rows() -> Vec<(usize, Vec<f32>)> {
    let cfg = EngineConfig {
        n_ctx: 32,
        kv_budget: KvBudget::Blocks(16),
        block_size: 4,
        max_seqs: 1,
        max_batch_tokens: 32,
        max_requests: 2,
        threads: 1,
        prefix_caching: false,
        ..EngineConfig::default()
    };
    let mut e = Engine::open(tiny_model(), cfg, crate::backend::BackendKind::Cpu, 32).unwrap();
    let id = e.submit_scoring(&TOKENS, 0..TOKENS.len()).unwrap();
    let rows = rows_of(&mut e, id);
    e.release(id).unwrap();
    rows
}

#[test]
fn rows_do_not_depend_on_chunking_or_neighbours() {
    let want = reference_rows();
    assert_eq!(want.len(), TOKENS.len());
    assert!(want.iter().enumerate().all(|(i, r)| r.0 == i));
    // Two logits rows per step (max_seqs 2): the rows come in chunks, in position order,
    // beside a generation request that must give its lone ids.
    let mut solo = engine(32, 1, 8);
    let g = solo.submit(&TOKENS[..5], &greedy(6)).unwrap();
    run_to_end(&mut solo);
    let solo_ids: Vec<_> = solo.output(g).unwrap().map(|o| o.ids.clone()).collect();

    let mut e = engine(32, 2, 8);
    let g = e.submit(&TOKENS[..5], &greedy(6)).unwrap();
    let id = e.submit_scoring(&TOKENS, 0..TOKENS.len()).unwrap();
    let mut rows = Vec::new();
    while e.has_work() {
        let before = rows.len();
        e.step_with(|r| {
            assert_eq!(r.request, id);
            rows.push((r.pos, r.logits.to_vec()));
        })
        .unwrap();
        assert!(rows.len() - before <= 2, "more rows than the step holds");
    }
    assert_eq!(rows, want);
    let ids: Vec<_> = e.output(g).unwrap().map(|o| o.ids.clone()).collect();
    assert_eq!(ids, solo_ids);
    assert!(e.is_idle(id).unwrap() && !e.is_finished(id).unwrap());
    e.release(id).unwrap();
    e.release(g).unwrap();
    assert_eq!(e.metrics().blocks_used, 0);
}

#[test]
fn appended_tokens_equal_one_submission() {
    let want = reference_rows();
    let mut e = engine(32, 1, 8);
    let id = e.submit_scoring(&TOKENS[..6], 5..6).unwrap();
    let mut rows = rows_of(&mut e, id);
    for pos in 6..TOKENS.len() {
        e.append(id, &TOKENS[pos..pos + 1], pos..pos + 1).unwrap();
        assert!(e.has_work());
        rows.extend(rows_of(&mut e, id));
        // Idle again: holding its KV cache is no work.
        assert!(!e.has_work());
    }
    assert_eq!(rows, want[5..]);
    e.release(id).unwrap();
    assert_eq!(e.metrics().blocks_used, 0);
}

#[test]
fn the_prefix_cache_never_skips_a_wanted_row() {
    let want = reference_rows();
    let mut e = engine(32, 1, 16);
    let g = e.submit(&TOKENS, &greedy(1)).unwrap();
    run_to_end(&mut e);
    e.release(g).unwrap();
    assert!(e.metrics().blocks_cached >= 3);
    // Rows from position 6: the first block (positions 0..4) may come from the cache, and the
    // second's first two tokens (copied below block granularity); from position 6 on every
    // wanted row is computed.
    let id = e.submit_scoring(&TOKENS, 6..TOKENS.len()).unwrap();
    let rows = rows_of(&mut e, id);
    assert_eq!(rows, want[6..]);
    assert_eq!(e.metrics().prefix_hit_tokens, 6);
    e.release(id).unwrap();
}

#[test]
fn misuse_is_refused_and_changes_nothing() {
    let mut e = engine(32, 1, 8);
    assert!(e.submit_scoring(&[], 0..0).is_err());
    assert!(e.submit_scoring(&[1, 100_000], 0..1).is_err());
    assert!(e.submit_scoring(&TOKENS, 3..20).is_err());
    assert!(matches!(
        e.submit_scoring(&[1; 40], 0..1),
        Err(Error::ContextFull { n_ctx: 32, .. })
    ));
    let g = e.submit(&TOKENS[..3], &greedy(2)).unwrap();
    assert!(e.append(g, &[1], 3..4).is_err(), "appended to a generation");
    run_to_end(&mut e);
    e.release(g).unwrap();

    let id = e.submit_scoring(&TOKENS[..4], 3..4).unwrap();
    assert_eq!(rows_of(&mut e, id).len(), 1);
    // Rows before the appended tokens, past them, or a context overflow: refused, and the
    // request is still idle with its 4 tokens.
    assert!(e.append(id, &[1], 2..5).is_err());
    assert!(e.append(id, &[1], 4..6).is_err());
    assert!(e.append(id, &[9_999], 4..5).is_err());
    assert!(matches!(
        e.append(id, &[1; 29], 4..5),
        Err(Error::ContextFull {
            n_ctx: 32,
            requested: 33
        })
    ));
    assert!(e.is_idle(id).unwrap() && !e.has_work());
    e.append(id, &[1], 4..5).unwrap();
    assert_eq!(rows_of(&mut e, id).len(), 1);
    e.release(id).unwrap();
    assert!(e.is_idle(id).is_err(), "released id still known");
}

#[test]
fn a_nan_row_ends_the_request_with_its_cause() {
    let spec = crate::synth::SynthSpec {
        separate_output: true,
        ..super::tests::tiny_spec()
    };
    let mut w = crate::synth::synth_gguf(&spec).unwrap();
    let n_vocab = spec.n_vocab;
    let mut out = vec![0u8; 8 * n_vocab * 4];
    for (i, x) in out.chunks_exact_mut(4).enumerate() {
        let v = if i / 8 == 7 { f32::NAN } else { 0.01 };
        x.copy_from_slice(&v.to_le_bytes());
    }
    w.replace_tensor(
        "output.weight",
        ember_kernels::GgmlType::F32,
        &[8, n_vocab as u64],
        out,
    );
    let bytes = w.to_bytes().unwrap();
    let model = Model::from_gguf(crate::gguf::GgufFile::from_bytes(bytes).unwrap()).unwrap();
    let cfg = EngineConfig {
        n_ctx: 32,
        kv_budget: KvBudget::Blocks(16),
        block_size: 4,
        max_seqs: 2,
        max_batch_tokens: 16,
        max_requests: 4,
        threads: 1,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(model, cfg).unwrap();
    let id = e.submit_scoring(&TOKENS[..5], 2..5).unwrap();
    let rows = rows_of(&mut e, id);
    assert!(rows.is_empty(), "a NaN row was handed out");
    let out = e.output(id).unwrap().next().unwrap();
    assert_eq!(out.finish, Some(FinishReason::Error));
    assert!(
        matches!(&out.error, Some(Error::NonFinite(m)) if m.contains("after 3 tokens hold NaN")),
        "{:?}",
        out.error
    );
    assert_eq!(e.metrics().nan_logit_rows, 1);
    // Generation follows the same rule.
    let g = e.submit(&TOKENS[..5], &greedy(3)).unwrap();
    run_to_end(&mut e);
    let out = e.output(g).unwrap().next().unwrap();
    assert_eq!(out.finish, Some(FinishReason::Error));
    assert!(matches!(out.error, Some(Error::NonFinite(_))));
    assert!(out.ids.is_empty());
    e.release(g).unwrap();
    e.release(id).unwrap();
    assert_eq!(e.metrics().blocks_used, 0);
}

#[test]
fn a_session_evaluates_through_scoring_requests() {
    let cfg = crate::session::SessionConfig {
        n_ctx: 32,
        kv_budget: KvBudget::FullContext,
        block_size: 4,
        max_batch_tokens: 8,
        max_logits: 3,
        threads: 1,
        ..Default::default()
    };
    let mut s = crate::session::Session::new(tiny_model(), &cfg).unwrap();
    let want = reference_rows();
    let mut seq = s.new_sequence();
    seq.tokens.extend_from_slice(&TOKENS);
    // Positions that need logits must be one run: refused before anything is computed.
    let e = s.eval(&mut seq, |p| p == 2 || p == 9, |_, _, _| {});
    assert!(e.is_err());
    assert_eq!(seq.n_computed(), 0);
    let mut rows = Vec::new();
    s.eval(
        &mut seq,
        |p| p >= 4,
        |p, l, t| {
            assert_eq!(t, &TOKENS[..]);
            rows.push((p, l.to_vec()));
        },
    )
    .unwrap();
    assert_eq!(rows, want[4..]);
    assert_eq!(seq.n_computed(), TOKENS.len());
    s.release(&mut seq);
    assert_eq!(s.free_blocks(), s.arena_blocks() - 1);
}

#[test]
fn a_scoring_request_never_holds_back_samples() {
    // Two logits rows per step; the scorer runs first and wants 13 rows, the generation request
    // after it must still sample every step.
    let mut e = engine(32, 2, 16);
    let id = e.submit_scoring(&TOKENS, 0..TOKENS.len()).unwrap();
    e.step().unwrap();
    let g = e.submit(&TOKENS[..3], &greedy(4)).unwrap();
    let mut steps = 0;
    while !e.is_finished(g).unwrap() {
        let s = e.step().unwrap();
        assert_eq!(s.sampled, 1, "step {steps} sampled nothing");
        steps += 1;
    }
    assert_eq!(steps, 4);
    assert!(
        !e.is_idle(id).unwrap(),
        "the scorer had rows left to compute"
    );
    run_to_end(&mut e);
    e.release(id).unwrap();
    e.release(g).unwrap();
}

/// Truncating a scoring request forgets the tokens after the cut (other tokens appended there
/// score as if they had always been there), with or without the prefix cache holding the block
/// it cuts into; misuse changes nothing.
#[test]
fn truncate_then_append_scores_the_new_tokens() {
    let want = reference_rows();
    for caching in [false, true] {
        let mut e = engine(32, 1, 16);
        e.set_prefix_caching(caching);
        // Wrong tokens after position 6, computed, then cut off and replaced by TOKENS' own.
        let mut wrong = TOKENS[..6].to_vec();
        wrong.extend([90, 91, 92, 93]);
        let id = e.submit_scoring(&wrong, 9..10).unwrap();
        rows_of(&mut e, id);
        assert!(e.truncate(id, 0).is_err() && e.truncate(id, 11).is_err());
        e.truncate(id, 6).unwrap();
        // Positions 4..6 live in a block the prefix cache holds (it keeps its contents): the
        // cut gives it back and they are computed again; without the cache they stay.
        assert_eq!(e.has_work(), caching, "caching {caching}");
        e.append(id, &TOKENS[6..], 6..TOKENS.len()).unwrap();
        assert_eq!(rows_of(&mut e, id), want[6..], "caching {caching}");
        e.release(id).unwrap();
        assert_eq!(e.metrics().blocks_used, 0);
    }
    // Only scoring requests.
    let mut e = engine(32, 1, 16);
    let g = e.submit(&TOKENS, &greedy(1)).unwrap();
    assert!(e.truncate(g, 3).is_err());
}
