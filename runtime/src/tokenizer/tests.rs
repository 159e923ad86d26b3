//! Unit tests on synthetic vocabularies. The SmolLM2 goldens from llama.cpp live in the
//! integration tests; here the SentencePiece path is checked against the independent Python
//! reference `tests/tools/spm_ref.py` (fixture `tests/tools/spm_synthetic.json`).

use super::*;

/// A tiny byte-level BPE vocabulary: the 256 byte atoms, a few merges, two control tokens
/// (`<|endoftext|>` = 256, `<|im_start|>` = 257) and a user-defined `<tool>` (258).
fn gpt2_spec() -> TokenizerSpec {
    let atoms = bpe::byte_to_char();
    let mut tokens: Vec<String> = atoms.iter().map(|c| c.to_string()).collect();
    let mut token_types = vec![1; 256];
    for (t, ty) in [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<tool>", 4)] {
        tokens.push(t.to_string());
        token_types.push(ty);
    }
    let merges = [
        "h e", "he l", "hel l", "hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor l", "Ġworl d",
    ];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        token_types.push(1);
    }
    TokenizerSpec {
        model: "gpt2".into(),
        pre: Some("gpt2".into()),
        tokens,
        token_types,
        merges: merges.iter().map(|s| s.to_string()).collect(),
        eos: Some(256),
        ..TokenizerSpec::default()
    }
}

fn gpt2() -> Tokenizer {
    Tokenizer::from_spec(gpt2_spec()).expect("synthetic gpt2 vocab builds")
}

fn id_of(tok: &Tokenizer, text: &str) -> u32 {
    (0..tok.vocab_size() as u32)
        .find(|&i| tok.token_text(i) == Some(text))
        .expect("token exists")
}

#[test]
fn gpt2_merges_and_round_trip() {
    let tok = gpt2();
    let ids = tok.encode("hello world", true, true).unwrap();
    assert_eq!(ids, vec![id_of(&tok, "hello"), id_of(&tok, "Ġworld")]);
    assert!(!tok.add_bos(), "gpt2 with pre=gpt2 adds no BOS by default");
    for text in [
        "hello world",
        "  tabs\tand\nnewlines ",
        "é ü 😀 日本",
        "",
        "a1234b",
    ] {
        let ids = tok.encode(text, false, false).unwrap();
        assert_eq!(tok.decode(&ids), text);
    }
}

#[test]
fn gpt2_parse_special_controls_splitting() {
    let tok = gpt2();
    let text = "<|im_start|>hello<|endoftext|>";
    let with = tok.encode(text, false, true).unwrap();
    assert_eq!(with, vec![257, id_of(&tok, "hello"), 256]);
    let without = tok.encode(text, false, false).unwrap();
    assert!(!without.contains(&256) && !without.contains(&257));
    assert_eq!(
        tok.decode(&without),
        text,
        "unparsed control text is plain text"
    );
    // User-defined tokens are split out even without parse_special (llama.cpp behaviour).
    let ud = tok.encode("a<tool>b", false, false).unwrap();
    assert_eq!(
        ud,
        vec![u32::from(b'a'), 258, u32::from(b'b')],
        "atom id = byte"
    );
}

#[test]
fn gpt2_pieces_and_eog() {
    let tok = gpt2();
    assert_eq!(tok.token_bytes(id_of(&tok, "Ġworld")), b" world");
    assert_eq!(
        tok.token_bytes(256),
        b"",
        "control tokens render nothing by default"
    );
    assert_eq!(tok.token_piece(256, true), b"<|endoftext|>");
    assert_eq!(
        tok.token_bytes(258),
        b"<tool>",
        "user-defined tokens always render"
    );
    assert_eq!(tok.token_bytes(u32::MAX), b"");
    assert_eq!(tok.token_text(u32::MAX), None);
    assert!(tok.is_eog(256), "<|endoftext|> ends generation");
    assert!(!tok.is_eog(257));
    assert_eq!(tok.eos(), Some(256));
}

