//! The command line's grammar, declared with clap's derive: one struct per command, flag groups
//! shared between commands flattened into them ([`Common`], [`Sampling`], [`EngineFlags`]).
//!
//! A flag left out is `None` (or `false`, or empty): each command applies its own default (they
//! differ: `--ctx` is 4096 for a session, the engine's default for `batch`), and some checks
//! need to know whether a flag was given at all (`--keep` without a shift, `--backend` reported
//! only when asked for). The defaults are stated in each flag's help.
//!
//! A flag given twice takes its last value (`--stop` accumulates instead), as the tools do.
//!
//! Paths are `PathBuf` (any bytes: a non-UTF-8 model path just works); every other value must be
//! UTF-8, and a value that does not parse is a usage error naming the flag (exit status 2).

use std::path::PathBuf;

use std::ffi::OsStr;
use std::fmt::Display;
use std::marker::PhantomData;
use std::str::FromStr;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use ember::backend::{BackendKind, CudaWeights};
use ember::kv::KvType;

/// ember: embedded LLM inference runtime (GGUF models, paged KV cache, CPU SIMD and CUDA).
#[derive(Parser, Debug)]
#[command(
    name = "ember",
    disable_version_flag = true,
    after_help = "The model is -m PATH, else $EMBER_MODEL, else \
                  models/SmolLM2-135M-Instruct.Q4_1.gguf (relative to the current directory).\n\
                  `ember --version` prints the version, the CPU kernel path and whether CUDA is \
                  built in. Exit status: 0 success, 1 a run-time error, 2 a usage error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Continue a prompt (special tokens parsed) and stream the text.
    Generate(GenerateArgs),
    /// Chat with the model's chat template: one turn with -p, interactive otherwise.
    Chat(ChatArgs),
    /// Print the token ids of TEXT.
    Tokenize(TokenizeArgs),
    /// What a model file holds and how it would run here, then its metadata.
    Info(InfoArgs),
    /// Perplexity of a text file, in chunks, as llama-perplexity computes it.
    Perplexity(PerplexityArgs),
    /// Prefill and decode speed (one sequence, or --concurrency C together).
    Bench(BenchArgs),
    /// Run a file of JSON requests through the continuous-batching engine.
    Batch(BatchArgs),
    /// OpenAI-compatible HTTP server (default 127.0.0.1:8080).
    Serve(ServeArgs),
    /// Rewrite a model: weights converted to another type, or only its first layers.
    Convert(ConvertArgs),
    /// Write a synthetic model with seeded random weights.
    Synth(SynthArgs),
}

/// Options of every command that loads a model.
#[derive(Args, Debug, Clone, Default)]
pub struct Common {
    /// GGUF model (default: $EMBER_MODEL if set, else models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(short = 'm', long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Worker threads (default 0: the physical cores).
    #[arg(short = 't', long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// Context length (default 4096, at most the model's).
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub ctx: Option<usize>,
    /// KV arena size in blocks (default: enough for the context).
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub kv_blocks: Option<usize>,
    /// Tokens per KV block (default 16).
    #[arg(long, value_name = "B", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub block_size: Option<usize>,
    /// How the KV cache stores keys and values: f16 (default), q8_0 or q4_0 (1.9x and 3.6x the
    /// tokens in the same memory).
    #[arg(long, value_name = "TYPE", value_parser = text::<KvType>())]
    pub kv_type: Option<KvType>,
    /// Where the forward pass runs: cpu (default), cuda (a build with --features cuda, libcuda
    /// and libnvrtc) or auto (CUDA if it can start, else the CPU, saying why).
    #[arg(long, value_name = "cpu|cuda|auto", value_parser = text::<BackendKind>())]
    pub backend: Option<BackendKind>,
    /// CUDA only: copy the weights to the device (upload, default), or read them in place from
    /// the mapped file (mapped: zero-copy on unified-memory Jetsons, slow across PCIe).
    #[arg(long, value_name = "upload|mapped", value_parser = text::<CudaWeights>())]
    pub cuda_weights: Option<CudaWeights>,
    /// Keep every KV block of sliding-window layers (Gemma 3), which otherwise go back to the
    /// pool once out of the window.
    #[arg(long)]
    pub swa_full: bool,
}

