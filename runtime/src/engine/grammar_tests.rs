//! Grammar-constrained requests through the engine, on a tiny random model: whatever the
//! weights and sampler settings, the output is in the grammar's language.

use std::sync::Arc;

use super::tests::tiny_model;
use super::*;
use crate::grammar::Grammar;

fn grammar_engine(kv_blocks: usize, max_seqs: usize) -> Engine {
    let cfg = EngineConfig {
        n_ctx: 64,
        kv_budget: KvBudget::Blocks(kv_blocks),
        block_size: 4,
        max_seqs,
        max_batch_tokens: 64,
        max_requests: 8,
        threads: 1,
        prefix_caching: true,
        ..EngineConfig::default()
    };
    Engine::new(tiny_model(), cfg).unwrap()
}

/// A small JSON object whose every document is short: the model must finish it.
const RECORD: &str = r#"
root ::= "{\"n\": " int ", \"ok\": " ("true" | "false") ", \"tag\": \"" [a-z]{1,4} "\"}"
int  ::= "0" | "-"? [1-9] [0-9]{0,2}
"#;

fn settings() -> Vec<SamplingParams> {
    let base = SamplingParams::default();
    vec![
        base.clone(),
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..base.clone()
        },
        SamplingParams {
            temperature: 0.8,
            top_k: 5,
            top_p: 0.9,
            seed: 3,
            ..base.clone()
        },
        SamplingParams {
            temperature: 1.5,
            repeat_penalty: 1.3,
            seed: 11,
            ..base
        },
    ]
}

#[test]
fn outputs_follow_the_grammar_with_every_sampler_setting() {
    let g = Arc::new(Grammar::parse(RECORD).unwrap());
    let mut e = grammar_engine(64, 4);
    for sampling in settings() {
        let params = RequestParams {
            sampling: sampling.clone(),
            max_tokens: 48,
            n: 3,
            grammar: Some(Arc::clone(&g)),
            ..RequestParams::default()
        };
        let id = e.submit(&[10, 20, 30], &params).unwrap();
        super::tests::run_to_end(&mut e);
        for out in e.output(id).unwrap() {
            assert_eq!(
                out.finish,
                Some(FinishReason::Eos),
                "{sampling:?}: {:?}",
                out.text
            );
            assert!(g.accepts(&out.text), "{sampling:?}: {:?}", out.text);
            let v: serde_json::Value = serde_json::from_str(&out.text).unwrap();
            assert!(v["n"].is_i64() && v["ok"].is_boolean() && v["tag"].is_string());
        }
        e.release(id).unwrap();
    }
    assert_eq!(e.metrics().blocks_used, 0);
}

/// The grammar state is the sequence's own: preemption (recompute) and chunked prefill give
/// what a roomy engine gives.
#[test]
fn grammar_state_survives_preemption() {
    let g = Arc::new(Grammar::parse(crate::grammar::tests::JSON).unwrap());
    let run = |blocks: usize| {
        let mut e = grammar_engine(blocks, 4);
        let params = RequestParams {
            sampling: SamplingParams {
                temperature: 1.0,
                seed: 5,
                ..SamplingParams::default()
            },
            max_tokens: 12,
            grammar: Some(Arc::clone(&g)),
            ..RequestParams::default()
        };
        let ids: Vec<RequestId> = (0..4u32)
            .map(|i| e.submit(&[40 + i, 50, 60 + i, 70], &params).unwrap())
            .collect();
        super::tests::run_to_end(&mut e);
        let outs: Vec<(Vec<u32>, String)> = ids
            .iter()
            .map(|&id| {
                let o = e.output(id).unwrap().next().unwrap();
                (o.ids.clone(), o.text.clone())
            })
            .collect();
        (outs, e.metrics().preemptions)
    };
    let (roomy, p0) = run(64);
    let (tight, p1) = run(6);
    assert_eq!(p0, 0);
    assert!(p1 > 0, "the small arena should preempt");
    assert_eq!(tight, roomy);
    for (_, text) in &roomy {
        assert!(text.starts_with('{'), "{text:?}");
    }
}
