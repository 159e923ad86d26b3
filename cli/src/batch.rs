//! `ember batch` (a JSONL file of requests through the continuous-batching engine) and
//! `ember bench --concurrency C` (aggregate prefill and decode throughput with C sequences).
//!
//! `ember batch` streams: input lines are read and submitted while the engine has room for
//! more requests (any number of lines; at most `max_requests` are held at once), and each
//! request's result line is written and flushed as soon as it finishes, so results come in
//! completion order (each carries its `id`) and an interrupted run keeps every line it wrote.
//! A malformed line (bad JSON, a wrong type, an unknown field, a missing prompt, invalid
//! UTF-8) gets an error line of its own; every other line still runs; the exit status is 1 if
//! any request failed.

use std::io::Write;
use std::time::Instant;

use ember::engine::{Engine, EngineConfig, Metrics, RequestId, RequestParams};
use ember::grammar::Grammar;
use ember::sampler::SamplingParams;
use ember::session::KvBudget;
use serde_json::{json, Value};

use crate::commands::{
    backend_kind, cuda_weights, kv_type, load_model, report_backend, threads, usage, CliError,
    CliResult,
};
use crate::flags::{BatchArgs, BenchArgs, Common, EngineFlags};

/// Give the engine the draft model of `--draft-model FILE`, if any: requests that ask for
/// speculative decoding then draft with it instead of by prompt lookup.
pub fn draft_model(path: Option<&std::path::Path>, e: &mut Engine) -> Result<(), CliError> {
    if let Some(p) = path {
        let m = ember::model::Model::load(p)
            .map_err(|err| CliError::Run(format!("--draft-model {}: {err}", p.display())))?;
        e.set_draft_model(m)?;
    }
    Ok(())
}

/// Most sequences decoded together (`--max-seqs`, `bench --concurrency`): far beyond what a
/// device runs at once, and small enough that the per-sequence tables sized from it are cheap.
pub const MAX_SEQS: usize = 1 << 16;

/// The engine's configuration from the common flags and the engine's (`--max-seqs` defaults to
/// `default_seqs`).
pub fn engine_config(
    a: &Common,
    e: &EngineFlags,
    default_seqs: usize,
) -> Result<EngineConfig, CliError> {
    let d = EngineConfig::default();
    let kv_budget = match (a.kv_blocks, e.kv_bytes) {
        (Some(n), _) => KvBudget::Blocks(n),
        (None, Some(b)) => KvBudget::Bytes(b),
        (None, None) => d.kv_budget,
    };
    let max_seqs = e.max_seqs.unwrap_or(default_seqs);
    if max_seqs == 0 || max_seqs > MAX_SEQS {
        return Err(usage(format!("--max-seqs must be 1..={MAX_SEQS}")));
    }
    Ok(EngineConfig {
        cuda_weights: cuda_weights(a)?,
        n_ctx: a.ctx.unwrap_or(d.n_ctx),
        kv_budget,
        block_size: a.block_size.unwrap_or(d.block_size),
        max_seqs,
        max_batch_tokens: e
            .max_batch_tokens
            .unwrap_or(d.max_batch_tokens.max(max_seqs)),
        max_requests: d.max_requests,
        threads: threads(a)?,
        prefix_caching: !e.no_prefix_cache,
        kv_type: kv_type(a)?,
        swa_full: a.swa_full,
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

/// The fields a request line may hold; any other is an error (a misspelt `"temprature"` would
/// otherwise be ignored silently).
const FIELDS: &[&str] = &[
    "id",
    "prompt",
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "seed",
    "stop",
    "n",
    "ignore_eos",
    "grammar",
    "json_schema",
    "draft_k",
    "context_shift_keep",
];

/// One input line as a request: its prompt and parameters, or what is wrong with it.
fn request(v: &Value) -> Result<(String, RequestParams), String> {
    let obj = v
        .as_object()
        .ok_or("a request line must be a JSON object")?;
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field {k:?} (fields: {})",
            FIELDS.join(", ")
        ));
    }
    let d = SamplingParams::default();
    let f = |k: &str, dflt: f32| -> Result<f32, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(dflt),
            Some(x) => x
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| format!("{k} must be a number")),
        }
    };
    let u = |k: &str, dflt: u64| -> Result<u64, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(dflt),
            Some(x) => x
                .as_u64()
                .ok_or_else(|| format!("{k} must be a non-negative integer")),
        }
    };
    let size = |k: &str, dflt: usize| -> Result<usize, String> {
        usize::try_from(u(k, dflt as u64)?).map_err(|_| format!("{k} is too large"))
    };
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("prompt must be a string".into()),
        None => return Err("\"prompt\" (a string) is required".into()),
    };
    let stop = stop_list(obj.get("stop"))?;
    let ignore_eos = match obj.get("ignore_eos") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("ignore_eos must be true or false".into()),
    };
    Ok((
        prompt,
        RequestParams {
            sampling: SamplingParams {
                temperature: f("temperature", 0.0)?,
                top_k: size("top_k", d.top_k)?,
                top_p: f("top_p", d.top_p)?,
                min_p: f("min_p", d.min_p)?,
                repeat_penalty: f("repeat_penalty", d.repeat_penalty)?,
                repeat_last_n: size("repeat_last_n", d.repeat_last_n)?,
                seed: u("seed", 0)?,
            },
            max_tokens: size("max_tokens", 128)?,
            stop,
            stop_ids: Vec::new(),
            n: size("n", 1)?,
            ignore_eos,
            grammar: line_grammar(obj)?,
            speculative: match size("draft_k", 0)? {
                0 => None,
                k => Some(ember::engine::Speculative::lookup(k)),
            },
            // A number: go on past the end of the context, keeping that many first tokens.
            context_shift: match obj.get("context_shift_keep") {
                None | Some(Value::Null) => None,
                Some(_) => Some(ember::engine::ContextShift {
                    keep: size("context_shift_keep", 0)?,
                }),
            },
        },
    ))
}

