//! Every kernel against the CPU reference on random inputs and awkward sizes.

use super::*;

fn quantize_act_cpu(x: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let rb = cols / 32 * 36;
    let mut out = vec![0u8; rows * rb];
    for r in 0..rows {
        q8::quantize_row_q8_1_act(&x[r * cols..(r + 1) * cols], &mut out[r * rb..(r + 1) * rb]);
    }
    out
}

#[test]
fn quantize_q8_1_is_bit_exact() {
    let Some(dev) = device("quantize_q8_1_is_bit_exact") else {
        return;
    };
    let mut rng = Rng(1);
    for &(rows, cols) in &[(1, 32), (3, 64), (5, 96), (7, 576), (17, 1536), (2, 8192)] {
        let mut x = rng.vec(rows * cols, 3.0);
        // Awkward blocks: all zeros, exact ties at half steps, one huge outlier.
        x[..32.min(cols)].iter_mut().for_each(|v| *v = 0.0);
        if cols >= 64 {
            for (i, v) in x[32..64].iter_mut().enumerate() {
                *v = (i as f32 - 16.0) * 0.5;
            }
        }
        x[rows * cols - 1] = 1e4;
        let gpu = testing::quantize_q8_1(&dev, &x, rows, cols).unwrap();
        let cpu = quantize_act_cpu(&x, rows, cols);
        assert_eq!(gpu, cpu, "Q8_1 bytes differ for {rows}x{cols}");
    }
}

#[test]
fn quantize_q8_k_is_bit_exact() {
    let Some(dev) = device("quantize_q8_k_is_bit_exact") else {
        return;
    };
    let mut rng = Rng(11);
    for &(rows, cols) in &[(1, 256), (3, 512), (5, 768), (2, 2048), (1, 8192)] {
        let mut x = rng.vec(rows * cols, 3.0);
        // An all-zero super-block, and two entries of equal magnitude and opposite sign (the
        // first one sets the scale's sign).
        x[..256].iter_mut().for_each(|v| *v = 0.0);
        if cols >= 512 {
            x[300] = -9.0;
            x[400] = 9.0;
        }
        let gpu = testing::quantize_q8_k(&dev, &x, rows, cols).unwrap();
        let rb = cols / 256 * 292;
        let mut cpu = vec![0u8; rows * rb];
        for r in 0..rows {
            q8_k::quantize_row_q8_k(&x[r * cols..(r + 1) * cols], &mut cpu[r * rb..(r + 1) * rb]);
        }
        assert_eq!(gpu, cpu, "Q8_K bytes differ for {rows}x{cols}");
    }
}

