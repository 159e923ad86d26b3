//! CUDA backend tests (`kernels.rs`, `rope_kv.rs`, `fused.rs`, `models.rs`, `engine.rs`): every
//! kernel against the CPU reference on random inputs and awkward sizes;
//! greedy decoding on `--backend cuda` against `--backend cpu` (synthetic models of every
//! supported weight format, and a real truncated model when `EMBER_CUDA_MODEL` names one); the
//! engine on CUDA (many sequences per step, prefix sharing, forks with copy-on-write) against
//! lone CUDA sessions.
//!
//! On a machine without the CUDA driver every test prints "skipped: no CUDA driver" and returns
//! (CI runs them with `--nocapture`, so the skip is visible). A driver that is present but fails
//! to start is a failure, not a skip.
//!
//! Tolerances (stated per test): Q8_1 and Q8_K quantization, RoPE + K/V store and SwiGLU on
//! whole blocks of 8 are bit-exact; RMSNorm within 1e-6 relative (the f64 sum is reduced in
//! another order); matrix products of every weight type within 1e-5 of Σ|w·a| (f32
//! accumulation order differs; for F32, F16 and BF16 the CPU also accumulates in f64);
//! attention within 2e-4 (1e-4 × max|v|) of an f64 reference; greedy argmax equal at every step
//! except at most 3 near-ties (CPU top-2 gap under 1% of the logit range, see [`MARGIN_REL`]),
//! logits within 5% of their range; engine on CUDA equal to lone CUDA sessions, id for id.
//!
//! Tests that compare differently batched CUDA runs bit for bit batch at most [`EXACT_BATCH`]
//! tokens per pass: from [`MMQ_MIN_TOKENS`] ([`MMQ_MIN_TOKENS_KQUANT`] for K-quants) the
//! quantized products take the tensor-core kernels, whose results differ from the matrix-vector
//! kernels' in the last bits.

use ember::backend::cuda::testing::{self, AttnInputs, AttnShape};
use ember::backend::cuda::{
    driver_present, CudaDevice, MmqTiles, MMQ_MIN_TOKENS, MMQ_MIN_TOKENS_KQUANT,
};
use ember::backend::{BackendKind, CudaWeights};
use ember::engine::{Engine, EngineConfig, RequestParams};
use ember::gguf::GgufFile;
use ember::model::Model;
use ember::sampler::SamplingParams;
use ember::session::{GenerateParams, KvBudget, Session, SessionConfig};
use ember::synth::{synth_gguf, SynthSpec};
use ember_kernels::reference::{float, ops, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8, q8_k};
use ember_kernels::GgmlType;
use half::f16;

/// Batch budget of the tests that compare differently batched runs bit for bit: every product
/// stays on the matrix-vector kernels.
const EXACT_BATCH: usize = if MMQ_MIN_TOKENS < MMQ_MIN_TOKENS_KQUANT {
    MMQ_MIN_TOKENS
} else {
    MMQ_MIN_TOKENS_KQUANT
} - 1;

/// The device, or `None` (with the skip printed) when this machine has no CUDA driver.
pub(crate) fn device(test: &str) -> Option<CudaDevice> {
    if !driver_present() {
        println!("{test}: skipped: no CUDA driver");
        return None;
    }
    Some(CudaDevice::open().expect("the CUDA driver is present, so the device must open"))
}

struct Rng(u64);
impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
}
/// Every weight type the CUDA backend takes.
const ALL_WEIGHTS: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn f16_bits(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

mod engine;
mod fused;
mod kernels;
mod models;
mod rope_kv;
mod sampling;
