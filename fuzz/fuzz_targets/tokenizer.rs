//! Tokenizer encode/decode on arbitrary text and ids.
//!
//! Input: a selector byte (which tokenizer, which flags), then the text (bytes that are not
//! UTF-8 are read lossily: the API takes `&str`). Tokenizers: the synthetic byte-level BPE,
//! and SmolLM2's BPE and Gemma 3's SentencePiece when the models are fetched.
//!
//! Properties, exactly what the tokenizer guarantees:
//! - every id of every encoding is inside the vocabulary;
//! - without special-token parsing or BOS/EOS, decoding gives the text back byte for byte:
//!   byte-level BPE maps every byte to a token (bytes whose atom the vocabulary lacks are
//!   dropped, as llama.cpp drops them), SentencePiece falls back to byte tokens, and
//!   decode maps `▁` back to a space, so a `▁` in the text comes back as a space too; with
//!   `add_space_prefix` (Gemma 3 has it) one leading space is added and decode keeps it;
//! - streaming the ids through `StreamDecoder` gives the same text as `decode`;
//! - decoding arbitrary ids (out of range included) never panics and is valid UTF-8.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use ember::tokenizer::StreamDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let toks = ember_fuzz::tokenizers();
    let which = sel as usize % toks.len();
    let (name, tok) = &toks[which];
    let text = String::from_utf8_lossy(rest);
    let vocab = tok.vocab_size();

    let ids = tok
        .encode(&text, false, false)
        .unwrap_or_else(|e| panic!("{name}: plain encode failed: {e}"));
    assert!(
        ids.iter().all(|&id| (id as usize) < vocab),
        "{name}: id out of range"
    );
    let back = tok.decode(&ids);
    // SentencePiece: the add_space_prefix space shows before non-empty text, and `▁` in the
    // text is the same symbol as a space (llama.cpp's `token_to_piece` maps it back the same).
    let probe = tok.decode(&tok.encode("a\u{2581}", false, false).unwrap());
    let (spm, space_prefix) = (probe.ends_with("a "), probe.starts_with(' '));
    let mut want = String::new();
    if space_prefix && !text.is_empty() {
        want.push(' ');
    }
    if spm {
        want.push_str(&text.replace('\u{2581}', " "));
    } else {
        // Byte-level BPE drops the bytes whose atom the vocabulary lacks, as llama.cpp does
        // (SmolLM2 lacks 21 of the 256).
        let atoms = &byte_atoms()[which];
        let kept: Vec<u8> = text.bytes().filter(|&b| atoms[b as usize]).collect();
        want.push_str(&String::from_utf8_lossy(&kept));
    }
    assert_eq!(back, want, "{name}: round trip");

    let mut stream = StreamDecoder::new(tok);
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(stream.push(tok, id));
    }
    streamed.push_str(stream.flush());
    assert_eq!(streamed, back, "{name}: streamed text differs from decode");

    // The flags as the C API exposes them: errors only for a required BOS/EOS the model lacks.
    let (add_special, parse_special) = (sel & 0x40 != 0, sel & 0x80 != 0);
    if let Ok(ids) = tok.encode(&text, add_special, parse_special) {
        assert!(
            ids.iter().all(|&id| (id as usize) < vocab),
            "{name}: id out of range"
        );
    }

    // Arbitrary ids, in and out of range, through both decoders.
    let ids: Vec<u32> = rest
        .chunks_exact(3)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2] & 0x07, 0]))
        .collect();
    let text = tok.decode(&ids);
    let mut stream = StreamDecoder::new(tok);
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(stream.push(tok, id));
    }
    streamed.push_str(stream.flush());
    assert_eq!(
        streamed, text,
        "{name}: streamed arbitrary ids differ from decode"
    );
});

/// Per tokenizer: which bytes have a token of their own GPT-2 byte-level character.
fn byte_atoms() -> &'static [[bool; 256]] {
    static ATOMS: OnceLock<Vec<[bool; 256]>> = OnceLock::new();
    ATOMS.get_or_init(|| {
        ember_fuzz::tokenizers()
            .iter()
            .map(|(_, tok)| {
                let texts: HashSet<&str> = (0..tok.vocab_size() as u32)
                    .filter_map(|id| tok.token_text(id))
                    .collect();
                let mut atoms = [false; 256];
                let mut next = 256u32;
                for b in 0..=255u8 {
                    // GPT-2's map: printable Latin-1 bytes are themselves, the rest U+0100...
                    let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
                    let c = if printable {
                        char::from(b)
                    } else {
                        next += 1;
                        char::from_u32(next - 1).unwrap()
                    };
                    atoms[b as usize] = texts.contains(c.to_string().as_str());
                }
                atoms
            })
            .collect()
    })
}