/// Weights of `ty` (quantized from random values with the file format's reference rounding;
/// random quants with sane f16 scales for K-quants, which have no quantizer here) and their f32
/// dequantization.
pub(super) fn random_weights(
    rng: &mut Rng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
) -> (Vec<u8>, Vec<f32>) {
    let x = rng.vec(rows * cols, 1.0);
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut w = vec![0u8; rows * rb];
    let mut deq = vec![0f32; rows * cols];
    let h = |v: f32| f16::from_f32(v).to_le_bytes();
    for r in 0..rows {
        let (src, dst) = (&x[r * cols..(r + 1) * cols], &mut w[r * rb..(r + 1) * rb]);
        match ty {
            GgmlType::F32 => float::quantize_row_f32(src, dst),
            GgmlType::F16 => float::quantize_row_f16(src, dst),
            GgmlType::BF16 => float::quantize_row_bf16(src, dst),
            GgmlType::Q4_0 => q4_0::quantize_row_q4_0(src, dst),
            GgmlType::Q4_1 => q4_1::quantize_row_q4_1(src, dst),
            GgmlType::Q5_0 => q5_0::quantize_row_q5_0(src, dst),
            GgmlType::Q5_1 => q5_1::quantize_row_q5_1(src, dst),
            GgmlType::Q8_0 => q8::quantize_row_q8_0(src, dst),
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
                dst.iter_mut().for_each(|b| *b = rng.u64() as u8);
                for blk in dst.chunks_exact_mut(ty.type_size()) {
                    let d = 0.02 * (0.5 + rng.f().abs());
                    if ty == GgmlType::Q6_K {
                        blk[208..210].copy_from_slice(&h(d / 4.0));
                    } else {
                        blk[..2].copy_from_slice(&h(d));
                        blk[2..4].copy_from_slice(&h(0.02 * rng.f().abs()));
                    }
                }
            }
            _ => unreachable!(),
        }
        let out = &mut deq[r * cols..(r + 1) * cols];
        match ty {
            GgmlType::F32 => float::dequantize_row_f32(dst, out),
            GgmlType::F16 => float::dequantize_row_f16(dst, out),
            GgmlType::BF16 => float::dequantize_row_bf16(dst, out),
            GgmlType::Q4_0 => q4_0::dequantize_row_q4_0(dst, out),
            GgmlType::Q4_1 => q4_1::dequantize_row_q4_1(dst, out),
            GgmlType::Q5_0 => q5_0::dequantize_row_q5_0(dst, out),
            GgmlType::Q5_1 => q5_1::dequantize_row_q5_1(dst, out),
            GgmlType::Q8_0 => q8::dequantize_row_q8_0(dst, out),
            GgmlType::Q4_K => q4_k::dequantize_row_q4_k(dst, out),
            GgmlType::Q5_K => q5_k::dequantize_row_q5_k(dst, out),
            GgmlType::Q6_K => q6_k::dequantize_row_q6_k(dst, out),
            _ => unreachable!(),
        }
    }
    (w, deq)
}

/// Q8_1 activation blocks as Q8_0 (drop `s`), for the CPU dots that take Q8_0.
fn q8_1_to_q8_0(a: &[u8]) -> Vec<u8> {
    a.chunks_exact(36)
        .flat_map(|b| b[..2].iter().chain(&b[4..]).copied().collect::<Vec<_>>())
        .collect()
}

/// How the CPU sees one activation row for a weight type: the bytes its dot reads (Q8_1, Q8_0,
/// Q8_K, f32, f16 or bf16) and their f32 values.
pub(super) fn cpu_acts(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let n = x.len();
    let mut f = vec![0f32; n];
    let b = match ty {
        GgmlType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => {
            let mut b = vec![0u8; 2 * n];
            float::quantize_row_f16(x, &mut b);
            b
        }
        GgmlType::BF16 => {
            let mut b = vec![0u8; 2 * n];
            float::quantize_row_bf16(x, &mut b);
            b
        }
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            let mut b = vec![0u8; n / 256 * 292];
            q8_k::quantize_row_q8_k(x, &mut b);
            b
        }
        _ => quantize_act_cpu(x, 1, n),
    };
    match ty {
        GgmlType::F32 => f.copy_from_slice(x),
        GgmlType::F16 => float::dequantize_row_f16(&b, &mut f),
        GgmlType::BF16 => float::dequantize_row_bf16(&b, &mut f),
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => q8_k::dequantize_row_q8_k(&b, &mut f),
        _ => q8::dequantize_row_q8_1(&b, &mut f),
    }
    (b, f)
}

/// The CPU reference dot of one weight row with one activation row from [`cpu_acts`].
fn cpu_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    match ty {
        GgmlType::F32 => float::vec_dot_f32(n, w, a),
        GgmlType::F16 => float::vec_dot_f16(n, w, a),
        GgmlType::BF16 => float::vec_dot_bf16(n, w, a),
        GgmlType::Q4_0 => q4_0::vec_dot_q4_0_q8_0(n, w, &q8_1_to_q8_0(a)),
        GgmlType::Q4_1 => q4_1::vec_dot_q4_1_q8_1(n, w, a),
        GgmlType::Q5_0 => q5_0::vec_dot_q5_0_q8_0(n, w, &q8_1_to_q8_0(a)),
        GgmlType::Q5_1 => q5_1::vec_dot_q5_1_q8_1(n, w, a),
        GgmlType::Q8_0 => q8::vec_dot_q8_0_q8_0(n, w, &q8_1_to_q8_0(a)),
        GgmlType::Q4_K => q4_k::vec_dot_q4_k_q8_k(n, w, a),
        GgmlType::Q5_K => q5_k::vec_dot_q5_k_q8_k(n, w, a),
        GgmlType::Q6_K => q6_k::vec_dot_q6_k_q8_k(n, w, a),
        _ => unreachable!(),
    }
}

