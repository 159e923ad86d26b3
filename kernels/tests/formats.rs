//! Tensor formats of the scalar reference against independent implementations.
//!
//! 1. Dequantization and quantization are bit-exact against gguf-py (and, for Q8_1 and Q8_K which
//!    gguf-py cannot quantize, against the numpy transcription of ggml's reference in the fixture
//!    generator): fixtures made by `tests/fixtures/gen_quant_fixtures.py`.
//! 2. Every dot product agrees with the f64 dot of the dequantized operands, on rows of awkward
//!    lengths placed at odd byte offsets; tolerance `1e-6 * sum |w_i a_i|` (plus, for Q4_1 and
//!    Q5_1, the f16 rounding of Q8_1's `s` field, which is part of ggml's result).
//! 3. Activation quantization round-trips within half a quantization step, and its side fields
//!    (Q8_1's `s`, Q8_K's `bsums`) are what ggml stores.

use ember_kernels::traits::{reference_traits, TypeTraits};
use ember_kernels::GgmlType;
use half::f16;

/// splitmix64: deterministic test data without dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of uniforms), times a scale from 1e-3 to 1e2.
    fn activation(&mut self, scale: f32) -> f32 {
        let s: f64 = (0..4).map(|_| self.unit()).sum::<f64>() - 2.0;
        (s * 1.7) as f32 * scale
    }
    /// An f16 of magnitude in [1e-3, 1], either sign.
    fn scale_f16(&mut self) -> [u8; 2] {
        let mag = (1e-3f64.ln() * (1.0 - self.unit())).exp();
        let v = if self.next() & 1 == 0 { mag } else { -mag };
        f16::from_f64(v).to_le_bytes()
    }
}

fn traits(ty: GgmlType) -> &'static TypeTraits {
    reference_traits(ty).unwrap_or_else(|| panic!("{ty} has no reference kernels"))
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (run gen_quant_fixtures.py)"))
}

/// Parses a fixture header: (type, count, payload).
fn header<'a>(data: &'a [u8], magic: &[u8; 4], name: &str) -> (GgmlType, usize, &'a [u8]) {
    assert_eq!(&data[..4], magic, "{name}: bad magic");
    let id = u32::from_le_bytes(data[4..8].try_into().unwrap());
    let count = u32::from_le_bytes(data[8..12].try_into().unwrap()) as usize;
    let ty = GgmlType::from_id(id).unwrap_or_else(|| panic!("{name}: unknown type id {id}"));
    (ty, count, &data[12..])
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn dequantization_is_bit_exact_against_gguf_py() {
    for name in [
        "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
    ] {
        let data = fixture(&format!("{name}.bin"));
        let (ty, n_blocks, rest) = header(&data, b"EMBD", name);
        assert_eq!(ty.name(), name);
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let (blocks, want) = rest.split_at(n_blocks * ts);
        let want = f32s(want);
        assert_eq!(want.len(), n_blocks * bs, "{name}: fixture length");
        // At an odd byte offset, as a row inside an mmapped tensor may be.
        let mut shifted = vec![0u8; blocks.len() + 1];
        shifted[1..].copy_from_slice(blocks);
        let mut got = vec![f32::NAN; want.len()];
        (traits(ty).to_float)(&shifted[1..], &mut got);
        if let Some(i) = (0..want.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            panic!(
                "{name}: block {}, element {}: got {} ({:#010x}), gguf-py {} ({:#010x})",
                i / bs,
                i % bs,
                got[i],
                got[i].to_bits(),
                want[i],
                want[i].to_bits()
            );
        }
    }
}

#[test]
fn quantization_is_bit_exact_against_gguf_py() {
    for name in [
        "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q8_K",
    ] {
        let data = fixture(&format!("{name}_quant.bin"));
        let (ty, n, rest) = header(&data, b"EMBQ", name);
        assert_eq!(ty.name(), name);
        let (x, want) = rest.split_at(4 * n);
        let x = f32s(x);
        let (bs, ts) = (ty.block_size(), ty.type_size());
        assert_eq!(want.len(), n / bs * ts, "{name}: fixture length");
        let mut got = vec![0xa5u8; want.len() + 1];
        let from_float = traits(ty).from_float.expect("quantizable");
        from_float(&x, &mut got[1..]);
        let got = &got[1..];
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "{name}: block {}, byte {}: got {:#04x}, reference {:#04x}",
                i / ts,
                i % ts,
                got[i],
                want[i]
            );
        }
    }
}

