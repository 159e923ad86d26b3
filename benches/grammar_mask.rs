//! The cost of grammar-constrained sampling per token: the mask of allowed tokens for a JSON
//! Schema over SmolLM2's 49k-token vocabulary, along a real JSON document.
//!
//! 1. The full mask along a real JSON document (tokenized by the model's tokenizer), per
//!    token: with the matcher's cache of recent states, and with the cache cleared first (a
//!    full trie walk every token). The sampler needs the full mask only for top-k 0 sampling
//!    or when thousands of likely tokens in a row are refused.
//! 2. What the engine pays: SmolLM2 generating schema-constrained JSON, greedy and sampled
//!    (temperature 0.8, top-k 40), against the same number of tokens unconstrained, as time
//!    per generated token after the first (one sequence, so one decode step per token).
//!
//! It also times building the vocabulary trie (once per engine, at the first grammar
//! request) and compiling the schema.
//!
//! `cargo bench -p ember --bench grammar_mask [-- MODEL.gguf]` (default: the SmolLM2 model
//! that `scripts/fetch-model.sh` fetches; prints "skipped" when it is missing).

use std::sync::Arc;
use std::time::Instant;

use ember::engine::{Engine, EngineConfig, FinishReason, KvBudget, RequestParams};
use ember::gguf::{tokenizer_from_gguf, GgufFile};
use ember::grammar::{Grammar, GrammarMatcher, VocabTrie};
use ember::model::Model;
use ember::sampler::SamplingParams;

const SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "city": {"type": "string"},
    "languages": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    "employed": {"type": "boolean"}
  },
  "required": ["name", "age", "city", "languages"]
}"#;

const DOC: &str = r#"{"name": "Ada Lovelace", "age": 36, "city": "London, England", "languages": ["English", "French", "Italian"], "employed": false}"#;

fn main() {
    let path = std::env::args()
        .skip(1)
        .find(|a| a.ends_with(".gguf"))
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let path = if std::path::Path::new(&path).exists() {
        path
    } else {
        format!("../{path}")
    };
    let Ok(file) = GgufFile::open(&path) else {
        println!("grammar_mask: skipped: no model at {path}");
        return;
    };
    let tok = tokenizer_from_gguf(&file).expect("tokenizer");
    let n_vocab = tok.vocab_size();
    let t = Instant::now();
    let trie = Arc::new(VocabTrie::new(&tok, n_vocab));
    let trie_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let g = Arc::new(Grammar::from_json_schema(SCHEMA).expect("schema"));
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let ids = tok.encode(DOC, false, false).expect("encode");
    let mut logits = vec![0.0f32; n_vocab];
    let mut run = |cached: bool| {
        let mut m = GrammarMatcher::new(Arc::clone(&g), Arc::clone(&trie));
        let mut times = Vec::with_capacity(ids.len());
        for &id in &ids {
            logits.fill(0.0);
            if !cached {
                m.clear_cache();
            }
            let t = Instant::now();
            let allowed = m.apply(&mut logits);
            times.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(
                allowed > 0 && logits[id as usize] == 0.0,
                "the document's token is allowed"
            );
            assert!(m.accept(id));
        }
        assert!(m.accepting());
        (times, m.walks, m.hits)
    };
    let stats = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (
            v.iter().sum::<f64>() / v.len() as f64,
            s[s.len() / 2],
            s[s.len() - 1],
        )
    };
    let _ = run(true); // warm-up
    let (cached, walks, hits) = run(true);
    let (uncached, _, _) = run(false);
    println!("grammar_mask: {path}");
    println!(
        "vocabulary {n_vocab} tokens, trie {} nodes built in {trie_ms:.1} ms; schema compiled in \
         {compile_ms:.2} ms ({} rules); document {} tokens",
        trie.n_nodes(),
        g.n_rules(),
        ids.len()
    );
    println!("| mask per token | mean µs | median µs | max µs |");
    println!("|---|---|---|---|");
    let (a, b, c) = stats(&cached);
    println!(
        "| as the engine runs it ({walks} walks, {hits} cache hits) | {a:.0} | {b:.0} | {c:.0} |"
    );
    let (a, b, c) = stats(&uncached);
    println!("| trie walk every token (cache cleared) | {a:.0} | {b:.0} | {c:.0} |");
    engine_overhead(&path, &g);
}

