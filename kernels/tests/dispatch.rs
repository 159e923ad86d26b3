//! Every kernel set this CPU and build can run (`KernelSet::available`: scalar, AVX2 and
//! AVX-512 on an AVX-512 machine; plain NEON and NEON with `sdot` on aarch64 with dotprod),
//! all in one process, equals the scalar reference bit for bit on random data of awkward
//! lengths: the model's numerics (matched to llama.cpp to the last bit) depend on that.
//!
//! `EMBER_EXPECT_CPU=<path name>` makes `selected_path_is_reported` fail unless that path was
//! selected (CI uses it under qemu to prove which aarch64 kernels ran).

use ember_kernels::dispatch::{self, CpuPath, KernelSet};
use ember_kernels::reference::{attention, ops};
use ember_kernels::traits::reference_traits;
use ember_kernels::GgmlType;

mod support;
use support::{Rng, LENGTHS};

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
        let avx512 = ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni"];
        let has = |f: &str| match f {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
            "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
            _ => std::arch::is_x86_feature_detected!("avx512vnni"),
        };
        if avx512.iter().all(|f| has(f)) {
            assert_eq!(p, CpuPath::Avx512);
        } else {
            assert_eq!(p, CpuPath::Avx2);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        assert_eq!(p, CpuPath::NeonDotprod);
    } else {
        assert_eq!(p, CpuPath::Neon);
    }
}

/// The weight formats and, through their `vec_dot_type`, every activation format.
const DOT_TYPES: [GgmlType; 11] = [
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

/// Bit-identical, where any NaN equals any NaN (overflowing edge data gives NaN on both paths;
/// its payload is not part of the spec).
fn same(x: f32, y: f32) -> bool {
    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
}

fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Elements in a row of `len` "lengths": blocks for quantized types, elements for float types.
fn elems(ty: GgmlType, len: usize) -> usize {
    if is_float(ty) {
        len
    } else {
        len * ty.block_size()
    }
}

/// The scale fields of a block: (byte offset, is f32 rather than f16).
fn scale_fields(ty: GgmlType) -> &'static [(usize, bool)] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[(0, false)],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 | GgmlType::Q4_K | GgmlType::Q5_K => {
            &[(0, false), (2, false)]
        }
        GgmlType::Q6_K => &[(208, false)],
        GgmlType::Q8_K => &[(0, true)],
        _ => &[],
    }
}

