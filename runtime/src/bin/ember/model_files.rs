//! The commands that write model files: `ember convert` (a model's weights in another type,
//! or its first blocks only) and `ember synth` (a synthetic model with seeded random weights).

use std::ffi::OsString;

use crate::args::{path, switch, val};
use crate::commands::{model_path, parse, usage, CliError, CliResult};

fn parse_type(name: &str) -> Result<ember_kernels::GgmlType, CliError> {
    ember_kernels::SUPPORTED
        .iter()
        .copied()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            usage(format!(
                "unknown type {name:?} (supported: {})",
                ember_kernels::supported_names()
            ))
        })
}

/// A weight type (`Q8_0`) or one of llama-quantize's k-quant mixes (`Q4_K_M`).
fn parse_quantization(name: &str) -> Result<ember::convert::Quantization, CliError> {
    use ember::convert::{KMix, Quantization};
    if let Some(m) = KMix::ALL
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(name))
    {
        return Ok(Quantization::Mix(m));
    }
    parse_type(name).map(Quantization::Uniform).map_err(|_| {
        let mixes: Vec<&str> = KMix::ALL.iter().map(|m| m.name()).collect();
        usage(format!(
            "unknown type {name:?} (supported: {}; mixes: {})",
            ember_kernels::supported_names(),
            mixes.join(", ")
        ))
    })
}

pub fn convert(raw: &[OsString]) -> CliResult {
    let a = parse(
        raw,
        &[&[
            path("output", Some("-o")),
            val("type", None),
            val("layers", None),
        ]],
    )?;
    let out = a
        .path("output")
        .ok_or_else(|| usage("convert needs -o OUTPUT".into()))?;
    let input = model_path(&a);
    // Writing over the input while it is mapped (here, or by anyone else) would pull the
    // pages out from under the readers: refuse, whatever the spelling of the path.
    if same_file(&input, &out) {
        return Err(usage(format!(
            "-o {} is the input model itself: write to another file",
            out.display()
        )));
    }
    let opts = ember::convert::ConvertOptions {
        quantization: a.str("type").map(parse_quantization).transpose()?,
        keep_layers: a.get("layers").map_err(usage)?,
    };
    let file = ember::gguf::GgufFile::open(&input)?;
    let mut bar = crate::progress::Progress::new("convert: tensors", None);
    // Written one tensor at a time to a temporary file beside OUT, then renamed over it.
    ember::convert::convert_to_file(&file, &opts, &out, |done, total| {
        bar.set_total(total as u64);
        bar.set(done as u64, "");
    })?;
    bar.finish();
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Whether `a` and `b` name the same existing file (same device and inode, so hard links and
/// other spellings count).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

pub fn synth(raw: &[OsString]) -> CliResult {
    let a = parse(
        raw,
        &[&[
            path("output", Some("-o")),
            val("arch", None),
            val("type", None),
            val("embd-type", None),
            val("vocab", None),
            val("embd", None),
            val("layers", None),
            val("heads", None),
            val("kv-heads", None),
            val("ff", None),
            val("seed", None),
            val("window", None),
            switch("separate-output"),
        ]],
    )?;
    let out = a
        .path("output")
        .ok_or_else(|| usage("synth needs -o OUTPUT".into()))?;
    let d = ember::synth::SynthSpec::default();
    let spec = ember::synth::SynthSpec {
        arch: a.str("arch").unwrap_or(&d.arch).to_string(),
        n_vocab: a.get_or("vocab", d.n_vocab).map_err(usage)?,
        n_embd: a.get_or("embd", d.n_embd).map_err(usage)?,
        n_layer: a.get_or("layers", d.n_layer).map_err(usage)?,
        n_head: a.get_or("heads", d.n_head).map_err(usage)?,
        n_head_kv: a.get_or("kv-heads", d.n_head_kv).map_err(usage)?,
        n_ff: a.get_or("ff", d.n_ff).map_err(usage)?,
        n_ctx: a.get_or("ctx", d.n_ctx).map_err(usage)?,
        weight_type: a
            .str("type")
            .map(parse_type)
            .transpose()?
            .unwrap_or(d.weight_type),
        embd_type: a
            .str("embd-type")
            .map(parse_type)
            .transpose()?
            .unwrap_or(d.embd_type),
        separate_output: a.has("separate-output"),
        seed: a.get_or("seed", d.seed).map_err(usage)?,
        sliding_window: a.get_or("window", d.sliding_window).map_err(usage)?,
    };
    let w = ember::synth::synth_gguf(&spec)?;
    w.write_to(&out)
        .map_err(|e| CliError::Run(format!("{}: {e}", out.display())))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
