//! Flags that shape what a request generates beyond the sampler's filters: the seed of a run
//! without `--seed`, a grammar or JSON schema the output must follow (`--grammar`,
//! `--grammar-file`, `--json-schema`) and speculative decoding (`--spec lookup|draft --draft-k K
//! --draft-model FILE`).
//! Shared by `generate` and `chat`.

use std::sync::Arc;

use ember::engine::{Drafter, Speculative};
use ember::grammar::Grammar;

use crate::commands::{usage, CliError};
use crate::flags::Sampling;

/// The grammar of `--grammar TEXT`, `--grammar-file FILE` or `--json-schema FILE|TEXT` (at
/// most one of them), compiled.
pub fn grammar(a: &Sampling) -> Result<Option<Arc<Grammar>>, CliError> {
    let given = [
        ("grammar", a.grammar.is_some()),
        ("grammar-file", a.grammar_file.is_some()),
        ("json-schema", a.json_schema.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, on)| on.then_some(f))
    .collect::<Vec<_>>();
    if given.len() > 1 {
        return Err(usage(format!(
            "--{} and --{} both constrain the output: give one",
            given[0], given[1]
        )));
    }
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| usage(format!("cannot read {}: {e}", p.display())))
    };
    let compiled = if let Some(text) = &a.grammar {
        Grammar::parse(text).map_err(|e| usage(format!("--grammar: {e}")))?
    } else if let Some(p) = &a.grammar_file {
        let text = read(p)?;
        Grammar::parse(&text).map_err(|e| usage(format!("{}: {e}", p.display())))?
    } else if let Some(s) = &a.json_schema {
        // Schema text when it looks like JSON, else a file name.
        let t = s.trim_start();
        let text = if t.starts_with('{') || t == "true" {
            s.clone()
        } else {
            read(std::path::Path::new(s))?
        };
        Grammar::from_json_schema(&text).map_err(|e| usage(format!("--json-schema: {e}")))?
    } else {
        return Ok(None);
    };
    Ok(Some(Arc::new(compiled)))
}

/// `--spec lookup|draft [--draft-k K]` (`draft` with `--draft-model FILE`): speculative
/// decoding by prompt lookup or with a draft model.
pub fn speculative(a: &Sampling) -> Result<Option<Speculative>, CliError> {
    let k = a.draft_k.unwrap_or(8);
    if !(1..=16).contains(&k) {
        return Err(usage(format!("--draft-k {k}: must be 1..=16")));
    }
    let model = a.draft_model.is_some();
    match a.spec.as_deref() {
        None | Some("none") => {
            if a.draft_k.is_some() || model {
                return Err(usage(
                    "--draft-k and --draft-model need --spec lookup or --spec draft".into(),
                ));
            }
            Ok(None)
        }
        Some("lookup") if model => Err(usage(
            "--draft-model drafts with --spec draft (--spec lookup needs no model)".into(),
        )),
        Some("lookup") => Ok(Some(Speculative::lookup(k))),
        Some("draft") if !model => Err(usage(
            "--spec draft needs --draft-model FILE (a smaller GGUF with the same vocabulary)"
                .into(),
        )),
        Some("draft") => Ok(Some(Speculative {
            k,
            drafter: Drafter::Model,
        })),
        Some(s) => Err(usage(format!("--spec {s}: expected lookup, draft or none"))),
    }
}

/// A seed for a run without `--seed` (as llama.cpp's `--seed -1`): different every run;
/// `--json` prints it, and `--seed` with it reproduces the run. From the standard library's
/// randomly keyed hasher (seeded by the OS), mixed with the time and the process id.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}
