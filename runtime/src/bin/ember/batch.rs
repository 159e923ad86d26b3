//! `ember batch` (a JSONL file of requests through the continuous-batching engine) and
//! `ember bench --concurrency C` (aggregate prefill and decode throughput with C sequences).

use std::io::{BufRead, Write};
use std::time::Instant;

use ember::engine::{Engine, EngineConfig, Metrics, RequestId, RequestParams};
use ember::sampler::SamplingParams;
use ember::session::KvBudget;
use serde_json::{json, Value};

use crate::args::{switch, val, Args, Flag};
use crate::commands::{
    backend_kind, cuda_weights, load_model, parse, report_backend, usage, CliError, CliResult,
};

pub const ENGINE_FLAGS: &[Flag] = &[
    val("max-seqs", None),
    val("max-batch-tokens", None),
    val("kv-bytes", None),
    switch("no-prefix-cache"),
];

fn engine_config(a: &Args, default_seqs: usize) -> Result<EngineConfig, CliError> {
    let d = EngineConfig::default();
    let kv_budget = match (
        a.get::<usize>("kv-blocks").map_err(usage)?,
        a.get::<usize>("kv-bytes").map_err(usage)?,
    ) {
        (Some(n), _) => KvBudget::Blocks(n),
        (None, Some(b)) => KvBudget::Bytes(b),
        (None, None) => d.kv_budget,
    };
    let max_seqs = a.get_or("max-seqs", default_seqs).map_err(usage)?;
    Ok(EngineConfig {
        cuda_weights: cuda_weights(a)?,
        n_ctx: a.get_or("ctx", d.n_ctx).map_err(usage)?,
        kv_budget,
        block_size: a.get_or("block-size", d.block_size).map_err(usage)?,
        max_seqs,
        max_batch_tokens: a
            .get_or("max-batch-tokens", d.max_batch_tokens.max(max_seqs))
            .map_err(usage)?,
        max_requests: d.max_requests,
        threads: a.get_or("threads", 0).map_err(usage)?,
        prefix_caching: !a.has("no-prefix-cache"),
    })
}

fn stats_line(m: &Metrics, wall_s: f64) -> Value {
    json!({
        "stats": {
            "wall_s": wall_s,
            "tokens_generated": m.tokens_generated,
            "tokens_computed": m.tokens_computed,
            "generated_tok_s": m.tokens_generated as f64 / wall_s.max(1e-9),
            "prefix_hit_tokens": m.prefix_hit_tokens,
            "preemptions": m.preemptions,
            "blocks_total": m.blocks_total,
            "steps": m.steps,
        }
    })
}

