//! CUDA micro-benchmarks (run on a GPU machine; prints a Markdown table):
//! - the paged-attention decode kernels over 64 sequences × 4096 tokens of context (one layer of
//!   K/V per sequence, f16, block size 16), for SmolLM2-135M's and Llama-3.2-1B's head shapes,
//!   at several partition lengths (the forward pass's marked), as bandwidth over the
//!   unique K/V bytes read (each byte once per KV head), against a measured device-to-device
//!   copy (bytes read + written); the time includes the partition merge;
//! - the start-up cost of the kernels: NVRTC compilation (empty cache) and loading from the
//!   disk cache.
//!
//! `cargo bench --features cuda --bench cuda_attention` (prints "skipped: no CUDA driver" on a
//! machine without one).

use std::time::Instant;

use ember::backend::cuda::testing::{self, AttnInputs, AttnShape};
use ember::backend::cuda::{driver_present, CudaDevice, ATT_PART_LEN};
use half::f16;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if !driver_present() {
        println!("cuda_attention: skipped: no CUDA driver");
        return;
    }
    // Start-up: compile into an empty cache folder, then load from it.
    let dir = std::env::temp_dir().join(format!("ember-cuda-bench-{}", std::process::id()));
    std::env::set_var("EMBER_CUDA_CACHE", &dir);
    let t0 = Instant::now();
    let cold = CudaDevice::open().expect("open the CUDA device");
    let cold_total = t0.elapsed().as_secs_f64() * 1e3;
    assert!(!cold.compile.cache_hit);
    let cold_ms = cold.compile.ms;
    drop(cold);
    let t1 = Instant::now();
    let mut dev = CudaDevice::open().expect("open the CUDA device");
    let warm_total = t1.elapsed().as_secs_f64() * 1e3;
    assert!(dev.compile.cache_hit, "second open must hit the disk cache");
    let _ = std::fs::remove_dir_all(&dir);
    println!("device: {} (sm_{}{})", dev.name, dev.cc.0, dev.cc.1);
    println!(
        "| kernel start-up | NVRTC compile + load | from disk cache + load |\n| --- | ---: | ---: |\n\
         | kernels ({}) | {:.1} ms (open {:.1} ms) | {:.1} ms (open {:.1} ms) |",
        dev.compile.arch, cold_ms, cold_total, dev.compile.ms, warm_total
    );

    // Copy bandwidth: 1 GiB device to device (bytes read + written).
    let copy_gbs = testing::copy_bandwidth(&dev, 1 << 30, 20).expect("copy");
    println!("\ndevice-to-device copy: {copy_gbs:.0} GB/s (read + write, 1 GiB, median of 20)");

    println!(
        "\n| kernel | shape | seqs × ctx | K/V bytes | parts × len | time | GB/s | % of copy |"
    );
    println!("| --- | --- | --- | ---: | --- | ---: | ---: | ---: |");
    for (name, hq, hkv) in [
        ("SmolLM2-135M (9/3 heads, d 64)", 9, 3),
        ("Llama-3.2-1B (32/8 heads, d 64)", 32, 8),
    ] {
        let (n_seq, ctx, d, bs) = (64usize, 4096usize, 64usize, 16usize);
        let max_blocks = ctx / bs;
        let n_blocks = n_seq * max_blocks + 1;
        let z = AttnShape {
            n_head: hq,
            n_head_kv: hkv,
            head_dim: d,
            block_size: bs,
            n_layer: 1,
            layer: 0,
            n_blocks,
            max_blocks,
        };
        let arena = n_blocks * hkv * bs * d;
        let mut x = 0x1234_5678u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f16::from_f32((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0).to_bits()
        };
        let kc: Vec<u16> = (0..arena).map(|_| rnd()).collect();
        let vc: Vec<u16> = (0..arena).map(|_| rnd()).collect();
        // Sequence i owns blocks 1 + i*max_blocks.. in a scattered order (every 7th).
        let tables: Vec<i32> = (0..n_seq)
            .flat_map(|s| {
                (0..max_blocks).map(move |b| (1 + s * max_blocks + (b * 7) % max_blocks) as i32)
            })
            .collect();
        let q: Vec<f32> = (0..n_seq * hq * d)
            .map(|_| f16::from_bits(rnd()).to_f32())
            .collect();
        let pos: Vec<i32> = vec![(ctx - 1) as i32; n_seq];
        let row: Vec<i32> = (0..n_seq as i32).collect();
        let bytes = (n_seq * ctx * hkv * d * 2 * 2) as f64;
        // The general kernel, and the grouped-query kernel at several partition lengths (the
        // forward pass uses ATT_PART_LEN).
        for (general, part_len) in [
            (true, ATT_PART_LEN),
            (false, 128usize),
            (false, 256),
            (false, 512),
            (false, 1024),
            (false, 2048),
            (false, 4096),
        ] {
            dev.general_attention = general;
            let kernel = match (general, part_len == ATT_PART_LEN) {
                (true, _) => "general",
                (false, true) => "grouped-query (forward pass's length)",
                (false, false) => "grouped-query",
            };
            let n_parts = ctx.div_ceil(part_len);
            let inp = AttnInputs::new(&dev, z, &kc, &vc, &q, &tables, &pos, &row, n_parts)
                .expect("upload");
            for _ in 0..3 {
                inp.launch(&dev, part_len, n_parts).expect("warm-up");
            }
            let mut ms = Vec::new();
            for _ in 0..20 {
                let t = dev.timer().expect("timer");
                inp.launch(&dev, part_len, n_parts).expect("launch");
                ms.push(f64::from(dev.elapsed_ms(&t).expect("elapsed")));
            }
            let m = median(ms);
            let gbs = bytes / (m * 1e-3) / 1e9;
            println!(
                "| {kernel} | {name} | {n_seq} × {ctx} | {:.0} MiB | {n_parts} × {part_len} | {:.3} ms | {gbs:.0} | {:.0}% |",
                bytes / (1 << 20) as f64,
                m,
                100.0 * gbs / copy_gbs
            );
        }
    }
}
