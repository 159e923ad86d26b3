//! Synthetic models: GGUF files of any llama shape and weight type with seeded random weights.
//!
//! Tests use them to exercise shapes and formats the real model does not have (qwen2 biases and
//! NEOX RoPE, K-quants, F16/BF16 weights, GQA ratios), and they are small enough to travel to
//! machines that cannot receive the real model. The vocabulary is byte-level BPE: the 256 byte
//! symbols of GPT-2's byte-to-unicode map, a few control tokens and six merges.

use ember_kernels::traits::reference_traits;
use ember_kernels::GgmlType;
use half::f16;

use crate::error::{Error, Result};
use crate::gguf::writer::{GgufWriter, MetaArray, MetaValue};

/// Shape and formats of a synthetic model.
#[derive(Clone, Debug)]
pub struct SynthSpec {
    /// `llama` or `qwen2`.
    pub arch: String,
    /// Vocabulary size (at least 266: 4 control tokens, 256 bytes, 6 merges).
    pub n_vocab: usize,
    /// Model width.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// FFN width.
    pub n_ff: usize,
    /// Training context length written to the metadata.
    pub n_ctx: usize,
    /// Type of the projection matrices.
    pub weight_type: GgmlType,
    /// Type of the token embedding.
    pub embd_type: GgmlType,
    /// Separate `output.weight` instead of the tied embedding.
    pub separate_output: bool,
    /// RNG seed.
    pub seed: u64,
    /// Sliding window of gemma3's local layers (five of every six; ignored by other
    /// architectures).
    pub sliding_window: usize,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            arch: "llama".into(),
            n_vocab: 272,
            n_embd: 64,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 128,
            n_ctx: 256,
            weight_type: GgmlType::Q8_0,
            embd_type: GgmlType::Q8_0,
            separate_output: false,
            seed: 1,
            sliding_window: 32,
        }
    }
}

/// splitmix64: a small, well-mixed seeded generator (no external RNG crate).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// GPT-2's byte-to-unicode map: printable bytes map to themselves, the others to U+0100 onwards.
fn byte_symbol(b: u8) -> char {
    let printable =
        (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    if printable {
        char::from(b)
    } else {
        let mut n = 0u32;
        for x in 0..b {
            let p = (b'!'..=b'~').contains(&x)
                || (0xa1..=0xac).contains(&x)
                || (0xae..=0xff).contains(&x);
            if !p {
                n += 1;
            }
        }
        char::from_u32(256 + n).expect("valid code point")
    }
}

/// Random bytes of a `rows × cols` tensor of type `ty` with values of scale `scale`.
fn random_tensor(
    rng: &mut Rng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    scale: f32,
) -> Result<Vec<u8>> {
    let row_bytes = ty
        .row_bytes(cols as u64)
        .ok_or_else(|| Error::InvalidParam {
            name: "synth",
            what: format!(
                "row length {cols} is not a multiple of the {ty} block size {}",
                ty.block_size()
            ),
        })? as usize;
    let mut out = vec![0u8; rows * row_bytes];
    // Quantized from random floats, except the k-quants: their quantizer is a search, slow for
    // the billion-weight shapes the benchmarks synthesize, and random quants serve as well.
    let from_float = reference_traits(ty).and_then(|t| t.from_float);
    let k_quant = matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K);
    if let (Some(q), false) = (from_float, k_quant) {
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            row.iter_mut().for_each(|x| *x = rng.uniform() * scale);
            q(&row, &mut out[r * row_bytes..(r + 1) * row_bytes]);
        }
        return Ok(out);
    }
    // K-quants: random quants with small, finite scales at the format's f16 fields.
    out.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
    let put = |blk: &mut [u8], at: usize, v: f32| {
        blk[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes())
    };
    for blk in out.chunks_exact_mut(ty.type_size()) {
        let d = scale / 32.0 * (0.5 + 0.5 * rng.uniform().abs());
        let m = scale / 32.0 * rng.uniform().abs();
        match ty {
            // d, dmin first (block_q4_K, block_q5_K)
            GgmlType::Q4_K | GgmlType::Q5_K => {
                put(blk, 0, d);
                put(blk, 2, m);
            }
            // d last (block_q6_K)
            GgmlType::Q6_K => put(blk, 208, d / 4.0),
            other => {
                return Err(Error::InvalidParam {
                    name: "synth",
                    what: format!("cannot make random {other} weights"),
                })
            }
        }
    }
    Ok(out)
}

