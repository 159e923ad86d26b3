//! A llama-family model (llama, qwen2, gemma3): hyper-parameters, weights (views of the mapped GGUF) and the forward
//! pass.

pub mod config;
pub mod forward;
mod gelu;
pub mod weights;

use std::path::Path;

pub use config::{Arch, Config, FfnAct, RopePairing};
pub use forward::{BatchToken, BlockTables, Scratch};
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
        Ok(Model {
            file,
            config,
            weights,
        })
    }

    /// Bytes of weight data (the tensors of the file, mapped, not copied).
    pub fn weight_bytes(&self) -> usize {
        self.file.tensors().iter().map(|t| t.data.len()).sum()
    }
}