/// Byte offsets of the f16 scale fields per block, set to sane values in random weight blocks
/// (random bytes there would give NaN or huge scales).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// A random weight row of `n_blocks` blocks.
fn random_weights(ty: GgmlType, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if bs == 1 {
        let x: Vec<f32> = (0..n_blocks).map(|_| rng.activation(1.0)).collect();
        let mut w = vec![0u8; n_blocks * ts];
        (traits(ty).from_float.unwrap())(&x, &mut w);
        return w;
    }
    let mut w: Vec<u8> = (0..n_blocks * ts).map(|_| rng.next() as u8).collect();
    for b in w.chunks_exact_mut(ts) {
        for &off in f16_fields(ty) {
            b[off..off + 2].copy_from_slice(&rng.scale_f16());
        }
    }
    w
}

/// `bytes` copied to offset `off` of a fresh buffer, to test unaligned rows.
fn at_offset(bytes: &[u8], off: usize) -> Vec<u8> {
    let mut v = vec![0u8; off + bytes.len()];
    v[off..].copy_from_slice(bytes);
    v
}

/// The f16 rounding error of Q8_1's `s` fields, weighted by the weights' offsets (Q4_1, Q5_1:
/// `m` at bytes 2..4 of a `type_size`-byte block): the part of ggml's dot that the dequantized
/// dot does not have.
fn q8_1_s_rounding(w: &[u8], type_size: usize, a: &[u8]) -> f64 {
    let h = |b: &[u8]| f64::from(f16::from_le_bytes([b[0], b[1]]).to_f32());
    w.chunks_exact(type_size)
        .zip(a.chunks_exact(36))
        .map(|(x, y)| {
            let sum: f64 = y[4..].iter().map(|&q| f64::from(q as i8)).sum();
            h(&x[2..4]).abs() * (h(&y[2..4]) - h(&y[0..2]) * sum).abs()
        })
        .sum()
}

#[test]
fn dot_products_match_dequantized_f64_dot() {
    const TOL: f64 = 1e-6;
    let mut rng = Rng(0x5eed);
    let counts = [1usize, 2, 3, 5, 7, 8, 15, 16, 17, 31, 33, 63, 127, 129];
    for &ty in ember_kernels::SUPPORTED {
        let t = traits(ty);
        let act = traits(t.vec_dot_type);
        let bs = ty.block_size();
        let mut worst = 0f64;
        for (k, &nb) in counts.iter().enumerate() {
            if bs == 256 && nb > 33 {
                continue;
            }
            let n = nb * bs;
            let w = random_weights(ty, nb, &mut rng);
            let scale = 10f32.powf(rng.unit() as f32 * 5.0 - 3.0);
            let x: Vec<f32> = (0..n).map(|_| rng.activation(scale)).collect();
            let mut a = vec![0u8; t.vec_dot_type.row_bytes(n as u64).unwrap() as usize];
            (act.from_float.unwrap())(&x, &mut a);

            let (mut wf, mut af) = (vec![0f32; n], vec![0f32; n]);
            (t.to_float)(&w, &mut wf);
            (act.to_float)(&a, &mut af);
            let want: f64 = wf
                .iter()
                .zip(&af)
                .map(|(&p, &q)| f64::from(p) * f64::from(q))
                .sum();
            let mag: f64 = wf
                .iter()
                .zip(&af)
                .map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs())
                .sum();
            let extra = if t.vec_dot_type == GgmlType::Q8_1 {
                1.001 * q8_1_s_rounding(&w, ty.type_size(), &a)
            } else {
                0.0
            };

            let (wo, ao) = (at_offset(&w, 1 + k % 3), at_offset(&a, 3));
            let got = f64::from((t.vec_dot)(n, &wo[1 + k % 3..], &ao[3..]));
            let diff = (got - want).abs();
            assert!(
                diff <= TOL * mag + extra + f64::MIN_POSITIVE,
                "{ty} x {}: {nb} blocks: got {got}, f64 {want}, difference {diff:e} > {:e} \
                 (tolerance {TOL:e} * sum|w a|, sum|w a| = {mag:e}, + {extra:e})",
                t.vec_dot_type,
                TOL * mag + extra
            );
            if mag > 0.0 {
                worst = worst.max((diff - extra).max(0.0) / mag);
            }
        }
        println!(
            "{ty:5} x {:5}: largest difference {worst:.2e} * sum|w a|",
            t.vec_dot_type
        );
    }
}