/// `n` elements of quantized type `ty`: byte `i` from `byte(rng, i)`, then every scale field
/// set from `scale(rng)`.
fn blocks(
    ty: GgmlType,
    n: usize,
    rng: &mut Rng,
    mut byte: impl FnMut(&mut Rng, usize) -> u8,
    mut scale: impl FnMut(&mut Rng) -> f32,
) -> Vec<u8> {
    let mut b: Vec<u8> = (0..ty.row_bytes(n as u64).unwrap() as usize)
        .map(|i| byte(rng, i))
        .collect();
    for blk in b.chunks_exact_mut(ty.type_size()) {
        for &(at, wide) in scale_fields(ty) {
            let v = scale(rng);
            if wide {
                blk[at..at + 4].copy_from_slice(&v.to_le_bytes());
            } else {
                blk[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
    }
    b
}

/// Q8_0 activations never hold -128 (the quantizers clamp to ±127); the Q8_0 × Q8_0 dot
/// relies on that (`sign_epi8`), so raw Q8_0 activation bytes are clamped.
fn clamp_q8_0(ty: GgmlType, a: &mut [u8]) {
    if ty == GgmlType::Q8_0 {
        for blk in a.chunks_exact_mut(34) {
            for q in &mut blk[2..] {
                if *q == 0x80 {
                    *q = 0x81;
                }
            }
        }
    }
}

/// Quantizes `x` with the selected and the reference activation quantizer of `ty`'s
/// `vec_dot_type`, asserts the bytes are equal, and returns them.
fn quantize_act(ks: KernelSet, ty: GgmlType, x: &[f32], what: &str) -> Vec<u8> {
    let act = reference_traits(ty).unwrap().vec_dot_type;
    let (f, r) = (ks.traits(act).unwrap(), reference_traits(act).unwrap());
    let bytes = act.row_bytes(x.len() as u64).unwrap() as usize;
    let (mut qf, mut qr) = (vec![0u8; bytes], vec![0u8; bytes]);
    (f.quantize_act.unwrap())(x, &mut qf);
    (r.quantize_act.unwrap())(x, &mut qr);
    if let Some(i) = (0..bytes).find(|&i| qf[i] != qr[i]) {
        let blk = i / act.type_size();
        panic!(
            "{act} activations ({what}, {} elements): byte {i} (block {blk}) is {} vs the \
             reference's {}",
            x.len(),
            qf[i],
            qr[i]
        );
    }
    qf
}

/// The dot and, where the type has one, its batched variant (same batch rule as the reference's).
fn check_dot(ks: KernelSet, ty: GgmlType, n: usize, w: &[u8], a: &[u8], what: &str) {
    let (f, r) = (ks.traits(ty).unwrap(), reference_traits(ty).unwrap());
    assert_eq!(
        f.vec_dot_batched.map(|b| b.0),
        r.vec_dot_batched.map(|b| b.0),
        "{ty}: batch rule"
    );
    let pairs = [(f.vec_dot, r.vec_dot, "")].into_iter().chain(
        f.vec_dot_batched
            .zip(r.vec_dot_batched)
            .map(|(f, r)| (f.1, r.1, " batched")),
    );
    for (fd, rd, kind) in pairs {
        let (df, dr) = (fd(n, w, a), rd(n, w, a));
        assert!(
            same(df, dr),
            "{ty}{kind} dot ({what}, {n} elements): {df:e} ({:#010x}) vs the reference's {dr:e} \
             ({:#010x})",
            df.to_bits(),
            dr.to_bits()
        );
    }
}

#[test]
fn dots_equal_the_reference_on_random_data() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for ty in DOT_TYPES {
            let act = reference_traits(ty).unwrap().vec_dot_type;
            for &len in &LENGTHS {
                let n = elems(ty, len);
                // Weights from the file format's quantizer where it has one, else random bytes.
                let w = match reference_traits(ty).unwrap().from_float {
                    Some(q) => {
                        let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                        let mut b = vec![0u8; ty.row_bytes(n as u64).unwrap() as usize];
                        q(&x, &mut b);
                        b
                    }
                    None => blocks(ty, n, &mut rng, |r, _| r.byte(), |r| r.f() * 0.3),
                };
                let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                let a = quantize_act(ks, ty, &x, "random");
                check_dot(ks, ty, n, &w, &a, "random");
                if !is_float(ty) {
                    // Every bit pattern of the quants (scales kept finite), activations included.
                    let w = blocks(ty, n, &mut rng, |r, _| r.byte(), |r| r.f() * 0.3);
                    let mut a = blocks(act, n, &mut rng, |r, _| r.byte(), |r| r.f() * 0.1);
                    clamp_q8_0(ty, &mut a);
                    check_dot(ks, ty, n, &w, &a, "random bytes");
                }
            }
        }
    }
}

#[test]
fn dots_equal_the_reference_on_edge_data() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        let mut rng = Rng(0x0dd_ba11);
        for ty in DOT_TYPES {
            let act = reference_traits(ty).unwrap().vec_dot_type;
            for &len in &LENGTHS {
                let n = elems(ty, len);
                let zeros = vec![0f32; n];
                let wb = ty.row_bytes(n as u64).unwrap() as usize;
                // All-zero weights and activations.
                check_dot(
                    ks,
                    ty,
                    n,
                    &vec![0u8; wb],
                    &quantize_act(ks, ty, &zeros, "zeros"),
                    "zeros",
                );
                if is_float(ty) {
                    // Huge (products overflow to ±inf, sums to NaN), tiny and subnormal values.
                    let q = reference_traits(ty).unwrap().from_float.unwrap();
                    for (what, mag) in [("huge", 3e38f32), ("f16 max", 65504.0), ("tiny", 1e-40)] {
                        let x: Vec<f32> = (0..n).map(|_| rng.f() * mag).collect();
                        let y: Vec<f32> = (0..n).map(|_| rng.f() * mag).collect();
                        let mut w = vec![0u8; wb];
                        q(&x, &mut w);
                        check_dot(ks, ty, n, &w, &quantize_act(ks, ty, &y, what), what);
                    }
                    // Cancellation: lanes 0, 1, 2 (and the first three elements of a tail) hold
                    // +H, -H and a tiny t, lane 3 holds +H, -H, t in three successive groups of
                    // 8; only the reference's order gives exactly t (2t).
                    let (big, tiny) = if ty == GgmlType::F16 {
                        (32768.0, 2f32.powi(-24))
                    } else {
                        (2f32.powi(40), 2f32.powi(-40))
                    };
                    let pick = |i: usize| match (i % 8, i / 8) {
                        (0, 0) | (3, 0) => (big, big),
                        (1, 0) | (3, 1) => (big, -big),
                        (2, 0) | (3, 2) => (tiny, tiny),
                        _ => (0.0, 0.0),
                    };
                    let (x, y): (Vec<f32>, Vec<f32>) = (0..n).map(pick).unzip();
                    let mut w = vec![0u8; wb];
                    q(&x, &mut w);
                    check_dot(
                        ks,
                        ty,
                        n,
                        &w,
                        &quantize_act(ks, ty, &y, "cancel"),
                        "cancellation",
                    );
                    // Magnitudes spread so widely that the f64 sums round: catches a changed
                    // order of the lane sums.
                    let span = if ty == GgmlType::F16 {
                        (-24, 15)
                    } else {
                        (-60, 60)
                    };
                    let wide = |r: &mut Rng| {
                        let e = span.0 + (r.byte() as i32 % (span.1 - span.0));
                        (r.f() + 2.5) * 2f32.powi(e)
                    };
                    let x: Vec<f32> = (0..n).map(|_| wide(&mut rng)).collect();
                    let y: Vec<f32> = (0..n).map(|_| wide(&mut rng)).collect();
                    let mut w = vec![0u8; wb];
                    q(&x, &mut w);
                    check_dot(
                        ks,
                        ty,
                        n,
                        &w,
                        &quantize_act(ks, ty, &y, "wide"),
                        "wide range",
                    );
                    continue;
                }
                // Every quant at its largest, scales at the f16 maximum; activations at the
                // extremes of i8 (-128 only where the activation quantizers could produce it).
                let w = blocks(ty, n, &mut rng, |_, _| 0xff, |_| 65504.0);
                for (what, q) in [("max × 127", 0x7fu8), ("max × -128", 0x80)] {
                    let mut a = blocks(act, n, &mut rng, |_, _| q, |_| 1.0);
                    clamp_q8_0(ty, &mut a);
                    check_dot(ks, ty, n, &w, &a, what);
                    let mut a = blocks(act, n, &mut rng, |_, _| q, |_| 1e30);
                    clamp_q8_0(ty, &mut a);
                    check_dot(ks, ty, n, &w, &a, &format!("{what}, huge scales"));
                }
                // Large integer sums (quants at 14 or 15, activations 100..128) with
                // full-mantissa scales: the float steps round, so their order is checked.
                let w = blocks(
                    ty,
                    n,
                    &mut rng,
                    |r, _| [0xff, 0xef, 0xfe, 0xee][r.byte() as usize % 4],
                    |r| r.f(),
                );
                let mut a = blocks(act, n, &mut rng, |r, _| 100 + r.byte() % 28, |r| r.f());
                clamp_q8_0(ty, &mut a);
                check_dot(ks, ty, n, &w, &a, "large sums");
                // Alternating zero and random blocks, activations with outliers.
                let w = blocks(
                    ty,
                    n,
                    &mut rng,
                    |r, i| {
                        if (i / ty.type_size()) % 2 == 0 {
                            0
                        } else {
                            r.byte()
                        }
                    },
                    |_| 0.01,
                );
                let x: Vec<f32> = (0..n)
                    .map(|i| if i % 37 == 5 { 1e4 } else { rng.f() })
                    .collect();
                check_dot(
                    ks,
                    ty,
                    n,
                    &w,
                    &quantize_act(ks, ty, &x, "outliers"),
                    "half-zero",
                );
            }
        }
    }
}

