//! Sampling with the logits left on the device: each row's most likely tokens selected there
//! (`topk.cu`) against the spec (`sampler::top_candidates`), and the engine's tokens with device
//! sampling on and off.

use super::models::synth_model;
use super::*;
use ember::sampler::{top_candidates, MAX_DEVICE_TOP};

/// Rows of the kinds the selection must get right: spread logits (one refining pass at most),
/// a narrow band (the first 12 bits cannot split it: a second pass), coarse values (ties broken
/// by id), infinities and signed zeros, fewer usable logits than k, none at all, and NaN.
fn rows(n: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
    let spread = rng.vec(n, 8.0);
    let band: Vec<f32> = rng.vec(n, 1.0).iter().map(|v| 10.0 + v * 1e-3).collect();
    let coarse: Vec<f32> = rng.vec(n, 3.0).iter().map(|v| v.round()).collect();
    let mut special = rng.vec(n, 4.0);
    for (i, v) in special.iter_mut().enumerate() {
        match i % 13 {
            0 => *v = f32::NEG_INFINITY,
            4 if i % 3 == 0 => *v = f32::INFINITY,
            6 => *v = f32::MAX,
            8 => *v = -0.0,
            9 => *v = 0.0,
            10 => *v = -f32::MAX,
            _ => {}
        }
    }
    let few: Vec<f32> = (0..n)
        .map(|i| {
            if i % 211 == 3 {
                (i % 7) as f32
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let mut nan = rng.vec(n, 2.0);
    nan[n / 2] = f32::NAN;
    vec![
        spread,
        band,
        coarse,
        special,
        few,
        vec![f32::NEG_INFINITY; n],
        nan,
    ]
}

/// The device selection equals `top_candidates` (ids, raw logit bits, order) on every row kind,
/// for k from 1 to the most the engine asks for, over vocabulary widths around the block's 1024
/// threads and a real one; a row with a NaN is reported, never selected from. The rows are
/// taken from a list, as the engine's step passes its sampled rows.
#[test]
fn device_top_candidates_equal_the_spec() {
    let Some(dev) = device("device_top_candidates_equal_the_spec") else {
        return;
    };
    let mut rng = Rng(41);
    for n in [100, 1000, 1025, 4099, 49152, 128256] {
        let rows = rows(n, &mut rng);
        let x: Vec<f32> = rows.concat();
        // The kernel takes a list of rows (the step's sampled ones): out of order, one twice.
        let list: Vec<i32> = (0..rows.len() as i32).rev().chain([2]).collect();
        for k in [1, 2, 40, 104, MAX_DEVICE_TOP] {
            let got = testing::topk(&dev, &x, n, &list, k).unwrap();
            assert_eq!(got.len(), list.len());
            for (&r, got) in list.iter().zip(&got) {
                let row = &rows[r as usize];
                if row.iter().any(|v| v.is_nan()) {
                    assert_eq!(got, &Err(-1), "n {n} k {k} row {r}: a NaN row");
                    continue;
                }
                let (want, complete) = top_candidates(row, k);
                let usable = row.iter().filter(|v| **v > f32::NEG_INFINITY).count();
                let (cands, n_usable) = got
                    .as_ref()
                    .unwrap_or_else(|e| panic!("n {n} k {k} row {r}: reported {e}"));
                assert_eq!(*n_usable, usable, "n {n} k {k} row {r}: usable count");
                assert_eq!(complete, usable <= k);
                let bits = |c: &[(u32, f32)]| -> Vec<(u32, u32)> {
                    c.iter().map(|&(i, v)| (i, v.to_bits())).collect()
                };
                assert_eq!(bits(cands), bits(&want), "n {n} k {k} row {r}");
            }
        }
    }
}

/// The engine on CUDA gives every sampling request (temperatures, top-k, top-p, min-p,
/// repetition penalties, seeds) the same tokens with its rows' candidates selected on the device
/// as with the rows copied back whole: the sampler finishes the chain on the candidates exactly
/// as on the row (sampler/top.rs). Greedy requests in the same steps keep the device argmax.
#[test]
fn device_sampling_equals_host_sampling() {
    if device("device_sampling_equals_host_sampling").is_none() {
        return;
    }
    let cfg = EngineConfig {
        cuda_weights: Default::default(),
        n_ctx: 256,
        kv_budget: KvBudget::Blocks(200),
        block_size: 16,
        max_seqs: 8,
        max_batch_tokens: 256,
        max_requests: 16,
        threads: 2,
        prefix_caching: true,
        kv_type: Default::default(),
        swa_full: false,
    };
    let reqs: Vec<(Vec<u32>, RequestParams)> = (0..12u32)
        .map(|r| {
            let prompt: Vec<u32> = (0..(9 + r * 5)).map(|i| (i * 37 + r * 11) % 500).collect();
            let sampling = SamplingParams {
                temperature: [0.7, 1.0, 1.5, 0.0][r as usize % 4],
                top_k: [40, 5, 100, 1][r as usize % 4],
                top_p: [0.95, 1.0, 0.8][r as usize % 3],
                min_p: [0.05, 0.0][r as usize % 2],
                repeat_penalty: [1.0, 1.3, 1.1][r as usize % 3],
                repeat_last_n: 64,
                seed: 1000 + u64::from(r),
            };
            let params = RequestParams {
                sampling,
                max_tokens: 40,
                ignore_eos: true,
                ..RequestParams::default()
            };
            (prompt, params)
        })
        .collect();
    let run = |on: bool| {
        let mut e = Engine::with_backend(
            synth_model(GgmlType::Q4_K, 3),
            cfg.clone(),
            BackendKind::Cuda,
        )
        .unwrap();
        e.set_device_sampling(on);
        let ids: Vec<_> = reqs.iter().map(|(p, q)| e.submit(p, q).unwrap()).collect();
        while e.has_work() {
            e.step().unwrap();
        }
        let out: Vec<Vec<u32>> = ids
            .iter()
            .map(|&id| e.output(id).unwrap().next().unwrap().ids.clone())
            .collect();
        (out, e.metrics().device_top_rows)
    };
    let (host, host_rows) = run(false);
    let (dev, dev_rows) = run(true);
    assert_eq!(host_rows, 0);
    // 9 of the 12 requests sample (not greedy), 40 tokens each, every one from candidates.
    assert_eq!(
        dev_rows,
        9 * 40,
        "every sampled token came from device candidates"
    );
    for (r, (a, b)) in host.iter().zip(&dev).enumerate() {
        assert_eq!(a.len(), 40);
        assert_eq!(a, b, "request {r}: device sampling differs");
    }
}
