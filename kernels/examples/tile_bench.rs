//! Micro-benchmark of the tile products on the selected path (developer tool, not CI):
//! `cargo run --release -p ember-kernels --example tile_bench`. Reports the minimum over many
//! repetitions (robust on a busy machine) in ns per (row, token, 32-element block).
//! `TILE_TYPES` and `TILE_COLS` choose the weight types and the row width.

use std::time::Instant;

use ember_kernels::dispatch::KernelSet;
use ember_kernels::traits::reference_traits;
use ember_kernels::GgmlType;

fn main() {
    let ks = KernelSet::detect().expect("EMBER_CPU names a path this CPU has");
    // `TILE_COLS=8192` times rows past the AVX2 unpacked tiles' 4096 elements.
    let cols = std::env::var("TILE_COLS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&c| c > 0 && c % 256 == 0)
        .unwrap_or(576);
    let rows = 1536usize;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut f = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
    };
    // `TILE_TYPES=q4_k,q6_k` times other weight types (default: q4_1,q8_0,q5_0).
    let types: Vec<GgmlType> = std::env::var("TILE_TYPES")
        .unwrap_or_else(|_| "q4_1,q8_0,q5_0".into())
        .split(',')
        .filter_map(|n| match n.trim() {
            "q4_0" => Some(GgmlType::Q4_0),
            "q4_1" => Some(GgmlType::Q4_1),
            "q5_0" => Some(GgmlType::Q5_0),
            "q8_0" => Some(GgmlType::Q8_0),
            "q4_k" => Some(GgmlType::Q4_K),
            "q5_k" => Some(GgmlType::Q5_K),
            "q6_k" => Some(GgmlType::Q6_K),
            _ => None,
        })
        .collect();
    for ty in types {
        let t = reference_traits(ty).unwrap();
        let at = ks.traits(t.vec_dot_type).unwrap();
        let wb = ty.row_bytes(cols as u64).unwrap() as usize;
        let ab = t.vec_dot_type.row_bytes(cols as u64).unwrap() as usize;
        let mut w = vec![0u8; rows * wb];
        for r in 0..rows {
            let x: Vec<f32> = (0..cols).map(|_| f()).collect();
            (t.from_float.unwrap())(&x, &mut w[r * wb..(r + 1) * wb]);
        }
        let max_tok = 512;
        let mut a = vec![0u8; max_tok * ab];
        for i in 0..max_tok {
            let x: Vec<f32> = (0..cols).map(|_| f()).collect();
            (at.quantize_act.unwrap())(&x, &mut a[i * ab..(i + 1) * ab]);
        }
        let dot = ks.traits(ty).unwrap().vec_dot;
        for n_tok in [1usize, 2, 3, 4, 16, 32, 512] {
            let mut out = vec![0f32; n_tok * rows];
            let reps = (2048 / n_tok).max(5);
            let pairs = (rows * n_tok * cols / 32) as f64;
            let mut line = format!("{ty} {rows}x{cols} x {n_tok:>3} tokens, ns/block-pair:");
            for (name, tile) in ks.tile_variants(ty) {
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let t0 = Instant::now();
                    // SAFETY: `out` holds `n_tok * rows` elements; single thread.
                    unsafe { tile(cols, &w, wb, rows, &a, ab, n_tok, out.as_mut_ptr(), rows) };
                    best = best.min(t0.elapsed().as_secs_f64());
                }
                line += &format!(" tile/{name} {:6.3}", best * 1e9 / pairs);
            }
            let mut best = f64::MAX;
            for _ in 0..reps.min(50) {
                let t0 = Instant::now();
                for r in 0..rows {
                    for t in 0..n_tok {
                        out[t * rows + r] =
                            dot(cols, &w[r * wb..(r + 1) * wb], &a[t * ab..(t + 1) * ab]);
                    }
                }
                best = best.min(t0.elapsed().as_secs_f64());
            }
            println!("{line} vec_dot {:6.3}", best * 1e9 / pairs);
        }
    }
}
