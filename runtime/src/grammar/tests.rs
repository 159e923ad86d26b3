use std::sync::Arc;

use super::*;
use crate::gguf::{tokenizer_from_gguf, GgufFile};
use crate::synth::{synth_gguf, SynthSpec};
use crate::tokenizer::Tokenizer;

/// Arithmetic expressions (our own equivalent of llama.cpp's `arithmetic.gbnf`).
pub(crate) const ARITHMETIC: &str = r#"
root  ::= expr
expr  ::= term (("+" | "-") term)*
term  ::= factor (("*" | "/") factor)*
factor ::= number | "(" expr ")"   # parentheses nest
number ::= [0-9]+
"#;

/// A bullet list of short lines.
pub(crate) const LIST: &str = r#"
root ::= item{1,3}
item ::= "- " [^\n]+ "\n"
"#;

/// Chess moves in algebraic notation, numbered.
pub(crate) const CHESS: &str = r#"
root   ::= "1. " move " " move ("\n2. " move " " move)?
move   ::= (pawn | piece | castle) [+#]?
pawn   ::= ([a-h] "x")? [a-h] [1-8] ("=" [NBRQ])?
piece  ::= [NBRQK] [a-h]? [1-8]? "x"? [a-h] [1-8]
castle ::= "O-O" "-O"?
"#;

/// JSON, any value (an equivalent of llama.cpp's `json.gbnf`).
pub(crate) const JSON: &str = r#"
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws
ws ::= | " " | "\n" [ \t]{0,20}
"#;

#[test]
fn grammars_accept_their_language_and_nothing_else() {
    let g = Grammar::parse(ARITHMETIC).unwrap();
    for ok in ["1", "12+3", "(1+2)*3", "((4))/2-1"] {
        assert!(g.accepts(ok), "{ok}");
    }
    for bad in ["", "+1", "1+", "(1", "1)", "a", "1 + 2"] {
        assert!(!g.accepts(bad), "{bad}");
    }
    let g = Grammar::parse(LIST).unwrap();
    assert!(g.accepts("- a\n"));
    assert!(g.accepts("- a\n- bc d\n- é\n"));
    assert!(!g.accepts("- a\n- b\n- c\n- d\n"), "at most 3 items");
    assert!(!g.accepts("- \n"));
    let g = Grammar::parse(CHESS).unwrap();
    for ok in [
        "1. e4 e5",
        "1. e4 e5\n2. Nf3 Nc6",
        "1. O-O-O Qxd8#",
        "1. exd8=Q+ Kxd8",
    ] {
        assert!(g.accepts(ok), "{ok}");
    }
    for bad in ["1. e9 e5", "1. e4", "1. Ze4 e5"] {
        assert!(!g.accepts(bad), "{bad}");
    }
    let g = Grammar::parse(JSON).unwrap();
    for ok in [
        r#"{}"#,
        r#"{"a": [1, -2.5e3, true, null, {"b": "\u00e9\n"}]}"#,
        "{\n  \"k\": \"v\"\n}",
    ] {
        assert!(g.accepts(ok), "{ok}");
    }
    for bad in [r#"{"a" 1}"#, r#"{"a": 01}"#, r#"[1]"#, "{\"a\": \"\u{1}\"}"] {
        assert!(!g.accepts(bad), "{bad}");
    }
}

#[test]
fn repetition_counts_and_escapes() {
    let g = Grammar::parse(r#"root ::= "a"{2,4} [\x41-\x43]{3} "\u00e9"? .*"#).unwrap();
    assert!(g.accepts("aaABC"));
    assert!(g.accepts("aaaaCCCé!?"));
    assert!(!g.accepts("aABC"));
    assert!(!g.accepts("aaaaaABC"));
    assert!(!g.accepts("aaABD"));
    let g = Grammar::parse("root ::= x{3}\nx ::= [^a-c]").unwrap();
    assert!(g.accepts("xyz"));
    assert!(!g.accepts("xbz"));
    assert!(!g.accepts("xy"));
    let g = Grammar::parse("root ::= (\"ab\" | \"c\"){1,}\n").unwrap();
    assert!(g.accepts("abcab"));
    assert!(!g.accepts(""));
    let g = Grammar::parse("root ::= \"\"").unwrap();
    assert!(g.accepts(""));
    assert!(!g.accepts("a"));
}

#[test]
fn bad_grammars_are_refused_with_where_and_why() {
    let cases = [
        ("root ::= foo", "`foo` is used but never defined"),
        ("a ::= \"x\"", "no `root` rule"),
        ("root ::= \"x\"\nroot ::= \"y\"", "defined twice"),
        ("root ::= root \"x\" | \"y\"", "left-recursive"),
        (
            "root ::= a\na ::= b? a \"x\" | \"y\"\nb ::= \"z\"",
            "left-recursive",
        ),
        ("root ::= (\"\")*", "left-recursive"),
        ("root ::= \"abc", "unterminated string"),
        ("root ::= [a-", "unterminated character class"),
        ("root ::= [z-a]", "out of order"),
        ("root ::= \"\\q\"", "unknown escape"),
        ("root ::= \"a\"{5,2}", "n < m"),
        ("root ::= \"a\"{2000}", "above 1024"),
        ("root ::= (\"a\"", "expected `)`"),
        ("root ::= *", "unexpected `*`"),
        ("root \"a\"", "expected `::=`"),
        ("root ::= \"\\xZZ\"", "hex digits"),
    ];
    for (text, want) in cases {
        let e = Grammar::parse(text).unwrap_err();
        assert!(e.to_string().contains(want), "{text:?}: {e}");
    }
    let e = Grammar::parse("root ::= \"a\"\n\nfoo ::= \"b\" )").unwrap_err();
    assert_eq!((e.line, e.col), (3, 13), "{e}");
    // Deep nesting and long chains are refused, not a stack overflow.
    let deep = format!("root ::= {}\"a\"{}", "(".repeat(100), ")".repeat(100));
    assert!(Grammar::parse(&deep)
        .unwrap_err()
        .to_string()
        .contains("nested"));
    let mut chain = String::from("root ::= r0\n");
    for i in 0..300 {
        chain.push_str(&format!("r{i} ::= r{}\n", i + 1));
    }
    chain.push_str("r300 ::= \"x\"\n");
    assert!(Grammar::parse(&chain)
        .unwrap_err()
        .to_string()
        .contains("chain"));
}

fn synth_tokenizer() -> Tokenizer {
    let bytes = synth_gguf(&SynthSpec::default())
        .unwrap()
        .to_bytes()
        .unwrap();
    tokenizer_from_gguf(&GgufFile::from_bytes(bytes).unwrap()).unwrap()
}

/// The trie walk's mask equals checking every token on its own, along a path through the
/// grammar (partial UTF-8 characters included: the synthetic vocabulary has byte tokens).
#[test]
fn masks_match_checking_each_token() {
    let tok = synth_tokenizer();
    let n_vocab = tok.vocab_size();
    let trie = Arc::new(VocabTrie::new(&tok, n_vocab));
    let grammars = [
        (JSON, "{\"key\": [\"é\", 12, {\"x\": null}], \"b\": true}"),
        (ARITHMETIC, "(12+3)*4"),
        ("root ::= \"日本\" [a-z]+ \"€\"", "日本abc€"),
        (CHESS, "1. e4 e5\n2. Nf3 Nc6"),
    ];
    for (text, path) in grammars {
        let g = Arc::new(Grammar::parse(text).unwrap());
        let mut m = GrammarMatcher::new(Arc::clone(&g), Arc::clone(&trie));
        // Follow `path` byte token by byte token: every byte is a token of the vocabulary.
        let byte_ids: Vec<u32> = path.bytes().map(|b| byte_token(&tok, b)).collect();
        for (step, &next) in byte_ids.iter().enumerate() {
            let mut logits = vec![0.0f32; n_vocab];
            let allowed = m.apply(&mut logits);
            let mut count = 0;
            for id in 0..n_vocab as u32 {
                let by_mask = logits[id as usize] == 0.0;
                assert_eq!(by_mask, m.allows(id), "{text:?} step {step} token {id}");
                count += usize::from(by_mask);
            }
            assert_eq!(count, allowed);
            assert!(m.allows(next), "{text:?} step {step}");
            assert!(m.accept(next));
        }
        assert!(m.accepting(), "{text:?}");
        let eog = tok.eog_ids()[0];
        assert!(m.allows(eog));
    }
}

fn byte_token(tok: &Tokenizer, b: u8) -> u32 {
    (0..tok.vocab_size() as u32)
        .find(|&id| tok.token_bytes(id) == [b])
        .expect("a byte token")
}

#[test]
fn tokens_the_grammar_refuses_are_not_accepted() {
    let tok = synth_tokenizer();
    let trie = Arc::new(VocabTrie::new(&tok, tok.vocab_size()));
    let g = Arc::new(Grammar::parse("root ::= \"ab\"").unwrap());
    let mut m = GrammarMatcher::new(g, trie);
    let eog = tok.eog_ids()[0];
    assert!(
        !m.allows(eog),
        "end of generation before the grammar is complete"
    );
    assert!(!m.accept(byte_token(&tok, b'b')));
    assert!(m.accept(byte_token(&tok, b'a')));
    assert!(!m.accepting());
    assert!(m.accept(byte_token(&tok, b'b')));
    assert!(m.accepting());
    let mut logits = vec![1.0f32; tok.vocab_size()];
    assert_eq!(
        m.apply(&mut logits),
        tok.eog_ids().len(),
        "only end of generation is left"
    );
    // A partial UTF-8 character blocks the end until it completes.
    let g = Arc::new(Grammar::parse("root ::= [^a]*").unwrap());
    let mut m = GrammarMatcher::new(g, Arc::clone(&m.trie));
    assert!(m.accept(byte_token(&tok, 0xc3)));
    assert!(!m.accepting());
    assert!(!m.accept(byte_token(&tok, b'x')), "not a continuation byte");
    assert!(m.accept(byte_token(&tok, 0xa9)));
    assert!(m.accepting());
    // Overlong encodings (F0 80 81 BB, C1 BB, E0 81 BB would all be `{`) and surrogates are
    // not characters.
    let g = Arc::new(Grammar::parse(r#"root ::= "{" | [\uE000-\uFFFF]"#).unwrap());
    for bad in [&[0xf0u8, 0x80][..], &[0xc1], &[0xe0, 0x81], &[0xed, 0xa0]] {
        let mut m = GrammarMatcher::new(Arc::clone(&g), Arc::clone(&m.trie));
        let ok = bad.iter().all(|&b| m.accept(byte_token(&tok, b)));
        assert!(!ok, "{bad:x?}");
    }
}