/// One request's figures: ms per generated token after the first, tokens, why it finished,
/// and µs per token spent in constrained sampling (the sampler and the grammar together).
struct Run {
    ms: f64,
    n: usize,
    finish: FinishReason,
    grammar_us: f64,
}

fn run(e: &mut Engine, prompt: &str, params: &RequestParams) -> Run {
    let before = e.metrics();
    let id = e.submit_text(prompt, params).expect("submit");
    while e.has_work() {
        e.step().expect("step");
    }
    let out = e.output(id).expect("output").next().expect("one sequence");
    let (n, first, last) = (
        out.ids.len(),
        out.first_token.unwrap(),
        out.last_token.unwrap(),
    );
    let after = e.metrics();
    let r = Run {
        ms: (last - first).as_secs_f64() * 1e3 / (n - 1).max(1) as f64,
        n,
        finish: out.finish.unwrap(),
        grammar_us: (after.grammar_s - before.grammar_s) * 1e6
            / (after.grammar_tokens - before.grammar_tokens).max(1) as f64,
    };
    e.release(id).expect("release");
    r
}

fn engine_overhead(path: &str, g: &Arc<Grammar>) {
    let cfg = EngineConfig {
        n_ctx: 512,
        kv_budget: KvBudget::Blocks(32),
        max_seqs: 1,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(Model::load(path).expect("model"), cfg).expect("engine");
    let prompt = "A fictional person, as JSON with name, age, city, languages and employment:";
    println!();
    println!(
        "| SmolLM2, one sequence | tokens | ms/token with schema | sampling + grammar per token \
         | ms/token without |"
    );
    println!("|---|---|---|---|---|");
    let mut settings = vec![("greedy", SamplingParams::default())];
    for seed in 1..=6 {
        let p = SamplingParams {
            temperature: 0.8,
            seed,
            ..SamplingParams::default()
        };
        settings.push(("t=0.8 top-k 40", p));
        let p = SamplingParams {
            temperature: 0.8,
            top_k: 0,
            seed,
            ..SamplingParams::default()
        };
        settings.push(("t=0.8 top-k 0", p));
    }
    // Warm-up (the first grammar request builds the vocabulary trie).
    let warm = RequestParams {
        max_tokens: 8,
        grammar: Some(Arc::clone(g)),
        ..RequestParams::default()
    };
    run(&mut e, prompt, &warm);
    let (mut with_ms, mut without_ms, mut grammar_ms) = (0.0, 0.0, 0.0);
    for (name, sampling) in settings {
        let constrained = RequestParams {
            sampling: sampling.clone(),
            max_tokens: 200,
            grammar: Some(Arc::clone(g)),
            ..RequestParams::default()
        };
        let c = run(&mut e, prompt, &constrained);
        let plain = RequestParams {
            sampling,
            max_tokens: c.n,
            ignore_eos: true,
            ..RequestParams::default()
        };
        let p = run(&mut e, prompt, &plain);
        with_ms += c.ms;
        without_ms += p.ms;
        grammar_ms += c.grammar_us / 1e3;
        println!(
            "| {name} (seed {}) | {} ({:?}) | {:.2} | {:.3} ms ({:.1}%) | {:.2} |",
            constrained.sampling.seed,
            c.n,
            c.finish,
            c.ms,
            c.grammar_us / 1e3,
            c.grammar_us / 1e3 / c.ms * 100.0,
            p.ms
        );
    }
    println!(
        "| sum over runs | | {with_ms:.2} | {grammar_ms:.3} ms ({:.1}%) | {without_ms:.2} |",
        grammar_ms / with_ms * 100.0
    );
}
