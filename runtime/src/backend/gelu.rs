//! GELU-gated products (GeGLU) as ggml's CPU backend computes them.
//!
//! ggml (built with `GGML_GELU_FP16`, its default) does not evaluate GELU per element: it rounds
//! the input to f16 and looks the result up in a 65 536-entry f16 table of
//! `0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2)))`, with `x <= -10 -> 0` and `x >= 10 -> x`
//! taken before the lookup. The f16 rounding of both input and output moves a GELU by up to
//! ~1e-3 relative, so we do the same to match llama.cpp's logits.

use std::sync::OnceLock;

use half::f16;

const GELU_COEF_A: f32 = 0.044715;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// ggml's `ggml_gelu_f32` (tanh approximation), in f32, with the fused multiply-add the compiler
/// forms in ggml's x86 build (`1 + a·x·x` as `fma(a·x, x, 1)`): without it one table entry
/// (x = -1.9990234) differs from ggml's by an f16 ulp.
fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh())
}

static TABLE: OnceLock<Box<[u16]>> = OnceLock::new();

/// The f16 GELU table indexed by the bits of an f16 input (built once; 128 KiB), with the
/// padding entry the SIMD kernels' gathers need ([`ember_kernels::reference::ops::GELU_TABLE_LEN`]
/// entries, the last 0).
pub fn table() -> &'static [u16] {
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_f32(f16::from_bits(bits).to_f32())).to_bits())
            .chain(std::iter::once(0))
            .collect()
    })
}

/// `gate[i] = gelu(gate[i]) * up[i]` (ggml's `ggml_vec_geglu_f32` with `GGML_GELU_FP16`): the
/// reference kernel ([`ember_kernels::reference::ops::geglu`]) over [`table`]. The CPU backend
/// runs its kernel set's version, which equals it bit for bit.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    ember_kernels::reference::ops::geglu(gate, up, table());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geglu_is_the_tanh_gelu_within_f16_rounding() {
        for i in -2000..2000 {
            let x = i as f32 * 0.007;
            let mut g = [x];
            geglu(&mut g, &[2.0]);
            let exact = 0.5
                * f64::from(x)
                * (1.0
                    + (0.797_884_560_802_865_4
                        * f64::from(x)
                        * (1.0 + 0.044715 * f64::from(x * x)))
                    .tanh());
            // Input and output each rounded to f16: relative 2^-11 each, plus the slope.
            let tol = 2e-3 * exact.abs() + 1e-3 * f64::from(x.abs()) + 1e-7;
            assert!(
                (f64::from(g[0]) - 2.0 * exact).abs() <= 2.0 * tol,
                "x = {x}: {} vs {}",
                g[0],
                2.0 * exact
            );
        }
        let mut g = [-10.0, 10.0, 12.0, -50.0];
        geglu(&mut g, &[3.0, 3.0, 0.5, 1.0]);
        assert_eq!(g, [0.0, 30.0, 6.0, 0.0]);
    }
}
