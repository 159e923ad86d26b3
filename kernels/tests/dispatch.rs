//! The selected kernel path (AVX2 on x86-64-v3 CPUs, NEON — with `sdot` where the CPU has the
//! dotprod extension — on aarch64, or whatever `EMBER_CPU` forces) equals the scalar reference
//! bit for bit on random data of awkward lengths: the model's numerics (matched to llama.cpp to
//! the last bit) depend on that.
//!
//! `EMBER_EXPECT_CPU=<path name>` makes `selected_path_is_reported` fail unless that path was
//! selected (CI uses it under qemu to prove which aarch64 kernels ran).

use ember_kernels::dispatch::{self, CpuPath};
use ember_kernels::reference::{attention, ops};
use ember_kernels::traits::reference_traits;
use ember_kernels::GgmlType;

const LENGTHS: [usize; 17] = [
    1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 33, 63, 127, 129, 255, 1023, 1024,
];

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
    }
}

#[test]
fn selected_path_is_reported() {
    let p = dispatch::select().expect("EMBER_CPU is unset or valid in tests");
    eprintln!("kernel path: {}", p.name());
    if let Ok(want) = std::env::var("EMBER_EXPECT_CPU") {
        assert_eq!(p.name(), want, "EMBER_EXPECT_CPU");
    }
    if std::env::var("EMBER_CPU").is_ok() || !cfg!(feature = "simd") {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        assert_eq!(p, CpuPath::Avx2);
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        assert_eq!(p, CpuPath::NeonDotprod);
    } else {
        assert_eq!(p, CpuPath::Neon);
    }
}

/// Q8_0 weights may hold any byte, -128 included (only the activation quantizers promise
/// ±127): the selected dot must still equal the reference.
#[test]
fn q8_0_dot_handles_every_weight_byte() {
    let mut rng = Rng(7);
    let (fast, refr) = (
        dispatch::traits(GgmlType::Q8_0).unwrap(),
        reference_traits(GgmlType::Q8_0).unwrap(),
    );
    for &blocks in &LENGTHS[..14] {
        let n = blocks * 32;
        let mut w = vec![0u8; blocks * 34];
        for (i, b) in w.iter_mut().enumerate() {
            *b = match i % 34 {
                0 => 0x66, // scale 0.0019
                1 => 0x1f,
                j if j % 5 == 0 => 0x80, // -128
                _ => (rng.f().to_bits() >> 7) as u8,
            };
        }
        let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
        let mut a = vec![0u8; blocks * 34];
        (reference_traits(GgmlType::Q8_0)
            .unwrap()
            .quantize_act
            .unwrap())(&x, &mut a);
        let (df, dr) = ((fast.vec_dot)(n, &w, &a), (refr.vec_dot)(n, &w, &a));
        assert_eq!(df.to_bits(), dr.to_bits(), "{blocks} blocks: {df} vs {dr}");
    }
}

#[test]
fn quantized_dots_and_activation_quantizers_equal_the_reference() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for ty in [
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ] {
        let (fast, refr) = (dispatch::traits(ty).unwrap(), reference_traits(ty).unwrap());
        let (fa, ra) = (
            dispatch::traits(fast.vec_dot_type).unwrap(),
            reference_traits(refr.vec_dot_type).unwrap(),
        );
        for &blocks in &LENGTHS[..14] {
            let n = blocks * 32;
            let w: Vec<f32> = (0..n).map(|_| rng.f()).collect();
            let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
            let wb = ty.row_bytes(n as u64).unwrap() as usize;
            let ab = fast.vec_dot_type.row_bytes(n as u64).unwrap() as usize;
            let mut wq = vec![0u8; wb];
            (refr.from_float.unwrap())(&w, &mut wq);
            let (mut aq_f, mut aq_r) = (vec![0u8; ab], vec![0u8; ab]);
            (fa.quantize_act.unwrap())(&x, &mut aq_f);
            (ra.quantize_act.unwrap())(&x, &mut aq_r);
            assert_eq!(aq_f, aq_r, "{ty}: activation quantization, {blocks} blocks");
            let (df, dr) = ((fast.vec_dot)(n, &wq, &aq_f), (refr.vec_dot)(n, &wq, &aq_r));
            assert_eq!(
                df.to_bits(),
                dr.to_bits(),
                "{ty}: dot over {blocks} blocks: {df} vs {dr}"
            );
        }
    }
}