/// What a generated text is: the prompt, its length, the sampler, stop rules, grammars and
/// speculative decoding (`generate` and `chat`).
#[derive(Args, Debug, Clone, Default)]
pub struct Sampling {
    /// The prompt (generate: also as the first positional argument; chat: one turn).
    #[arg(short = 'p', long, value_name = "TEXT", value_parser = text::<String>())]
    pub prompt: Option<String>,
    /// Tokens to generate at most (default 128; chat: 256 per turn).
    #[arg(short = 'n', long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub n_predict: Option<usize>,
    /// Temperature (default 0: greedy).
    #[arg(long, value_name = "T", value_parser = text::<f32>(), allow_negative_numbers = true)]
    pub temp: Option<f32>,
    /// Keep the K most likely tokens (default 40; 0: all).
    #[arg(long, value_name = "K", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub top_k: Option<usize>,
    /// Nucleus sampling (default 0.95; 1: off).
    #[arg(long, value_name = "P", value_parser = text::<f32>(), allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Drop tokens below M times the most likely one's probability (default 0.05).
    #[arg(long, value_name = "M", value_parser = text::<f32>(), allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Penalty of tokens among the last --repeat-last-n (default 1: off).
    #[arg(long, value_name = "R", value_parser = text::<f32>(), allow_negative_numbers = true)]
    pub repeat_penalty: Option<f32>,
    /// Tokens the repeat penalty looks back on (default 64).
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub repeat_last_n: Option<usize>,
    /// Sampler seed (default: a new one each run, printed by --json).
    #[arg(long, value_name = "S", value_parser = text::<u64>(), allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Stop at this text (repeatable: every string stops).
    #[arg(long, value_name = "STR", value_parser = text::<String>())]
    pub stop: Vec<String>,
    /// A GBNF grammar the output follows.
    #[arg(long, value_name = "TEXT", value_parser = text::<String>())]
    pub grammar: Option<String>,
    /// A GBNF grammar file the output follows.
    #[arg(long, value_name = "FILE")]
    pub grammar_file: Option<PathBuf>,
    /// A JSON Schema (file, or the schema's text) the output follows.
    #[arg(long, value_name = "FILE|TEXT", value_parser = text::<String>())]
    pub json_schema: Option<String>,
    /// Speculative decoding: lookup (guesses from the text so far) or draft (from
    /// --draft-model); the output is unchanged.
    #[arg(long, value_name = "lookup|draft", value_parser = text::<String>())]
    pub spec: Option<String>,
    /// Tokens guessed per step (default 8, 1..=16).
    #[arg(long, value_name = "K", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub draft_k: Option<usize>,
    /// A smaller GGUF with the same vocabulary, for --spec draft.
    #[arg(long, value_name = "FILE")]
    pub draft_model: Option<PathBuf>,
    /// Generate past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// One JSON object on stdout: ids, text, finish reason, seed, speeds.
    #[arg(long)]
    pub json: bool,
}

