//! The subcommands of `ember`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use ember::backend::{Backend, BackendKind, CudaWeights};
use ember::model::Model;
use ember::sampler::SamplingParams;
use ember::session::{
    ContextPolicy, Conversation, FinishReason, GenerateParams, Generation, KvBudget, Session,
    SessionConfig,
};
use serde_json::json;

use crate::flags::{
    BenchArgs, ChatArgs, Common, GenerateArgs, PerplexityArgs, Sampling, TokenizeArgs,
};
use crate::output::{self, Stdout};
use crate::shaping;

/// Default model path, relative to the working directory (where `scripts/fetch-model.sh` puts it).
const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A failed command: bad usage (exit 2), a run-time error (exit 1), or stdout closed by its
/// reader (quiet exit, status 141 as after SIGPIPE).
pub enum CliError {
    Usage(String),
    Run(String),
    BrokenPipe,
}

impl From<ember::Error> for CliError {
    fn from(e: ember::Error) -> Self {
        CliError::Run(e.to_string())
    }
}

pub type CliResult = Result<(), CliError>;

pub fn usage(e: String) -> CliError {
    CliError::Usage(e)
}

/// `-m PATH`, else the `EMBER_MODEL` environment variable (when set and not empty), else the
/// default model relative to the current directory.
pub fn model_path(a: &Common) -> PathBuf {
    a.model
        .clone()
        .or_else(|| {
            std::env::var_os("EMBER_MODEL")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL))
}

/// Largest `--threads` accepted; values up to it beyond the machine's CPUs are capped.
const MAX_THREADS: usize = 1024;

/// `--threads N` (0 or absent: the physical cores). More than the machine runs at once is
/// capped by the library (spinning workers on shared cores stall each other); say so.
pub fn threads(a: &Common) -> Result<usize, CliError> {
    let n = a.threads.unwrap_or(0);
    if n > MAX_THREADS {
        return Err(usage(format!(
            "--threads must be 0..={MAX_THREADS} (0: the physical cores)"
        )));
    }
    let used = ember::session::effective_threads(n);
    if n > used {
        eprintln!(
            "ember: --threads {n} exceeds the {used} CPUs this process may use; using {used}"
        );
    }
    Ok(n)
}

pub fn load_model(a: &Common) -> Result<Model, CliError> {
    let path = model_path(a);
    if !path.exists() {
        let from_env = std::env::var_os("EMBER_MODEL").is_some_and(|v| !v.is_empty());
        let hint = if a.model.is_some() {
            ""
        } else if from_env {
            " (named by the EMBER_MODEL environment variable)"
        } else {
            " (run scripts/fetch-model.sh to fetch the default model, or name one with -m or \
             EMBER_MODEL)"
        };
        return Err(CliError::Run(format!(
            "model file {} not found{hint}",
            path.display()
        )));
    }
    Ok(Model::load(&path)?)
}

/// Load the model and start a session sized for `max_batch` tokens per pass and `max_logits`
/// logit rows.
fn open_session(
    a: &Common,
    draft_model: Option<&std::path::Path>,
    max_batch: usize,
    max_logits: usize,
) -> Result<Session, CliError> {
    let t0 = Instant::now();
    let model = load_model(a)?;
    let mut s = open_session_from(model, a, max_batch, max_logits)?;
    // `--spec draft --draft-model FILE` (checked by shaping::speculative).
    if let Some(p) = draft_model {
        let draft = Model::load(p)
            .map_err(|e| CliError::Run(format!("--draft-model {}: {e}", p.display())))?;
        s.engine_mut().set_draft_model(draft)?;
    }
    s.load_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(s)
}