/// A `"stop"` field (of a batch line or an HTTP request): absent or null, a string, or an
/// array of strings.
pub fn stop_list(v: Option<&Value>) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "stop must hold strings".to_string())
            })
            .collect(),
        Some(_) => Err("stop must be a string or an array of strings".into()),
    }
}

/// The line's `"grammar"` (GBNF text) or `"json_schema"` (a schema, or its text), compiled.
fn line_grammar(
    obj: &serde_json::Map<String, Value>,
) -> Result<Option<std::sync::Arc<Grammar>>, String> {
    let g = match (obj.get("grammar"), obj.get("json_schema")) {
        (None | Some(Value::Null), None | Some(Value::Null)) => return Ok(None),
        (Some(_), Some(_)) => return Err("give one of grammar and json_schema".into()),
        (Some(Value::String(t)), _) => Grammar::parse(t).map_err(|e| format!("grammar: {e}"))?,
        (Some(_), _) => return Err("grammar must be a string (GBNF)".into()),
        (_, Some(Value::String(t))) => {
            Grammar::from_json_schema(t).map_err(|e| format!("json_schema: {e}"))?
        }
        (_, Some(v)) => {
            Grammar::from_json_schema(&v.to_string()).map_err(|e| format!("json_schema: {e}"))?
        }
    };
    Ok(Some(std::sync::Arc::new(g)))
}

/// The result line of a finished request (with `error` when a sequence failed).
fn result_line(e: &Engine, id: &Value, rid: RequestId) -> Result<(Value, bool), CliError> {
    let outs: Vec<_> = e.output(rid)?.collect();
    let reason = |o: &ember::engine::SeqOutput| o.finish.map_or("error", |f| f.as_str());
    let failed = outs.iter().any(|o| reason(o) == "error");
    let o = outs[0];
    let mut v = json!({
        "id": id,
        "ids": o.ids,
        "text": o.text,
        "finish_reason": reason(o),
    });
    // The cause of a failed sequence (a NaN logits row: the engine's one NaN rule), worded as
    // the error lines of requests that could not start.
    if let Some(err) = outs.iter().find_map(|o| o.error.as_ref()) {
        v["error"] = json!(err.to_string());
    }
    if outs.len() > 1 {
        v["choices"] = outs
            .iter()
            .map(|o| json!({"ids": o.ids, "text": o.text, "finish_reason": reason(o)}))
            .collect();
    }
    Ok((v, failed))
}

fn error_line(id: &Value, line: usize, err: &str) -> Value {
    json!({"id": id, "line": line, "ids": [], "text": "", "finish_reason": "error", "error": err})
}