#[test]
fn activation_quantizers_equal_the_reference() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        let mut rng = Rng(0x5eed);
        for act in [
            GgmlType::Q8_0,
            GgmlType::Q8_1,
            GgmlType::Q8_K,
            GgmlType::F16,
            GgmlType::BF16,
        ] {
            // A weight type whose activations are `act`.
            let ty = match act {
                GgmlType::Q8_1 => GgmlType::Q4_1,
                GgmlType::Q8_K => GgmlType::Q4_K,
                other => other,
            };
            let bs = act.block_size();
            for &len in &LENGTHS {
                let n = len * bs;
                let mut patterns: Vec<(&str, Vec<f32>)> = vec![
                    ("random", (0..n).map(|_| rng.f()).collect()),
                    ("zeros", vec![0.0; n]),
                    ("negative zeros", vec![-0.0; n]),
                    ("huge", (0..n).map(|_| rng.f() * 1.5e38).collect()),
                    ("subnormal", (0..n).map(|_| rng.f() * 1e-40).collect()),
                    ("tiny normal", (0..n).map(|_| rng.f() * 1e-37).collect()),
                ];
                // Halfway cases: amax 127 makes the scale 1, so x.5 values are ties.
                let ties = (0..n)
                    .map(|i| match i % bs {
                        0 => 127.0,
                        j => (j as f32 - 60.0) + 0.5,
                    })
                    .collect();
                patterns.push(("ties", ties));
                // Equal magnitudes of both signs: the first one sets Q8_K's sign.
                let signs = (0..n)
                    .map(|i| match i % 7 {
                        3 => -5.0,
                        5 => 5.0,
                        _ => rng.f(),
                    })
                    .collect();
                patterns.push(("both signs", signs));
                // Non-finite values in some blocks (handed to the reference there), and for the
                // float formats NaNs with payloads, overflow and values just past a rounding tie.
                let specials = [
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    -f32::NAN,
                    f32::from_bits(0x7f80_0001),
                    f32::from_bits(0xffc1_2345),
                    65520.0,
                    // bf16 ties (low 16 bits 0x8000) and f16 ties (1 + 2^-11, 1 + 3 · 2^-11).
                    f32::from_bits(0x3f80_8000),
                    f32::from_bits(0x3f81_8000),
                    1.0 + 2f32.powi(-11),
                    1.0 + 3.0 * 2f32.powi(-11),
                ];
                let mut odd: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                for (b, s) in (0..len).step_by(2).zip(specials.iter().cycle()) {
                    odd[b * bs + (b * 7) % bs] = *s;
                }
                patterns.push(("non-finite", odd));
                for (what, x) in &patterns {
                    quantize_act(ks, ty, x, what);
                }
            }
        }
    }
}

