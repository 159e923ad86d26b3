//! The merge loop of [`super::bpe`] against the `tokenizers` crate's `BPE` model (which Ember
//! used before, and which the llama.cpp goldens were first matched with): same pre-tokenizers,
//! random vocabularies with thousands of merges, random text, every pre-tokenizer pipeline.

use std::collections::HashSet;
use std::sync::OnceLock;

use proptest::prelude::*;
use tokenizers::models::bpe::BPE;

use super::bpe::{byte_to_char, pre_tokenizer, PreConfig, SUPPORTED_PRE};
use super::{Tokenizer, TokenizerSpec};

/// A byte-level vocabulary grown by `n_merges` random merges of existing tokens (seeded), with
/// a few byte atoms left out (their characters are dropped) and some merges whose result is not
/// a token (skipped by both).
fn random_vocab(seed: u64, n_merges: usize) -> (Vec<String>, Vec<String>) {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let atoms = byte_to_char();
    let mut tokens: Vec<String> = atoms
        .iter()
        .enumerate()
        .filter(|&(b, _)| !matches!(b, 0x07 | 0x7F | 0xC3))
        .map(|(_, c)| c.to_string())
        .collect();
    let mut merges = Vec::new();
    let mut seen = HashSet::new();
    let mut known: HashSet<String> = tokens.iter().cloned().collect();
    while merges.len() < n_merges {
        // Prefer recent (longer) tokens half the time, so long words merge deeply.
        let pick = |r: u64, n: usize| {
            if r.is_multiple_of(2) {
                (r / 2) as usize % n
            } else {
                n - 1 - ((r / 2) as usize % n.min(64))
            }
        };
        let (a, b) = (
            tokens[pick(next(), tokens.len())].clone(),
            tokens[pick(next(), tokens.len())].clone(),
        );
        // Tokens of at most 12 characters, as in real vocabularies (and cheap to build).
        if a.chars().count() + b.chars().count() > 12 || !seen.insert((a.clone(), b.clone())) {
            continue;
        }
        let joined = format!("{a}{b}");
        if next() % 16 != 0 && known.insert(joined.clone()) {
            tokens.push(joined);
        }
        merges.push(format!("{a} {b}"));
    }
    (tokens, merges)
}

/// The `tokenizers` crate's BPE over the same vocabulary and pipeline.
fn reference(tokens: &[String], merges: &[String], pre: PreConfig) -> tokenizers::Tokenizer {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let known: HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let pairs = merges
        .iter()
        .filter_map(|m| {
            let (a, b) = m.split_at(m.bytes().skip(1).position(|c| c == b' ')? + 1);
            let b = &b[1..];
            let ab = format!("{a}{b}");
            (known.contains(a) && known.contains(b) && known.contains(ab.as_str()))
                .then(|| (a.into(), b.into()))
        })
        .collect();
    let model = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(pre.ignore_merges)
        .build()
        .expect("reference BPE builds");
    let mut t = tokenizers::Tokenizer::new(model);
    t.with_pre_tokenizer(Some(pre_tokenizer(pre.kind).expect("pre-tokenizer")));
    t
}

fn ours(tokens: &[String], merges: &[String], pre: &str) -> Tokenizer {
    Tokenizer::from_spec(TokenizerSpec {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens: tokens.to_vec(),
        merges: merges.to_vec(),
        ..TokenizerSpec::default()
    })
    .expect("random vocabulary builds")
}

/// Text drawn from letters, digits, spaces, newlines, punctuation, apostrophes, accented
/// letters, CJK, emoji and a byte with no token (`\x07`), biased to the vocabulary's atoms.
fn text() -> impl Strategy<Value = String> {
    let chars = prop::sample::select(vec![
        'a', 'b', 'e', 'h', 'l', 'o', 's', 't', 'A', 'Z', '0', '1', '7', ' ', ' ', '\n', '\t',
        '\'', ',', '.', '!', '$', 'é', 'ü', 'Ã', '日', '本', '😀', '\u{7}', '\u{a0}',
    ]);
    prop::collection::vec(chars, 0..120).prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn merges_equal_the_tokenizers_bpe_model(text in text(), which in 0..SUPPORTED_PRE.len()) {
        static VOCAB: OnceLock<(Vec<String>, Vec<String>)> = OnceLock::new();
        let (tokens, merges) = VOCAB.get_or_init(|| random_vocab(0x5EED, 3000));
        let pre = SUPPORTED_PRE[which];
        let want = reference(tokens, merges, PreConfig::from_name(Some(pre)).unwrap())
            .encode_fast(text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        let got = ours(tokens, merges, pre).encode(&text, false, false).unwrap();
        prop_assert_eq!(got, want, "pre {}", pre);
    }
}

#[test]
fn long_words_merge_like_the_reference() {
    let (tokens, merges) = random_vocab(7, 3000);
    let tok = ours(&tokens, &merges, "llama3");
    let r = reference(
        &tokens,
        &merges,
        PreConfig::from_name(Some("llama3")).unwrap(),
    );
    for text in [
        "a".repeat(5000),
        "hello".repeat(700),
        "ab".repeat(2000) + &" x".repeat(300),
    ] {
        let want = r
            .encode_fast(text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(tok.encode(&text, false, false).unwrap(), want);
    }
}

#[test]
fn a_pair_listed_twice_keeps_its_first_rank() {
    // "a b" is listed first and again after "b c": "abc" splits as "ab"+"c" only if the first
    // rank of "a b" counts.
    let mut tokens: Vec<String> = byte_to_char().iter().map(|c| c.to_string()).collect();
    for t in ["ab", "bc"] {
        tokens.push(t.into());
    }
    let merges: Vec<String> = ["a b", "b c", "a b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let tok = ours(&tokens, &merges, "gpt2");
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    assert_eq!(
        tok.encode("abc", false, false).unwrap(),
        [id("ab"), id("c")]
    );
}
