//! The GBNF parser and the JSON Schema converter on arbitrary text, and the matcher on what
//! they compile.
//!
//! Properties: `Grammar::parse` and `Grammar::from_json_schema` never panic (errors are
//! values); the GBNF a schema converts to always compiles; for a compiled grammar, walking a
//! sample text byte by byte over a byte vocabulary, the mask and the one-token check agree on
//! every token at every step, a byte the mask refuses is refused by `accept`, and once the
//! whole text is accepted the matcher accepts the end exactly when `Grammar::accepts` says the
//! text is in the language.
#![no_main]

use std::sync::{Arc, OnceLock};

use ember::gguf::{tokenizer_from_gguf, GgufFile};
use ember::grammar::{Grammar, GrammarMatcher, VocabTrie};
use ember::synth::{synth_gguf, SynthSpec};
use ember::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

/// The input: a first byte whose low bit says "JSON schema", then the GBNF or schema text, a
/// NUL byte, and the sample text (both read as lossy UTF-8). Plain files, so that seeds are
/// readable (fuzz/seeds/grammar/).
struct Input {
    text: String,
    schema: bool,
    sample: String,
}

impl Input {
    fn from_bytes(data: &[u8]) -> Option<Input> {
        let (&flag, rest) = data.split_first()?;
        let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Some(Input {
            text: String::from_utf8_lossy(&rest[..cut]).into_owned(),
            schema: flag & 1 == 1,
            sample: String::from_utf8_lossy(rest.get(cut + 1..).unwrap_or(&[])).into_owned(),
        })
    }
}

/// The synthetic model's byte-level vocabulary (every byte is a token), built once.
fn vocab() -> &'static (Tokenizer, Arc<VocabTrie>, Vec<u32>) {
    static V: OnceLock<(Tokenizer, Arc<VocabTrie>, Vec<u32>)> = OnceLock::new();
    V.get_or_init(|| {
        let bytes = synth_gguf(&SynthSpec::default()).unwrap().to_bytes().unwrap();
        let tok = tokenizer_from_gguf(&GgufFile::from_bytes(bytes).unwrap()).unwrap();
        let trie = Arc::new(VocabTrie::new(&tok, tok.vocab_size()));
        let mut byte_ids = vec![0u32; 256];
        for id in 0..tok.vocab_size() as u32 {
            if let [b] = tok.token_bytes(id) {
                byte_ids[*b as usize] = id;
            }
        }
        (tok, trie, byte_ids)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::from_bytes(data) else {
        return;
    };
    let grammar = if input.schema {
        match Grammar::json_schema_to_gbnf(&input.text) {
            Ok(gbnf) => Grammar::parse(&gbnf)
                .unwrap_or_else(|e| panic!("schema GBNF does not compile: {e}\n{gbnf}")),
            Err(_) => return,
        }
    } else {
        match Grammar::parse(&input.text) {
            Ok(g) => g,
            Err(e) => {
                assert!(!e.message.is_empty());
                return;
            }
        }
    };
    let in_language = grammar.accepts(&input.sample);
    let (tok, trie, byte_ids) = vocab();
    let n_vocab = tok.vocab_size();
    let mut m = GrammarMatcher::new(Arc::new(grammar), Arc::clone(trie));
    let mut logits = vec![0.0f32; n_vocab];
    for &b in input.sample.as_bytes().iter().take(64) {
        logits.fill(0.0);
        let allowed = m.apply(&mut logits);
        let mut count = 0;
        for id in 0..n_vocab as u32 {
            let by_mask = logits[id as usize] == 0.0;
            assert_eq!(by_mask, m.allows(id), "token {id}");
            count += usize::from(by_mask);
        }
        assert_eq!(count, allowed);
        let id = byte_ids[b as usize];
        let ok = m.accept(id);
        assert_eq!(ok, logits[id as usize] == 0.0);
        if !ok {
            assert!(!in_language || input.sample.len() > 64);
            return;
        }
    }
    if input.sample.len() <= 64 {
        assert_eq!(m.accepting(), in_language);
    }
});