#[test]
fn ops_equal_the_reference() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        let mut rng = Rng(42);
        let k = ks.ops();
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
}

/// GeGLU through a GELU table equals the reference bit for bit (NaN for NaN): random inputs
/// over the table's range and past it, the range edges (±10), infinities, zeros, a subnormal,
/// and NaNs whose f16 bits are the table's last index (the vector kernels' gathers read the
/// padding entry there), in vector lanes and in scalar tails. The table is random: the kernels
/// only look entries up.
#[test]
fn geglu_equals_the_reference() {
    let mut rng = Rng(0x6e1_6e1);
    let table: Vec<u16> = (0..ops::GELU_TABLE_LEN)
        .map(|_| u16::from(rng.byte()) << 8 | u16::from(rng.byte()))
        .collect();
    let special = [
        -10.0f32,
        10.0,
        -9.999,
        9.999,
        -10.001,
        10.001,
        0.0,
        -0.0,
        1e-40,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0xffff_ffff),
        f32::from_bits(0x7fff_ffff),
        65504.0,
        -70000.0,
    ];
    for ks in KernelSet::available() {
        let k = ks.ops();
        for &n in LENGTHS.iter().chain(&[special.len(), special.len() - 3]) {
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    if n <= special.len() {
                        special[i]
                    } else {
                        rng.f() * 24.0
                    }
                })
                .collect();
            let u: Vec<f32> = (0..n).map(|_| rng.f() * 3.0).collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            (k.geglu)(&mut a, &u, &table);
            ops::geglu(&mut b, &u, &table);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(
                    p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()),
                    "{}: geglu({}) = {p} against the reference's {q} (length {n})",
                    ks.path().name(),
                    x[i]
                );
            }
        }
    }
}