pub fn open_session_from(
    model: Model,
    a: &Common,
    max_batch: usize,
    max_logits: usize,
) -> Result<Session, CliError> {
    let n_ctx = a.ctx.unwrap_or(4096);
    if n_ctx == 0 {
        return Err(usage("--ctx must be at least 1".into()));
    }
    let n_ctx = n_ctx.min(model.config.n_ctx_train);
    let max_batch = max_batch.min(n_ctx).max(1);
    let cfg = SessionConfig {
        cuda_weights: cuda_weights(a)?,
        n_ctx,
        kv_budget: match a.kv_blocks {
            Some(n) => KvBudget::Blocks(n),
            None => KvBudget::FullContext,
        },
        block_size: a.block_size.unwrap_or(16),
        max_batch_tokens: max_batch,
        max_logits: max_logits.clamp(1, max_batch),
        threads: threads(a)?,
        kv_type: kv_type(a)?,
        swa_full: a.swa_full,
    };
    let s = Session::with_backend(model, &cfg, backend_kind(a)?)?;
    report_backend(a, s.backend());
    Ok(s)
}

/// `--kv-type f16|q8_0|q4_0` (default f16).
pub fn kv_type(a: &Common) -> Result<ember::kv::KvType, CliError> {
    Ok(a.kv_type.unwrap_or(ember::kv::KvType::F16))
}

/// `--backend cpu|cuda|auto` (default cpu).
pub fn backend_kind(a: &Common) -> Result<BackendKind, CliError> {
    Ok(a.backend.unwrap_or(BackendKind::Cpu))
}

pub fn cuda_weights(a: &Common) -> Result<CudaWeights, CliError> {
    Ok(a.cuda_weights.unwrap_or(CudaWeights::Upload))
}

/// Say on stderr which backend runs when one was asked for (and why `auto` fell back).
pub fn report_backend(a: &Common, b: &Backend) {
    if a.backend.is_some() {
        eprintln!("backend: {}", b.describe());
        if let Some(n) = b.note() {
            eprintln!("backend: {n}");
        }
    }
}

fn generate_params(a: &Sampling, default_n: usize) -> Result<GenerateParams, CliError> {
    let d = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: a.temp.unwrap_or(0.0),
        top_k: a.top_k.unwrap_or(d.top_k),
        top_p: a.top_p.unwrap_or(d.top_p),
        min_p: a.min_p.unwrap_or(d.min_p),
        repeat_penalty: a.repeat_penalty.unwrap_or(d.repeat_penalty),
        repeat_last_n: a.repeat_last_n.unwrap_or(d.repeat_last_n),
        seed: a.seed.unwrap_or_else(shaping::random_seed),
    };
    sampling.validate().map_err(|e| usage(e.to_string()))?;
    Ok(GenerateParams {
        sampling,
        max_tokens: a.n_predict.unwrap_or(default_n),
        stop: a.stop.clone(),
        stop_ids: Vec::new(),
        n: 1,
        ignore_eos: a.ignore_eos,
        grammar: shaping::grammar(a)?,
        speculative: shaping::speculative(a)?,
        context_shift: None,
    })
}

