//! Fused launches against the launches they replace, bit for bit: products of one activation
//! in one launch, several rows per thread block, and norms / gated activations that quantize
//! their own output.

use super::kernels::{cpu_acts, random_weights};
use super::*;

/// The forward pass launches the products of one activation (Q/K/V, gate/up) together: each
/// product's output must equal its own launch, bit for bit, for every weight type, on the
/// matrix-vector kernels (rows of a thread block split between products) and the tensor-core
/// tiles (products starting on a tile, and the split launch where one does not).
#[test]
fn fused_products_equal_separate_launches() {
    let Some(mut dev) = device("fused_products_equal_separate_launches") else {
        return;
    };
    let mut rng = Rng(12);
    let cols = 512;
    for ty in ALL_WEIGHTS {
        for rows in [[64, 16, 16], [33, 7, 20], [128, 64, 64], [64, 64, 0]] {
            let rows: Vec<usize> = rows.into_iter().filter(|&r| r > 0).collect();
            let ws: Vec<Vec<u8>> = rows
                .iter()
                .map(|&r| random_weights(&mut rng, ty, r, cols).0)
                .collect();
            for n_tok in [1, 3, 9, MMQ_MIN_TOKENS, 40, 64] {
                let x = rng.vec(n_tok * cols, 2.0);
                let acts: Vec<u8> = match ty {
                    GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                        x.iter().flat_map(|v| v.to_le_bytes()).collect()
                    }
                    _ => x
                        .chunks_exact(cols)
                        .flat_map(|xt| cpu_acts(ty, xt).0)
                        .collect(),
                };
                let jobs: Vec<(&[u8], usize)> =
                    ws.iter().zip(&rows).map(|(w, &r)| (&w[..], r)).collect();
                // A fixed split K (the automatic one follows the launch's tile count).
                for (tiles, split) in [
                    (MmqTiles::Large, 1),
                    (MmqTiles::Small, 1),
                    (MmqTiles::Narrow, 1),
                    (MmqTiles::Narrow, 2),
                    (MmqTiles::Large, 2),
                ] {
                    dev.mmq_split = split;
                    let fused =
                        testing::matmul_fused(&dev, ty, &jobs, cols, &acts, n_tok, tiles).unwrap();
                    for (j, (w, &r)) in ws.iter().zip(&rows).enumerate() {
                        let alone =
                            testing::matmul(&dev, ty, w, r, cols, &acts, n_tok, None, tiles)
                                .unwrap();
                        assert_eq!(
                            fused[j], alone,
                            "{ty} rows {rows:?} x{n_tok} {tiles:?} split {split}: product {j} \
                             differs fused"
                        );
                    }
                }
            }
        }
    }
}

/// Matrix-vector products may run fewer thread blocks than rows (each taking rows a grid apart,
/// `EMBER_CUDA_MMV_BLOCKS`): the same bits as one block per row, fused launches included.
#[test]
fn multi_row_blocks_equal_one_row_blocks() {
    let Some(mut dev) = device("multi_row_blocks_equal_one_row_blocks") else {
        return;
    };
    let mut rng = Rng(14);
    let cols = 256;
    let rows = [3 * dev.sms + 5, 2 * dev.sms + 1];
    for ty in ALL_WEIGHTS {
        let ws: Vec<Vec<u8>> = rows
            .iter()
            .map(|&r| random_weights(&mut rng, ty, r, cols).0)
            .collect();
        let jobs: Vec<(&[u8], usize)> = ws.iter().zip(&rows).map(|(w, &r)| (&w[..], r)).collect();
        for n_tok in [1, 5, 9] {
            let x = rng.vec(n_tok * cols, 2.0);
            let acts: Vec<u8> = match ty {
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                    x.iter().flat_map(|v| v.to_le_bytes()).collect()
                }
                _ => x
                    .chunks_exact(cols)
                    .flat_map(|xt| cpu_acts(ty, xt).0)
                    .collect(),
            };
            let mut run = |per_sm| {
                dev.mmv_blocks_per_sm = per_sm;
                testing::matmul_fused(&dev, ty, &jobs, cols, &acts, n_tok, MmqTiles::Auto).unwrap()
            };
            let one = run(0);
            for per_sm in [1, 2] {
                assert_eq!(
                    run(per_sm),
                    one,
                    "{ty} x{n_tok}: {per_sm} blocks per SM differ"
                );
            }
        }
    }
}

