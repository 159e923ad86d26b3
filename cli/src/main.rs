//! `ember`: the command line of the Ember runtime.
//!
//! Subcommands: `generate`, `chat`, `tokenize`, `info`, `perplexity`, `bench`, `batch`, `serve`,
//! `convert`, `synth`, parsed by clap from the structs of `flags.rs`. Every error is printed on
//! stderr: usage errors with exit code 2, run-time errors as one line with exit code 1.

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

mod bandwidth;
mod batch;
mod commands;
mod flags;
mod info;
mod input;
mod model_files;
mod output;
mod progress;
mod serve;
mod shaping;

use std::process::ExitCode;

use clap::Parser;
use flags::{Cli, Command};

fn main() -> ExitCode {
    // OS strings: a non-UTF-8 argument is a usage error naming it (or, for a path, just works),
    // never the panic of `std::env::args`.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `--version` says what this machine gets (the CPU kernel path), so it is not clap's
    // static version string.
    if let Some(first) = argv.get(1) {
        if first == "--version" || first == "-V" || first == "version" {
            let line = format!("ember {}\n", info::version_line());
            return match output::print(|o| std::io::Write::write_all(o, line.as_bytes())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => exit(e),
            };
        }
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => return usage_exit(&e),
    };
    let r = match &cli.command {
        Command::Generate(a) => commands::generate(a),
        Command::Chat(a) => commands::chat(a),
        Command::Tokenize(a) => commands::tokenize(a),
        Command::Info(a) => info::info(a),
        Command::Perplexity(a) => commands::perplexity(a),
        Command::Bench(a) => commands::bench(a),
        Command::Batch(a) => batch::batch(a),
        Command::Serve(a) => serve::serve(a),
        Command::Convert(a) => model_files::convert(a),
        Command::Synth(a) => model_files::synth(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit(e),
    }
}

/// What clap stopped at: help asked for goes to stdout with status 0; a usage error (an unknown
/// flag, a value that does not parse, a missing command) to stderr with status 2, naming the
/// flag and showing the command's usage line, not the whole help.
fn usage_exit(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let text = e.render().to_string();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            match output::print(|o| std::io::Write::write_all(o, text.as_bytes())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => exit(e),
            }
        }
        _ => {
            eprint!("{text}");
            ExitCode::from(2)
        }
    }
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