/// Where `ember batch` writes: each result line is flushed at once, so what finished before an
/// interruption (SIGINT, SIGTERM, a crash) is on disk.
struct Results {
    file: std::io::BufWriter<std::fs::File>,
    name: std::path::PathBuf,
    written: usize,
    failed: usize,
}

impl Results {
    fn write(&mut self, v: &Value, failed: bool) -> Result<(), CliError> {
        writeln!(self.file, "{v}")
            .and_then(|()| self.file.flush())
            .map_err(|err| CliError::Run(format!("{}: {err}", self.name.display())))?;
        self.written += 1;
        self.failed += usize::from(failed);
        Ok(())
    }
}

pub fn batch(a: &BatchArgs) -> CliResult {
    let input = a
        .input
        .clone()
        .ok_or_else(|| usage("batch needs --input FILE".into()))?;
    let output = a
        .output
        .clone()
        .ok_or_else(|| usage("batch needs --output FILE".into()))?;
    let cfg = engine_config(&a.common, &a.engine, 16)?;
    let max_requests = cfg.max_requests;
    let model = load_model(&a.common)?;
    let mut e = Engine::with_draft_rows(model, cfg, backend_kind(&a.common)?)?;
    report_backend(&a.common, e.backend());
    draft_model(a.draft_model.as_deref(), &mut e)?;
    let file = std::fs::File::open(&input)
        .map_err(|err| CliError::Run(format!("{}: {err}", input.display())))?;
    let mut lines = std::io::BufReader::new(file);
    let mut out = Results {
        file: std::io::BufWriter::new(
            std::fs::File::create(&output)
                .map_err(|err| CliError::Run(format!("{}: {err}", output.display())))?,
        ),
        name: output.clone(),
        written: 0,
        failed: 0,
    };
    // Requests in the engine: (their id for the output, the engine's id).
    let mut running: Vec<(Value, RequestId)> = Vec::with_capacity(max_requests);
    let (mut line_no, mut eof) = (0usize, false);
    let t0 = Instant::now();
    // Requests done (the total is unknown: lines are read as the engine has room).
    let mut bar = crate::progress::Progress::new("batch: requests done", None);
    // Arena utilization (tokens stored ÷ slots of used blocks), averaged over steps weighted by
    // the blocks in use.
    let (mut util_num, mut util_den) = (0.0f64, 0.0f64);
    loop {
        // Submit lines while the engine holds fewer than `max_requests` requests.
        while !eof && running.len() < max_requests {
            let line = crate::input::read_line(&mut lines, crate::input::MAX_BATCH_LINE)
                .map_err(|err| CliError::Run(format!("{}: {err}", input.display())))?;
            let buf = match line {
                crate::input::Line::Bytes(b) => b,
                crate::input::Line::Eof => {
                    eof = true;
                    break;
                }
                crate::input::Line::TooLong => {
                    // Not JSONL (or not a request): report it and read no further, since
                    // finding the next line could mean reading without end (`/dev/zero`).
                    line_no += 1;
                    let why = format!(
                        "the line is longer than {} bytes: the rest of the input is not read",
                        crate::input::MAX_BATCH_LINE
                    );
                    out.write(&error_line(&json!(line_no - 1), line_no, &why), true)?;
                    eof = true;
                    break;
                }
            };
            line_no += 1;
            let text = match std::str::from_utf8(&buf) {
                Ok(t) => t.trim_start_matches('\u{feff}').trim(),
                Err(_) => {
                    out.write(
                        &error_line(&json!(line_no - 1), line_no, "the line is not valid UTF-8"),
                        true,
                    )?;
                    continue;
                }
            };
            if text.is_empty() {
                continue;
            }
            let default_id = json!(line_no - 1);
            let v: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(err) => {
                    out.write(
                        &error_line(&default_id, line_no, &format!("bad JSON: {err}")),
                        true,
                    )?;
                    continue;
                }
            };
            let id = v.get("id").cloned().unwrap_or(default_id);
            let submitted = request(&v).and_then(|(prompt, mut params)| {
                if let Some(s) = params.speculative.as_mut().filter(|_| e.has_draft_model()) {
                    s.drafter = ember::engine::Drafter::Model;
                }
                e.submit_text(&prompt, &params)
                    .map_err(|err| err.to_string())
            });
            match submitted {
                Ok(rid) => running.push((id, rid)),
                Err(err) => out.write(&error_line(&id, line_no, &err), true)?,
            }
        }
        if !e.has_work() && running.is_empty() {
            break;
        }
        e.step()?;
        let m = e.metrics();
        util_num += m.utilization * m.blocks_used as f64;
        util_den += m.blocks_used as f64;
        // Write and release what finished, freeing its request slot for the next line.
        let mut i = 0;
        while i < running.len() {
            let rid = running[i].1;
            if e.is_finished(rid)? {
                let (id, rid) = running.swap_remove(i);
                let (v, failed) = result_line(&e, &id, rid)?;
                out.write(&v, failed)?;
                e.release(rid)?;
                let note = format!("({} failed, {} running)", out.failed, running.len());
                bar.set(out.written as u64, &note);
            } else {
                i += 1;
            }
        }
    }
    bar.finish();
    let wall = t0.elapsed().as_secs_f64();
    let utilization = if util_den > 0.0 {
        util_num / util_den
    } else {
        1.0
    };
    let mut stats = stats_line(&e.metrics(), wall);
    stats["stats"]["arena_utilization"] = json!(utilization);
    stats["stats"]["requests"] = json!(out.written);
    stats["stats"]["failed"] = json!(out.failed);
    eprintln!("{stats}");
    if out.failed > 0 {
        return Err(CliError::Run(format!(
            "{} of {} requests failed (their lines in {} say why)",
            out.failed,
            out.written,
            output.display()
        )));
    }
    Ok(())
}