fn request_params(v: &Value, line: usize) -> Result<RequestParams, CliError> {
    let bad = |what: &str| CliError::Run(format!("input line {line}: {what}"));
    let d = SamplingParams::default();
    let f = |k: &str, dflt: f32| -> Result<f32, CliError> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(dflt),
            Some(x) => x
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| bad(&format!("{k} must be a number"))),
        }
    };
    let u = |k: &str, dflt: u64| -> Result<u64, CliError> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(dflt),
            Some(x) => x
                .as_u64()
                .ok_or_else(|| bad(&format!("{k} must be a non-negative integer"))),
        }
    };
    let stop = match v.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("stop must hold strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("stop must be a string or an array of strings")),
    };
    Ok(RequestParams {
        sampling: SamplingParams {
            temperature: f("temperature", 0.0)?,
            top_k: u("top_k", d.top_k as u64)? as usize,
            top_p: f("top_p", d.top_p)?,
            min_p: f("min_p", d.min_p)?,
            repeat_penalty: f("repeat_penalty", d.repeat_penalty)?,
            repeat_last_n: d.repeat_last_n,
            seed: u("seed", 0)?,
        },
        max_tokens: u("max_tokens", 128)? as usize,
        stop,
        stop_ids: Vec::new(),
        n: u("n", 1)? as usize,
        ignore_eos: v
            .get("ignore_eos")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

pub fn batch(raw: &[String]) -> CliResult {
    let a = parse(
        raw,
        &[&[val("input", None), val("output", None)], ENGINE_FLAGS],
    )?;
    let input = a
        .str("input")
        .ok_or_else(|| usage("batch needs --input FILE".into()))?;
    let output = a
        .str("output")
        .ok_or_else(|| usage("batch needs --output FILE".into()))?;
    let cfg = engine_config(&a, 16)?;
    let model = load_model(&a)?;
    let mut e = Engine::with_backend(model, cfg, backend_kind(&a)?)?;
    report_backend(&a, e.backend());
    let file =
        std::fs::File::open(input).map_err(|err| CliError::Run(format!("{input}: {err}")))?;
    let mut reqs: Vec<(Value, Option<RequestId>, Option<String>)> = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|err| CliError::Run(format!("{input}: {err}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|err| CliError::Run(format!("{input} line {}: {err}", i + 1)))?;
        let id = v.get("id").cloned().unwrap_or(json!(i));
        let prompt = v.get("prompt").and_then(Value::as_str).ok_or_else(|| {
            CliError::Run(format!(
                "{input} line {}: \"prompt\" (a string) is required",
                i + 1
            ))
        })?;
        let params = request_params(&v, i + 1)?;
        // A request the engine refuses gets an error line; the others still run.
        match e.submit_text(prompt, &params) {
            Ok(rid) => reqs.push((id, Some(rid), None)),
            Err(err) => reqs.push((id, None, Some(err.to_string()))),
        }
    }
    let t0 = Instant::now();
    // Arena utilization (tokens stored ÷ slots of used blocks), averaged over steps weighted by
    // the blocks in use.
    let (mut util_num, mut util_den) = (0.0f64, 0.0f64);
    while e.has_work() {
        e.step()?;
        let m = e.metrics();
        util_num += m.utilization * m.blocks_used as f64;
        util_den += m.blocks_used as f64;
    }
    let wall = t0.elapsed().as_secs_f64();
    let utilization = if util_den > 0.0 {
        util_num / util_den
    } else {
        1.0
    };
    let mut out =
        std::fs::File::create(output).map_err(|err| CliError::Run(format!("{output}: {err}")))?;
    for (id, rid, err) in &reqs {
        let v = match (rid, err) {
            (Some(rid), _) => {
                let outs: Vec<_> = e.output(*rid)?.collect();
                let o = outs[0];
                let mut v = json!({
                    "id": id,
                    "ids": o.ids,
                    "text": o.text,
                    "finish_reason": o.finish.map_or("error", |f| f.as_str()),
                });
                if outs.len() > 1 {
                    v["choices"] = outs
                        .iter()
                        .map(|o| json!({"ids": o.ids, "text": o.text, "finish_reason": o.finish.map_or("error", |f| f.as_str())}))
                        .collect();
                }
                v
            }
            (None, err) => {
                json!({"id": id, "ids": [], "text": "", "finish_reason": "error", "error": err})
            }
        };
        writeln!(out, "{v}").map_err(|err| CliError::Run(format!("{output}: {err}")))?;
    }
    let mut stats = stats_line(&e.metrics(), wall);
    stats["stats"]["arena_utilization"] = json!(utilization);
    eprintln!("{stats}");
    Ok(())
}

/// llama-batched-bench-style measurement: C sequences with `n_prompt`-token prompts are
/// prefilled together (S_PP), then decode `n_gen` tokens each together (S_TG).
pub fn bench_concurrent(a: &Args, c: usize, n_prompt: usize, n_gen: usize) -> CliResult {
    let mut cfg = engine_config(a, c)?;
    cfg.max_seqs = c;
    cfg.max_batch_tokens = cfg.max_batch_tokens.max(c);
    cfg.prefix_caching = false;
    cfg.n_ctx = n_prompt + n_gen + 1;
    let bs = cfg.block_size;
    if a.get::<usize>("kv-blocks").map_err(usage)?.is_none()
        && a.get::<usize>("kv-bytes").map_err(usage)?.is_none()
    {
        cfg.kv_budget = KvBudget::Blocks(c * (n_prompt + n_gen).div_ceil(bs) + c);
    }
    let model = load_model(a)?;
    let n_vocab = model.config.n_vocab as u64;
    let mut e = Engine::with_backend(model, cfg, backend_kind(a)?)?;
    report_backend(a, e.backend());
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    // Warm-up, untimed (as llama-batched-bench): one short request through prefill and decode
    // touches the weights and the scratch before the clock starts.
    let warm: Vec<u32> = (0..n_prompt.min(16) as u32).collect();
    let p = RequestParams {
        max_tokens: 2,
        ignore_eos: true,
        ..RequestParams::default()
    };
    let id = e.submit(&warm, &p)?;
    while e.has_work() {
        e.step()?;
    }
    e.release(id)?;
    let mut ids = Vec::new();
    for _ in 0..c {
        let prompt: Vec<u32> = (0..n_prompt)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % n_vocab) as u32
            })
            .collect();
        let p = RequestParams {
            max_tokens: n_gen,
            ignore_eos: true,
            ..RequestParams::default()
        };
        ids.push(e.submit(&prompt, &p)?);
    }
    // Prefill: until every sequence has its first token.
    let t0 = Instant::now();
    while ids.iter().any(|&id| {
        e.output(id)
            .is_ok_and(|mut o| o.next().is_some_and(|o| o.ids.is_empty()))
    }) {
        e.step()?;
    }
    let t_pp = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    while e.has_work() {
        e.step()?;
    }
    let t_tg = t1.elapsed().as_secs_f64();
    let m = e.metrics();
    let s_pp = (c * n_prompt) as f64 / t_pp;
    let s_tg = (c * (n_gen - 1)) as f64 / t_tg.max(1e-9);
    if a.has("json") {
        println!(
            "{}",
            json!({"concurrency": c, "backend": e.backend().name(), "threads": e.threads(), "n_prompt": n_prompt, "n_gen": n_gen,
                   "prefill_tok_s": s_pp, "decode_tok_s": s_tg, "preemptions": m.preemptions})
        );
    } else {
        println!("| PP | TG | B | S_PP t/s | S_TG t/s |");
        println!("| ---: | ---: | ---: | ---: | ---: |");
        println!("| {n_prompt} | {n_gen} | {c} | {s_pp:.2} | {s_tg:.2} |");
    }
    let _ = std::io::stdout().flush();
    Ok(())
}