#[test]
fn matmul_matches_cpu_dots() {
    let Some(mut dev) = device("matmul_matches_cpu_dots") else {
        return;
    };
    let mut rng = Rng(2);
    for ty in ALL_WEIGHTS {
        let mut worst = 0f64;
        // Shapes whose rows are not whole blocks of `ty` are skipped; the odd widths exercise
        // the float kernels' one-element path (the others take 8 elements per load).
        for &(rows, cols, n_tok) in &[
            (1, 1, 1),
            (2, 7, 3),
            (5, 33, 2),
            (3, 100, 9),
            (1, 32, 1),
            (3, 64, 2),
            (5, 96, 7),
            (17, 576, 8),
            (33, 576, 9),
            (129, 1536, 17),
            (7, 2048, 3),
            (5, 256, 2),
            (9, 768, 11),
            (64, 8192, 1),
            // From MMQ_MIN_TOKENS tokens: the tensor-core kernels (partial tiles of rows and
            // tokens, rows of 18 blocks = two full K steps and a partial one).
            (65, 576, 16),
            (65, 576, 33),
            (129, 1536, 70),
            (100, 2048, 64),
            (7, 256, 40),
            (200, 96, 45),
            (64, 768, 128),
            // Nine K steps: splits of 3 steps each.
            (70, 2304, 16),
        ] {
            if ty.row_bytes(cols as u64).is_none() {
                continue;
            }
            let (w, wf) = random_weights(&mut rng, ty, rows, cols);
            let x = rng.vec(n_tok * cols, 2.0);
            let per_tok: Vec<(Vec<u8>, Vec<f32>)> =
                x.chunks_exact(cols).map(|xt| cpu_acts(ty, xt)).collect();
            // What the kernel reads: the f32 rows for float weights, else the quantized rows.
            let acts: Vec<u8> = match ty {
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                    x.iter().flat_map(|v| v.to_le_bytes()).collect()
                }
                _ => per_tok.iter().flat_map(|(b, _)| b.clone()).collect(),
            };
            let init = rng.vec(n_tok * rows, 1.0);
            for accumulate in [false, true] {
                let mut run = |tiles, split| {
                    dev.mmq_split = split;
                    testing::matmul(
                        &dev,
                        ty,
                        &w,
                        rows,
                        cols,
                        &acts,
                        n_tok,
                        accumulate.then_some(&init[..]),
                        tiles,
                    )
                    .unwrap()
                };
                let gpu = run(MmqTiles::Large, 1);
                // The tensor-core kernels' three tile shapes sum in the same order.
                for tiles in [MmqTiles::Small, MmqTiles::Narrow] {
                    assert_eq!(
                        gpu,
                        run(tiles, 1),
                        "{ty} {rows}x{cols} x{n_tok}: {tiles:?} tiles differ from large ones"
                    );
                }
                // Split K (partial sums over K ranges, added by the last split to arrive)
                // rounds apart from the unsplit sums, but the same way on every run; it must
                // stay as close to the CPU.
                let split3 = run(MmqTiles::Narrow, 3);
                assert_eq!(
                    split3,
                    run(MmqTiles::Narrow, 3),
                    "{ty} {rows}x{cols} x{n_tok}: split K differs between runs"
                );
                let split2 = run(MmqTiles::Large, 2);
                let rb = w.len() / rows;
                for gpu in [&gpu, &split3, &split2] {
                    for (t, (a, af)) in per_tok.iter().enumerate() {
                        for r in 0..rows {
                            let wr = &w[r * rb..(r + 1) * rb];
                            let mut cpu = cpu_dot(ty, cols, wr, a);
                            if accumulate {
                                cpu += init[t * rows + r];
                            }
                            let scale: f64 = wf[r * cols..(r + 1) * cols]
                                .iter()
                                .zip(af)
                                .map(|(&a, &b)| f64::from(a * b).abs())
                                .sum::<f64>()
                                + if accumulate {
                                    f64::from(init[t * rows + r].abs())
                                } else {
                                    0.0
                                };
                            let g = gpu[t * rows + r];
                            let err = (f64::from(g) - f64::from(cpu)).abs();
                            worst = worst.max(err / (scale + 1e-6));
                            assert!(
                                err <= 1e-5 * scale + 1e-6,
                                "{ty} {rows}x{cols} t={t} r={r} acc={accumulate}: gpu {g} cpu \
                                 {cpu} (scale {scale})"
                            );
                        }
                    }
                }
            }
            dev.mmq_split = 0;
        }
        println!("matmul {ty}: worst |gpu-cpu| / sum|w*a| = {worst:.3e}");
    }
}

