//! `ember`: the command line of the Ember runtime.
//!
//! Subcommands: `generate`, `chat`, `tokenize`, `info`, `perplexity`, `bench`, `batch`, `serve`,
//! `convert`, `synth`. Every error is printed as one line on stderr with exit code 1 (2 for
//! usage errors).

// Messages to stderr never panic: `eprintln!` would panic when stderr is closed or full
// (`ember ... 2>&-`), so this crate's `eprintln!`/`eprint!` (defined before the modules, which
// therefore use it) write and ignore the error, as there is nowhere left to report it.
macro_rules! eprintln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}
macro_rules! eprint {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

mod args;
mod bandwidth;
mod batch;
mod commands;
mod info;
mod input;
mod model_files;
mod output;
mod progress;
mod serve;
mod shaping;

use std::process::ExitCode;

const USAGE: &str = "\
ember: embedded LLM inference runtime

usage: ember <command> [options]
       ember --version

commands:
  generate -p TEXT [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p M] [--repeat-penalty R]
           [--seed S] [--stop STR]... [--ignore-eos] [--prompt-cache FILE] [--json]
           [--context-policy error|shift [--keep N]]
           [--grammar TEXT | --grammar-file FILE | --json-schema FILE|TEXT]
           [--spec lookup|draft [--draft-k K] [--draft-model FILE]]
                        continue TEXT (special tokens parsed) and stream the text;
                        --grammar...: the output follows the grammar or schema;
                        --spec: speculative decoding, guesses from the text so far
                        (lookup) or from a smaller model with the same vocabulary
                        (draft); the output is unchanged;
                        --prompt-cache: the prompt's KV blocks are loaded from FILE if it
                        exists (only the rest of the prompt is computed), else saved to it
  chat [-p TEXT] [--system TEXT] [--chat-template FILE] [--context-policy error|truncate|shift]
       [--prompt-cache FILE] [--verbose] [-n N] [--temp T] ...
                        chat with the model's template (or FILE's, a Jinja chat template):
                        one turn with -p, interactive otherwise; each turn reuses the KV of
                        the earlier ones; when the history outgrows the context, truncate
                        (the default) leaves the oldest turns out, keeping --system; shift
                        fits the prompt so, and lets a reply run past the end of the context
                        (keeping --system, dropping half of the rest, as llama.cpp does);
                        --prompt-cache: as for generate, with the first turn's prompt (a
                        long --system prompt is computed once, not at every start);
                        --verbose: prompt tokens, cached tokens and timings per turn
  tokenize [--json] [--no-parse-special] TEXT
                        print the token ids of TEXT
  info [--tensors] [--check-tensors]
                        summary of the model (shape, parameters, quantization mix, compute,
                        memory plan), then its metadata; --tensors: the tensor table;
                        --check-tensors also reads every weight and fails on NaN or
                        infinite values
  perplexity -f FILE [-c N] [--json]
                        perplexity of FILE with chunks of N tokens, as llama-perplexity
  bench [-p N] [-n N] [-r R] [--bandwidth] [--json]
                        prefill N tokens and decode N tokens from an empty cache, R times;
                        --bandwidth also measures the streaming-read bandwidth and the
                        decode speed it allows
  bench --concurrency C [-p N] [-n N]
                        C sequences prefilled, then decoded together (aggregate tok/s)
  batch --input requests.jsonl --output results.jsonl [--max-seqs S]
        [--max-batch-tokens T] [--kv-blocks N | --kv-bytes B] [--no-prefix-cache]
        [--draft-model FILE]
                        run a file of requests through the continuous-batching engine; each
                        line a JSON object: id, prompt, max_tokens, temperature, seed, stop, ...
  serve [--host H] [--port P] [--api-key KEY] [--max-queue Q] [--max-body BYTES]
        [--max-connections C] [--alias NAME] [--chat-template FILE] [--max-seqs S]
        [--draft-model FILE [--draft-k K]] [--context-shift [--keep N]] ...
                        OpenAI-compatible HTTP server (default 127.0.0.1:8080):
                        POST /v1/chat/completions, /v1/completions (stream, n, stop,
                        response_format, grammar), GET /v1/models, /health, /metrics;
                        past Q requests waiting (default 64): 503 with Retry-After;
                        --draft-model: every request drafts K tokens (default 8) with it;
                        --context-shift: replies may run past the end of the context
  convert -o OUT [--type T] [--layers N]
                        rewrite the model: weights converted to type T, first N blocks only;
                        T a weight type or a k-quant mix (Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M):
                        the same file llama-quantize writes (no importance matrix)
  synth -o OUT [--arch llama|qwen2|gemma3] [--type T] [--embd-type T] [--vocab N] [--embd N]
        [--layers N] [--heads N] [--kv-heads N] [--ff N] [--seed S] [--separate-output]
        [--window N]            (gemma3's sliding window, default 32)
                        write a synthetic model with seeded random weights

common options:
  -m, --model PATH      GGUF model (default: $EMBER_MODEL if set, else
                        models/SmolLM2-135M-Instruct.Q4_1.gguf)
  -t, --threads N       worker threads (default: physical cores)
  --ctx N               context length (default 4096, at most the model's)
  --kv-blocks N         KV arena size in blocks (default: enough for the context)
  --block-size B        tokens per KV block (default 16)
  --swa-full            keep every KV block of sliding-window layers (Gemma 3), which
                        otherwise go back to the pool once out of the window
  --kv-type f16|q8_0|q4_0
                        how the KV cache stores keys and values (default f16; q8_0 and q4_0
                        hold 1.9x and 3.6x the tokens in the same memory)
  --backend cpu|cuda|auto
                        where the forward pass runs (default cpu; cuda needs a build with
                        --features cuda, libcuda and libnvrtc; auto falls back to the CPU)
  --cuda-weights upload|mapped
                        CUDA only: copy the weights to the device (default), or read them in
                        place from the mmapped file as host-mapped memory (zero-copy on
                        unified-memory Jetsons; slow across PCIe)
";

fn main() -> ExitCode {
    // OS strings: a non-UTF-8 argument is a usage error (or, for a path, just works), never
    // the panic of `std::env::args`.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let Some(cmd) = argv.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    if cmd == "--version" || cmd == "-V" || cmd == "version" {
        let line = format!("ember {}\n", info::version_line());
        return match output::print(|o| std::io::Write::write_all(o, line.as_bytes())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => exit(e),
        };
    }
    let help = |a: &std::ffi::OsString| a == "-h" || a == "--help";
    if help(cmd) || cmd == "help" || argv.iter().any(help) {
        // `ember CMD --help` and `ember help CMD`: that command's part of the usage.
        let named = if cmd == "help" {
            argv.get(1)
        } else {
            Some(cmd)
        };
        let text = named
            .and_then(|c| c.to_str())
            .and_then(command_help)
            .unwrap_or_else(|| USAGE.to_string());
        return match output::print(|o| std::io::Write::write_all(o, text.as_bytes())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => exit(e),
        };
    }
    let rest = &argv[1..];
    let Some(cmd) = cmd.to_str() else {
        return exit(commands::CliError::Usage(format!(
            "unknown command {:?}",
            cmd.to_string_lossy()
        )));
    };
    let r = match cmd {
        "generate" => commands::generate(rest),
        "chat" => commands::chat(rest),
        "tokenize" => commands::tokenize(rest),
        "info" => info::info(rest),
        "perplexity" => commands::perplexity(rest),
        "bench" => commands::bench(rest),
        "convert" => model_files::convert(rest),
        "batch" => batch::batch(rest),
        "serve" => serve::serve(rest),
        "synth" => model_files::synth(rest),
        other => Err(commands::CliError::Usage(format!(
            "unknown command {other:?}"
        ))),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit(e),
    }
}

/// The usage of one command: its lines of [`USAGE`] (from the line naming it to the next
/// command) and the common options; `None` for a name that is not a command.
fn command_help(cmd: &str) -> Option<String> {
    let lines: Vec<&str> = USAGE.lines().collect();
    // A command's first line is indented by exactly two spaces and starts with its name (a
    // description line, indented further, may start with the name too: "perplexity of FILE").
    let is_command = |l: &str| {
        l.strip_prefix("  ")
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_lowercase()))
    };
    let starts = |l: &str, name: &str| is_command(l) && l.split_whitespace().next() == Some(name);
    let firsts: Vec<usize> = (0..lines.len())
        .filter(|&i| starts(lines[i], cmd))
        .collect();
    if firsts.is_empty() {
        return None;
    }
    let common = lines.iter().position(|l| *l == "common options:")?;
    let mut out = format!("usage: ember {cmd} [options]\n\n");
    // Each synopsis of the command (`bench` has two) with its description lines.
    for first in firsts {
        let end = (first + 1..lines.len())
            .find(|&i| is_command(lines[i]) || !lines[i].starts_with(' '))
            .unwrap_or(lines.len());
        for l in &lines[first..end] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push('\n');
    for l in &lines[common..] {
        out.push_str(l);
        out.push('\n');
    }
    Some(out)
}

/// Report `e` and choose the exit status: 2 for usage errors, 1 for run-time errors; a closed
/// stdout (a reader like `head` that has read enough) ends the program quietly with the status
/// a SIGPIPE would give, as other Unix tools do.
fn exit(e: commands::CliError) -> ExitCode {
    match e {
        commands::CliError::Usage(m) => {
            eprintln!("ember: {m}\n(`ember --help` lists the commands and their options)");
            ExitCode::from(2)
        }
        commands::CliError::Run(m) => {
            eprintln!("ember: error: {m}");
            ExitCode::from(1)
        }
        commands::CliError::BrokenPipe => ExitCode::from(141),
    }
}