/// llama-batched-bench-style measurement: C sequences with `n_prompt`-token prompts are
/// prefilled together (S_PP), then decode `n_gen` tokens each together (S_TG).
pub fn bench_concurrent(b: &BenchArgs, c: usize, n_prompt: usize, n_gen: usize) -> CliResult {
    let a = &b.common;
    if c == 0 || c > MAX_SEQS {
        return Err(usage(format!("--concurrency must be 1..={MAX_SEQS}")));
    }
    let mut cfg = engine_config(a, &b.engine, c)?;
    cfg.max_seqs = c;
    cfg.max_batch_tokens = cfg.max_batch_tokens.max(c);
    cfg.prefix_caching = false;
    let model = load_model(a)?;
    let n_ctx_train = model.config.n_ctx_train;
    if n_prompt.saturating_add(n_gen) >= n_ctx_train {
        return Err(usage(format!(
            "-p + -n must stay below the model's context ({n_ctx_train})"
        )));
    }
    cfg.n_ctx = n_prompt + n_gen + 1;
    if a.kv_blocks.is_none() && b.engine.kv_bytes.is_none() {
        // A whole context per sequence, in every layer group (sliding-window groups need
        // only their window's blocks).
        cfg.kv_budget = KvBudget::FullContext;
    }
    let n_vocab = model.config.n_vocab as u64;
    let mut e = Engine::with_draft_rows(model, cfg, backend_kind(a)?)?;
    e.set_device_sampling(!b.host_sampling);
    report_backend(a, e.backend());
    let sampling = SamplingParams {
        temperature: b.temp.unwrap_or(0.0),
        seed: 7,
        ..SamplingParams::default()
    };
    sampling
        .validate()
        .map_err(|err| usage(format!("--temp: {err}")))?;
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
            sampling: sampling.clone(),
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
    crate::output::print(|o| {
        if b.json {
            return writeln!(
                o,
                "{}",
                json!({"concurrency": c, "backend": e.backend().name(), "threads": e.threads(), "n_prompt": n_prompt, "n_gen": n_gen,
                       "temperature": sampling.temperature, "device_top_rows": m.device_top_rows,
                       "prefill_tok_s": s_pp, "decode_tok_s": s_tg, "preemptions": m.preemptions})
            );
        }
        writeln!(o, "| PP | TG | B | S_PP t/s | S_TG t/s |")?;
        writeln!(o, "| ---: | ---: | ---: | ---: | ---: |")?;
        writeln!(o, "| {n_prompt} | {n_gen} | {c} | {s_pp:.2} | {s_tg:.2} |")
    })
}
