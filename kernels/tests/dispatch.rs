//! The selected kernel path (AVX2 on x86-64-v3 CPUs, or whatever `EMBER_CPU` forces) equals the
//! scalar reference bit for bit on random data of awkward lengths: the fast entries are the
//! reference compiled for a wider ISA, and the model's numerics (matched to llama.cpp to the
//! last bit) depend on that.

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
    if cfg!(all(feature = "simd", target_arch = "x86_64"))
        && std::env::var("EMBER_CPU").is_err()
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        assert_eq!(p, CpuPath::Avx2);
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

/// Tile products equal the reference `vec_dot` of every (row, token) pair bit for bit, on
/// awkward row counts, token counts and lengths, with padded strides, and write nothing else.
#[test]
fn tile_products_equal_the_reference_dots() {
    let mut rng = Rng(0x7e11_7e11);
    let mut tested = 0;
    for &ty in ember_kernels::SUPPORTED {
        let variants = dispatch::tile_variants(ty);
        assert_eq!(
            dispatch::tile(ty).map(|f| f as usize),
            variants.first().map(|v| v.1 as usize),
            "{ty}: dispatch::tile is the first variant"
        );
        for (name, tile) in variants {
            tested += 1;
            let refr = reference_traits(ty).unwrap();
            let act = reference_traits(refr.vec_dot_type).unwrap();
            let bs = ty.block_size();
            for &blocks in &[1usize, 2, 3, 5, 18, 33] {
                let n = blocks * bs;
                let wb = ty.row_bytes(n as u64).unwrap() as usize;
                let ab = refr.vec_dot_type.row_bytes(n as u64).unwrap() as usize;
                for &(nr, nt) in &[
                    (1, 1),
                    (1, 3),
                    (2, 2),
                    (3, 5),
                    (4, 1),
                    (5, 2),
                    (7, 7),
                    (17, 3),
                ] {
                    let (w_stride, a_stride) = (wb + 3, ab + 5);
                    let mut wq = vec![0u8; nr * w_stride];
                    for r in 0..nr {
                        let row: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                        (refr.from_float.unwrap())(&row, &mut wq[r * w_stride..r * w_stride + wb]);
                    }
                    let mut aq = vec![0u8; nt * a_stride];
                    for t in 0..nt {
                        let row: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                        (act.quantize_act.unwrap())(&row, &mut aq[t * a_stride..t * a_stride + ab]);
                    }
                    let out_stride = nr + 2;
                    let mut out = vec![f32::NAN; nt * out_stride];
                    // SAFETY: `out` holds `nt * out_stride` elements, more than the largest index
                    // `(nt - 1) * out_stride + nr - 1`, and no other thread sees it.
                    unsafe {
                        tile(
                            n,
                            &wq,
                            w_stride,
                            nr,
                            &aq,
                            a_stride,
                            nt,
                            out.as_mut_ptr(),
                            out_stride,
                        )
                    };
                    for t in 0..nt {
                        for r in 0..out_stride {
                            let got = out[t * out_stride + r];
                            if r >= nr {
                                assert!(
                                    got.is_nan(),
                                    "{ty} {name}: wrote outside the tile at ({t}, {r})"
                                );
                                continue;
                            }
                            let want = (refr.vec_dot)(
                                n,
                                &wq[r * w_stride..r * w_stride + wb],
                                &aq[t * a_stride..t * a_stride + ab],
                            );
                            assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{ty} {name}: tile {nr}x{nt}, {blocks} blocks, ({r}, {t}): {got} vs {want}"
                        );
                        }
                    }
                }
            }
        }
    }
    if dispatch::select() == Ok(CpuPath::Avx2) {
        assert!(
            tested >= 2,
            "the avx2 path has tile kernels for Q4_1 and Q8_0"
        );
    }
}

/// The fused attention kernel equals the reference step by step: same output bits and the same
/// softmax state, over awkward key counts, continuing from an earlier state, for every head size
/// it specializes and one it does not.
#[test]
fn attention_rows_equal_the_reference() {
    use ember_kernels::reference::attention::OnlineSoftmax;
    use half::f16;
    let mut rng = Rng(0xa77e_0001);
    let fast = dispatch::ops().attend_rows;
    for d in [32usize, 48, 64, 128, 256] {
        for &n in &LENGTHS[..12] {
            let q: Vec<f32> = (0..d).map(|_| f16::from_f32(rng.f()).to_f32()).collect();
            let k: Vec<f16> = (0..n * d).map(|_| f16::from_f32(rng.f())).collect();
            let v: Vec<f16> = (0..n * d).map(|_| f16::from_f32(rng.f())).collect();
            let (mut sa, mut sb) = (OnlineSoftmax::default(), OnlineSoftmax::default());
            let (mut oa, mut ob) = (vec![0f32; d], vec![0f32; d]);
            // Two calls: the second continues the state (a later KV block).
            let split = n / 2 * d;
            for (ks, vs) in [(&k[..split], &v[..split]), (&k[split..], &v[split..])] {
                fast(&q, ks, vs, 0.125, &mut sa, &mut oa);
                attention::attend_rows(&q, ks, vs, 0.125, &mut sb, &mut ob);
                assert_eq!(sa, sb, "softmax state, d {d}, n {n}");
                assert_eq!(
                    oa.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    ob.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "output, d {d}, n {n}"
                );
            }
        }
    }
}

/// The grouped attention kernel (query heads sharing a KV head) equals the reference per query.
#[test]
fn attention_groups_equal_the_reference() {
    use ember_kernels::reference::attention::OnlineSoftmax;
    use half::f16;
    let mut rng = Rng(0xa77e_0002);
    let fast = dispatch::ops().attend_rows_group;
    for d in [32usize, 48, 64, 128, 256] {
        for g in [1usize, 2, 3, 4, 7] {
            for &n in &LENGTHS[..10] {
                let q: Vec<f32> = (0..g * d)
                    .map(|_| f16::from_f32(rng.f()).to_f32())
                    .collect();
                let k: Vec<f16> = (0..n * d).map(|_| f16::from_f32(rng.f())).collect();
                let v: Vec<f16> = (0..n * d).map(|_| f16::from_f32(rng.f())).collect();
                let mut sa = vec![OnlineSoftmax::default(); g];
                let mut oa = vec![0f32; g * d];
                let split = n / 2 * d;
                for (ks, vs) in [(&k[..split], &v[..split]), (&k[split..], &v[split..])] {
                    fast(&q, ks, vs, 0.125, &mut sa, &mut oa);
                }
                for h in 0..g {
                    let (mut sb, mut ob) = (OnlineSoftmax::default(), vec![0f32; d]);
                    let qh = &q[h * d..(h + 1) * d];
                    for (ks, vs) in [(&k[..split], &v[..split]), (&k[split..], &v[split..])] {
                        attention::attend_rows(qh, ks, vs, 0.125, &mut sb, &mut ob);
                    }
                    assert_eq!(sa[h], sb, "state, d {d}, g {g}, n {n}, head {h}");
                    assert_eq!(
                        oa[h * d..(h + 1) * d]
                            .iter()
                            .map(|x| x.to_bits())
                            .collect::<Vec<_>>(),
                        ob.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        "output, d {d}, g {g}, n {n}, head {h}"
                    );
                }
            }
        }
    }
}