#[test]
fn rms_norm_matches_cpu() {
    let Some(dev) = device("rms_norm_matches_cpu") else {
        return;
    };
    let mut rng = Rng(3);
    for &(rows, cols) in &[
        (1, 1),
        (2, 7),
        (3, 64),
        (5, 576),
        (9, 2048),
        (2, 3000),
        (2, 640),
        (1, 9216),
    ] {
        let x = rng.vec(rows * cols, 4.0);
        let w = rng.vec(cols, 1.5);
        let eps = 1e-5;
        let sel: Vec<i32> = (0..rows as i32).rev().collect();
        for rows_map in [None, Some(&sel[..])] {
            let gpu = testing::rms_norm(&dev, &x, &w, rows_map, eps).unwrap();
            for (i, o) in gpu.chunks_exact(cols).enumerate() {
                let src = rows_map.map_or(i, |m| m[i] as usize);
                let mut cpu = vec![0f32; cols];
                ops::rms_norm(&x[src * cols..(src + 1) * cols], &w, eps, &mut cpu);
                for (j, (&g, &c)) in o.iter().zip(&cpu).enumerate() {
                    assert!(
                        (g - c).abs() <= 1e-6 * c.abs().max(1e-3),
                        "{rows}x{cols} row {i} col {j}: gpu {g} cpu {c}"
                    );
                }
            }
        }
    }
}

#[test]
fn swiglu_matches_cpu() {
    let Some(dev) = device("swiglu_matches_cpu") else {
        return;
    };
    let mut rng = Rng(4);
    for &n in &[1usize, 7, 8, 9, 17, 1536 * 3, 8195] {
        let mut gate = rng.vec(n, 12.0);
        if n > 3 {
            gate[0] = -100.0;
            gate[1] = 100.0;
            gate[2] = 0.0;
        }
        let up = rng.vec(n, 2.0);
        let gpu = testing::swiglu(&dev, &gate, &up).unwrap();
        let mut cpu = gate.clone();
        ops::silu_mul(&mut cpu, &up);
        let n8 = n / 8 * 8;
        for i in 0..n {
            if i < n8 {
                assert_eq!(
                    gpu[i].to_bits(),
                    cpu[i].to_bits(),
                    "n={n} i={i}: {} vs {}",
                    gpu[i],
                    cpu[i]
                );
            } else {
                // The tail uses each platform's expf (CUDA's is within 2 ulp).
                assert!(
                    (gpu[i] - cpu[i]).abs() <= 1e-6 * cpu[i].abs().max(1e-6),
                    "n={n} i={i}: {} vs {}",
                    gpu[i],
                    cpu[i]
                );
            }
        }
    }
}

