//! Micro-benchmark of the selected kernel path: ns per 1024 elements of every dot product and
//! activation quantizer, on rows of 4096 elements (in L1/L2, so this times the kernels, not
//! memory).
//!
//! ```text
//! EMBER_CPU=avx2   cargo run --release -p ember-kernels --example kernel_bench
//! EMBER_CPU=scalar cargo run --release -p ember-kernels --example kernel_bench
//! # the reference compiled for x86-64-v3 (what the v3 clones are), in its own target dir:
//! RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target/v3 EMBER_CPU=scalar \
//!     cargo run --release -p ember-kernels --example kernel_bench
//! ```

use std::hint::black_box;
use std::time::Instant;

use ember_kernels::dispatch::KernelSet;
use ember_kernels::GgmlType;

const N: usize = 4096;

/// Median over 5 runs of the ns per call of `f`, each run about 40 ms.
fn time(mut f: impl FnMut()) -> f64 {
    let mut calls = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        if t.elapsed().as_millis() >= 40 {
            break;
        }
        calls *= 2;
    }
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            t.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

fn main() {
    let ks = match KernelSet::detect() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "path: {} (ns per 1024 elements, rows of {N})",
        ks.path().name()
    );
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let x: Vec<f32> = (0..N)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let per_1024 = 1024.0 / N as f64;
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        let t = ks.traits(ty).expect("supported type");
        let act = ks.traits(t.vec_dot_type).expect("activation type");
        // Weights: random bytes with small f16 scales where the format has no quantizer.
        let wb = ty.row_bytes(N as u64).unwrap() as usize;
        let mut w = vec![0u8; wb];
        match t.from_float {
            Some(q) => q(&x, &mut w),
            None => {
                for (i, b) in w.iter_mut().enumerate() {
                    *b = (i.wrapping_mul(2_654_435_761) >> 7) as u8;
                }
                // A sane f16 (0.01) in every 2-byte scale slot the formats use.
                let (size, at): (usize, &[usize]) = match ty {
                    GgmlType::Q6_K => (210, &[208]),
                    GgmlType::Q4_K => (144, &[0, 2]),
                    _ => (176, &[0, 2]),
                };
                for blk in w.chunks_exact_mut(size) {
                    for &o in at {
                        blk[o..o + 2].copy_from_slice(&0x211eu16.to_le_bytes());
                    }
                }
            }
        }
        let quant = act.quantize_act.expect("activation quantizer");
        let mut a = vec![0u8; t.vec_dot_type.row_bytes(N as u64).unwrap() as usize];
        quant(&x, &mut a);
        let dot = time(|| {
            black_box((t.vec_dot)(N, black_box(&w), black_box(&a)));
        });
        let q = time(|| quant(black_box(&x), black_box(&mut a)));
        println!(
            "{:>5} dot {:8.1}   {:>4} quantize_act {:8.1}",
            ty.name(),
            dot * per_1024,
            t.vec_dot_type.name(),
            q * per_1024
        );
    }
}
