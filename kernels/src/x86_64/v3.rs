//! The x86-64-v3 clones of the hot reference kernels (see the module above). Each `*_v3` is an
//! `unsafe fn` compiled with `#[target_feature(enable = "avx2,fma,f16c")]` around the reference
//! body (inlined), or written with intrinsics where the compiler's vectorization fell short
//! (`geglu`, `silu_mul`); its safe wrapper is only ever installed in the dispatch table after
//! `is_x86_feature_detected!` confirmed all three features.

use std::arch::x86_64::{
    __m256, _mm256_add_epi32, _mm256_add_ps, _mm256_and_si256, _mm256_andnot_ps, _mm256_blendv_ps,
    _mm256_castps_si256, _mm256_castsi256_ps, _mm256_castsi256_si128, _mm256_cmp_ps,
    _mm256_cvtepu16_epi32, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_div_ps,
    _mm256_extracti128_si256, _mm256_fmadd_ps, _mm256_fnmadd_ps, _mm256_i32gather_epi32,
    _mm256_loadu_ps, _mm256_movemask_ps, _mm256_mul_ps, _mm256_set1_epi32, _mm256_set1_ps,
    _mm256_setzero_ps, _mm256_slli_epi32, _mm256_storeu_ps, _mm256_sub_ps, _mm_packus_epi32,
    _CMP_GE_OQ, _CMP_LE_OQ, _MM_FROUND_TO_NEAREST_INT,
};

use crate::reference::{attention, ops, q5_1};

/// Wraps a reference function in a v3-compiled clone and a safe entry for the table.
macro_rules! v3_clone {
    ($name:ident, $inner:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?, $path:path) => {
        /// # Safety
        /// The CPU must have AVX2, FMA and F16C: reached only through the safe wrapper above, which
        /// the kernel set hands out only on such CPUs.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $inner($($arg: $ty),*) $(-> $ret)? {
            $path($($arg),*)
        }

        /// The reference kernel compiled for x86-64-v3.
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: this entry is only installed in the dispatch table after the CPU was
            // detected to support avx2, fma and f16c (`dispatch::select`).
            unsafe { $inner($($arg),*) }
        }
    };
}

// Q5_1: the reference dot compiled for x86-64-v3 until a hand-written kernel lands (several
// times the baseline-x86-64 build; same bits by construction). Q5_0 has one (`q5_0.rs`).
v3_clone!(vec_dot_q5_1_q8_1, vec_dot_q5_1_q8_1_v3, (n: usize, w: &[u8], a: &[u8]) -> f32, q5_1::vec_dot_q5_1_q8_1);
v3_clone!(rms_norm, rms_norm_v3, (x: &[f32], w: &[f32], eps: f32, out: &mut [f32]), ops::rms_norm);
v3_clone!(rope_norm, rope_norm_v3, (x: &mut [f32], cos: &[f32], sin: &[f32]), ops::rope_norm);
v3_clone!(rope_neox, rope_neox_v3, (x: &mut [f32], cos: &[f32], sin: &[f32]), ops::rope_neox);
v3_clone!(dot_f16_order, dot_f16_order_v3, (k: &[f32], q: &[f32]) -> f32, attention::dot_f16_order);

/// Round 8 f32 lanes to f16 and back (F16C, round to nearest even, as `half` does).
#[inline(always)]
fn round8_f16(v: __m256) -> __m256 {
    // SAFETY: only called from functions compiled with f16c enabled (below).
    unsafe { _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)) }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (the kernel set checked it).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_f16_v3(acc: &mut [f32], s: f32) {
    let n8 = acc.len() / 8 * 8;
    let vs = _mm256_set1_ps(s);
    for c in acc[..n8].chunks_exact_mut(8) {
        // SAFETY: `c` holds exactly 8 f32; unaligned loads and stores.
        unsafe {
            let v = _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), vs);
            _mm256_storeu_ps(c.as_mut_ptr(), round8_f16(v));
        }
    }
    attention::scale_f16(&mut acc[n8..], s);
}

/// `acc = f16(acc * s)` with F16C.
pub(crate) fn scale_f16(acc: &mut [f32], s: f32) {
    // SAFETY: installed only after avx2, fma and f16c were detected.
    unsafe { scale_f16_v3(acc, s) }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (the kernel set checked it).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mad_f16_v3(acc: &mut [f32], v: &[f32], w: f32) {
    let n = acc.len().min(v.len());
    let n8 = n / 8 * 8;
    let vw = _mm256_set1_ps(w);
    for (c, x) in acc[..n8].chunks_exact_mut(8).zip(v[..n8].chunks_exact(8)) {
        // SAFETY: `c` and `x` hold exactly 8 f32 each; unaligned loads and stores.
        unsafe {
            let r = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr()), vw, _mm256_loadu_ps(c.as_ptr()));
            _mm256_storeu_ps(c.as_mut_ptr(), round8_f16(r));
        }
    }
    attention::mad_f16(&mut acc[n8..n], &v[n8..n], w);
}

/// `acc = f16(fma(v, w, acc))` with FMA and F16C.
pub(crate) fn mad_f16(acc: &mut [f32], v: &[f32], w: f32) {
    // SAFETY: installed only after avx2, fma and f16c were detected.
    unsafe { mad_f16_v3(acc, v, w) }
}