/// GeGLU reads the CPU's own f16 table: bit-exact, the clamps at ±10 included.
#[test]
fn geglu_is_bit_exact() {
    let Some(dev) = device("geglu_is_bit_exact") else {
        return;
    };
    let mut rng = Rng(5);
    for &n in &[1usize, 7, 255, 257, 6912 * 3] {
        let mut gate = rng.vec(n, 14.0);
        if n > 5 {
            gate[..5].copy_from_slice(&[-10.0, 10.0, -10.001, 9.999, 0.0]);
        }
        let up = rng.vec(n, 2.0);
        let gpu = testing::geglu(&dev, &gate, &up).unwrap();
        let mut cpu = gate.clone();
        ember::backend::gelu::geglu(&mut cpu, &up);
        for i in 0..n {
            assert_eq!(
                gpu[i].to_bits(),
                cpu[i].to_bits(),
                "n={n} i={i} x={}: {} vs {}",
                gate[i],
                gpu[i],
                cpu[i]
            );
        }
    }
}

#[test]
fn argmax_takes_lowest_index_of_ties() {
    let Some(dev) = device("argmax_takes_lowest_index_of_ties") else {
        return;
    };
    let mut rng = Rng(5);
    for &n in &[1usize, 2, 31, 257, 49152] {
        let mut x = rng.vec(4 * n, 5.0);
        // Row 1: a tie between two late indices; row 2: all equal; row 3: a NaN (-1: the
        // engine reads such a row back and fails its request, as the CPU does).
        if n > 4 {
            x[n + n - 1] = 10.0;
            x[n + n - 3] = 10.0;
        }
        x[2 * n..3 * n].iter_mut().for_each(|v| *v = 1.0);
        x[3 * n + n / 2] = f32::NAN;
        let gpu = testing::argmax(&dev, &x, n).unwrap();
        for r in 0..3 {
            let row = &x[r * n..(r + 1) * n];
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            assert_eq!(gpu[r] as usize, best, "n={n} row {r}");
        }
        assert_eq!(gpu[3], -1, "n={n}: a row holding a NaN");
    }
}

/// f64 attention of one query head over positions `0..=pos` of a sequence's table (the last
/// `window` of them when `window > 0`).
#[allow(clippy::too_many_arguments)]
fn attend_ref(
    z: &AttnShape,
    kc: &[u16],
    vc: &[u16],
    table: &[i32],
    pos: usize,
    kvh: usize,
    q: &[f32],
    window: usize,
) -> Vec<f64> {
    let start = if window > 0 {
        (pos + 1).saturating_sub(window)
    } else {
        0
    };
    let d = z.head_dim;
    let tile = z.block_size * d;
    let at = |c: &[u16], j: usize, e: usize| {
        let b = table[j / z.block_size] as usize;
        let i = ((b * z.n_layer + z.layer) * z.n_head_kv + kvh) * tile + (j % z.block_size) * d + e;
        f64::from(f16::from_bits(c[i]).to_f32())
    };
    let scale = 1.0 / (d as f64).sqrt();
    let scores: Vec<f64> = (start..=pos)
        .map(|j| (0..d).map(|e| f64::from(q[e]) * at(kc, j, e)).sum::<f64>() * scale)
        .collect();
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let sum: f64 = w.iter().sum();
    (0..d)
        .map(|e| {
            (start..=pos)
                .map(|j| w[j - start] * at(vc, j, e))
                .sum::<f64>()
                / sum
        })
        .collect()
}