#[test]
fn activation_dot_products_match_dequantized_f64_dot() {
    // Q8_1 x Q8_1 and Q8_K x Q8_K (table completeness; no ggml counterpart).
    let mut rng = Rng(77);
    for ty in [GgmlType::Q8_1, GgmlType::Q8_K] {
        let t = traits(ty);
        for nb in [1usize, 2, 3, 7] {
            let n = nb * ty.block_size();
            let mut bytes = Vec::new();
            for _ in 0..2 {
                let x: Vec<f32> = (0..n).map(|_| rng.activation(0.3)).collect();
                let mut q = vec![0u8; ty.row_bytes(n as u64).unwrap() as usize];
                (t.from_float.unwrap())(&x, &mut q);
                bytes.push(q);
            }
            let (mut p, mut q) = (vec![0f32; n], vec![0f32; n]);
            (t.to_float)(&bytes[0], &mut p);
            (t.to_float)(&bytes[1], &mut q);
            let want: f64 = p
                .iter()
                .zip(&q)
                .map(|(&u, &v)| f64::from(u) * f64::from(v))
                .sum();
            let mag: f64 = p
                .iter()
                .zip(&q)
                .map(|(&u, &v)| (f64::from(u) * f64::from(v)).abs())
                .sum();
            let got = f64::from((t.vec_dot)(n, &bytes[0], &bytes[1]));
            assert!(
                (got - want).abs() <= 1e-5 * mag,
                "{ty}: {nb} blocks: {got} vs {want}"
            );
        }
    }
}

/// Random activations with awkward blocks: all zero, exact halves, constant, huge range.
fn activation_row(n: usize, bs: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x = Vec::with_capacity(n);
    for b in 0..n / bs {
        let scale = 10f32.powf(rng.unit() as f32 * 8.0 - 5.0);
        for j in 0..bs {
            x.push(match b % 5 {
                0 => 0.0,
                1 => (rng.next() % 253) as f32 - 126.5 + if j == 0 { -0.5 } else { 0.0 },
                2 => 0.25,
                _ => rng.activation(scale),
            });
        }
    }
    x
}

#[test]
fn activation_quantization_round_trips() {
    let mut rng = Rng(1234);
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        let t = traits(ty);
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let n = 40 * bs;
        let x = activation_row(n, bs, &mut rng);
        let mut q = vec![0u8; n / bs * ts];
        (t.from_float.unwrap())(&x, &mut q);
        let mut y = vec![0f32; n];
        (t.to_float)(&q, &mut y);
        for (b, (xb, blk)) in x.chunks_exact(bs).zip(q.chunks_exact(ts)).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let h = |o: usize| f16::from_le_bytes([blk[o], blk[o + 1]]).to_f32();
            let qs = |o: usize| blk[o..o + bs].iter().map(|&v| v as i8).collect::<Vec<_>>();
            // Bound: half a step of the f32 scale, plus (Q8_0 / Q8_1) 127 times the f16 rounding
            // of the stored scale, plus f32 rounding.
            let (bound, quants) = match ty {
                GgmlType::Q8_K => {
                    let d = f32::from_le_bytes(blk[..4].try_into().unwrap());
                    let qs = qs(4);
                    for g in 0..16 {
                        let sum: i32 = qs[16 * g..16 * g + 16].iter().map(|&v| i32::from(v)).sum();
                        let stored = i16::from_le_bytes([blk[260 + 2 * g], blk[261 + 2 * g]]);
                        assert_eq!(i32::from(stored), sum, "Q8_K block {b}: bsums[{g}]");
                    }
                    (f64::from(d.abs()) * 0.500_01, qs)
                }
                _ => {
                    let d32 = amax / 127.0;
                    let d16 = h(0);
                    assert_eq!(d16, f16::from_f32(d32).to_f32(), "{ty} block {b}: d");
                    let qs = qs(if ty == GgmlType::Q8_1 { 4 } else { 2 });
                    if ty == GgmlType::Q8_1 {
                        let sum: i32 = qs.iter().map(|&v| i32::from(v)).sum();
                        let s = f16::from_f32(sum as f32 * d32).to_f32();
                        assert_eq!(h(2).to_bits(), s.to_bits(), "Q8_1 block {b}: s");
                    }
                    let bound = f64::from(d32) * 0.500_01 + 127.0 * f64::from((d16 - d32).abs());
                    (bound, qs)
                }
            };
            assert!(
                quants.iter().all(|&v| v != i8::MIN),
                "{ty} block {b}: quant -128"
            );
            for j in 0..bs {
                let (xi, yi) = (f64::from(xb[j]), f64::from(y[b * bs + j]));
                let tol = bound + 1e-6 * xi.abs();
                assert!(
                    (xi - yi).abs() <= tol,
                    "{ty} block {b}, element {j}: {xi} -> {yi}, off by more than {tol:e}"
                );
            }
        }
    }
}