/// [`ops::geglu`] 8 elements at a time: `vcvtps2ph` (round to nearest even, as `half`) for
/// the table index, a 4-byte gather per lane (hence the padding entry), the entry's low half
/// widened back, and the two range cases blended in; the last `len % 8` by the reference.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `table.len() >= ops::GELU_TABLE_LEN`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn geglu_v3(gate: &mut [f32], up: &[f32], table: &[u16]) {
    let n8 = gate.len().min(up.len()) / 8 * 8;
    let (lo, hi) = (_mm256_set1_ps(-10.0), _mm256_set1_ps(10.0));
    let low16 = _mm256_set1_epi32(0xffff);
    for c in (0..n8).step_by(8) {
        // SAFETY: elements `c..c + 8 <= n8` of both slices; each gather reads 4 bytes at
        // `2 · idx` with `idx <= 65 535`, inside the `GELU_TABLE_LEN` entries (caller).
        unsafe {
            let x = _mm256_loadu_ps(gate.as_ptr().add(c));
            let u = _mm256_loadu_ps(up.as_ptr().add(c));
            let idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
            let e = _mm256_and_si256(
                _mm256_i32gather_epi32::<2>(table.as_ptr().cast(), idx),
                low16,
            );
            let h = _mm_packus_epi32(_mm256_castsi256_si128(e), _mm256_extracti128_si256::<1>(e));
            let y = _mm256_mul_ps(_mm256_cvtph_ps(h), u);
            let y = _mm256_blendv_ps(y, _mm256_mul_ps(x, u), _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi));
            let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LE_OQ>(x, lo));
            _mm256_storeu_ps(gate.as_mut_ptr().add(c), y);
        }
    }
    ops::geglu(&mut gate[n8..], &up[n8..], table);
}

/// [`ops::geglu`] with AVX2 and F16C; a table shorter than [`ops::GELU_TABLE_LEN`] takes the
/// reference.
pub(crate) fn geglu(gate: &mut [f32], up: &[f32], table: &[u16]) {
    if table.len() < ops::GELU_TABLE_LEN {
        return ops::geglu(gate, up, table);
    }
    // SAFETY: installed only after AVX2, FMA and F16C were detected; the table is long enough.
    unsafe { geglu_v3(gate, up, table) }
}

/// ggml's `ggml_v_expf` fast branch on 8 lanes, the same fused steps as [`ops::expf_ggml`]:
/// `(e, n)`, the branch's result and the range reduction's `n`. The result is `expf_ggml`'s
/// where `|n| <= 126`; callers check `n` and take the reference (or a known value) elsewhere.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn expf_ggml8_fast_branch(x: __m256) -> (__m256, __m256) {
    let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), c(0x4b40_0000));
    let n = _mm256_sub_ps(z, c(0x4b40_0000));
    let b = _mm256_fnmadd_ps(n, c(0x35bf_be8e), _mm256_fnmadd_ps(n, c(0x3f31_7200), x));
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_set1_epi32(0x3f80_0000)));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm256_mul_ps(c(0x3f7f_fff6), b),
    );
    (_mm256_fmadd_ps(j, k, k), n)
}

/// `|n|` of 8 lanes (the sign bit cleared).
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
pub(super) unsafe fn abs8(n: __m256) -> __m256 {
    // SAFETY: AVX (caller).
    unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), n) }
}

/// [`ops::silu_mul`] 8 elements at a time: `x / (1 + expf_ggml(0 - x)) · u` with the
/// exponential's fast branch in registers; a group where a lane leaves it, and the last
/// `len % 8` elements (libm's `exp` there), take the reference. The compiler's vectorization of
/// the reference computed both of the exponential's branches for every lane, and the unused
/// one's underflows cost microcode assists: about 8 cycles per element in batched decode.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn silu_mul_v3(gate: &mut [f32], up: &[f32]) {
    let n8 = gate.len().min(up.len()) / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    for c in (0..n8).step_by(8) {
        // SAFETY: elements `c..c + 8 <= n8` of both slices; unaligned loads and stores.
        unsafe {
            let x = _mm256_loadu_ps(gate.as_ptr().add(c));
            let (e, n) = expf_ggml8_fast_branch(_mm256_sub_ps(_mm256_setzero_ps(), x));
            // Every lane in the fast branch: |n| <= 126 (ordered: NaN is not).
            let fast = _mm256_cmp_ps::<_CMP_LE_OQ>(abs8(n), _mm256_set1_ps(126.0));
            match _mm256_movemask_ps(fast) == 0xff {
                true => {
                    let u = _mm256_loadu_ps(up.as_ptr().add(c));
                    let y = _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), u);
                    _mm256_storeu_ps(gate.as_mut_ptr().add(c), y);
                }
                false => ops::silu_mul(&mut gate[c..c + 8], &up[c..c + 8]),
            }
        }
    }
    ops::silu_mul(&mut gate[n8..], &up[n8.min(up.len())..]);
}

/// [`ops::silu_mul`] with AVX2 and FMA (same bits).
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    // SAFETY: installed only after AVX2, FMA and F16C were detected.
    unsafe { silu_mul_v3(gate, up) }
}