#[test]
fn paged_attention_matches_f64_reference() {
    let Some(mut dev) = device("paged_attention_matches_f64_reference") else {
        return;
    };
    let mut rng = Rng(7);
    // Head dims 64 and 128 with up to 8 query heads per KV head take the grouped-query kernel
    // (groups 3, 1, 8, 7, 4 below); the others the general one.
    for &(hq, hkv, d, bs) in &[
        (4usize, 2usize, 16usize, 16usize),
        (9, 3, 64, 16),
        (8, 8, 128, 32),
        (2, 1, 256, 8),
        (6, 2, 48, 5),
        (32, 4, 64, 16),
        (14, 2, 128, 16),
        (32, 8, 64, 7),
    ] {
        let n_seq = 3;
        let max_blocks = 300 / bs + 1;
        let n_blocks = n_seq * max_blocks + 1;
        let z = AttnShape {
            n_head: hq,
            n_head_kv: hkv,
            head_dim: d,
            block_size: bs,
            n_layer: 2,
            layer: 1,
            n_blocks,
            max_blocks,
        };
        let arena = n_blocks * z.n_layer * hkv * bs * d;
        let kc: Vec<u16> = (0..arena).map(|_| f16_bits(rng.f() * 2.0)).collect();
        let vc: Vec<u16> = (0..arena).map(|_| f16_bits(rng.f() * 2.0)).collect();
        // Each sequence gets a random permutation of distinct blocks (block 0 unused).
        let mut ids: Vec<i32> = (1..n_blocks as i32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i + 1));
        }
        let tables: Vec<i32> = ids[..n_seq * max_blocks].to_vec();
        // A prefill chunk of seq 0 (positions 0..6), decodes of seq 1 at 1 and seq 2 at 299,
        // and a chunk of seq 1 crossing block boundaries.
        let toks: Vec<(i32, i32)> = (0..6)
            .map(|p| (p, 0))
            .chain([
                (1, 1),
                (299, 2),
                (bs as i32 - 1, 1),
                (bs as i32, 1),
                (2 * bs as i32 + 1, 1),
                // Around the grouped-query kernels' steps (16 to 64 positions) and the partition
                // boundaries below (16, 64, 160).
                (15, 2),
                (31, 2),
                (32, 2),
                (33, 2),
                (63, 2),
                (64, 2),
                (65, 2),
                (127, 2),
                (128, 2),
                (159, 2),
                (160, 2),
                (161, 2),
            ])
            .collect();
        let pos: Vec<i32> = toks.iter().map(|t| t.0).collect();
        let row: Vec<i32> = toks.iter().map(|t| t.1).collect();
        let q: Vec<f32> = (0..toks.len() * hq * d)
            .map(|_| f16::from_f32(rng.f() * 2.0).to_f32())
            .collect();
        let inputs = AttnInputs::new(
            &dev,
            z,
            &kc,
            &vc,
            &q,
            &tables,
            &pos,
            &row,
            300_usize.div_ceil(16),
        )
        .unwrap();
        // Both kernels where the grouped-query one applies (the general one otherwise twice);
        // a sliding window of 37 positions (gemma3's local layers) across blocks and partitions.
        let mut inputs = inputs;
        for (general, part_len, n_parts, window) in [false, true]
            .into_iter()
            .flat_map(|g| [(g, 512usize, 1usize), (g, 16, 19), (g, 64, 5), (g, 160, 2)])
            .map(|(g, l, n)| (g, l, n, 0))
            .chain([(false, 16, 19, 37), (true, 64, 5, 37), (false, 512, 1, 37)])
        {
            dev.general_attention = general;
            inputs.window = window;
            let gpu = inputs.run(&dev, part_len, n_parts).unwrap();
            let mut worst = 0f64;
            for (t, &(p, r)) in toks.iter().enumerate() {
                let table = &tables[r as usize * max_blocks..(r as usize + 1) * max_blocks];
                for h in 0..hq {
                    let qh = &q[(t * hq + h) * d..(t * hq + h + 1) * d];
                    let want =
                        attend_ref(&z, &kc, &vc, table, p as usize, h / (hq / hkv), qh, window);
                    for e in 0..d {
                        let g = f64::from(gpu[(t * hq + h) * d + e]);
                        let err = (g - want[e]).abs();
                        worst = worst.max(err);
                        assert!(
                            err <= 1e-4 * 2.0,
                            "hq={hq} d={d} bs={bs} parts={n_parts}x{part_len} window={window} \
                             t={t} h={h} e={e}: gpu {g} ref {}",
                            want[e]
                        );
                    }
                }
            }
            println!(
                "attention general={general} hq={hq} d={d} bs={bs} parts={n_parts}x{part_len} \
                 window={window}: max err {worst:.2e}"
            );
        }
    }
}
