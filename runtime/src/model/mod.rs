//! A llama-family model (llama, qwen2, gemma3): hyper-parameters, weights (views of the mapped GGUF) and the forward
//! pass.

pub mod config;
pub mod executor;
pub mod forward;
pub mod scratch;
pub mod weights;

use std::path::Path;

pub use config::{Arch, Config, FfnAct, RopePairing};
pub use executor::{Act, BatchToken, BlockTables, Executor, Limits, Out, RopeTable, Step};
pub use scratch::Scratch;
pub use weights::{Mat, Weights};

use crate::error::Result;
use crate::gguf::GgufFile;

/// A loaded model. The GGUF file stays mapped for the model's lifetime; weights are never copied.
pub struct Model {
    /// The mapped file.
    pub file: GgufFile,
    /// Hyper-parameters.
    pub config: Config,
    /// Typed views of the weights.
    pub weights: Weights,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish()
    }
}

impl Model {
    /// Map and check a GGUF model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Self::from_gguf(GgufFile::open(path)?)
    }

    /// Check a parsed GGUF file and build the model over it.
    pub fn from_gguf(file: GgufFile) -> Result<Model> {
        let mut config = Config::from_gguf(&file)?;
        let weights = Weights::from_gguf(&file, &mut config)?;
        let model = Model {
            file,
            config,
            weights,
        };
        model.check_vectors()?;
        // The RoPE frequency factors (a few dozen floats) divide every angle: a zero or NaN
        // would rotate everything into garbage silently, so they are read at load.
        if let Some(f) = model.rope_freqs() {
            if let Some(i) = f.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(crate::Error::BadTensor {
                    name: "rope_freqs.weight".into(),
                    what: format!(
                        "frequency factor {i} is {}; every factor must be a positive finite \
                         number",
                        f[i]
                    ),
                });
            }
        }
        Ok(model)
    }

    /// A 64-bit fingerprint of the model file, for caches of what it computed (a prompt cache
    /// file records it; [`crate::kv::cache_file`]): the checksum of the whole header (metadata,
    /// vocabulary, tensor names, types, shapes and offsets), the file size, the first and last
    /// 64 bytes of every tensor and 256 bytes of every 256 KiB of the data section.
    ///
    /// Cheap on purpose (≈ 0.1% of the file is read, about a millisecond for SmolLM2-135M): a
    /// cache must not cost a cold start a pass over every weight. Two quantizations, two sizes or
    /// two fine-tunes of one architecture differ in the header or in essentially every sampled
    /// range; a file edited only between the sampled bytes is not told apart.
    pub fn fingerprint(&self) -> u64 {
        use crate::kv::cache_file::Checksum;
        const STRIDE: usize = 256 << 10;
        const SAMPLE: usize = 256;
        const EDGE: usize = 64;
        let bytes = self.file.bytes();
        let data = usize::try_from(self.file.data_offset())
            .unwrap_or(bytes.len())
            .min(bytes.len());
        let mut c = Checksum::new();
        c.update(&(bytes.len() as u64).to_le_bytes());
        c.update(&bytes[..data]);
        for t in self.file.tensors() {
            let d = self.file.tensor_data(t);
            c.update(&d[..d.len().min(EDGE)]);
            c.update(&d[d.len().saturating_sub(EDGE)..]);
        }
        let mut at = data;
        while at < bytes.len() {
            c.update(&bytes[at..(at + SAMPLE).min(bytes.len())]);
            at += STRIDE;
        }
        c.finish()
    }

    /// The per-dimension RoPE frequency divisors (Llama 3.1-style scaling), if the model has
    /// them `[head_dim / 2]`.
    pub fn rope_freqs(&self) -> Option<&[f32]> {
        let v = self.weights.rope_freqs.as_ref()?;
        Some(weights::f32_slice(self.file.bytes(), v).expect("alignment checked at load"))
    }

    /// Read every weight and check that it is finite (NaN or ±inf anywhere, including in the
    /// f16 scales of quantized blocks, gives an error naming the tensor, row and column).
    ///
    /// Loading does not do this: it would read the whole file at start-up. A model with
    /// non-finite weights loads, and a request whose logits come out NaN ends with
    /// [`crate::engine::FinishReason::Error`] and [`crate::Error::NonFinite`] as its cause (the
    /// engine's one NaN rule) rather than sampling from them. `ember info --check-tensors` runs this.
    pub fn check_tensors(&self) -> Result<()> {
        let mut row = Vec::new();
        for t in self.file.tensors() {
            let Some(tr) = ember_kernels::traits::reference_traits(t.ty) else {
                continue; // not used by any supported model: from_gguf rejected it if needed
            };
            let n = t.ne[0] as usize;
            let data = self.file.tensor_data(t);
            let row_bytes = t.ty.row_bytes(n as u64).unwrap_or(0) as usize;
            if n == 0 || row_bytes == 0 {
                continue;
            }
            row.resize(n, 0.0f32);
            for (r, src) in data.chunks_exact(row_bytes).enumerate() {
                (tr.to_float)(src, &mut row);
                if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                    return Err(crate::Error::NonFinite(format!(
                        "tensor {} holds {} at row {r}, column {c}",
                        t.name, row[c]
                    )));
                }
            }
        }
        Ok(())
    }

    /// Check the 1-D tensors (norm weights, biases, RoPE frequency factors) for non-finite
    /// values. They are a few thousand floats, read at load: a NaN norm weight would otherwise
    /// reach the logits through quantized activations (where ggml's quantizer turns NaN into
    /// 0) and produce fluent garbage instead of an error.
    fn check_vectors(&self) -> Result<()> {
        for t in self.file.tensors().iter().filter(|t| t.n_dims == 1) {
            let Some(tr) = ember_kernels::traits::reference_traits(t.ty) else {
                continue;
            };
            let n = t.ne[0] as usize;
            if t.ty.row_bytes(n as u64).unwrap_or(0) as usize != t.data.len() {
                continue; // Weights::from_gguf has checked every tensor the model uses
            }
            let mut row = vec![0.0f32; n];
            (tr.to_float)(self.file.tensor_data(t), &mut row);
            if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                return Err(crate::Error::NonFinite(format!(
                    "tensor {} holds {} at element {c} (norm weights and biases are checked at \
                     load)",
                    t.name, row[c]
                )));
            }
        }
        Ok(())
    }

    /// Bytes of weight data (the tensors of the file, mapped, not copied).
    pub fn weight_bytes(&self) -> usize {
        self.file.tensors().iter().map(|t| t.data.len()).sum()
    }
}