/// `avx2-novnni` runs the AVX2 path's kernels without AVX-VNNI (the tiles of an AVX2-only
/// CPU); `avx2` takes the AVX-VNNI tiles where the CPU has them.
#[test]
fn avx2_novnni_runs_no_avx_vnni_tile() {
    let (Ok(plain), Ok(avx2)) = (
        KernelSet::for_path(CpuPath::Avx2NoVnni),
        KernelSet::for_path(CpuPath::Avx2),
    ) else {
        eprintln!("no AVX2 on this CPU (or build): nothing to check");
        return;
    };
    for &ty in ember_kernels::SUPPORTED {
        let names: Vec<_> = plain.tile_variants(ty).iter().map(|v| v.0).collect();
        let with: Vec<_> = avx2.tile_variants(ty).iter().map(|v| v.0).collect();
        let without: Vec<_> = with.iter().copied().filter(|&n| n != "avx-vnni").collect();
        assert_eq!(
            names, without,
            "{ty}: avx2-novnni's tiles are avx2's less AVX-VNNI's"
        );
        if avx2_has_vnni() && ty == GgmlType::Q4_1 {
            assert_eq!(with.first(), Some(&"avx-vnni"), "{ty}: {with:?}");
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avxvnni")
}
#[cfg(not(target_arch = "x86_64"))]
fn avx2_has_vnni() -> bool {
    false
}

/// Tile products equal the reference dot of every (row, token) pair (`dot_for_row`) bit for bit, on
/// awkward row counts, token counts and lengths, with padded strides, and write nothing else.
#[test]
fn tile_products_equal_the_reference_dots() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        let mut rng = Rng(0x7e11_7e11);
        let mut tested = 0;
        for &ty in ember_kernels::SUPPORTED {
            let variants = ks.tile_variants(ty);
            assert_eq!(
                ks.tile(ty).map(|f| f as usize),
                variants.first().map(|v| v.1 as usize),
                "{ty}: KernelSet::tile is the first variant"
            );
            for (name, tile) in variants {
                tested += 1;
                let refr = reference_traits(ty).unwrap();
                let act = reference_traits(refr.vec_dot_type).unwrap();
                let bs = ty.block_size();
                // On x86_64 also 130 blocks: rows past the 4096 elements of the AVX2 tiles over
                // unpacked rows, where the plain tiles take every token count.
                let long: &[usize] = if cfg!(target_arch = "x86_64") {
                    &[130]
                } else {
                    &[]
                };
                for &blocks in [1usize, 2, 3, 5, 18, 33].iter().chain(long) {
                    let n = blocks * bs;
                    let wb = ty.row_bytes(n as u64).unwrap() as usize;
                    let ab = refr.vec_dot_type.row_bytes(n as u64).unwrap() as usize;
                    for &(nr, nt) in &[
                        (1, 1),
                        (1, 3),
                        (2, 2),
                        (3, 5),
                        (4, 1),
                        (4, 4),
                        (5, 2),
                        (7, 7),
                        (6, 8),
                        (9, 13),
                        (17, 3),
                        // One token over many rows (a decode step): the AVX-512 tiles hold two
                        // rows to a register there, in micro-tiles of 8 rows.
                        (8, 1),
                        (11, 1),
                        (18, 1),
                        // A lone token left over after a full group of token pairs.
                        (3, 17),
                        // More tokens than one L1 group of 33-block activation rows (12 to 14).
                        (5, 29),
                    ] {
                        let (w_stride, a_stride) = (wb + 3, ab + 5);
                        let mut wq = vec![0u8; nr * w_stride];
                        for r in 0..nr {
                            let dst = &mut wq[r * w_stride..r * w_stride + wb];
                            match refr.from_float {
                                Some(q) => {
                                    let row: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                                    q(&row, dst);
                                }
                                // k-quants (no reference quantizer): random blocks.
                                None => dst.copy_from_slice(&crate::blocks(
                                    ty,
                                    n,
                                    &mut rng,
                                    |g: &mut Rng, _| g.byte(),
                                    |g: &mut Rng| g.f() * 0.3,
                                )),
                            }
                        }
                        let mut aq = vec![0u8; nt * a_stride];
                        for t in 0..nt {
                            let row: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                            (act.quantize_act.unwrap())(
                                &row,
                                &mut aq[t * a_stride..t * a_stride + ab],
                            );
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
                                let want = refr.dot_for_row(t, nt)(
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
        // Q4_1 and Q8_0 at least: on NEON with dotprod, the `sdot` and the plain NEON variants.
        let expected = match Ok::<_, ()>(ks.path()) {
            Ok(CpuPath::Avx2 | CpuPath::Avx2NoVnni | CpuPath::Neon) => 2,
            // The AVX-512 tiles and, after them, the AVX2 ones.
            Ok(CpuPath::Avx512) => 4,
            Ok(CpuPath::NeonDotprod) => 4,
            _ => 0,
        };
        assert!(
            tested >= expected,
            "{:?}: {tested} tile kernels tested, expected at least {expected} (Q4_1 and Q8_0)",
            ks.path()
        );
    }
}

/// Q8_0 weights may hold any byte, -128 included (only the activation quantizers promise
/// ±127): the selected dot must still equal the reference.
#[test]
fn q8_0_dot_handles_every_weight_byte() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        let mut rng = Rng(7);
        let (fast, refr) = (
            ks.traits(GgmlType::Q8_0).unwrap(),
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
}

/// SiLU's `exp` over its whole range, the far ranges of ggml's `expf` (|n| > 126 and > 192,
/// overflow to infinity) included: inputs in ±200, compared bit for bit.
#[test]
fn silu_mul_equals_the_reference_over_the_whole_exp_range() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        let mut rng = Rng(99);
        let k = ks.ops();
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
}

/// SiLU at the edges of ggml's `expf` ranges and at the special values (zeros, infinities, NaN,
/// the smallest normal and a subnormal), in the vector lanes and in the scalar tail, bit for bit.
#[test]
fn silu_mul_equals_the_reference_at_special_values() {
    let edges = [
        0.0f32,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        -1e-40,
        87.3,
        -87.3,
        88.73,
        -88.73,
        103.9,
        -103.9,
        133.0,
        -133.0,
        133.8,
        -133.8,
        1e30,
        -1e30,
        f32::MAX,
        -f32::MAX,
        1.0,
        -1.0,
        0.5,
    ];
    let u: Vec<f32> = (0..edges.len()).map(|i| 0.25 + i as f32).collect();
    for ks in KernelSet::available() {
        let k = ks.ops();
        // Lengths 24 (all in vector lanes) and 21 (a 5-element scalar tail).
        for n in [edges.len(), edges.len() - 3] {
            let (mut a, mut b) = (edges[..n].to_vec(), edges[..n].to_vec());
            (k.silu_mul)(&mut a, &u[..n]);
            ops::silu_mul(&mut b, &u[..n]);
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    "{}: silu_mul({}) = {x} against the reference's {y}",
                    ks.path().name(),
                    edges[i]
                );
            }
        }
    }
}

/// Float dots over element counts that are not multiples of the vector width (the tails go to
/// the first lanes in the reference).
#[test]
fn float_dots_equal_the_reference_on_awkward_lengths() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        let mut rng = Rng(5);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let (fast, refr) = (ks.traits(ty).unwrap(), reference_traits(ty).unwrap());
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
}

/// K-quant dots on random weight blocks (every quant, scale and high-bit pattern; the f16
/// super-block scales fixed to finite values) against Q8_K activations.
#[test]
fn k_quant_dots_equal_the_reference() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        let mut rng = Rng(0x5eed);
        for (ty, f16_at) in [
            (GgmlType::Q4_K, &[0usize, 2][..]),
            (GgmlType::Q5_K, &[0, 2]),
            (GgmlType::Q6_K, &[208]),
        ] {
            let refr = reference_traits(ty).unwrap();
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
                check_dot(ks, ty, n, &w, &a, "random k-quant blocks");
            }
        }
    }
}