#[test]
fn ops_equal_the_reference() {
    let mut rng = Rng(42);
    let k = dispatch::ops();
    for &n in &LENGTHS {
        let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
        let w: Vec<f32> = (0..n).map(|_| rng.f()).collect();
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        (k.rms_norm)(&x, &w, 1e-5, &mut a);
        ops::rms_norm(&x, &w, 1e-5, &mut b);
        assert_eq!(a, b, "rms_norm {n}");
        let (mut a, mut b) = (x.clone(), x.clone());
        (k.silu_mul)(&mut a, &w);
        ops::silu_mul(&mut b, &w);
        assert_eq!(a, b, "silu_mul {n}");
        assert_eq!(
            (k.dot_f16)(&x, &w).to_bits(),
            attention::dot_f16_order(&x, &w).to_bits(),
            "dot {n}"
        );
        let h: Vec<f32> = x.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
        let (mut a, mut b) = (h.clone(), h.clone());
        (k.mad_f16)(&mut a, &w, 0.37);
        attention::mad_f16(&mut b, &w, 0.37);
        assert_eq!(a, b, "mad_f16 {n}");
        (k.scale_f16)(&mut a, 0.61);
        attention::scale_f16(&mut b, 0.61);
        assert_eq!(a, b, "scale_f16 {n}");
        if n % 2 == 0 {
            let cos: Vec<f32> = (0..n / 2).map(|i| (i as f32 * 0.3).cos()).collect();
            let sin: Vec<f32> = (0..n / 2).map(|i| (i as f32 * 0.3).sin()).collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            (k.rope_norm)(&mut a, &cos, &sin);
            ops::rope_norm(&mut b, &cos, &sin);
            assert_eq!(a, b, "rope_norm {n}");
            let (mut a, mut b) = (x.clone(), x.clone());
            (k.rope_neox)(&mut a, &cos, &sin);
            ops::rope_neox(&mut b, &cos, &sin);
            assert_eq!(a, b, "rope_neox {n}");
        }
    }
}

/// SiLU's `exp` over its whole range, the far ranges of ggml's `expf` (|n| > 126 and > 192,
/// overflow to infinity) included: inputs in ±200, compared bit for bit.
#[test]
fn silu_mul_equals_the_reference_over_the_whole_exp_range() {
    let mut rng = Rng(99);
    let k = dispatch::ops();
    for &n in &LENGTHS {
        let x: Vec<f32> = (0..n).map(|_| rng.f() * 100.0).collect();
        let u: Vec<f32> = (0..n).map(|_| rng.f()).collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        (k.silu_mul)(&mut a, &u);
        ops::silu_mul(&mut b, &u);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "silu_mul {n}");
    }
}

/// Float dots over element counts that are not multiples of the vector width (the tails go to
/// the first lanes in the reference).
#[test]
fn float_dots_equal_the_reference_on_awkward_lengths() {
    let mut rng = Rng(5);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let (fast, refr) = (dispatch::traits(ty).unwrap(), reference_traits(ty).unwrap());
        for &n in &LENGTHS {
            let w: Vec<f32> = (0..n).map(|_| rng.f()).collect();
            let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
            let bytes = ty.row_bytes(n as u64).unwrap() as usize;
            let (mut wq, mut aq) = (vec![0u8; bytes], vec![0u8; bytes]);
            (refr.from_float.unwrap())(&w, &mut wq);
            (refr.quantize_act.unwrap())(&x, &mut aq);
            let (df, dr) = ((fast.vec_dot)(n, &wq, &aq), (refr.vec_dot)(n, &wq, &aq));
            assert_eq!(df.to_bits(), dr.to_bits(), "{ty}: dot of {n}: {df} vs {dr}");
        }
    }
}

/// K-quant dots on random weight blocks (every quant, scale and high-bit pattern; the f16
/// super-block scales fixed to finite values) against Q8_K activations.
#[test]
fn k_quant_dots_equal_the_reference() {
    let mut rng = Rng(0x5eed);
    for (ty, f16_at) in [
        (GgmlType::Q4_K, &[0usize, 2][..]),
        (GgmlType::Q5_K, &[0, 2]),
        (GgmlType::Q6_K, &[208]),
    ] {
        let (fast, refr) = (dispatch::traits(ty).unwrap(), reference_traits(ty).unwrap());
        let act = reference_traits(refr.vec_dot_type).unwrap();
        let size = ty.row_bytes(256).unwrap() as usize;
        for &blocks in &LENGTHS[..9] {
            let n = blocks * 256;
            let mut w: Vec<u8> = (0..blocks * size)
                .map(|_| (rng.f().to_bits() >> 5) as u8)
                .collect();
            for b in 0..blocks {
                for (k, &at) in f16_at.iter().enumerate() {
                    // 0.0123 and 0.0061 as little-endian f16.
                    let v: [u8; 2] = if k == 0 { [0x4c, 0x22] } else { [0x43, 0x1e] };
                    w[b * size + at..b * size + at + 2].copy_from_slice(&v);
                }
            }
            let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
            let mut a = vec![0u8; refr.vec_dot_type.row_bytes(n as u64).unwrap() as usize];
            (act.quantize_act.unwrap())(&x, &mut a);
            let (df, dr) = ((fast.vec_dot)(n, &w, &a), (refr.vec_dot)(n, &w, &a));
            assert_eq!(
                df.to_bits(),
                dr.to_bits(),
                "{ty}: dot over {blocks} blocks: {df} vs {dr}"
            );
        }
    }
}