/// Build the GGUF image of a synthetic model.
pub fn synth_gguf(spec: &SynthSpec) -> Result<GgufWriter> {
    let s = spec;
    if s.n_vocab < 260
        || s.n_head == 0
        || s.n_head_kv == 0
        || !s.n_head.is_multiple_of(s.n_head_kv)
        || !s.n_embd.is_multiple_of(s.n_head)
    {
        return Err(Error::InvalidParam {
            name: "synth",
            what: format!("inconsistent shape {s:?}"),
        });
    }
    // Every count is written as a u32 key, and the whole file is built in memory: bound the
    // shape before generating anything (`--embd 2^40` would abort in an allocation, `--layers
    // 2^32` would loop for hours).
    let dims = [
        s.n_vocab,
        s.n_embd,
        s.n_layer,
        s.n_head,
        s.n_head_kv,
        s.n_ff,
        s.n_ctx,
    ];
    let params = (|| {
        let hd = s.n_embd / s.n_head;
        let (e, qd, kvd) = (
            s.n_embd,
            s.n_head.checked_mul(hd)?,
            s.n_head_kv.checked_mul(hd)?,
        );
        let attn = e.checked_mul(qd.checked_mul(2)?.checked_add(kvd.checked_mul(2)?)?)?;
        let ffn = e.checked_mul(s.n_ff)?.checked_mul(3)?;
        let layer = attn.checked_add(ffn)?;
        let embd = s
            .n_vocab
            .checked_mul(e)?
            .checked_mul(1 + usize::from(s.separate_output))?;
        layer.checked_mul(s.n_layer)?.checked_add(embd)
    })();
    const MAX_PARAMS: usize = 1 << 32;
    const MAX_LAYERS: usize = 4096;
    if dims.iter().any(|&d| d > u32::MAX as usize)
        || s.n_layer > MAX_LAYERS
        || params.is_none_or(|p| p > MAX_PARAMS)
    {
        return Err(Error::InvalidParam {
            name: "synth",
            what: format!(
                "shape too large: at most {MAX_LAYERS} layers and {MAX_PARAMS} parameters \
                 ({})",
                params.map_or("overflow".into(), |p| format!("{p} requested"))
            ),
        });
    }
    if !["llama", "qwen2", "gemma3"].contains(&s.arch.as_str()) {
        return Err(Error::UnsupportedArch(s.arch.clone()));
    }
    let gemma = s.arch == "gemma3";
    if gemma && (s.sliding_window == 0 || s.sliding_window > u32::MAX as usize) {
        return Err(Error::InvalidParam {
            name: "synth",
            what: format!(
                "gemma3 needs a sliding window of 1..=2^32-1 positions, not {}",
                s.sliding_window
            ),
        });
    }
    let mut rng = Rng(s.seed);
    let hd = s.n_embd / s.n_head;
    let (e, qd, kvd) = (
        s.n_embd as u64,
        (s.n_head * hd) as u64,
        (s.n_head_kv * hd) as u64,
    );
    let a = s.arch.as_str();
    let mut w = GgufWriter::new();
    w.kv("general.architecture", MetaValue::Str(a.into()))
        .kv("general.name", MetaValue::Str(format!("ember-synth-{a}")))
        .kv(
            &format!("{a}.context_length"),
            MetaValue::U32(s.n_ctx as u32),
        )
        .kv(
            &format!("{a}.embedding_length"),
            MetaValue::U32(s.n_embd as u32),
        )
        .kv(
            &format!("{a}.block_count"),
            MetaValue::U32(s.n_layer as u32),
        )
        .kv(
            &format!("{a}.feed_forward_length"),
            MetaValue::U32(s.n_ff as u32),
        )
        .kv(
            &format!("{a}.attention.head_count"),
            MetaValue::U32(s.n_head as u32),
        )
        .kv(
            &format!("{a}.attention.head_count_kv"),
            MetaValue::U32(s.n_head_kv as u32),
        )
        .kv(
            &format!("{a}.attention.layer_norm_rms_epsilon"),
            MetaValue::F32(1e-5),
        )
        // Gemma 3's global layers rotate with a base of a million, its local ones with 10 000
        // (llama.cpp's default for `rope.freq_base_swa`): two tables, so a mix-up shows.
        .kv(
            &format!("{a}.rope.freq_base"),
            MetaValue::F32(if gemma { 1e6 } else { 1e4 }),
        );
    if gemma {
        w.kv(
            &format!("{a}.attention.sliding_window"),
            MetaValue::U32(s.sliding_window as u32),
        );
    }
    // Vocabulary: control tokens 0..4, then the 256 byte symbols, then filler tokens.
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    tokens.extend((0..=255u8).map(|b| byte_symbol(b).to_string()));
    let mut types = vec![3i32; 4];
    types.extend(std::iter::repeat_n(1, 256));
    // A few merges so the BPE has something to do.
    let merges: Vec<String> = ["t h", "h e", "i n", "e r", "a n", "\u{120} t"]
        .iter()
        .map(|m| m.to_string())
        .collect();
    for m in &merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    while tokens.len() < s.n_vocab {
        tokens.push(format!("<|extra_{}|>", tokens.len()));
        types.push(3);
    }
    w.kv("tokenizer.ggml.model", MetaValue::Str("gpt2".into()))
        .kv("tokenizer.ggml.pre", MetaValue::Str("gpt-2".into()))
        .kv(
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::Str(tokens)),
        )
        .kv(
            "tokenizer.ggml.token_type",
            MetaValue::Array(MetaArray::I32(types)),
        )
        .kv(
            "tokenizer.ggml.merges",
            MetaValue::Array(MetaArray::Str(merges)),
        )
        .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));

    let f32s = |rng: &mut Rng, n: u64, base: f32, spread: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| (base + spread * rng.uniform()).to_le_bytes())
            .collect()
    };
    let wt = s.weight_type;
    w.tensor(
        "token_embd.weight",
        s.embd_type,
        &[e, s.n_vocab as u64],
        random_tensor(&mut rng, s.embd_type, s.n_vocab, s.n_embd, 1.0)?,
    );
    for l in 0..s.n_layer {
        let n = |x: &str| format!("blk.{l}.{x}");
        let proj = 1.0 / (s.n_embd as f32).sqrt() * 2.0;
        w.tensor(
            &n("attn_norm.weight"),
            GgmlType::F32,
            &[e],
            f32s(&mut rng, e, 1.0, 0.2),
        );
        w.tensor(
            &n("attn_q.weight"),
            wt,
            &[e, qd],
            random_tensor(&mut rng, wt, qd as usize, s.n_embd, proj)?,
        );
        w.tensor(
            &n("attn_k.weight"),
            wt,
            &[e, kvd],
            random_tensor(&mut rng, wt, kvd as usize, s.n_embd, proj)?,
        );
        w.tensor(
            &n("attn_v.weight"),
            wt,
            &[e, kvd],
            random_tensor(&mut rng, wt, kvd as usize, s.n_embd, proj)?,
        );
        if a == "qwen2" {
            w.tensor(
                &n("attn_q.bias"),
                GgmlType::F32,
                &[qd],
                f32s(&mut rng, qd, 0.0, 0.1),
            );
            w.tensor(
                &n("attn_k.bias"),
                GgmlType::F32,
                &[kvd],
                f32s(&mut rng, kvd, 0.0, 0.1),
            );
            w.tensor(
                &n("attn_v.bias"),
                GgmlType::F32,
                &[kvd],
                f32s(&mut rng, kvd, 0.0, 0.1),
            );
        }
        if gemma {
            let hd = hd as u64;
            w.tensor(
                &n("attn_q_norm.weight"),
                GgmlType::F32,
                &[hd],
                f32s(&mut rng, hd, 1.0, 0.2),
            );
            w.tensor(
                &n("attn_k_norm.weight"),
                GgmlType::F32,
                &[hd],
                f32s(&mut rng, hd, 1.0, 0.2),
            );
            w.tensor(
                &n("post_attention_norm.weight"),
                GgmlType::F32,
                &[e],
                f32s(&mut rng, e, 1.0, 0.2),
            );
            w.tensor(
                &n("post_ffw_norm.weight"),
                GgmlType::F32,
                &[e],
                f32s(&mut rng, e, 1.0, 0.2),
            );
        }
        w.tensor(
            &n("attn_output.weight"),
            wt,
            &[qd, e],
            random_tensor(&mut rng, wt, s.n_embd, qd as usize, proj)?,
        );
        w.tensor(
            &n("ffn_norm.weight"),
            GgmlType::F32,
            &[e],
            f32s(&mut rng, e, 1.0, 0.2),
        );
        let ff = s.n_ff as u64;
        w.tensor(
            &n("ffn_gate.weight"),
            wt,
            &[e, ff],
            random_tensor(&mut rng, wt, s.n_ff, s.n_embd, proj)?,
        );
        w.tensor(
            &n("ffn_up.weight"),
            wt,
            &[e, ff],
            random_tensor(&mut rng, wt, s.n_ff, s.n_embd, proj)?,
        );
        let down = 1.0 / (s.n_ff as f32).sqrt() * 2.0;
        w.tensor(
            &n("ffn_down.weight"),
            wt,
            &[ff, e],
            random_tensor(&mut rng, wt, s.n_embd, s.n_ff, down)?,
        );
    }
    w.tensor(
        "output_norm.weight",
        GgmlType::F32,
        &[e],
        f32s(&mut rng, e, 1.0, 0.2),
    );
    if s.separate_output {
        w.tensor(
            "output.weight",
            wt,
            &[e, s.n_vocab as u64],
            random_tensor(
                &mut rng,
                wt,
                s.n_vocab,
                s.n_embd,
                1.0 / (s.n_embd as f32).sqrt() * 4.0,
            )?,
        );
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    /// llama.cpp refuses a byte-level BPE whose pre-tokenizer it does not know, and its name for
    /// GPT-2's is `gpt-2` (not `gpt2`): with any other value the synthetic models that the GPU
    /// side-by-side script writes would not load there.
    #[test]
    fn synthetic_tokenizer_names_a_pre_tokenizer_llama_cpp_knows() {
        let bytes = synth_gguf(&SynthSpec::default())
            .unwrap()
            .to_bytes()
            .unwrap();
        let f = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
        assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), Some("gpt-2"));
    }
}
