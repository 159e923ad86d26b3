//! The cost of grammar-constrained sampling per token: the mask of allowed tokens for a JSON
//! Schema over SmolLM2's 49k-token vocabulary, along a real JSON document.
//!
//! For each token of the document (tokenized by the model's tokenizer) it times the mask the
//! sampler applies at that step, twice: as the engine runs it (recent states' masks cached),
//! and with the cache cleared first (a full trie walk every token). It also times building
//! the vocabulary trie (once per engine, at the first grammar request) and compiling the
//! schema.
//!
//! `cargo bench -p ember --bench grammar_mask [-- MODEL.gguf]` (default: the SmolLM2 model
//! that `scripts/fetch-model.sh` fetches; prints "skipped" when it is missing).

use std::sync::Arc;
use std::time::Instant;

use ember::gguf::{tokenizer_from_gguf, GgufFile};
use ember::grammar::{Grammar, GrammarMatcher, VocabTrie};

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
}
