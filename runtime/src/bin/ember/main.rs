//! `ember`: the command line of the Ember runtime.
//!
//! Subcommands: `generate`, `chat`, `tokenize`, `info`, `perplexity`, `bench`. Every error is
//! printed as one line on stderr with exit code 1 (2 for usage errors).

mod args;
mod batch;
mod commands;

use std::process::ExitCode;

const USAGE: &str = "\
ember: embedded LLM inference runtime

usage: ember <command> [options]

commands:
  generate -p TEXT [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p M] [--repeat-penalty R]
           [--seed S] [--stop STR] [--ignore-eos] [--json]
                        continue TEXT (special tokens parsed) and stream the text
  chat [-p TEXT] [--system TEXT] [--chat-template FILE] [-n N] [--temp T] ...
                        chat with the model's template (or FILE's, a Jinja chat template):
                        one turn with -p, interactive otherwise
  tokenize [--json] [--no-parse-special] TEXT
                        print the token ids of TEXT
  info [--check-tensors]
                        metadata, tensors and memory plan of the model; --check-tensors
                        also reads every weight and fails on NaN or infinite values
  perplexity -f FILE [-c N] [--json]
                        perplexity of FILE with chunks of N tokens, as llama-perplexity
  bench [-p N] [-n N] [-r R] [--json]
                        prefill N tokens and decode N tokens from an empty cache, R times
  bench --concurrency C [-p N] [-n N]
                        C sequences prefilled, then decoded together (aggregate tok/s)
  batch --input requests.jsonl --output results.jsonl [--max-seqs S]
        [--max-batch-tokens T] [--kv-blocks N | --kv-bytes B] [--no-prefix-cache]
                        run a file of requests through the continuous-batching engine; each
                        line a JSON object: id, prompt, max_tokens, temperature, seed, stop, ...
  convert -o OUT [--type T] [--layers N]
                        rewrite the model: weights converted to type T, first N blocks only
  synth -o OUT [--arch llama|qwen2] [--type T] [--embd-type T] [--vocab N] [--embd N]
        [--layers N] [--heads N] [--kv-heads N] [--ff N] [--seed S] [--separate-output]
                        write a synthetic model with seeded random weights

common options:
  -m, --model PATH      GGUF model (default models/SmolLM2-135M-Instruct.Q4_1.gguf)
  -t, --threads N       worker threads (default: physical cores)
  --ctx N               context length (default 4096, at most the model's)
  --kv-blocks N         KV arena size in blocks (default: enough for the context)
  --block-size B        tokens per KV block (default 16)
  --backend cpu|cuda|auto
                        where the forward pass runs (default cpu; cuda needs a build with
                        --features cuda, libcuda and libnvrtc; auto falls back to the CPU)
  --cuda-weights upload|mapped
                        CUDA only: copy the weights to the device (default), or read them in
                        place from the mmapped file as host-mapped memory (zero-copy on
                        unified-memory Jetsons; slow across PCIe)
";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    if cmd == "-h" || cmd == "--help" || cmd == "help" {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let rest = &argv[1..];
    let r = match cmd.as_str() {
        "generate" => commands::generate(rest),
        "chat" => commands::chat(rest),
        "tokenize" => commands::tokenize(rest),
        "info" => commands::info(rest),
        "perplexity" => commands::perplexity(rest),
        "bench" => commands::bench(rest),
        "convert" => commands::convert(rest),
        "batch" => batch::batch(rest),
        "synth" => commands::synth(rest),
        other => Err(commands::CliError::Usage(format!(
            "unknown command {other:?}"
        ))),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(commands::CliError::Usage(m)) => {
            eprintln!("ember: {m}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(commands::CliError::Run(m)) => {
            eprintln!("ember: error: {m}");
            ExitCode::from(1)
        }
    }
}