pub fn generate(a: &GenerateArgs) -> CliResult {
    let prompt = a
        .sampling
        .prompt
        .as_ref()
        .or(a.text.as_ref())
        .ok_or_else(|| usage("generate needs a prompt: -p TEXT".into()))?
        .clone();
    let mut params = generate_params(&a.sampling, 128)?;
    params.context_shift = match a.context_policy.as_deref() {
        None | Some("error") => None,
        Some("shift") => Some(ember::engine::ContextShift {
            keep: a.keep.unwrap_or(0),
        }),
        Some(p) => {
            return Err(usage(format!(
                "--context-policy {p:?}: expected error or shift"
            )))
        }
    };
    if a.keep.is_some() && params.context_shift.is_none() {
        return Err(usage("--keep goes with --context-policy shift".into()));
    }
    let json_out = a.sampling.json;
    // A logits row for the real token and each draft.
    let draft = a.sampling.draft_model.as_deref();
    let mut s = open_session(
        &a.common,
        draft,
        512,
        1 + params.speculative.map_or(0, |x| x.k),
    )?;
    let cache = PromptCache::open(a.prompt_cache.as_ref(), &mut s)?;
    let mut out = Stdout::new();
    // Streaming stops at the first failed write (a reader that went away, a full disk).
    let (prompt_ids, g) =
        s.generate_text_until(&prompt, &params, |piece| json_out || out.stream(piece))?;
    cache.save(&s, &prompt_ids)?;
    if json_out {
        let v = json!({
            "prompt_ids": prompt_ids,
            "ids": g.ids,
            "text": g.text,
            "finish_reason": finish_str(&g),
            "seed": params.sampling.seed,
            "cached_prompt_tokens": g.n_cached,
            "shifted_tokens": g.shifted_tokens,
            "draft_tokens": g.draft_tokens,
            "accepted_tokens": g.accepted_tokens,
            "prefill_tok_s": g.prefill_tok_s(),
            "decode_tok_s": g.decode_tok_s(),
            "load_ms": s.load_ms,
            "prompt_cache_load_ms": cache.load_ms,
        });
        out.stream(&format!("{v}\n"));
    } else {
        out.stream("\n");
    }
    out.finish()?;
    if !json_out {
        let cached = if cache.path.is_some() {
            format!(" ({} from the prompt cache)", g.n_cached)
        } else {
            String::new()
        };
        eprintln!(
            "[{} prompt tokens{cached} at {:.1} tok/s, {} generated at {:.1} tok/s, finish: {}]",
            prompt_ids.len(),
            g.prefill_tok_s(),
            g.ids.len(),
            g.decode_tok_s(),
            finish_str(&g)
        );
    }
    exiting(s);
    Ok(())
}

/// The command is done and the process exits next: skip the session's destructors (the
/// tokenizer's 49k-entry maps, the arena, joining the workers: about a tenth of a short
/// `generate` under perf); the operating system takes the memory, mappings and threads back at
/// once. Only for owned state with nothing left to flush (stdout is flushed before).
fn exiting(s: Session) {
    std::mem::forget(s);
}

/// `--prompt-cache FILE`: loaded into the prefix cache before the first prompt when the file
/// exists; written after the first prompt when it does not.
struct PromptCache {
    path: Option<PathBuf>,
    /// Whether to write the file after the first prompt (it did not exist).
    save: bool,
    load_ms: f64,
}