/// The continuous-batching engine's sizes (`batch`, `serve`, `bench --concurrency`).
#[derive(Args, Debug, Clone, Default)]
pub struct EngineFlags {
    /// Sequences decoded together (default 16).
    #[arg(long, value_name = "S", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub max_seqs: Option<usize>,
    /// Tokens per forward pass (default: the engine's, at least --max-seqs).
    #[arg(long, value_name = "T", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub max_batch_tokens: Option<usize>,
    /// KV arena size in bytes (instead of --kv-blocks).
    #[arg(long, value_name = "B", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub kv_bytes: Option<usize>,
    /// Do not share the KV blocks of equal prompt prefixes between requests.
    #[arg(long)]
    pub no_prefix_cache: bool,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub sampling: Sampling,
    /// The prompt, when -p is not given.
    #[arg(value_name = "TEXT", value_parser = text::<String>())]
    pub text: Option<String>,
    /// Load the prompt's KV blocks from FILE if it exists (only the rest of the prompt is
    /// computed), else save them to it.
    #[arg(long, value_name = "FILE")]
    pub prompt_cache: Option<PathBuf>,
    /// Past the end of the context: error (default) refuses, shift discards half of what
    /// follows the first --keep tokens and goes on.
    #[arg(long, value_name = "error|shift", value_parser = text::<String>())]
    pub context_policy: Option<String>,
    /// Tokens a context shift keeps at the start (default 0).
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub keep: Option<usize>,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub sampling: Sampling,
    /// The system message.
    #[arg(long, value_name = "TEXT", value_parser = text::<String>())]
    pub system: Option<String>,
    /// A Jinja chat template file, instead of the model's.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// When the history outgrows the context: truncate (default) leaves the oldest turns out
    /// (keeping --system), error refuses the turn, shift also lets a reply run past the end.
    #[arg(long, value_name = "error|truncate|shift", value_parser = text::<String>())]
    pub context_policy: Option<String>,
    /// As for generate, with the first turn's prompt (a long --system prompt is computed once).
    #[arg(long, value_name = "FILE")]
    pub prompt_cache: Option<PathBuf>,
    /// Prompt tokens, cached tokens and timings per turn, on stderr.
    #[arg(long)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub common: Common,
    /// The ids as a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Special tokens in TEXT are plain text.
    #[arg(long)]
    pub no_parse_special: bool,
    /// The text to tokenize.
    #[arg(value_name = "TEXT", value_parser = text::<String>())]
    pub text: String,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct InfoArgs {
    #[command(flatten)]
    pub common: Common,
    /// The tensor table.
    #[arg(long)]
    pub tensors: bool,
    /// Also read every weight and fail on NaN or infinite values.
    #[arg(long)]
    pub check_tensors: bool,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub common: Common,
    /// The text file.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Tokens per chunk (default 512).
    #[arg(short = 'c', long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub chunk: Option<usize>,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub engine: EngineFlags,
    /// Prompt tokens to prefill (default 512).
    #[arg(short = 'p', long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub n_prompt: Option<usize>,
    /// Tokens to decode (default 128).
    #[arg(short = 'n', long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub n_gen: Option<usize>,
    /// Repetitions (default 3).
    #[arg(short = 'r', long, value_name = "R", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub reps: Option<usize>,
    /// C sequences prefilled, then decoded together (aggregate tok/s).
    #[arg(short = 'c', long, value_name = "C", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub concurrency: Option<usize>,
    /// With --concurrency: sample at this temperature (top-k 40, top-p 0.95, min-p 0.05) instead
    /// of decoding greedily.
    #[arg(long, value_name = "T", value_parser = text::<f32>(), allow_negative_numbers = true)]
    pub temp: Option<f32>,
    /// With --concurrency: bring every sampled row back whole and sample on the host (CUDA
    /// otherwise selects the rows' most likely tokens on the device), for comparisons.
    #[arg(long)]
    pub host_sampling: bool,
    /// Also measure the streaming-read bandwidth and the decode speed it allows.
    #[arg(long)]
    pub bandwidth: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct BatchArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub engine: EngineFlags,
    /// Requests, one JSON object per line: id, prompt, max_tokens, temperature, seed, stop, ...
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Results, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// A draft model: requests asking for speculative decoding draft with it.
    #[arg(long, value_name = "FILE")]
    pub draft_model: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub engine: EngineFlags,
    /// Address to listen on (default 127.0.0.1).
    #[arg(long, value_name = "H", value_parser = text::<String>())]
    pub host: Option<String>,
    /// Port (default 8080).
    #[arg(long, value_name = "P", value_parser = text::<u16>(), allow_negative_numbers = true)]
    pub port: Option<u16>,
    /// Require `Authorization: Bearer KEY` (for a server bound beyond loopback).
    #[arg(long, value_name = "KEY", value_parser = text::<String>())]
    pub api_key: Option<String>,
    /// Requests waiting past this many get 503 with Retry-After (default 64).
    #[arg(long, value_name = "Q", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub max_queue: Option<usize>,
    /// Largest request body in bytes (default 1 MiB; larger: 413).
    #[arg(long, value_name = "BYTES", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub max_body: Option<usize>,
    /// Connections served at once (default 64).
    #[arg(long, value_name = "C", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub max_connections: Option<usize>,
    /// The model's name in the API (default: the file's general.name).
    #[arg(long, value_name = "NAME", value_parser = text::<String>())]
    pub alias: Option<String>,
    /// A Jinja chat template file, instead of the model's.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// A draft model: every request drafts --draft-k tokens with it.
    #[arg(long, value_name = "FILE")]
    pub draft_model: Option<PathBuf>,
    /// Tokens drafted per step (default 8, 1..=16).
    #[arg(long, value_name = "K", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub draft_k: Option<usize>,
    /// Replies may run past the end of the context (a context shift).
    #[arg(long)]
    pub context_shift: bool,
    /// Tokens a context shift keeps at the start (default 0).
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub keep: Option<usize>,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub common: Common,
    /// The file to write (never the input model).
    #[arg(short = 'o', long, value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Weight type, or a k-quant mix (Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M: the file llama-quantize
    /// writes, without an importance matrix).
    #[arg(long = "type", value_name = "T", value_parser = text::<String>())]
    pub ty: Option<String>,
    /// Keep only the first N blocks.
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub layers: Option<usize>,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct SynthArgs {
    /// The file to write.
    #[arg(short = 'o', long, value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Architecture: llama (default), qwen2 or gemma3.
    #[arg(long, value_name = "ARCH", value_parser = text::<String>())]
    pub arch: Option<String>,
    /// Type of the layers' weights.
    #[arg(long = "type", value_name = "T", value_parser = text::<String>())]
    pub ty: Option<String>,
    /// Type of the token embedding (and the tied output).
    #[arg(long, value_name = "T", value_parser = text::<String>())]
    pub embd_type: Option<String>,
    /// Vocabulary size.
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub vocab: Option<usize>,
    /// Embedding width.
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub embd: Option<usize>,
    /// Layers.
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub layers: Option<usize>,
    /// Query heads.
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub heads: Option<usize>,
    /// Key/value heads.
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub kv_heads: Option<usize>,
    /// Feed-forward width.
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub ff: Option<usize>,
    /// The model's training context.
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub ctx: Option<usize>,
    /// Weight seed.
    #[arg(long, value_name = "S", value_parser = text::<u64>(), allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// gemma3's sliding window (default 32).
    #[arg(long, value_name = "N", value_parser = text::<usize>(), allow_negative_numbers = true)]
    pub window: Option<usize>,
    /// An output matrix of its own instead of the tied embedding.
    #[arg(long)]
    pub separate_output: bool,
}

/// The parser of every value that is not a path: UTF-8 (else a usage error naming the flag and
/// saying only paths may hold other bytes), then `T`'s `FromStr` (else a usage error naming the
/// flag, the value and why).
#[derive(Clone, Copy, Debug)]
pub struct Text<T>(PhantomData<fn() -> T>);

/// [`Text`] for `T`.
pub fn text<T>() -> Text<T> {
    Text(PhantomData)
}

impl<T> TypedValueParser for Text<T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: Display,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let name = match arg {
            Some(a) => match a.get_long() {
                Some(l) => format!("the value of --{l}"),
                None => format!("the positional argument {}", a.get_id()),
            },
            None => "a value".to_string(),
        };
        let err = |kind, msg: String| clap::Error::raw(kind, format!("{msg}\n")).with_cmd(cmd);
        let s = value.to_str().ok_or_else(|| {
            err(
                ErrorKind::InvalidUtf8,
                format!(
                    "{name} is not valid UTF-8: {:?} (only file paths may hold other bytes)",
                    value.to_string_lossy()
                ),
            )
        })?;
        s.parse().map_err(|e| {
            err(
                ErrorKind::ValueValidation,
                format!("{name}: cannot parse {s:?}: {e}"),
            )
        })
    }
}