#[test]
fn gpt2_missing_bos_is_an_error_not_a_panic() {
    let mut spec = gpt2_spec();
    spec.add_bos = Some(true);
    let tok = Tokenizer::from_spec(spec).unwrap();
    let err = tok.encode("hi", true, false).unwrap_err();
    assert_eq!(err, TokenizerError::MissingSpecial("BOS"));
    assert!(err.to_string().contains("bos_token_id"));
    assert!(tok.encode("hi", false, false).is_ok());
}

#[test]
fn spec_errors_name_the_problem() {
    let mut spec = gpt2_spec();
    spec.pre = Some("martian".into());
    let msg = Tokenizer::from_spec(spec).unwrap_err().to_string();
    assert!(
        msg.contains("\"martian\"") && msg.contains("smollm") && msg.contains("llama-bpe"),
        "{msg}"
    );

    let mut spec = gpt2_spec();
    spec.model = "bert".into();
    let msg = Tokenizer::from_spec(spec).unwrap_err().to_string();
    assert!(msg.contains("\"bert\"") && msg.contains("gpt2"), "{msg}");

    let mut spec = gpt2_spec();
    spec.token_types.pop();
    assert!(matches!(
        Tokenizer::from_spec(spec),
        Err(TokenizerError::LengthMismatch {
            key: "tokenizer.ggml.token_type",
            ..
        })
    ));

    let mut spec = gpt2_spec();
    spec.merges.push("nospace".into());
    assert!(matches!(
        Tokenizer::from_spec(spec),
        Err(TokenizerError::BadMerge { .. })
    ));

    let mut spec = gpt2_spec();
    spec.merges.clear();
    assert_eq!(
        Tokenizer::from_spec(spec).unwrap_err(),
        TokenizerError::MissingMerges
    );

    assert_eq!(
        Tokenizer::from_spec(TokenizerSpec::default()).unwrap_err(),
        TokenizerError::EmptyVocab
    );
}

#[test]
fn every_supported_pre_builds_and_round_trips() {
    for pre in bpe::SUPPORTED_PRE {
        let mut spec = gpt2_spec();
        spec.pre = Some(pre.to_string());
        let tok = Tokenizer::from_spec(spec).unwrap_or_else(|e| panic!("{pre}: {e}"));
        let text = "Hello 123, world!\n\n  x's";
        let ids = tok.encode(text, false, false).unwrap();
        assert_eq!(tok.decode(&ids), text, "pre {pre}");
    }
}

/// The synthetic SentencePiece vocabulary and expected ids written by `tests/tools/spm_ref.py`.
fn spm_fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("../../../tests/tools/spm_synthetic.json")).unwrap()
}