impl PromptCache {
    fn open(path: Option<&PathBuf>, s: &mut Session) -> Result<PromptCache, CliError> {
        let Some(path) = path.cloned() else {
            return Ok(PromptCache {
                path: None,
                save: false,
                load_ms: 0.0,
            });
        };
        // The cache's blocks are found through the prefix cache.
        s.set_prefix_caching(true);
        let t0 = Instant::now();
        let save = !path.exists();
        if !save {
            s.engine_mut().load_prompt_cache(&path)?;
        }
        Ok(PromptCache {
            path: Some(path),
            save,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Write the file for `prompt` if it did not exist (the prompt's blocks are still in the
    /// prefix cache right after it ran).
    fn save(&self, s: &Session, prompt: &[u32]) -> Result<(), CliError> {
        let Some(path) = self.path.as_deref().filter(|_| self.save) else {
            return Ok(());
        };
        let n = s.engine().save_prompt_cache(path, prompt)?;
        if n == 0 {
            eprintln!(
                "[prompt cache: the prompt fills no block of {} tokens; {} not written]",
                s.engine().block_size(),
                path.display()
            );
        }
        Ok(())
    }
}

/// The finish reason of a generation (always set once `generate` returns).
fn finish_str(g: &Generation) -> &'static str {
    g.finish.map_or("error", FinishReason::as_str)
}

/// The chat template: the file given with `--chat-template`, else the model's
/// `tokenizer.chat_template`, else a clear error (never a guessed template).
fn chat_template(s: &Session, file: Option<PathBuf>) -> Result<String, CliError> {
    if let Some(path) = file {
        return crate::input::read_text(&path, crate::input::MAX_TEMPLATE_BYTES, "--chat-template");
    }
    Ok(s.model()
        .file
        .get_str("tokenizer.chat_template")?
        .ok_or_else(|| {
            CliError::Run(
                "this model has no tokenizer.chat_template (a base model?): pass a Jinja \
                 template with --chat-template FILE, or use `ember generate` with a \
                 pre-formatted prompt"
                    .into(),
            )
        })?
        .to_string())
}

pub fn chat(a: &ChatArgs) -> CliResult {
    let params = generate_params(&a.sampling, 256)?;
    let policy: ContextPolicy = match a.context_policy.as_deref() {
        Some(p) => p.parse().map_err(|_| {
            usage(format!(
                "--context-policy {p:?}: expected error, truncate or shift"
            ))
        })?,
        None => ContextPolicy::Truncate,
    };
    let draft = a.sampling.draft_model.as_deref();
    let mut s = open_session(
        &a.common,
        draft,
        512,
        1 + params.speculative.map_or(0, |x| x.k),
    )?;
    let mut cache = PromptCache::open(a.prompt_cache.as_ref(), &mut s)?;
    let template = chat_template(&s, a.chat_template.clone())?;
    // Each turn's prompt starts with the earlier turns: their cached KV blocks are reused.
    let mut conversation =
        Conversation::for_tokenizer(template, s.tokenizer(), a.system.as_deref(), policy);
    // No line can be longer than the context's worth of the longest token pieces.
    let line_limit = s
        .n_ctx()
        .saturating_mul(s.tokenizer().max_piece_len().max(1));
    let one_shot = a.sampling.prompt.clone();
    let mut stdin = std::io::stdin().lock();
    loop {
        let user = match &one_shot {
            Some(p) => p.clone(),
            None => {
                eprint!("> ");
                let line = crate::input::read_line(&mut stdin, line_limit)
                    .map_err(|e| CliError::Run(format!("reading stdin: {e}")))?;
                match line {
                    crate::input::Line::Bytes(l) => String::from_utf8(l)
                        .map_err(|_| CliError::Run("an input line is not valid UTF-8".into()))?,
                    crate::input::Line::TooLong => {
                        return Err(CliError::Run(format!(
                            "an input line is longer than {line_limit} bytes, more than the \
                             context can hold"
                        )))
                    }
                    crate::input::Line::Eof => {
                        exiting(s);
                        return Ok(());
                    }
                }
            }
        };
        let mut out = Stdout::new();
        let turn = conversation.reply(&mut s, &user, &params, |piece| out.stream(piece))?;
        out.stream("\n");
        out.finish()?;
        // The first turn's prompt (the system prompt, mostly) is what a restart can reuse.
        cache.save(&s, &turn.prompt_ids)?;
        cache.save = false;
        if a.verbose {
            let g = &turn.generation;
            let first_ms = g
                .first_token
                .map_or(0.0, |t| (t - g.submitted).as_secs_f64() * 1e3);
            eprintln!(
                "[{} prompt tokens, {} of them from the cache; first token after {first_ms:.1} \
                 ms; {} generated at {:.1} tok/s, finish: {}]",
                turn.prompt_tokens,
                turn.cached_tokens,
                g.ids.len(),
                g.decode_tok_s(),
                finish_str(g)
            );
        }
        if turn.generation.shifted_tokens > 0 {
            eprintln!(
                "[context: the reply outgrew the context of {} tokens: {} oldest tokens dropped \
                 after the system prompt (context shift)]",
                s.n_ctx(),
                turn.generation.shifted_tokens
            );
        }
        if turn.dropped_turns > 0 {
            eprintln!(
                "[context: the {} oldest turn{} left out to fit the context of {} tokens]",
                turn.dropped_turns,
                if turn.dropped_turns == 1 {
                    " was"
                } else {
                    "s were"
                },
                s.n_ctx()
            );
        }
        if one_shot.is_some() {
            exiting(s);
            return Ok(());
        }
    }
}

pub fn tokenize(a: &TokenizeArgs) -> CliResult {
    let model = load_model(&a.common)?;
    let tok = ember::gguf::tokenizer_from_gguf(&model.file)?;
    let ids = tok
        .encode(&a.text, true, !a.no_parse_special)
        .map_err(|e| CliError::Run(e.to_string()))?;
    output::print(|o| {
        if a.json {
            writeln!(o, "{}", json!({ "ids": ids }))
        } else {
            ids.iter().try_for_each(|&id| {
                writeln!(
                    o,
                    "{id:>7} -> {:?}",
                    String::from_utf8_lossy(tok.token_bytes(id))
                )
            })
        }
    })
}

pub fn perplexity(a: &PerplexityArgs) -> CliResult {
    let file = a
        .file
        .as_ref()
        .ok_or_else(|| usage("perplexity needs -f FILE".into()))?;
    let text = crate::input::read_text(file, crate::input::MAX_TEXT_BYTES, "-f")?;
    let c = a.chunk.unwrap_or(512);
    if c < 2 {
        return Err(usage(
            "-c must be at least 2 (the second half of a chunk is scored)".into(),
        ));
    }
    // Passes of the size llama-perplexity evaluates, so its figures are reproduced exactly.
    let step = ember::perplexity::llama_batch(c);
    let mut s = open_session(&a.common, None, step, step.min(c / 2 + 1))?;
    if s.n_ctx() < c {
        return Err(usage(format!("-c {c} exceeds the context ({})", s.n_ctx())));
    }
    let tokens = s
        .tokenizer()
        .encode(&text, true, false)
        .map_err(|e| CliError::Run(e.to_string()))?;
    let json_out = a.json;
    // Chunks of `c` tokens, as perplexity() cuts them.
    let chunks = (tokens.len() / c) as u64;
    let mut bar = crate::progress::Progress::new("perplexity: chunks", Some(chunks));
    let r = ember::perplexity::perplexity(&mut s, &tokens, c, |i, p| {
        if bar.is_on() {
            bar.set(i as u64 + 1, &format!("PPL {p:.4}"));
        } else if !json_out {
            eprint!("[{}]{p:.4},", i + 1);
        }
    })?;
    let drawn = bar.is_on();
    drop(bar);
    output::print(|o| {
        if json_out {
            writeln!(
                o,
                "{}",
                json!({"ppl": r.ppl, "ppl_err": r.ppl_err, "chunks": r.chunks, "tokens": tokens.len(),
                       "scored": r.scored, "tok_s": r.tok_s})
            )
        } else {
            if !drawn {
                eprintln!();
            }
            writeln!(
                o,
                "Final estimate: PPL = {:.4} +/- {:.5} ({} chunks of {c}, {} tokens, {:.1} tok/s)",
                r.ppl,
                r.ppl_err,
                r.chunks,
                tokens.len(),
                r.tok_s
            )
        }
    })
}

pub fn bench(a: &BenchArgs) -> CliResult {
    let n_prompt = a.n_prompt.unwrap_or(512);
    let n_gen = a.n_gen.unwrap_or(128);
    let reps = a.reps.unwrap_or(3);
    if n_prompt == 0 || n_gen == 0 || reps == 0 {
        return Err(usage("-p, -n and -r must be at least 1".into()));
    }
    if a.concurrency.is_none() && (a.temp.is_some() || a.host_sampling) {
        return Err(usage(
            "--temp and --host-sampling go with --concurrency".into(),
        ));
    }
    if let Some(c) = a.concurrency {
        if c == 0 || n_gen < 2 {
            return Err(usage("--concurrency needs C >= 1 and -n >= 2".into()));
        }
        return crate::batch::bench_concurrent(a, c, n_prompt, n_gen);
    }
    let mut s = open_session(&a.common, None, n_prompt.max(1), 1)?;
    if n_prompt.saturating_add(n_gen) > s.n_ctx() {
        return Err(usage(format!("-p + -n exceed the context ({})", s.n_ctx())));
    }
    let n_vocab = s.model().config.n_vocab as u32;
    // Deterministic pseudo-random prompt tokens, as llama-bench uses random tokens.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let prompt: Vec<u32> = (0..n_prompt)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n_vocab as u64) as u32
        })
        .collect();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    // Warm-up, untimed (as llama-bench): the whole prompt, then one decoded token.
    {
        let mut seq = s.new_sequence();
        seq.tokens.extend_from_slice(&prompt);
        let last = n_prompt - 1;
        s.eval(&mut seq, |p| p == last, |_, _, _| {})?;
        seq.tokens.push(prompt[0]);
        let last = seq.tokens.len() - 1;
        s.eval(&mut seq, |p| p == last, |_, _, _| {})?;
        s.release(&mut seq);
    }
    for _ in 0..reps {
        // Prefill: the prompt in one pass (chunks of the batch size), logits for the last token.
        let mut seq = s.new_sequence();
        seq.tokens.extend_from_slice(&prompt);
        let t0 = Instant::now();
        let last = n_prompt - 1;
        s.eval(&mut seq, |p| p == last, |_, _, _| {})?;
        pp.push(n_prompt as f64 / t0.elapsed().as_secs_f64());
        s.release(&mut seq);
        // Decode: n_gen single-token passes from an empty cache (as llama-bench's tg), greedy
        // through the generation path (the one `ember generate` takes: on CUDA the argmax is
        // taken on the device). The clock runs from the first token (its one-token pass) to
        // the last, so it holds exactly the n_gen passes that each decode one more.
        let params = GenerateParams {
            max_tokens: n_gen + 1,
            ignore_eos: true,
            ..GenerateParams::default()
        };
        let g = s.generate(&prompt[..1], &params, |_| {})?;
        match (g.first_token, g.last_token) {
            (Some(a), Some(b)) if g.ids.len() == n_gen + 1 && b > a => {
                tg.push(n_gen as f64 / (b - a).as_secs_f64());
            }
            _ => {
                return Err(CliError::Run(format!(
                    "bench: decoding stopped after {} of {} tokens",
                    g.ids.len(),
                    n_gen + 1
                )))
            }
        }
    }
    let stats = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        (m, sd)
    };
    let ((ppm, pps), (tgm, tgs)) = (stats(&pp), stats(&tg));
    // --bandwidth: the streaming read of this many threads, and the decode speed it allows
    // when every weight byte is read once per token.
    let bw = a.bandwidth.then(|| crate::bandwidth::measure(s.threads()));
    let weights = s.model().weight_bytes() as f64;
    output::print(|o| {
        if a.json {
            let mut j = json!({"backend": s.backend().name(), "threads": s.threads(), "n_prompt": n_prompt, "n_gen": n_gen, "reps": reps,
                       "prefill_tok_s": ppm, "prefill_sd": pps, "decode_tok_s": tgm, "decode_sd": tgs});
            if let Some(bw) = bw {
                j["bandwidth_gb_s"] = json!(bw / 1e9);
                j["decode_limit_tok_s"] = json!(bw / weights);
            }
            return writeln!(o, "{j}");
        }
        if let Some(bw) = bw {
            eprintln!(
                "memory: {:.1} GB/s streaming read ({} threads, 256 MiB, 4 passes); {:.1} MB of \
                 weights read per decoded token allow {:.0} tok/s: tg{n_gen} is at {:.0}%",
                bw / 1e9,
                s.threads(),
                weights / 1e6,
                bw / weights,
                100.0 * tgm * weights / bw
            );
        }
        writeln!(o, "| model | threads | test | t/s |")?;
        writeln!(o, "| --- | ---: | --- | ---: |")?;
        let name = model_path(&a.common);
        let name = name
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        writeln!(
            o,
            "| {name} | {} | pp{n_prompt} | {ppm:.2} ± {pps:.2} |",
            s.threads()
        )?;
        writeln!(
            o,
            "| {name} | {} | tg{n_gen} | {tgm:.2} ± {tgs:.2} |",
            s.threads()
        )
    })
}