/// A lone token's products take their own kernels (one token per thread block, one or two
/// rows per block, `CudaDevice::mmv1_rows`): the same bits as the batch kernel gives that token,
/// fused launches and odd row counts (a block's second row past the end, or in the next
/// product) included.
#[test]
fn lone_token_kernels_equal_batch_kernel() {
    let Some(mut dev) = device("lone_token_kernels_equal_batch_kernel") else {
        return;
    };
    let mut rng = Rng(15);
    let cols = 512;
    for ty in ALL_WEIGHTS {
        if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            continue;
        }
        for rows in [vec![1], vec![7], vec![64, 16, 16], vec![33, 7, 20]] {
            let ws: Vec<Vec<u8>> = rows
                .iter()
                .map(|&r| random_weights(&mut rng, ty, r, cols).0)
                .collect();
            let jobs: Vec<(&[u8], usize)> =
                ws.iter().zip(&rows).map(|(w, &r)| (&w[..], r)).collect();
            let acts = cpu_acts(ty, &rng.vec(cols, 2.0)).0;
            // The batch kernel: the token twice (8 tokens per thread block).
            let twice = [&acts[..], &acts[..]].concat();
            let batch =
                testing::matmul_fused(&dev, ty, &jobs, cols, &twice, 2, MmqTiles::Auto).unwrap();
            for per_block in [1, 2] {
                dev.mmv1_rows = per_block;
                let lone =
                    testing::matmul_fused(&dev, ty, &jobs, cols, &acts, 1, MmqTiles::Auto).unwrap();
                for (j, &r) in rows.iter().enumerate() {
                    assert_eq!(
                        lone[j][..],
                        batch[j][..r],
                        "{ty} rows {rows:?}, {per_block} rows per block: product {j} differs \
                         from the batch kernel's first token"
                    );
                }
            }
        }
    }
    dev.mmv1_rows = ember::backend::cuda::MMV1_ROWS;
}

/// The RMSNorm and the gated activations that quantize their own output (before a product)
/// write the same output and the same Q8_1 / Q8_K bytes as the plain kernel followed by the
/// quantization kernels.
#[test]
fn fused_quantization_equals_quantize_kernels() {
    let Some(dev) = device("fused_quantization_equals_quantize_kernels") else {
        return;
    };
    let mut rng = Rng(13);
    // 640: a warp's chunks of 8 end mid-warp; 8192: the most the register path holds; 9216:
    // the strided path.
    for &(rows, cols) in &[
        (1, 576),
        (3, 2048),
        (5, 96),
        (2, 4864),
        (3, 640),
        (2, 8192),
        (1, 9216),
    ] {
        let x = rng.vec(rows * cols, 4.0);
        let w = rng.vec(cols, 1.5);
        let plain = testing::rms_norm(&dev, &x, &w, None, 1e-5).unwrap();
        let (out, (q1, qk)) = testing::rms_norm_quantized(&dev, &x, &w, 1e-5).unwrap();
        assert_eq!(
            out, plain,
            "rms_norm {rows}x{cols}: output differs when quantizing"
        );
        assert_eq!(q1, testing::quantize_q8_1(&dev, &out, rows, cols).unwrap());
        if cols % 256 == 0 {
            assert_eq!(qk, testing::quantize_q8_k(&dev, &out, rows, cols).unwrap());
        }
    }
    for &(rows, cols) in &[(1, 1536), (3, 2048), (4, 256)] {
        let n = rows * cols;
        let gate = rng.vec(n, 6.0);
        let up = rng.vec(n, 2.0);
        for gelu in [false, true] {
            let plain = if gelu {
                testing::geglu(&dev, &gate, &up).unwrap()
            } else {
                testing::swiglu(&dev, &gate, &up).unwrap()
            };
            let (out, (q1, qk)) = testing::gated_quantized(&dev, gelu, &gate, &up).unwrap();
            assert_eq!(
                out, plain,
                "gelu={gelu} {rows}x{cols}: output differs when quantizing"
            );
            assert_eq!(q1, testing::quantize_q8_1(&dev, &out, rows, cols).unwrap());
            assert_eq!(qk, testing::quantize_q8_k(&dev, &out, rows, cols).unwrap());
        }
    }
}