fn spm() -> Tokenizer {
    let v = spm_fixture();
    let strings = |k: &str| {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
    };
    let spec = TokenizerSpec {
        model: "llama".into(),
        tokens: strings("tokens").collect(),
        token_types: v["token_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap() as i32)
            .collect(),
        scores: v["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
        ..TokenizerSpec::default()
    };
    Tokenizer::from_spec(spec).unwrap()
}

#[test]
fn spm_matches_python_reference() {
    let tok = spm();
    assert!(
        tok.add_bos() && tok.bos() == Some(1) && tok.eos() == Some(2),
        "SPM defaults"
    );
    for case in spm_fixture()["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = |k: &str| -> Vec<u32> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        assert_eq!(
            tok.encode(text, true, true).unwrap(),
            ids("bos_special"),
            "{text:?} special"
        );
        assert_eq!(
            tok.encode(text, false, false).unwrap(),
            ids("plain"),
            "{text:?} plain"
        );
    }
}

#[test]
fn spm_pieces_and_decode() {
    let tok = spm();
    let ids = tok.encode("hello world é 😀", false, false).unwrap();
    // The space prefix SentencePiece adds comes back as a leading space.
    assert_eq!(tok.decode(&ids), " hello world é 😀");
    assert_eq!(
        tok.token_bytes(3 + 0x41),
        b"A",
        "<0x41> renders as the byte"
    );
    assert_eq!(tok.token_bytes(0), b"", "<unk> renders nothing by default");
    assert_eq!(tok.token_piece(0, true), b"<unk>");
    assert!(tok.is_eog(2) && tok.is_eog(id_of(&tok, "<|im_end|>")));
}

#[test]
fn spm_flags() {
    let v = spm_fixture();
    let base = TokenizerSpec {
        model: "llama".into(),
        tokens: v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect(),
        ..TokenizerSpec::default()
    };
    let mut spec = base.clone();
    spec.add_bos = Some(false);
    spec.add_eos = Some(true);
    spec.add_space_prefix = Some(false);
    let tok = Tokenizer::from_spec(spec).unwrap();
    let ids = tok.encode("a", true, false).unwrap();
    assert_eq!(ids, vec![id_of(&tok, "a"), 2]);
}

/// Byte token ids of `s` in the SPM fixture (`<0xXX>` = 3 + byte).
fn byte_ids(s: &[u8]) -> Vec<u32> {
    s.iter().map(|&b| 3 + u32::from(b)).collect()
}

#[test]
fn stream_decoder_never_splits_a_code_point() {
    let tok = spm();
    let mut dec = StreamDecoder::new(&tok);
    let mut out = String::new();
    for (i, id) in byte_ids("😀é".as_bytes()).into_iter().enumerate() {
        let s = dec.push(&tok, id).to_string();
        match i {
            0..=2 | 4 => assert_eq!(s, "", "byte {i} completes nothing"),
            3 => assert_eq!(s, "😀"),
            _ => assert_eq!(s, "é"),
        }
        assert!(dec.pending() <= 3);
        out.push_str(&s);
    }
    assert_eq!(out, "😀é");
    assert_eq!(dec.flush(), "");
    // A whole token after a pending prefix is emitted together with the completed character.
    let hello = id_of(&tok, "\u{2581}hello");
    dec.push(&tok, 3 + 0xC3);
    assert_eq!(dec.push(&tok, 3 + 0xA9), "é");
    assert_eq!(dec.push(&tok, hello), " hello");
}

#[test]
fn stream_decoder_replaces_invalid_bytes() {
    let tok = spm();
    let mut dec = StreamDecoder::new(&tok);
    assert_eq!(
        dec.push(&tok, 3 + 0xFF),
        "\u{FFFD}",
        "0xFF can never start a character"
    );
    assert_eq!(dec.push(&tok, 3 + 0xF0), "");
    assert_eq!(dec.push(&tok, 3 + 0x9F), "");
    // 'a' breaks the pending sequence: one U+FFFD for it, then 'a'.
    assert_eq!(dec.push(&tok, id_of(&tok, "a")), "\u{FFFD}a");
    assert_eq!(dec.push(&tok, 3 + 0xE2), "");
    assert_eq!(
        dec.flush(),
        "\u{FFFD}",
        "an incomplete tail flushes as U+FFFD"
    );
    assert_eq!(dec.flush(), "");
    assert_eq!(dec.push(&tok, u32::MAX), "", "out-of-range ids are ignored");
    // Same as lossy decoding of the whole stream.
    let ids = byte_ids(&[0xFF, 0xF0, 0x9F, 0x61, 0xE2]);
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(dec.push(&tok, id));
    }
    streamed.push_str(dec.flush());
    assert_eq!(streamed, tok.decode(&ids));
}

#[test]
fn every_special_text_passes_the_prefilter() {
    let fim = FIM_TEXTS.iter().flat_map(|(names, _)| names.iter());
    for t in EOG_TEXTS
        .iter()
        .chain(EOT_TEXTS)
        .chain(fim)
        .chain(ALWAYS_RENDER)
        .chain(&["<|eom_id|>"])
    {
        assert!(may_be_special(t), "{t:?}");
    }
}
