//! Shared inputs of the fuzz targets: the tiny synthetic model (the seed of the GGUF target and
//! the model of the C-API target) and the tokenizers the tokenizer target runs.
//!
//! Everything here is built once per process (`OnceLock`), never per input, so the targets
//! spend their time in the code under test.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::OnceLock;

use ember::gguf::writer::MetaValue;
use ember::gguf::{tokenizer_from_gguf, GgufFile};
use ember::synth::{synth_gguf, SynthSpec};
use ember::tokenizer::Tokenizer;
use ember_kernels::GgmlType;

/// SmolLM2-135M-Instruct's `tokenizer.chat_template` (as in the GGUF).
pub const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The shape of the tiny model: one layer, width 32, the synthetic 272-token byte-level BPE
/// vocabulary. A few KB as Q4_0; a forward pass takes microseconds.
pub fn tiny_spec() -> SynthSpec {
    SynthSpec {
        n_vocab: 272,
        n_embd: 32,
        n_layer: 1,
        n_head: 2,
        n_head_kv: 1,
        n_ff: 32,
        n_ctx: 64,
        weight_type: GgmlType::Q4_0,
        embd_type: GgmlType::Q4_0,
        ..SynthSpec::default()
    }
}

/// The tiny model's GGUF image, with SmolLM2's chat template added (for `ember_submit_chat`).
pub fn tiny_gguf() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut w = synth_gguf(&tiny_spec()).expect("the tiny spec is consistent");
        w.kv(
            "tokenizer.chat_template",
            MetaValue::Str(SMOLLM2_TEMPLATE.into()),
        );
        w.to_bytes().expect("the tiny model serializes")
    })
}

/// The tiny model written to a file (the C API loads models by path). Named by its content, so
/// processes (libFuzzer's fork mode starts many) share one file and leave no litter.
pub fn tiny_model_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let bytes = tiny_gguf();
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        let p = std::env::temp_dir().join(format!("ember-fuzz-tiny-{:016x}.gguf", h.finish()));
        if std::fs::read(&p).ok().as_deref() != Some(bytes) {
            let tmp = p.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&tmp, bytes).expect("temp dir is writable");
            std::fs::rename(&tmp, &p).expect("temp dir is writable");
        }
        p
    })
}

/// Where the real models are: `$EMBER_MODELS`, else the repository's `models/`.
fn models_dir() -> PathBuf {
    std::env::var_os("EMBER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// The tokenizers under test: the synthetic byte-level BPE (always), SmolLM2's byte-level BPE
/// and Gemma 3's SentencePiece with byte fallback (when `scripts/fetch-model.sh` fetched them;
/// a note on stderr says which are missing).
pub fn tokenizers() -> &'static [(&'static str, Tokenizer)] {
    static TOKS: OnceLock<Vec<(&'static str, Tokenizer)>> = OnceLock::new();
    TOKS.get_or_init(|| {
        let synth = GgufFile::from_bytes(tiny_gguf().to_vec()).expect("tiny model parses");
        let mut v = vec![(
            "synthetic",
            tokenizer_from_gguf(&synth).expect("synthetic tokenizer builds"),
        )];
        for (name, file) in [
            ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            ("gemma3", "gemma-3-270m-q4_k_m.gguf"),
        ] {
            let path = models_dir().join(file);
            match GgufFile::open(&path).and_then(|f| tokenizer_from_gguf(&f)) {
                Ok(t) => v.push((name, t)),
                Err(e) => eprintln!("fuzz: skipping the {name} tokenizer: {e}"),
            }
        }
        v
    })
}
