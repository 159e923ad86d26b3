//! Reads the `tokenizer.ggml.*` keys of a GGUF file into a [`TokenizerSpec`].

use super::GgufFile;
use crate::error::{Error, Result};
use crate::tokenizer::{Tokenizer, TokenizerSpec};

/// Most tokens a vocabulary may have (Gemma 3 has 262 144).
const MAX_VOCAB: u64 = 1 << 22;

/// A special-token id; `None` when absent or outside the vocabulary (llama.cpp ignores such ids,
/// and real files carry them: a padding id equal to the vocabulary size is common).
fn token_id(f: &GgufFile, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    Ok(f.get_u64(key)?
        .filter(|&id| id < n_vocab as u64)
        .map(|id| id as u32))
}

/// The tokenizer description stored in `f`.
pub fn tokenizer_spec(f: &GgufFile) -> Result<TokenizerSpec> {
    let (mut spec, merges) = spec_and_merges(f)?;
    spec.merges = merges.into_iter().map(str::to_owned).collect();
    Ok(spec)
}

/// [`tokenizer_spec`] with the merges borrowed from the file (`spec.merges` left empty): the
/// tokenizer reads them once while building and need not copy them.
fn spec_and_merges(f: &GgufFile) -> Result<(TokenizerSpec, Vec<&str>)> {
    let model = f
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| Error::MissingKey("tokenizer.ggml.model".into()))?
        .to_string();
    if f.array_len("tokenizer.ggml.tokens").unwrap_or(0) > MAX_VOCAB {
        return Err(Error::BadKey {
            key: "tokenizer.ggml.tokens".into(),
            what: format!("more than {MAX_VOCAB} tokens"),
        });
    }
    let tokens: Vec<String> = f
        .get_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::MissingKey("tokenizer.ggml.tokens".into()))?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let n = tokens.len();
    let token_types = f
        .get_i32_array("tokenizer.ggml.token_type")?
        .unwrap_or_default();
    let scores = f
        .get_f32_array("tokenizer.ggml.scores")?
        .unwrap_or_default();
    for (key, len) in [
        ("tokenizer.ggml.token_type", token_types.len()),
        ("tokenizer.ggml.scores", scores.len()),
    ] {
        if len != 0 && len != n {
            return Err(Error::BadKey {
                key: key.into(),
                what: format!("{len} entries for {n} tokens"),
            });
        }
    }
    let merges = f
        .get_str_array("tokenizer.ggml.merges")?
        .unwrap_or_default();
    let spec = TokenizerSpec {
        model,
        pre: f.get_str("tokenizer.ggml.pre")?.map(str::to_owned),
        tokens,
        token_types,
        scores,
        merges: Vec::new(),
        bos: token_id(f, "tokenizer.ggml.bos_token_id", n)?,
        eos: token_id(f, "tokenizer.ggml.eos_token_id", n)?,
        eot: token_id(f, "tokenizer.ggml.eot_token_id", n)?,
        eom: token_id(f, "tokenizer.ggml.eom_token_id", n)?,
        unk: token_id(f, "tokenizer.ggml.unknown_token_id", n)?,
        pad: token_id(f, "tokenizer.ggml.padding_token_id", n)?,
        add_bos: f.get_bool("tokenizer.ggml.add_bos_token")?,
        add_eos: f.get_bool("tokenizer.ggml.add_eos_token")?,
        add_space_prefix: f.get_bool("tokenizer.ggml.add_space_prefix")?,
    };
    Ok((spec, merges))
}

/// Build the model's tokenizer from `f`.
pub fn tokenizer_from_gguf(f: &GgufFile) -> Result<Tokenizer> {
    let (spec, merges) = spec_and_merges(f)?;
    Tokenizer::from_spec_and_merges(spec, &merges).map_err(|e| Error::Tokenizer(e.to_string()))
}
