//! `expf` exactly as glibc computes it on x86_64 (`__expf_fma`, the variant glibc's ifunc picks
//! on every CPU with FMA — what llama.cpp's reference outputs ran on): the exponent split into
//! `k/32 + r` in double precision, `2^(k/32)` from a 32-entry table, a cubic in `r` with fused
//! multiply-adds, one rounding to f32 at the end. The attention softmax uses it instead of the
//! platform's libm so that every platform gets these bits (musl, for one, builds its `expf`
//! without fused operations); inlined into the SIMD kernels it also saves a libm call per key
//! (the AVX2 path's pp512 gained about 5%). `every_f32_equals_glibc` checks all 2^32 inputs
//! against libm on a glibc x86_64 machine. (A 16-lane version over runs of keys was tried in
//! the AVX-512 attention kernel: 1-2% faster, within noise, not kept.)

/// `tab[i] = bits(2^(i/32)) - (i << 47)`, the double nearest each power, as glibc's
/// `__exp2f_data.tab` (regenerated with 60-digit arithmetic).
const TAB: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `32 / ln 2` (glibc's `invln2_scaled`: 0x1.71547652b82fep+0 · 32).
const INV_LN2_N: f64 = f64::from_bits(0x3ff71547652b82fe) * 32.0;
/// `0x1.8p+52`: adding it rounds to an integer in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338000000000000);
/// The cubic's coefficients for `r` in units of 1/32 (glibc's `poly_scaled`:
/// 0x1.c6af84b912394p-5 / 32^3, 0x1.ebfce50fac4f3p-3 / 32^2, 0x1.62e42ff0c52d6p-1 / 32).
const C: [f64; 3] = [
    f64::from_bits(0x3fac6af84b912394) / 32768.0,
    f64::from_bits(0x3fcebfce50fac4f3) / 1024.0,
    f64::from_bits(0x3fe62e42ff0c52d6) / 32.0,
];
/// Above this `expf` overflows to +inf (0x1.62e42ep6, `log(0x1p128)`).
const OVERFLOW: f32 = f32::from_bits(0x42b17217);
/// Below this `expf` underflows to +0 (-0x1.9fe368p6, `log(0x1p-150)`).
const UNDERFLOW: f32 = f32::from_bits(0xc2cff1b4);

/// `e^x`, bit for bit as glibc's x86_64 `expf` (see the module documentation).
#[inline]
pub fn expf(x: f32) -> f32 {
    let abstop = (x.to_bits() >> 20) & 0x7ff;
    if abstop >= (88f32.to_bits() >> 20) {
        // |x| >= 88, or NaN.
        if x == f32::NEG_INFINITY {
            return 0.0;
        }
        if abstop >= (f32::INFINITY.to_bits() >> 20) {
            return x + x;
        }
        if x > OVERFLOW {
            return f32::INFINITY;
        }
        if x < UNDERFLOW {
            return 0.0;
        }
    }
    // x · 32 / ln 2 = k + r, r in [-1/2, 1/2]. glibc's C writes the product once and uses it
    // twice; GCC fuses it into both uses (an FMA each), and so does this.
    let xd = f64::from(x);
    let kd = INV_LN2_N.mul_add(xd, SHIFT);
    let ki = kd.to_bits();
    let kd = kd - SHIFT;
    let r = INV_LN2_N.mul_add(xd, -kd);
    // 2^(k/32) = 2^(k % 32 / 32) · 2^(k / 32), the second added to the exponent bits.
    let s = f64::from_bits(TAB[(ki % 32) as usize].wrapping_add(ki << 47));
    let p = C[0].mul_add(r, C[1]);
    let y = C[2].mul_add(r, 1.0);
    let y = p.mul_add(r * r, y);
    (y * s) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_glibcs() {
        assert_eq!(INV_LN2_N, f64::from_bits(0x3ff71547652b82fe) * 32.0);
        assert_eq!(SHIFT, 1.5 * 2f64.powi(52));
        // Minimax coefficients near ln 2 / 32, (ln 2)^2 / 2 / 32^2, (ln 2)^3 / 6 / 32^3.
        let ln2 = std::f64::consts::LN_2;
        assert!((C[2] * 32.0 - ln2).abs() < 1e-9);
        assert!((C[1] * 1024.0 - ln2 * ln2 / 2.0).abs() < 1e-5);
        assert!((C[0] * 32768.0 - ln2 * ln2 * ln2 / 6.0).abs() < 1e-4);
        assert_eq!(OVERFLOW.to_bits(), 0x42b17217);
        assert_eq!(UNDERFLOW.to_bits(), 0xc2cff1b4);
        for (i, &t) in TAB.iter().enumerate() {
            let p = f64::from_bits(t.wrapping_add((i as u64) << 47));
            assert!(
                (p - 2f64.powf(i as f64 / 32.0)).abs() <= f64::EPSILON,
                "entry {i}"
            );
        }
    }

    /// Every 4099th f32 (about a million, all exponents and signs, NaNs and infinities) equals
    /// the platform's `expf` where that is glibc's on x86_64. The full sweep is
    /// `every_f32_equals_glibc`.
    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    fn strided_f32s_equal_glibc() {
        sweep(4099);
    }

    /// All 2^32 inputs (about a minute on one core in a release build).
    #[test]
    #[ignore = "all 2^32 inputs; run with --ignored in a release build"]
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    fn every_f32_equals_glibc() {
        sweep(1);
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    fn sweep(step: usize) {
        let mut bad = 0u64;
        for bits in (0..=u32::MAX).step_by(step) {
            let x = f32::from_bits(bits);
            let (got, want) = (expf(x), x.exp());
            if got.to_bits() != want.to_bits() {
                if bad < 10 {
                    eprintln!("expf({x:e} = {bits:#010x}): {got:e} vs glibc {want:e}");
                }
                bad += 1;
            }
        }
        assert_eq!(bad, 0, "{bad} inputs differ from glibc's expf");
    }
}
